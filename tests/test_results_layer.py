"""The results layer reads a finished run without the estimation stack: `import rllc.results` (and the
analysis commands' path through it) loads no torch."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["rllc.results", "rllc.analysis.findings"])
def test_reading_results_imports_no_torch(module):
    code = f"import sys, {module}; bad = [m for m in ('torch', 'rllc.runs', 'rllc.sampling') if m in sys.modules]; " \
           "print(','.join(bad)); sys.exit(1 if bad else 0)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"import {module} loaded {run.stdout.strip()} {run.stderr[-500:]}"


def test_one_error_class_for_runs_and_results():
    from rllc.results import RunError
    from rllc.runs import RunError as FromRuns

    assert FromRuns is RunError
