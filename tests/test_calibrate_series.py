"""`rllc calibrate`: the checks on synthetic chains, and the whole command on a tiny series."""

import numpy as np
import pandas as pd
import pytest

from rllc.cli import main
from rllc.models.checkpoints import load_checkpoints
from rllc.results import load_results
from rllc.runs.calibrate import HeadRun, choose_burn_in, judge_cell, judge_cost, summarize, verdict
from rllc.train import preset, train


def chains(level, rng, n_chains=4, n_draws=40, rise=3.0, noise=0.05):
    """Per-draw values rising from 0 to `level` with time constant `rise`, plus white noise."""
    t = np.arange(n_draws)
    return level * (1 - np.exp(-t / rise))[None, :] + noise * rng.standard_normal((n_chains, n_draws))


def run(levels, rng, **kw):
    return HeadRun({f"0:{i}": chains(v, rng, **kw) for i, v in enumerate(levels)}, mala=0.8, seconds=1.0)


def test_burn_in_is_read_from_the_traces():
    rng = np.random.default_rng(0)
    values = run([1.0, 2.0, 3.0], rng, noise=0.0).values
    # 1 - exp(-t/3) >= 0.8 first at t = 5 (the second half's level is ~1).
    assert choose_burn_in(values) == 5
    flat = {"0:0": np.ones((2, 20))}
    assert choose_burn_in(flat) == 0


def test_checks_pass_on_clean_chains_and_catch_each_failure():
    rng = np.random.default_rng(1)
    levels = np.linspace(0.5, 2.0, 8)
    good = {"base": run(levels, rng), "seed2": run(levels, rng), "gamma/2": run(levels * 1.05, rng),
            "gamma*2": run(levels * 0.95, rng)}
    out = judge_cell(good, 8, trained=True)
    assert not any(out[c] for c in ("not_flat", "rhat", "mala", "negative", "snr", "gamma_sensitive", "cost")), out
    assert out["snr_value"] > 4 and out["gamma_worst_change"] == pytest.approx(0.05, abs=0.03)

    halved = dict(good, **{"gamma/2": run(levels * 2.0, rng)})  # the localization sets the value
    assert judge_cell(halved, 8, trained=True)["gamma_sensitive"]
    negative = dict(good, base=run(np.r_[levels[:-1], -1.0], rng))
    assert judge_cell(negative, 8, trained=True)["negative"]
    noisy = dict(good, base=run(levels, rng, noise=3.0), seed2=run(levels, rng, noise=3.0))
    assert judge_cell(noisy, 8, trained=True)["snr"]
    drifting = dict(good, base=HeadRun({k: v + np.linspace(0, 3, 40) for k, v in good["base"].values.items()},
                                       0.8, 1.0))
    assert judge_cell(drifting, 8, trained=True)["not_flat"]
    assert judge_cell(dict(good, base=HeadRun(good["base"].values, 0.2, 1.0)), 8, trained=True)["mala"]
    # Cost is judged once for the grid: the median seconds of all its runs.
    cells = pd.DataFrame([dict(judge_cell(good, 8, trained=True), run_seconds=[9.0, 9.5, 12.0, 9.2]),
                          dict(judge_cell(good, 8, trained=True), run_seconds=[9.1, 9.3, 9.4, 13.0])])
    assert not judge_cost(cells, 10.0)["cost"].any() and judge_cost(cells, 9.0)["cost"].all()
    assert judge_cost(cells, 9.0)["failed"].str.contains("cost").all()
    # At the untrained first checkpoint only divergence and cost count.
    first = judge_cell({"base": drifting["base"]}, 8, trained=False)
    assert not first["not_flat"] and not first["negative"]


def test_summarize_drops_the_burn_in():
    values = {"0:0": np.c_[np.zeros((2, 5)), np.ones((2, 20))]}
    assert summarize(values, 5).loc["0:0", "value"] == pytest.approx(1.0)
    assert summarize(values, 0).loc["0:0", "value"] == pytest.approx(20 / 25)


