"""Series runs: `rllc estimate` / `rllc probe` into a results store; resume after SIGKILL; Ray = local."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import save_file

import rllc
from rllc.cli import main
from rllc.models import ModelConfig, Transformer
from rllc.results import load_results, load_run_config, load_susceptibility, load_trace
from rllc.runs import run_estimate, run_probe
from rllc.runs.datasets import resolve_dataset
from rllc.runs.store import db_path
from rllc.sampling import estimate_llcs
from rllc.train import preset, train

INTERFACE = ["step", "checkpoint", "kind", "signal", "component", "dataset", "value", "se", "config_hash",
             "seconds", "diagnostics"]
SMALL = dict(datasets=["random"], chains=2, draws=8, batch_size=4, quiet=True, threads=1)
SAME = ["step", "checkpoint", "kind", "signal", "component", "variant", "dataset", "value", "se", "config_hash"]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The tiny preset (2 layers x 4 heads, d_model 32, n_ctx 32) with 10 checkpoints: steps 0, 5, ..., 45."""
    out = tmp_path_factory.mktemp("series")
    train(preset("tiny", n_steps=45, max_chars=60_000, schedule="linear:9"), out, progress=False)
    return out


def stable(df: pd.DataFrame) -> pd.DataFrame:
    """The columns that must not depend on timing, backend or interruptions; per-chain values from diagnostics."""
    out = df[SAME].copy()
    out["per_chain"] = [json.dumps(json.loads(d).get("per_chain")) for d in df["diagnostics"]]
    return out.sort_values(["kind", "signal", "dataset", "config_hash", "component", "variant", "step"]) \
        .reset_index(drop=True)


@pytest.mark.slow
def test_ten_checkpoints_into_the_store_and_back(series, tmp_path):
    run = tmp_path / "run"
    s = run_estimate(series, run, components=["heads", "model", "1:0+1:1"], **SMALL)
    assert (s.planned, s.done, s.skipped, s.failed) == (10, 10, 0, 0)
    df = load_results(run)
    assert list(df.columns[: len(INTERFACE)]) == INTERFACE
    assert len(df) == 10 * 10 and set(df["kind"]) == {"estimate"} and set(df["signal"]) == {"llc"}
    assert sorted(df["step"].unique()) == list(range(0, 50, 5))
    assert set(df["checkpoint"]) == {f"step_{s:08d}.safetensors" for s in range(0, 50, 5)}
    assert set(df["component"]) == {f"{l}:{h}" for l in range(2) for h in range(4)} | {"model", "1:0+1:1"}
    assert df["config_hash"].nunique() == 1 and df["value"].notna().all() and (df["se"] > 0).all()
    assert df["step"].dtype == np.int64 and df["seconds"].gt(0).all()
    diag = json.loads(df["diagnostics"].iloc[0])
    assert len(diag["per_chain"]) == 2 and {"rhat", "ess", "init_loss", "seed", "fast_path"} <= set(diag)

    # the stored number is the estimator's number: redo one head from its recorded seed and the same batches
    row = df[(df.component == "1:2") & (df.step == 45)].iloc[0]
    seed = json.loads(row["diagnostics"])["seed"]
    model = rllc.load_checkpoints(series)[45]
    batches = list(resolve_dataset("random", rllc.load_checkpoints(series), batch_size=4, seed=0).batches(8))
    again = estimate_llcs(model, batches, components=["1:2"], chains=2, draws=8, seed=seed)
    assert again["1:2"].mean == pytest.approx(row["value"], rel=1e-5)
    trace = load_trace(run, row["checkpoint"], "1:2", "random", row["config_hash"])
    assert trace.shape == (2, 8)

    # a rerun computes nothing; a changed hyperparameter adds rows under a new hash and leaves the old ones
    ids = pd.read_sql_query("SELECT id, component, step FROM results", sqlite3.connect(db_path(run)))
    assert run_estimate(series, run, components=["heads", "model", "1:0+1:1"], **SMALL).skipped == 10
    more = run_estimate(series, run, components=["0:0"], steps="40-", **{**SMALL, "draws": 9})
    assert more.done == 2
    assert "holds llc results on random under 2 hyperparameter sets" in (run / "run.log").read_text()
    after = load_results(run)
    assert len(after) == 102 and after["config_hash"].nunique() == 2
    assert pd.read_sql_query("SELECT id, component, step FROM results WHERE id <= 100",
                             sqlite3.connect(db_path(run))).equals(ids)
    config = load_run_config(run)
    assert config["checkpoint_dir"] == str(series.resolve())
    assert sorted(c["draws"] for c in config["configs"].values()) == [8, 9]
    assert "random" in config["datasets"] and len(config["runs"]) == 3

    # probes go into the same store; pair signals are "sender->receiver"
    p = run_probe(series, run, steps="45", quiet=True)
    assert p.done == 1 and run_probe(series, run, steps="45", quiet=True).skipped == 1
    probes = load_results(run).query("kind == 'probe'")
    assert {"previous_token", "induction", "composition", "ablation", "participation_ratio"} <= set(probes.signal)
    assert probes["component"].str.contains("->").any() and (probes["step"] == 45).all()
    assert not probes.duplicated(["signal", "component", "variant", "dataset"]).any()

    for fmt in ("csv", "parquet"):
        assert main(["export", str(run), "--format", fmt]) == 0
    back = pd.read_parquet(run / "results.parquet")
    assert back.shape == load_results(run).shape and list(back.columns[:11]) == INTERFACE
    assert len(pd.read_csv(run / "results.csv")) == len(back)
    assert "load_results" in rllc.__all__ and rllc.load_results(run).shape == back.shape


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(series, tmp_path):
    (tmp_path / "sgld.toml").write_text("chains = 2\ndraws = 25\nbatch-size = 4\n")
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rllc.cli", "estimate", str(series), "--out", str(run), "--datasets", "random",
           "--config", str(tmp_path / "sgld.toml"), "--threads", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    n_done, deadline = 0, time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if db_path(run).exists():
            try:
                with sqlite3.connect(db_path(run)) as conn:
                    n_done = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            except sqlite3.OperationalError:  # schema not created yet
                continue
            if n_done >= 2:
                break
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = pd.read_sql_query("SELECT id, task, finished_at FROM results JOIN tasks USING (task)",
                               sqlite3.connect(db_path(run)))
    n_before = before["task"].nunique()
    assert 2 <= n_before < 10

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed = load_results(run)
    # nothing finished before the kill was recomputed: same row ids, same commit times
    after = pd.read_sql_query("SELECT id, task, finished_at FROM results JOIN tasks USING (task)",
                              sqlite3.connect(db_path(run)))
    assert after.merge(before, on=["id", "task", "finished_at"]).shape[0] == len(before)
    log = (run / "run.log").read_text()
    assert log.count("skip (finished)") == n_before and log.count("done llc") == 10

    reference = tmp_path / "uninterrupted"
    run_estimate(series, reference, datasets=["random"], chains=2, draws=25, batch_size=4,
                 quiet=True, threads=1)
    pd.testing.assert_frame_equal(stable(resumed), stable(load_results(reference)))


