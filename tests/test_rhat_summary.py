"""How many LLC estimates of a run fail R-hat: the count (rllc.results.rhat_summary), the rows of a
run's tasks it is taken over, the lines `rllc estimate` prints, and the report's Convergence paragraph.
Synthetic tables and a store filled by hand: no model is trained or sampled."""

import html
import json

import pandas as pd
import pytest

import rllc.runs
from rllc.analysis.report import render_report
from rllc.cli import main
from rllc.runs.plan import Task
from rllc.runs.runner import RunSummary
from rllc.results import rhat_summary, rhat_summary_lines
from rllc.runs.store import Store
from rllc.runs.tasks import TaskResult

# R-hat of nine LLC rows: 2 over 1.1, 4 over 1.01, 2 unknown (null, as the store writes NaN; no key); a tenth
# LLC row (results_table) has diagnostics that are not JSON
LLC_RHAT = [1.0, 1.005, 1.01, 1.02, 1.05, 1.2, 3.0, None, "missing"]


def diagnostics(rhat) -> str:
    if rhat == "missing":
        return json.dumps({"ess": 100.0})
    # The row with R-hat 3.0 is also at a w* that is not a critical point of its data.
    return json.dumps({"rhat": rhat, "ess": 100.0, "critical_point": rhat != 3.0})


