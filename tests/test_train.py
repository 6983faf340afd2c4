import json
import re
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rllc import load_checkpoints
from rllc.schedule import ScheduleError, checkpoint_steps
from rllc.train import PRESETS, load_train_config, preset, train

QUICK = dict(n_steps=200, max_chars=120_000, schedule="log:8,linear:4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(preset("tiny", **QUICK), out, progress=False)
    return out


def test_tiny_training_loss_falls(trained):
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == checkpoint_steps(QUICK["schedule"], QUICK["n_steps"])
    first, last = metrics[0]["eval_loss"], metrics[-1]["eval_loss"]
    # From ~log(512) = 6.24 at init; 200 steps of a 43k-parameter model reach below 5.5.
    assert first > 6.0 and last < first - 0.7, (first, last)
    assert not (trained / "resume.pt").exists()  # a finished run keeps no resume state


def test_checkpoint_directory_round_trips_with_equal_logits(trained):
    series = load_checkpoints(trained)
    assert series.format == "rllc" and series.steps == checkpoint_steps(QUICK["schedule"], QUICK["n_steps"])
    assert series.verify(full=True) == []
    tokens = torch.randint(0, 512, (2, 32))
    for step in (0, series.steps[-1]):
        model = series[step]
        from rllc.models import Transformer

        direct = Transformer(series.config)
        direct.load_state_dict(load_file(str(trained / f"step_{step:08d}.safetensors")))
        torch.testing.assert_close(model(tokens), direct(tokens), rtol=0, atol=0)
    assert series.tokenizer().get_vocab_size() == 512
    assert series.metrics()[-1]["step"] == 200


def test_rerunning_a_finished_run_does_nothing(trained, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    train(preset("tiny", **QUICK), trained, progress=True)
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before


def test_a_different_config_in_the_same_directory_is_refused(trained):
    with pytest.raises(ValueError, match="different configuration"):
        train(preset("tiny", **{**QUICK, "lr": 3e-4}), trained, progress=False)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tmp_path, trained):
    """SIGKILL `rllc train` mid-run; rerunning it ends with bit-identical weights."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rllc.cli", "train", "--preset", "tiny", "--out", str(out), "--quiet",
           "--steps", "200", "--max-chars", "120000", "--schedule", QUICK["schedule"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    target = out / "step_00000094.safetensors"  # a mid-run checkpoint of this schedule
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "step_00000200.safetensors").exists()
    assert (out / "resume.pt").exists()

    rerun = subprocess.run([c for c in cmd if c != "--quiet"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed_at = int(re.search(r"from step (\d+)", rerun.stdout).group(1))
    assert 0 < resumed_at <= 94  # the last resume state written before the kill
    for step in load_checkpoints(trained).steps:
        name = f"step_{step:08d}.safetensors"
        a, b = load_file(str(out / name)), load_file(str(trained / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == load_checkpoints(trained).steps  # no duplicated or missing rows


def test_schedules():
    paper = checkpoint_steps(PRESETS["paper"]["schedule"], 50_000)
    assert len(paper) == 107 and paper[:4] == [0, 100, 200, 400] and paper[-1] == 50_000
    steps = checkpoint_steps("log:5,linear:2", 1000)
    assert steps == [0, 1, 6, 32, 178, 500, 1000]
    with pytest.raises(ScheduleError, match="'every:3'"):
        checkpoint_steps("every:3", 100)


def test_config_file_and_presets(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "demo"\nn_steps = 50\n[model]\nn_ctx = 64\n')
    cfg = load_train_config(path, seed=3)
    assert cfg.n_steps == 50 and cfg.seed == 3 and cfg.model["n_ctx"] == 64 and cfg.model["d_model"] == 128
    assert cfg.model_config().n_heads == 8
    with pytest.raises(ValueError, match="unknown training options"):
        preset("tiny", bogus=1)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_training_on_a_token_array(tmp_path):
    import numpy as np

    ids = np.tile(np.arange(2, 50, dtype=np.uint16), 200)  # a fully predictable sequence
    np.save(tmp_path / "ids.npy", ids)
    cfg = preset("tiny", data=[str(tmp_path / "ids.npy")], vocab_size=64, n_steps=60, schedule="linear:2")
    train(cfg, tmp_path / "run", progress=False)
    series = load_checkpoints(tmp_path / "run")
    assert series.tokenizer_path is None and series.config.d_vocab == 64
    losses = [m["eval_loss"] for m in series.metrics()]
    assert losses[-1] < losses[0] - 1.0
    np.save(tmp_path / "bad.npy", np.array([1, 2, 99]))
    with pytest.raises(ValueError, match="bad.npy: token id 99 is out of range"):
        train(preset("tiny", data=[str(tmp_path / "bad.npy")], vocab_size=64), tmp_path / "run2", progress=False)
    with pytest.raises(ValueError, match="mixes .npy"):
        train(preset("tiny", data=[str(tmp_path / "ids.npy"), "prose"], vocab_size=64), tmp_path / "run3",
              progress=False)


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_experiment_configs_match_their_presets(name):
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / f"{name}.toml"
    import dataclasses

    loaded, expected = load_train_config(path), preset(name)
    assert loaded.model_config() == expected.model_config()
    assert dataclasses.replace(loaded, model={}) == dataclasses.replace(expected, model={})


def test_warmup_scales_the_first_steps(tmp_path):
    """Step s uses lr * min(1, (s + 1) / warmup_steps): one warmed-up step equals a plain step at lr / 50."""
    base = dict(n_steps=1, max_chars=120_000, schedule="")
    train(preset("tiny", **base, lr=1e-3, warmup_steps=50), tmp_path / "warm", progress=False)
    train(preset("tiny", **base, lr=1e-3 / 50), tmp_path / "plain", progress=False)
    train(preset("tiny", **base, lr=1e-3), tmp_path / "full", progress=False)
    warm, plain, full = (load_file(str(tmp_path / d / "step_00000001.safetensors")) for d in ("warm", "plain", "full"))
    assert all(torch.equal(warm[k], plain[k]) for k in warm)
    assert not all(torch.equal(warm[k], full[k]) for k in warm)


@pytest.mark.slow
def test_two_runs_with_two_threads_are_bit_identical(tmp_path):
    # Without deterministic kernels, two 2-thread runs of this config differed by up to 3e-4 in a
    # weight after 30 steps; training must make them equal.
    cfg = preset("tiny", n_steps=30, schedule="30", model=dict(d_model=128, n_heads=8, d_head=16, n_ctx=64))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = (load_file(train(cfg, tmp_path / name, progress=False) / "step_00000030.safetensors")
                for name in ("a", "b"))
    finally:
        torch.set_num_threads(threads)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored after training
