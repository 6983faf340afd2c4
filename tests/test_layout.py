"""The layout's contracts: the results layer reads a finished run without the estimation stack
(`import rllc.results`, and the analysis path through it, loads no torch); checkpoint files are read in
one place; curvature and sampling share their losses through a module neither owns."""

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


def test_checkpoint_files_are_read_in_one_place():
    """Both loaders read weights through rllc.models.io, and neither imports the other back: the Hugging
    Face module never imports rllc.models.checkpoints; torch.load appears in io alone."""
    import ast
    from pathlib import Path

    import rllc.models as models

    root = Path(models.__file__).parent
    for name in ("hf.py", "io.py", "safety.py"):
        tree = ast.parse((root / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "rllc.models.checkpoints" not in imported, name
    for path in root.glob("*.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and (
                 (isinstance(n.func, ast.Attribute) and n.func.attr == "load" and getattr(n.func.value, "id", "") == "torch")
                 or (isinstance(n.func, ast.Name) and n.func.id in ("load_file", "safe_open")))]
        assert not calls or path.name == "io.py", f"{path.name} reads weights itself"


def test_curvature_does_not_reach_into_sampling():
    """Losses and the batch stream live in rllc.losses, owned by neither estimator family: curvature
    imports nothing from rllc.sampling."""
    import ast
    from pathlib import Path

    import rllc.curvature as curvature

    for path in Path(curvature.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not [m for m in modules if m.startswith("rllc.sampling")], path.name
