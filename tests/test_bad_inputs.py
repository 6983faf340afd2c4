"""Bad inputs end in a one-line error naming the input, before any task runs, with nothing stored.

A start of the reliability catalogue (the rest: a later session): wrongly typed TOML values, per-estimator
option limits, a removed option, and non-finite weights refused by every estimator alike.
"""

import shutil
import sqlite3

import pytest
from safetensors.torch import load_file, save_file

from rllc.cli import main
from rllc.runs.store import db_path
from rllc.train import preset, train


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("series")
    train(preset("tiny", n_steps=10, max_chars=30_000, schedule="linear:2"), out, progress=False)
    return out


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("toml, named", [
    ('epsilon = "fast"\n', "--epsilon must be a number"),
    ("nbeta = true\n", "--nbeta must be a number"),
    ('paired = "yes"\n', "--paired must be true or false"),
    ('seed = 1.5\n', "--seed must be an integer"),
    ('datasets = "random"\nchains = "four"\n', "--chains must be a positive integer"),
    ("init-loss-batches = 16\n", "'init-loss-batches' was removed"),
])
def test_wrongly_typed_or_removed_config_values(series, tmp_path, capsys, toml, named):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    code, err = run(["estimate", str(series), "--out", str(tmp_path / "run"), "--config", str(cfg),
                     "--datasets", "random", "--quiet"], capsys)
    assert code == 2 and named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not db_path(tmp_path / "run").exists()  # nothing computed, nothing stored


@pytest.mark.parametrize("flags, named", [
    (["--estimators", "hessian-trace", "--probes", "2"], "--probes must be at least 6 for --trace-estimator hutch++"),
    (["--estimators", "fim-trace", "--probes", "1", "--trace-estimator", "hutchinson"], "--probes must be at least 2"),
    (["--estimators", "hessian-rank", "--rank-probes", "1"], "--rank-probes and --rank-degree must be at least 2"),
    (["--estimators", "hessian-rank", "--rank-threshold", "0"], "--rank-threshold must be positive"),
])
def test_estimator_limits_are_checked_before_any_task(series, tmp_path, capsys, flags, named):
    code, err = run(["estimate", str(series), "--out", str(tmp_path / "run"), "--datasets", "random", "--quiet",
                     *flags], capsys)
    assert code == 2 and named in err and "Traceback" not in err, err
    assert not db_path(tmp_path / "run").exists()


@pytest.mark.parametrize("estimator", ["llc", "hessian-trace", "hessian-rank", "fim-trace"])
def test_every_estimator_refuses_nan_weights_alike_and_stores_nothing(series, tmp_path, capsys, estimator):

    broken = tmp_path / "broken"
    shutil.copytree(series, broken)
    last = sorted(broken.glob("step_*.safetensors"))[-1]
    state = load_file(last)
    state["blocks.1.attn.W_Q"] = state["blocks.1.attn.W_Q"].clone()
    state["blocks.1.attn.W_Q"][0, 0, 0] = float("nan")
    save_file(state, last)
    step = int(last.stem.split("_")[1])
    code, err = run(["estimate", str(broken), "--out", str(tmp_path / "run"), "--estimators", estimator,
                     "--datasets", "self" if estimator == "fim-trace" else "random", "--steps", str(step),
                     "--components", "1:0", "--draws", "4", "--chains", "2", "--probes", "6", "--rank-degree", "4",
                     "--rank-probes", "2", "--batch-size", "2", "--curvature-batches", "1", "--fim-seqs", "2",
                     "--quiet", "--threads", "1"], capsys)
    assert code == 1 and "failed" in err, err
    log = (tmp_path / "run" / "run.log").read_text()
    assert "parameter blocks.1.attn.W_Q of the model contains NaN/Inf at w*: the checkpoint is broken" in log
    assert "teacher" not in log.split("NaN/Inf at w*")[0].splitlines()[-1]

    with sqlite3.connect(db_path(tmp_path / "run")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