@pytest.mark.slow
def test_ray_backend_equals_local_and_retries_a_lost_worker(series, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from rllc.runs import backends

    opts = dict(SMALL, components=["heads", "model"], estimators=["llc", "hessian-trace"], probes=6,
                curvature_batches=2, steps="0-5")
    local = run_estimate(series, tmp_path / "local", **opts)

    # the first task to start kills its worker process (as a lost node would); Ray must rerun it elsewhere
    marker, execute_parts = str(tmp_path / "crashed"), backends._execute_parts

    def crash_once(*args):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return execute_parts(*args)
        os._exit(1)

    monkeypatch.setattr(backends, "_execute_parts", crash_once)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote = run_estimate(series, tmp_path / "ray", **{**opts, "ray": "auto", "threads": None})
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert os.path.exists(marker)  # a worker did die
    assert local.done == remote.done == 4 and remote.failed == 0
    pd.testing.assert_frame_equal(stable(load_results(tmp_path / "local")), stable(load_results(tmp_path / "ray")))
    workers = pd.read_sql_query("SELECT DISTINCT worker FROM tasks", sqlite3.connect(db_path(tmp_path / "ray")))
    assert not workers["worker"].str.endswith(f":{os.getpid()}").any()  # computed in Ray workers, not here


@pytest.mark.slow
def test_files_teachers_and_model_samples(series, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("In the beginning was the word, and the word was with the model. " * 40)
    run = tmp_path / "run"
    s = run_estimate(series, run, datasets=[str(text), "teacher:final@random", "self"], components=["0:1", "model"],
                     estimators=["llc", "fim-trace", "hessian-rank"], steps="45", probes=6, curvature_batches=2,
                     fim_seqs=4, rank_degree=10, rank_probes=2, **{k: v for k, v in SMALL.items() if k != "datasets"})
    assert s.failed == 0, s.errors
    df = load_results(run)
    got = set(zip(df["signal"], df["dataset"]))
    # fim-trace takes no teacher, and only fim-trace samples from the model itself
    assert got == {("llc", "notes.txt"), ("llc", "teacher:final@random"), ("fim-trace", "notes.txt"),
                   ("fim-trace", "self"), ("hessian-rank", "notes.txt"), ("hessian-rank", "teacher:final@random")}
    assert "skipped (fim-trace takes" in (run / "run.log").read_text()
    assert df["value"].notna().all() and len(df) == 12
    assert (df.query("signal == 'hessian-rank'")["value"] >= 0).all()


def test_bf16_is_validated_and_recorded(series, tmp_path):
    opts = dict(SMALL, steps="45", components=["heads", "model"])
    fp32 = run_estimate(series, tmp_path / "run", **opts)
    bf16 = run_estimate(series, tmp_path / "run", precision="bf16", **opts)
    assert fp32.done == bf16.done == 1  # another precision is another config_hash, not a skip
    df = load_results(tmp_path / "run")
    hashes = {h: load_run_config(tmp_path / "run")["configs"][h]["precision"] for h in df.config_hash.unique()}
    rows = df[df.config_hash == next(h for h, p in hashes.items() if p == "bf16")]
    diags = {c: json.loads(d) for c, d in zip(rows.component, rows.diagnostics)}
    for head in (f"{l}:{h}" for l in range(2) for h in range(4)):  # the batched sampler ran its bf16 pilot
        d = diags[head]
        assert d["compute_dtype"] == ("bf16" if d["bf16_check"]["accepted"] else "fp32")
        assert d["bf16_check"]["accepted"] or any("refused" in w for w in d["warnings"])
    assert diags["model"]["compute_dtype"] == "fp32" and any("single-head" in w for w in diags["model"]["warnings"])


@pytest.mark.slow
def test_process_pool_equals_serial(series, tmp_path):
    opts = dict(SMALL, steps="40-")
    run_estimate(series, tmp_path / "serial", **opts)
    pooled = run_estimate(series, tmp_path / "pool", workers=2, **opts)
    assert pooled.done == 2
    pd.testing.assert_frame_equal(stable(load_results(tmp_path / "serial")), stable(load_results(tmp_path / "pool")))


def error_of(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rllc {args[0]}: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_clear_errors(series, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run"), "--datasets", "random", "--quiet"]
    (tmp_path / "empty").mkdir()
    assert "empty" in error_of(["estimate", str(tmp_path / "empty"), *out], capsys)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.md").write_text("hello")
    assert "unknown checkpoint format" in error_of(["estimate", str(tmp_path / "junk"), *out], capsys)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cfg = ModelConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=2, d_vocab=20)
    (mixed / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file(Transformer(cfg).state_dict(), str(mixed / "model_1.safetensors"))
    wider = ModelConfig.from_dict({**cfg.to_dict(), "d_model": 24})
    save_file(Transformer(wider).state_dict(), str(mixed / "model_2.safetensors"))
    err = error_of(["estimate", str(mixed), *out], capsys)
    assert "model_2.safetensors" in err and "different architectures" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in series.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "step_00000020.safetensors").write_bytes(b"\x10\x00")
    assert "step_00000020.safetensors: unreadable" in error_of(["estimate", str(broken), *out], capsys)

    short = tmp_path / "short.npy"
    np.save(short, np.arange(2, 12, dtype=np.uint16))
    err = error_of(["estimate", str(series), "--out", str(tmp_path / "run"), "--datasets", str(short)], capsys)
    assert "short.npy" in err and "fewer than the model's context length 32" in err
    err = error_of(["estimate", str(series), "--out", str(tmp_path / "run"), "--datasets", "missing.jsonl"], capsys)
    assert "missing.jsonl: dataset file not found" in err
    assert "unknown component '2:0'" in error_of(["estimate", str(series), *out, "--components", "heads,2:0"], capsys)
    assert "unknown estimator" in error_of(["estimate", str(series), *out, "--estimators", "llc,fisher"], capsys)
    (tmp_path / "bad.toml").write_text("drawz = 3\n")
    assert "unknown option 'drawz'" in error_of(["estimate", str(series), *out, "--config",
                                                 str(tmp_path / "bad.toml")], capsys)
    assert not (tmp_path / "run" / "results.sqlite").exists()  # nothing started: every check ran first
    assert "no results store" in error_of(["export", str(tmp_path / "nowhere")], capsys)


def test_common_random_numbers_give_every_checkpoint_the_same_seed(series):
    from rllc.models.checkpoints import load_checkpoints
    from rllc.runs.options import ESTIMATE_DEFAULTS, merge_options
    from rllc.runs.plan import plan_estimates

    s = load_checkpoints(series)
    ds = resolve_dataset("random", s, batch_size=4, seed=0)
    crn, _ = plan_estimates(s, s.steps, [ds], merge_options(ESTIMATE_DEFAULTS, {}), ["0:0"])
    assert len({t.seed for t in crn}) == 1 and len(crn) == len(s.steps)
    own, _ = plan_estimates(s, s.steps, [ds], merge_options(ESTIMATE_DEFAULTS, {"crn": False}), ["0:0"])
    assert len({t.seed for t in own}) == len(s.steps)
    assert own[0].config_hash != crn[0].config_hash  # different numbers, never the same key


def test_removed_init_loss_batches_is_a_clear_error(tmp_path):
    from rllc.runs.options import ESTIMATE_DEFAULTS, RunError, merge_options, read_toml

    (tmp_path / "old.toml").write_text("draws = 10\ninit-loss-batches = 16\n")
    with pytest.raises(RunError, match="init-loss-batches' was removed: the reference loss"):
        read_toml(tmp_path / "old.toml", ESTIMATE_DEFAULTS)
    with pytest.raises(RunError, match="was removed"):
        merge_options(ESTIMATE_DEFAULTS, {"init_loss_batches": 4})


def test_sampler_setting_through_the_cli(series, tmp_path):
    """`rllc estimate --sampler rmsprop` as a user types it: rows under a new hash, the settings in each row, the
    stored number the entry point's on the same seed and batches."""
    from rllc.cli import main

    run = tmp_path / "run"
    common = ["estimate", str(series), "--out", str(run), "--datasets", "random", "--chains", "2", "--draws", "6",
              "--batch-size", "4", "--steps", "45", "--components", "1:2,layer:0", "--quiet", "--threads", "1"]
    assert main(common) == 0
    assert main(common + ["--sampler", "rmsprop", "--rmsprop-alpha", "0.9"]) == 0
    df = load_results(run)
    assert df["config_hash"].nunique() == 2 and len(df) == 4
    diags = [json.loads(d) for d in df["diagnostics"]]
    assert sorted(d["sampler"] for d in diags) == ["rmsprop", "rmsprop", "sgld", "sgld"]
    assert all(d["rmsprop_alpha"] == (0.9 if d["sampler"] == "rmsprop" else 0.99) for d in diags)
    row = df[(df.component == "1:2").to_numpy() & np.array([d["sampler"] == "rmsprop" for d in diags])].iloc[0]
    batches = list(resolve_dataset("random", rllc.load_checkpoints(series), batch_size=4, seed=0).batches(6))
    again = estimate_llcs(rllc.load_checkpoints(series)[45], batches, components=["1:2"], chains=2, draws=6,
                          seed=json.loads(row["diagnostics"])["seed"], sampler="rmsprop", rmsprop_alpha=0.9)
    assert again["1:2"].mean == pytest.approx(row["value"], rel=1e-5)


@pytest.mark.slow
def test_susceptibility_over_a_series_into_the_store(series, tmp_path):
    """`rllc estimate --estimators susceptibility`: per (component, probe set) the mean per-token
    susceptibility and its standard error as rows (the full model among them, as the reference), the
    per-token values and the probe tokens beside the store; a rerun computes nothing."""
    run = tmp_path / "run"
    args = ["estimate", str(series), "--out", str(run), "--steps", "30-45", "--estimators", "susceptibility",
            "--components", "0:1,1:2", "--datasets", "random", "--probe-datasets", "repeated,code",
            "--probe-sequences", "3", "--chains", "2", "--draws", "6", "--batch-size", "4", "--threads", "1",
            "--quiet"]
    assert main(args) == 0
    df = load_results(run)
    assert set(df["signal"]) == {"susceptibility"} and set(df["variant"]) == {"probe=repeated", "probe=code"}
    assert set(df["component"]) == {"0:1", "1:2", "model"} and len(df) == 4 * 3 * 2
    assert df["value"].notna().all() and (df["se"] > 0).all()
    diag = json.loads(df["diagnostics"].iloc[0])
    assert diag["probe_sequences"] == 3 and "llc" in diag and diag["draws"] == 6
    r = df[(df["component"] == "0:1") & (df["variant"] == "probe=code") & (df["step"] == 45)].iloc[0]
    values, tokens = load_susceptibility(run, r["checkpoint"], "0:1", "code", r["dataset"], r["config_hash"])
    assert values.shape == (3, 31) and tokens.shape == (3, 32)
    assert r["value"] == pytest.approx(float(values.mean()), rel=1e-5)
    assert main(args) == 0 and len(load_results(run)) == len(df)  # finished work is not recomputed
    # the report: per-head curves of each probe set's susceptibility, and the token view at the last checkpoint
    assert main(["report", str(run), "--no-findings"]) == 0
    page = (run / "analysis" / "report.html").read_text()
    assert "Susceptibilities by token" in page and "susceptibility/code per head" in page
    assert (run / "analysis" / "susceptibility_tokens_repeated.png").is_file()
