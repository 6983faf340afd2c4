"""`rllc demo --quick` end to end into temporary directories, and its rerun reusing finished work."""

import contextlib
import io
import json

import pytest
import torch

from rllc import cli
from rllc.study.demo import STAGES, run_demo

pytestmark = pytest.mark.slow  # the module's fixture alone takes 10-35 s on 2 cores


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("demo")
    lines = []
    result = run_demo(quick=True, checkpoints=root / "ck", out=root / "run", threads=1, progress=False,
                      log=lines.append)
    return root, result, lines


def test_quick_demo_runs_every_stage(first):
    root, result, lines = first
    assert result.ok and result.report == root / "run" / "analysis" / "report.html"
    page = result.report.read_text()
    assert 'id="findings"' in page and "Head formation" in page and 'class="badge' in page
    timings = json.loads((root / "run" / "timings.json").read_text())
    assert list(timings["latest"]["stages"]) == list(STAGES) and timings["latest"]["complete"]
    assert timings["first_full"]["started"] == timings["latest"]["started"]
    assert timings["latest"]["stages"]["train"]["trained"] is True
    assert timings["latest"]["stages"]["estimate"]["computed"] == 30  # 15 checkpoints x (train, code)
    assert sum(f"==> [{i}/8]" in line for i in range(1, 9) for line in lines) == 8
    findings = json.loads((root / "run" / "analysis" / "findings.json").read_text())
    assert set(findings) == {"head_formation", "icl_drop", "convergence", "clustering", "curve_agreement",
                             "data_refinement", "critical_points", "paper_claims", "timings"}
    assert findings["clustering"]["numbers"]["keys"] == ["llc@train", "llc@code"]
    # the noise stage: the last checkpoint's heads with 3 further seeds, for the convergence finding
    noise = findings["convergence"]["numbers"]
    assert noise["seeds"] == 4 and noise["heads"] == 8 and noise["snr"] > 0
    assert len(findings["paper_claims"]["numbers"]["claims"]) == 5
    assert all(f["status"] in ("PASS", "FAIL", "reported", "missing") for f in findings.values())


def test_rerun_through_the_cli_reuses_finished_work(first):
    root, result, _ = first
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        assert cli.main(["demo", "--quick", "--checkpoints", str(root / "ck"), "--out", str(root / "run"),
                         "--threads", "1", "--quiet"]) == 0
    assert printed.getvalue().strip() == f"report: {root / 'run' / 'analysis' / 'report.html'}"
    timings = json.loads((root / "run" / "timings.json").read_text())
    latest, full = timings["latest"], timings["first_full"]
    assert len(timings["history"]) == 2 and all(h["complete"] for h in timings["history"])
    assert latest["stages"]["train"]["trained"] is False and "already finished" in latest["stages"]["train"]["note"]
    assert latest["stages"]["estimate"]["computed"] == 0 and latest["stages"]["estimate"]["skipped"] == 30
    assert latest["stages"]["probe"]["computed"] == 0
    assert latest["stages"]["train"]["seconds"] < full["stages"]["train"]["seconds"]
    assert latest["stages"]["estimate"]["seconds"] < full["stages"]["estimate"]["seconds"]
    # its estimates reused (counted: in --quick mode the estimates are too cheap for wall time to tell)
    assert latest["stages"]["noise"]["computed"] == 0 and latest["stages"]["noise"]["skipped"] > 0
    assert "==> [8/8] report" in errors.getvalue()
    assert "[FAIL] Head formation" in errors.getvalue() or "[PASS] Head formation" in errors.getvalue()


def test_demo_refuses_a_checkpoint_dir_of_another_run(first, tmp_path):
    root, _, _ = first
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        assert cli.main(["demo", "--preset", "tiny", "--checkpoints", str(root / "ck"), "--out",
                         str(tmp_path / "run"), "--quiet"]) == 2
    assert "another configuration" in errors.getvalue()


def test_the_demo_settings_are_the_committed_calibration():
    """experiments/demo_estimate.toml shares every calibrated setting with demo_calibration/calibration.toml;
    a drift is named."""
    from rllc.study.demo import calibration_mismatch, estimate_options

    opts = estimate_options(None, False, {})
    assert calibration_mismatch(opts) == {}
    assert calibration_mismatch({**opts, "gamma": 100.0}) == {"gamma": (100.0, 200.0)}
