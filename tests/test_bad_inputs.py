"""A catalogue of bad inputs (issue 18): each ends in a non-zero exit and an error naming the input.

Every case runs through the `rllc` entry point in-process and asserts: the exit status, the message
naming the offending file, option or run directory, no traceback, one error line for a usage error
(exit 2), nothing written where the command would write (no results stored, no training directory
left behind) and, for the unsafe pickles, that nothing in them was executed. Sections: checkpoints
(rllc, TransformerLens and Hugging Face layouts), options and configs, datasets, run directories.
Non-finite weights (every estimator refuses them alike) and a NaN value refused by the store end in
a failed task (exit 1), not a usage error: they are found when a task reads its checkpoint.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rllc.cli import main
from rllc.models import ModelConfig, Transformer
from rllc.runs.store import Store, db_path
from rllc.train import preset, train

HF_CONFIG = dict(model_type="gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("series")
    train(preset("tiny", n_steps=10, max_chars=30_000, schedule="linear:2"), out, progress=False)
    return out


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def results_in(run_dir: Path) -> int | None:
    """Rows in the results table (None: no store)."""
    if not db_path(run_dir).exists():
        return None
    with sqlite3.connect(db_path(run_dir)) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


class Payload:
    """Unpickling it would create the file `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# --- inputs --------------------------------------------------------------------------------------------------


def estimate(ckpt, tmp, *flags) -> list[str]:
    has_datasets = "--datasets" in flags
    return ["estimate", str(ckpt), "--out", str(tmp / "run"), "--quiet",
            *([] if has_datasets else ["--datasets", "random"]), *flags]


def folder(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir()
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


def copy_series(series, tmp) -> Path:
    return Path(shutil.copytree(series, tmp / "ckpt"))


def last_step_file(ckpt: Path) -> Path:
    return sorted(ckpt.glob("step_*.safetensors"))[-1]


def tl_dir(series, tmp, suffix=".pt") -> Path:
    """The series as a TransformerLens directory: config.json of TL fields and one state dict per step."""
    out = tmp / "tl"
    out.mkdir()
    cfg = json.loads((series / "config.json").read_text())["model"]
    (out / "config.json").write_text(json.dumps(cfg))
    for path in sorted(series.glob("step_*.safetensors")):
        step = int(path.stem.split("_")[1])
        state = load_file(path)
        target = out / f"model_step{step}{suffix}"
        torch.save(state, target) if suffix == ".pt" else save_file(state, str(target))
    return out


def hf_dir(tmp, *configs: dict) -> Path:
    """Hugging Face checkpoint-N/ folders with config.json only (weights added by each case)."""
    out = tmp / "hf"
    for i, cfg in enumerate(configs):
        folder = out / f"checkpoint-{i * 10}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(cfg))
    return out


def random_bytes(path: Path, n: int = 4096) -> None:
    path.write_bytes(np.random.default_rng(18).integers(0, 256, n, dtype=np.uint8).tobytes())


def write_unsafe_pickle(path: Path, marker: Path, zipped: bool) -> None:
    """A state dict with one entry that would run code when unpickled."""
    obj = {"embed.W_E": Payload(marker)}
    if zipped:
        torch.save(obj, path)  # torch's own zip format
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)


def bad_toml(tmp, text: str, name: str = "bad.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def nan_step(ckpt: Path) -> int:
    """Put one NaN into the last checkpoint's weights; returns its step."""
    last = last_step_file(ckpt)
    state = load_file(last)
    state["blocks.1.attn.W_Q"] = state["blocks.1.attn.W_Q"].clone()
    state["blocks.1.attn.W_Q"][0, 0, 0] = float("nan")
    save_file(state, last)
    return int(last.stem.split("_")[1])


CHEAP = ["--estimators", "hessian-trace", "--probes", "6", "--curvature-batches", "1", "--batch-size", "2",
         "--components", "0:0", "--threads", "1"]


# --- the catalogue ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    build: Callable[[Path, Path], list[str]]  # (series, tmp) -> argv
    named: tuple[str, ...]  # substrings of the message: the input and what is wrong with it
    code: int = 2
    results: int = 0  # results the run directory holds afterwards (0 also when no store exists)


def _mixed_rllc(s, t):
    ckpt = copy_series(s, t)
    cfg = json.loads((ckpt / "config.json").read_text())["model"]
    other = Transformer(ModelConfig.from_dict({**cfg, "d_model": 16, "d_head": 4}))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(last_step_file(ckpt)))
    return estimate(ckpt, t)


def _truncated(s, t):
    ckpt = copy_series(s, t)
    path = last_step_file(ckpt)
    path.write_bytes(path.read_bytes()[:300])
    return estimate(ckpt, t)


def _corrupt_safetensors(s, t):
    ckpt = copy_series(s, t)
    random_bytes(last_step_file(ckpt))
    return estimate(ckpt, t)


def _rllc_config(text):
    def build(s, t):
        ckpt = copy_series(s, t)
        (ckpt / "config.json").write_text(text)
        return estimate(ckpt, t)
    return build


def _no_steps(s, t):
    ckpt = copy_series(s, t)
    for p in ckpt.glob("step_*.safetensors"):
        p.unlink()
    return estimate(ckpt, t)


def _tl(change):
    def build(s, t):
        ckpt = tl_dir(s, t)
        change(ckpt, t)
        return estimate(ckpt, t)
    return build


def _tl_truncated(ckpt, t):
    path = ckpt / "model_step10.pt"
    path.write_bytes(path.read_bytes()[:300])


def _tl_wrong_architecture(s, t):
    ckpt = tl_dir(s, t, suffix=".safetensors")
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "n_heads": 2}))  # the weights have 4 heads
    return estimate(ckpt, t)


def _tl_no_state_dict(s, t):
    ckpt = tl_dir(s, t)
    torch.save([torch.zeros(2)], ckpt / "model_step10.pt")  # a list, not a state dict: found when loaded
    return ["info", str(ckpt), "--check"]


def _hf(weights: Callable[[Path, Path], None], *configs):
    def build(s, t):
        ckpt = hf_dir(t, *(configs or (HF_CONFIG,)))
        for folder in sorted(ckpt.iterdir()):
            weights(folder, t)
        return estimate(ckpt, t)
    return build


def _hf_wrong_weights(s, t):
    ckpt = hf_dir(t, HF_CONFIG)
    save_file({"wte.weight": torch.zeros(3, 3)}, str(ckpt / "checkpoint-0" / "model.safetensors"))
    return ["info", str(ckpt), "--check"]


def _hf_truncated(folder, t):
    save_file({"wte.weight": torch.zeros(50, 16)}, str(folder / "model.safetensors"))
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _toml(text):
    return lambda s, t: estimate(s, t, "--config", str(bad_toml(t, text)))


def _train(*flags, toml: str | None = None):
    def build(s, t):
        extra = ["--config", str(bad_toml(t, toml))] if toml else []
        return ["train", "--out", str(t / "train"), "--quiet", *extra, *flags]
    return build


def _npy(array=None, raw: bytes | None = None, name="ids.npy"):
    def build(s, t):
        path = t / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            np.save(path, array, allow_pickle=True)
        return estimate(s, t, "--datasets", str(path))
    return build


def _text_file(name, text):
    def build(s, t):
        path = t / name
        path.write_text(text)
        return estimate(s, t, "--datasets", str(path))
    return build


def _empty_store(verb):
    def build(s, t):
        Store(t / "run").close()
        return [verb, str(t / "run")]
    return build


def _failed_run(verb):
    def build(s, t):
        ckpt = copy_series(s, t)
        step = nan_step(ckpt)
        assert main(estimate(ckpt, t, "--steps", str(step), *CHEAP)) == 1  # its one task fails
        return [verb, str(t / "run")]
    return build


def _other_series(s, t):
    assert main(estimate(s, t, "--steps", "0", *CHEAP)) == 0  # RUN_DIR now belongs to `series`
    return estimate(copy_series(s, t), t, "--steps", "0", *CHEAP)


CASES: dict[str, Case] = {
    # checkpoints: rllc layout
    "ckpt-missing": Case(lambda s, t: estimate(t / "nope", t), ("nope: no such directory",)),
    "ckpt-empty-dir": Case(lambda s, t: estimate(folder(t / "empty"), t), ("empty: the directory is empty",)),
    "ckpt-is-a-file": Case(lambda s, t: estimate(s / "config.json", t), ("config.json: not a directory",)),
    "ckpt-unknown-format": Case(lambda s, t: estimate(folder(t / "notes", {"a.txt": "x"}), t),
                                ("notes: unknown checkpoint format", "a.txt")),
    "ckpt-truncated-safetensors": Case(_truncated, ("step_00000010.safetensors: unreadable safetensors file",
                                                    "truncated or corrupt")),
    "ckpt-corrupt-safetensors": Case(_corrupt_safetensors, ("step_00000010.safetensors: unreadable safetensors",)),
    "ckpt-config-not-json": Case(_rllc_config('{"format": "rllc", '), ("config.json: not valid JSON",)),
    "ckpt-config-without-model": Case(_rllc_config('{"format": "rllc"}'), ("config.json: rllc config lacks its",)),
    "ckpt-no-steps": Case(_no_steps, ("without any step_*.safetensors",)),
    "ckpt-mixed-architecture": Case(_mixed_rllc, ("step_00000010.safetensors: wrong architecture",
                                                  "different architectures cannot share a directory")),
    # checkpoints: TransformerLens layout
    "tl-no-config": Case(_tl(lambda c, t: (c / "config.json").unlink()), ("weight file(s) but no config",)),
    "tl-bad-config-field": Case(_tl(lambda c, t: (c / "config.json").write_text(
        json.dumps({**json.loads((c / "config.json").read_text()), "n_layers": "two"}))),
        ("config.json: config field 'n_layers' must be a positive integer",)),
    "tl-corrupt-pt": Case(_tl(lambda c, t: random_bytes(c / "model_step10.pt")),
                          ("model_step10.pt: unreadable torch file: neither torch's zip format nor a pickle",
                           "corrupt")),
    "tl-truncated-pt": Case(_tl(_tl_truncated), ("model_step10.pt: unreadable torch file: a damaged or truncated "
                                                "zip archive",)),
    "tl-empty-pt": Case(_tl(lambda c, t: (c / "model_step10.pt").write_bytes(b"")),
                        ("model_step10.pt: unreadable torch file: the file is empty",)),
    "tl-unsafe-pickle": Case(_tl(lambda c, t: write_unsafe_pickle(c / "model_step10.pt", t / "executed", False)),
                             ("model_step10.pt: refused to load", "builtins.getattr, pathlib.Path", "could run code",
                              "nothing was executed")),
    "tl-unsafe-pickle-zip": Case(_tl(lambda c, t: write_unsafe_pickle(c / "model_step10.pt", t / "executed", True)),
                                 ("model_step10.pt: refused to load", "pathlib", "could run code")),
    "tl-two-files-one-step": Case(_tl(lambda c, t: shutil.copy(c / "model_step10.pt", c / "other_10.pt")),
                                  ("both claim step 10",)),
    "tl-wrong-architecture": Case(_tl_wrong_architecture, ("model_step0.safetensors: wrong architecture",
                                                           "shape mismatch")),
    "tl-no-state-dict": Case(_tl_no_state_dict, ("model_step10.pt: no state dict found",), code=1),
    # checkpoints: Hugging Face layout
    "hf-corrupt-bin": Case(_hf(lambda f, t: random_bytes(f / "pytorch_model.bin")),
                           ("checkpoint-0/pytorch_model.bin: unreadable torch file", "corrupt")),
    "hf-unsafe-bin": Case(_hf(lambda f, t: write_unsafe_pickle(f / "pytorch_model.bin", t / "executed", False)),
                          ("checkpoint-0/pytorch_model.bin: refused to load", "could run code")),
    "hf-truncated-safetensors": Case(_hf(_hf_truncated), ("checkpoint-0/model.safetensors: unreadable safetensors",)),
    "hf-no-weights": Case(_hf(lambda f, t: None), ("checkpoint-0: no weights found",)),
    "hf-mixed-architectures": Case(_hf(lambda f, t: None, HF_CONFIG, {**HF_CONFIG, "n_embd": 32}),
                                   ("mixed architectures: checkpoint-10 differs from checkpoint-0", "d_model")),
    "hf-unsupported-model": Case(_hf(lambda f, t: None, {**HF_CONFIG, "model_type": "llama"}),
                                 ("checkpoint-0/config.json: model_type 'llama' is not supported",)),
    "hf-wrong-weights": Case(_hf_wrong_weights, ("checkpoint-0/model.safetensors: wrong architecture",
                                                 "wte.weight: shape (3, 3) does not match the config"), code=1),
    # options and configs
    "toml-unknown-option": Case(_toml("drawz = 3\n"), ("bad.toml: unknown option 'drawz'",)),
    "toml-syntax": Case(_toml("draws = = 3\n"), ("bad.toml: cannot read the TOML config",)),
    "toml-missing": Case(lambda s, t: estimate(s, t, "--config", str(t / "none.toml")),
                         ("none.toml: no such config file",)),
    "toml-sampler-adam": Case(_toml('sampler = "adam"\n'), ("--sampler must be one of sgld, rmsprop, got 'adam'",)),
    "flag-sampler-adam": Case(lambda s, t: estimate(s, t, "--sampler", "adam"),
                              ("argument --sampler: invalid choice: 'adam'", "rllc estimate --help")),
    "flag-not-a-number": Case(lambda s, t: estimate(s, t, "--draws", "many"), ("argument --draws: invalid int",)),
    "flag-epsilon-0": Case(lambda s, t: estimate(s, t, "--epsilon", "0"), ("--epsilon must be positive",)),
    "flag-rmsprop-alpha-1": Case(lambda s, t: estimate(s, t, "--sampler", "rmsprop", "--rmsprop-alpha", "1"),
                                 ("--rmsprop-alpha must be in [0, 1)",)),
    "flag-gamma-nan": Case(lambda s, t: estimate(s, t, "--gamma", "nan"), ("--gamma must be finite",)),
    "flag-chains-0": Case(lambda s, t: estimate(s, t, "--chains", "0"), ("--chains must be a positive integer",)),
    "flag-noise-level-0": Case(lambda s, t: estimate(s, t, "--noise-level", "0"), ("--noise-level must be positive",)),
    "flag-unknown-step": Case(lambda s, t: estimate(s, t, "--steps", "99999"), ("step 99999 is not in",)),
    "flag-every-0": Case(lambda s, t: estimate(s, t, "--every", "0"), ("--every must be a positive integer",)),
    "flag-unknown-component": Case(lambda s, t: estimate(s, t, "--components", "9:9"),
                                   ("unknown component '9:9'",)),
    "flag-unknown-estimator": Case(lambda s, t: estimate(s, t, "--estimators", "hessian"),
                                   ("unknown estimator(s) ['hessian']",)),
    "flag-workers-0": Case(lambda s, t: estimate(s, t, "--workers", "0"), ("--workers must be a positive integer",)),
    "unknown-command": Case(lambda s, t: ["frobnicate"], ("invalid choice: 'frobnicate'",)),
    "train-toml-wrong-type": Case(_train(toml='preset = "tiny"\nlr = "fast"\n'),
                                  ("bad.toml: training option lr (--lr) must be a number",)),
    "train-toml-unknown": Case(_train(toml='preset = "tiny"\nstepz = 3\n'),
                               ("bad.toml: unknown training options ['stepz']",)),
    "train-unknown-preset": Case(_train(toml='preset = "huge"\n'), ("bad.toml: unknown preset 'huge'",)),
    "train-steps-0": Case(_train("--steps", "0"), ("n_steps (--steps) must be an integer of at least 1",)),
    "train-lr-0": Case(_train("--lr", "0"), ("lr (--lr) must be a number greater than 0",)),
    "train-bad-schedule": Case(_train("--schedule", "often"), ("schedule item 'often'",)),
    "train-missing-data": Case(_train("--data", "missing.txt", "--max-chars", "1000"),
                               ("missing.txt: no such file or directory",)),
    "calibrate-unpaired-grid": Case(lambda s, t: ["calibrate", str(s), "--epsilons", "1e-3", "--nbetas", "1,2",
                                                  "--out", str(t / "cal")], ("--epsilons and --nbetas pair up",)),
    "calibrate-chains-0": Case(lambda s, t: ["calibrate", str(s), "--chains", "0", "--out", str(t / "cal")],
                               ("--chains must be a positive integer",)),
    "calibrate-bad-gammas": Case(lambda s, t: ["calibrate", str(s), "--gammas", "100,fast", "--out", str(t / "cal")],
                                 ("--gammas must be comma-separated numbers",)),
    "demo-bad-estimate-config": Case(lambda s, t: ["demo", "--quick", "--quiet", "--checkpoints", str(t / "dc"),
                                                   "--out", str(t / "run"), "--estimate-config",
                                                   str(bad_toml(t, "drawz = 3\n"))],
                                     ("bad.toml: unknown option 'drawz'",)),
    # datasets
    "data-missing-file": Case(lambda s, t: estimate(s, t, "--datasets", str(t / "nope.npy")),
                              ("nope.npy: dataset file not found",)),
    "data-unknown-name": Case(lambda s, t: estimate(s, t, "--datasets", "prosee"), ("prosee: dataset file not found",)),
    "data-empty-text": Case(_text_file("empty.txt", ""), ("empty.txt: file is empty",)),
    "data-jsonl-without-text": Case(_text_file("rows.jsonl", '{"body": "x"}\n'), ("rows.jsonl:1: line has no 'text'",)),
    "data-too-short": Case(_npy(np.arange(5)), ("ids.npy: 5 tokens, fewer than the model's context length 32",)),
    "data-float-dtype": Case(_npy(np.arange(500, dtype=np.float32)), ("ids.npy: token array must hold integers",)),
    "data-2d": Case(_npy(np.zeros((20, 30), dtype=np.int64)), ("ids.npy: token array must be 1-D",)),
    "data-out-of-vocab": Case(_npy(np.arange(500) + 10_000), ("ids.npy: token id 10499 is out of range",)),
    "data-negative-ids": Case(_npy(np.arange(500) - 3), ("ids.npy: token ids must be non-negative",)),
    "data-object-array": Case(_npy(np.array([{"a": 1}], dtype=object)), ("ids.npy: not a plain numeric .npy",)),
    "data-corrupt-npy": Case(_npy(raw=bytes(range(256)) * 4), ("ids.npy: not a .npy file (no NumPy header)",)),
    "data-teacher-missing": Case(lambda s, t: estimate(s, t, "--datasets", f"teacher:{t / 'gone'}@random"),
                                 ("gone: no such directory",)),
    "data-self-for-llc": Case(lambda s, t: estimate(s, t, "--datasets", "self"),
                              ("nothing to compute", "applies to fim-trace only")),
    "data-probe-teacher": Case(lambda s, t: ["probe", str(s), "--out", str(t / "run"), "--quiet", "--datasets",
                                             "teacher:final@random"], ("'teacher:final@random' has no fixed tokens",)),
    # run directories
    "run-missing-report": Case(lambda s, t: ["report", str(t / "gone")], ("gone: no results store (no such directory)",
                                                                         "rllc estimate CKPT_DIR --out")),
    "run-no-store-cluster": Case(lambda s, t: ["cluster", str(s)], ("no results store (results.sqlite)",)),
    "run-empty-report": Case(_empty_store("report"), ("run: no results yet", "`rllc estimate CKPT_DIR --out")),
    "run-empty-cluster": Case(_empty_store("cluster"), ("run: no results yet", "rllc probe CKPT_DIR --out")),
    "run-empty-compare": Case(_empty_store("compare"), ("run: no results yet",)),
    "run-failed-report": Case(_failed_run("report"), ("run: no results: its 1 task(s) failed", "NaN/Inf",
                                                      "run.log", "ckpt --out")),
    "run-failed-cluster": Case(_failed_run("cluster"), ("run: no results: its 1 task(s) failed", "rllc estimate")),
    "run-export-missing": Case(lambda s, t: ["export", str(t / "gone")],
                               ("gone: no results store (no such directory)",)),
    "run-out-is-a-file": Case(lambda s, t: ["estimate", str(s), "--out", str(s / "config.json"), "--datasets",
                                            "random"], ("config.json: exists and is not a directory",)),
    "run-of-another-series": Case(_other_series, ("holds results for checkpoints in", "pass another --out"),
                                  results=1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_by_name(series, tmp_path, capsys, name):
    case = CASES[name]
    argv = case.build(series, tmp_path)
    capsys.readouterr()  # what building the input printed
    code, err, out = run(argv, capsys)
    text = err + out
    assert code == case.code, text
    for part in case.named:
        assert part in text, f"{part!r} not in {text!r}"
    assert "Traceback" not in text
    if code == 2:  # a usage error: one line on stderr, naming the input
        assert len(err.strip().splitlines()) == 1 and err.startswith("rllc"), err
    assert (results_in(tmp_path / "run") or 0) == case.results  # nothing stored
    assert not (tmp_path / "train").exists()  # no training directory left behind
    assert not (tmp_path / "executed").exists()  # nothing in a pickle ran


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
    code, err, _ = run(["estimate", str(series), "--out", str(tmp_path / "run"), "--config", str(cfg),
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
    code, err, _ = run(["estimate", str(series), "--out", str(tmp_path / "run"), "--datasets", "random", "--quiet",
                        *flags], capsys)
    assert code == 2 and named in err and "Traceback" not in err, err
    assert not db_path(tmp_path / "run").exists()


@pytest.mark.parametrize("estimator", ["llc", "hessian-trace", "hessian-rank", "fim-trace"])
def test_every_estimator_refuses_nan_weights_alike_and_stores_nothing(series, tmp_path, capsys, estimator):
    broken = copy_series(series, tmp_path)
    step = nan_step(broken)
    code, err, _ = run(["estimate", str(broken), "--out", str(tmp_path / "run"), "--estimators", estimator,
                        "--datasets", "self" if estimator == "fim-trace" else "random", "--steps", str(step),
                        "--components", "1:0", "--draws", "4", "--chains", "2", "--probes", "6", "--rank-degree", "4",
                        "--rank-probes", "2", "--batch-size", "2", "--curvature-batches", "1", "--fim-seqs", "2",
                        "--quiet", "--threads", "1"], capsys)
    assert code == 1 and "failed" in err and "Traceback" not in err, err
    log = (tmp_path / "run" / "run.log").read_text()
    assert "parameter blocks.1.attn.W_Q of the model contains NaN/Inf at w*: the checkpoint is broken" in log
    assert "teacher" not in log.split("NaN/Inf at w*")[0].splitlines()[-1]
    assert results_in(tmp_path / "run") == 0


def test_a_nan_value_is_refused_by_the_store_as_a_failed_task(series, tmp_path, capsys, monkeypatch):
    """Whatever computes a NaN (here a patched estimator), the store refuses the row: the task fails with a
    message naming the signal and component, the other tasks are stored, nothing NaN is."""
    import rllc.runs.tasks as tasks

    real = tasks.curvature_rows

    def nan_at_step_0(task, model, data, teacher):
        rows = real(task, model, data, teacher)
        if task.step == 0:
            rows[0]["value"] = float("nan")
        return rows

    monkeypatch.setattr(tasks, "curvature_rows", nan_at_step_0)
    code, err, _ = run(estimate(series, tmp_path, "--steps", "0,5", *CHEAP), capsys)
    assert code == 1 and "1 task(s) failed" in err and "Traceback" not in err, err
    log = (tmp_path / "run" / "run.log").read_text()
    assert "FAILED hessian-trace (1 components) step 0" in log
    assert "hessian-trace of 0:0 on random is nan, not a finite number" in log and "done hessian-trace" in log
    with sqlite3.connect(db_path(tmp_path / "run")) as conn:
        values = [v for (v,) in conn.execute("SELECT value FROM results")]
        errors = conn.execute("SELECT COUNT(*) FROM errors").fetchone()[0]
    assert len(values) == 1 and np.isfinite(values).all() and errors == 1
    # rerunning retries the failed task only (the store has no row of it)
    monkeypatch.setattr(tasks, "curvature_rows", real)
    code, err, _ = run(estimate(series, tmp_path, "--steps", "0,5", *CHEAP), capsys)
    assert code == 0 and results_in(tmp_path / "run") == 2


def test_the_catalogue_has_every_kind_of_bad_input():
    """Issue 18 asks for at least 40 cases across checkpoints, options and configs, datasets and run dirs."""
    kinds = {name.split("-")[0] for name in CASES}
    assert {"ckpt", "tl", "hf", "toml", "flag", "train", "data", "run"} <= kinds
    assert len(CASES) + 6 + 4 + 4 + 1 >= 40