def test_verdict_says_when_values_are_localization_dominated():
    base = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, gamma_worst_change=0.9, failures=["gamma_sensitive at step 5"])
    assert "LOCALIZATION-DOMINATED" in verdict(dict(base, passed=False, localization_dominated=True))
    assert "NO CELL PASSES" in verdict(dict(base, passed=False, localization_dominated=False))
    assert "passes every check" in verdict(dict(base, passed=True, localization_dominated=False,
                                                gamma_worst_change=0.1))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("series")
    train(preset("tiny", n_steps=30, max_chars=60_000, schedule="linear:4",
                 inject={"repeated_random": 0.5}), out, progress=False)
    return out


@pytest.mark.slow
def test_rllc_calibrate_writes_settings_that_rllc_estimate_takes(series, tmp_path, capsys):
    out = tmp_path / "calibration"
    code = main(["calibrate", str(series), "--out", str(out), "--epsilons", "1e-3", "--nbetas", "30",
                 "--gammas", "200", "--chains", "2", "--draws", "12", "--batch-size", "4", "--budget", "60",
                 "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr()
    assert "calibrating sgld on training distribution" in printed.err
    table = pd.read_csv(out / "calibration.csv")
    steps = load_checkpoints(series).steps
    assert sorted(table["step"]) == sorted({steps[0], steps[len(steps) // 2], steps[-1]})  # first, middle, last
    assert table.loc[table["step"] != steps[0], "snr_value"].notna().all()
    assert (out / "calibration.png").stat().st_size > 1000 and (out / "verdict.txt").read_text().strip()
    toml = (out / "calibration.toml").read_text()
    assert 'datasets = ["train"]' in toml and "epsilon = 0.001" in toml and "burn-in" in toml
    code = main(["estimate", str(series), "--out", str(tmp_path / "run"), "--config", str(out / "calibration.toml"),
                 "--steps", str(steps[-1]), "--quiet", "--threads", "1"])
    assert code == 0
    df = load_results(tmp_path / "run")
    assert set(df["dataset"]) == {"train"} and len(df) == 8


def test_report_shows_the_calibration(tmp_path):
    from rllc.analysis.report import calibration_section

    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "verdict.txt").write_text("values are LOCALIZATION-DOMINATED\n")
    (folder / "calibration.toml").write_text("epsilon = 0.001\n")
    html = calibration_section(folder)
    assert "LOCALIZATION-DOMINATED" in html and "epsilon = 0.001" in html and 'id="calibration"' in html


def test_calibrate_heads_on_one_model(series):
    import rllc
    from rllc.runs.datasets import resolve_dataset

    s = load_checkpoints(series)
    data = resolve_dataset("train", s, batch_size=4, seed=0).batches(12)
    table, choice, traces = rllc.calibrate_heads(s[s.steps[-1]], data, cells=[(1e-3, 30.0)], gammas=[200.0],
                                                 chains=2, draws=12, budget_s=60, progress=lambda m: None)
    assert len(table) == 1 and {"snr_value", "gamma_worst_change", "burn_in", "failed"} <= set(table.columns)
    assert choice["epsilon"] == 1e-3 and choice["draws"] == 12 - choice["burn_in"] and len(traces) == 1
    assert set(table["sampler"]) == {"sgld"}


def test_rllc_calibrate_a_preconditioned_sampler(series, tmp_path):
    """--sampler rmsprop: its own grid, and a TOML that makes rllc estimate use it."""
    out = tmp_path / "calibration"
    assert main(["calibrate", str(series), "--out", str(out), "--sampler", "rmsprop", "--epsilons", "1e-4",
                 "--nbetas", "30", "--gammas", "200", "--chains", "2", "--draws", "10", "--batch-size", "4",
                 "--budget", "60", "--steps", str(load_checkpoints(series).steps[-1]), "--threads", "1"]) == 0
    assert set(pd.read_csv(out / "calibration.csv")["sampler"]) == {"rmsprop"}
    assert 'sampler = "rmsprop"' in (out / "calibration.toml").read_text()
    assert main(["estimate", str(series), "--out", str(tmp_path / "run"), "--config", str(out / "calibration.toml"),
                 "--steps", str(load_checkpoints(series).steps[-1]), "--quiet", "--threads", "1"]) == 0
    diags = load_results(tmp_path / "run")["diagnostics"]
    assert all('"sampler": "rmsprop"' in d for d in diags)