def results_table() -> pd.DataFrame:
    """LLC rows as load_results returns them, plus rows of other signals whose R-hat must not count."""
    rows = [dict(step=100 * (i // 3), signal="llc", kind="estimate", component=f"0:{i % 3}", dataset="random",
                 value=1.0 + i, diagnostics=diagnostics(r)) for i, r in enumerate(LLC_RHAT)]
    rows.append(dict(step=0, signal="llc", kind="estimate", component="0:3", dataset="random", value=2.0,
                     diagnostics="{not json"))
    rows += [dict(step=s, signal="hessian-trace", kind="estimate", component="0:0", dataset="random", value=5.0,
                  diagnostics=json.dumps({"rhat": 9.0})) for s in (0, 100)]
    return pd.DataFrame(rows)


def test_rhat_summary_counts_llc_rows_and_keeps_unknown_apart():
    assert rhat_summary(results_table()) == dict(n=10, over_1_01=4, over_1_1=2, unknown=3, not_critical=1)
    as_dicts = results_table().iloc[:9].assign(diagnostics=[json.loads(diagnostics(r)) for r in LLC_RHAT])
    assert rhat_summary(as_dicts) == dict(n=9, over_1_01=4, over_1_1=2, unknown=2, not_critical=1)
    nan_row = pd.DataFrame([dict(signal="llc", diagnostics={"rhat": float("nan")})])
    assert rhat_summary(nan_row) == dict(n=1, over_1_01=0, over_1_1=0, unknown=1, not_critical=0)
    assert rhat_summary(results_table()[lambda d: d.signal != "llc"]) == dict(n=0, over_1_01=0, over_1_1=0,
                                                                              unknown=0, not_critical=0)


def test_rhat_summary_lines():
    bad = rhat_summary_lines(dict(n=10, over_1_01=4, over_1_1=2, unknown=4))
    assert bad[0].startswith("2 of 10 LLC estimates have R-hat > 1.1 (4 > 1.01); 4 have no R-hat")
    assert len(bad) == 2 and "--draws" in bad[1] and "--burn-in" in bad[1] and "rllc calibrate" in bad[1]
    assert "docs/llc.md" in bad[1]
    flagged = rhat_summary_lines(dict(n=10, over_1_01=0, over_1_1=0, unknown=0, not_critical=3))
    assert len(flagged) == 2 and flagged[1].startswith("3 of 10 LLC estimates are at a w* that is not a critical")
    fine = rhat_summary_lines(dict(n=5, over_1_01=1, over_1_1=0, unknown=0))
    assert fine == ["0 of 5 LLC estimates have R-hat > 1.1 (1 > 1.01)."]
    assert rhat_summary_lines(dict(n=0, over_1_01=0, over_1_1=0, unknown=0)) == []


def task(step: int, components: list[str], config_hash: str = "h1", estimator: str = "llc") -> Task:
    return Task(kind="estimate", estimator=estimator, step=step, checkpoint=f"step_{step}.safetensors",
                dataset="random", config_hash=config_hash, params={}, seed=0, n_batches=0, components=components)


def commit(store: Store, t: Task, rhats: list) -> None:
    rows = [dict(signal=t.estimator, component=c, variant="", dataset=t.dataset, value=1.0, se=0.1, seconds=1.0,
                 diagnostics={"rhat": r}) for c, r in zip(t.components, rhats)]
    store.commit(t, TaskResult(t.key, rows=rows))


def test_the_count_covers_the_llc_rows_a_run_asks_for(tmp_path):
    store = Store(tmp_path / "run")
    try:
        commit(store, task(0, ["0:0", "0:1"]), [1.0, 1.3])  # finished by an earlier run
        commit(store, task(5, ["0:0", "0:1"]), [1.02, None])
        commit(store, task(5, ["0:2"], config_hash="h2"), [2.0])  # another hyperparameter set
        commit(store, task(0, ["model"], estimator="hessian-trace"), [5.0])
        asked = [task(0, ["0:0", "0:1"]), task(5, ["0:0"]), task(0, ["model"], estimator="hessian-trace")]
        found = store.llc_results(asked)
        assert sorted(zip(found.checkpoint, found.component)) == [
            ("step_0.safetensors", "0:0"), ("step_0.safetensors", "0:1"), ("step_5.safetensors", "0:0")]
        assert rhat_summary(found) == dict(n=3, over_1_01=2, over_1_1=1, unknown=0, not_critical=0)
        assert rhat_summary(store.llc_results([task(5, ["0:1"])])) == dict(n=1, over_1_01=0, over_1_1=0, unknown=1, not_critical=0)
        assert len(store.llc_results([task(0, ["model"], estimator="hessian-trace")])) == 0
    finally:
        store.close()


@pytest.mark.parametrize("quiet", [False, True])
def test_rllc_estimate_prints_the_count(monkeypatch, tmp_path, capsys, quiet):
    def fake_run(checkpoint_dir, out, **options):
        return RunSummary(out, planned=3, done=3, rhat=dict(n=12, over_1_01=3, over_1_1=1, unknown=0))

    monkeypatch.setattr(rllc.runs, "run_estimate", fake_run)
    assert main(["estimate", str(tmp_path), "--out", str(tmp_path / "run")] + (["--quiet"] if quiet else [])) == 0
    err = capsys.readouterr().err
    if quiet:
        assert "R-hat" not in err
    else:
        assert "1 of 12 LLC estimates have R-hat > 1.1 (3 > 1.01)." in err and "--draws, --burn-in" in err


def test_run_summary_lines():
    assert RunSummary("run", rhat=dict(n=2, over_1_01=0, over_1_1=0, unknown=0)).convergence_lines() == [
        "0 of 2 LLC estimates have R-hat > 1.1 (0 > 1.01)."]
    assert RunSummary("run").convergence_lines() == []  # a run without LLC tasks says nothing


def test_the_report_has_a_convergence_paragraph():
    page = html.unescape(render_report(results_table(), None))
    assert "<h3>Convergence</h3>" in page
    assert "2 of 10 LLC estimates have R-hat > 1.1 (4 > 1.01); 3 have no R-hat" in page
    assert "more draws or burn-in (--draws, --burn-in)" in page
    healthy = results_table().iloc[:3]
    page = html.unescape(render_report(healthy, None))
    assert '<p class="ok">0 of 3 LLC estimates have R-hat > 1.1 (0 > 1.01).</p>' in page and "--draws" not in page
    no_llc = results_table()[lambda d: d.signal != "llc"]
    assert "Convergence" not in render_report(no_llc, None)
