"""`rllc demo`: the whole study, in order, in this process, resumable.

Stages (each announced by a banner, each timed into RUN_DIR/timings.json):

    data      the built-in prose and code corpora, the BPE tokenizer (saved with the
              checkpoints) and the token arrays (cached under $RLLC_CACHE)
    train     the demo model with its checkpoint schedule (resumes an interrupted run;
              a finished one is left as it is)
    estimate  wrLLC of every head and the full-model LLC on the training distribution, drLLC
              of every head on code (settings: experiments/demo_estimate.toml, the calibrated
              ones of experiments/demo_calibration/calibration.toml with longer chains; the
              demo says so if they drift apart); finished tasks are skipped
    noise     the calibration's precision re-checked on this run: the heads' wrLLC at the
              last checkpoint with further seeds (RUN_DIR/seed_noise/), for the between-head
              over between-seed sd in the findings
    probe     `rllc probe` with its defaults (behaviour signals per checkpoint); finished
              checkpoints are skipped
    cluster   `rllc cluster` defaults (train ‖ code head LLC curves)  -> RUN_DIR/analysis/cluster
    compare   `rllc compare` defaults                                 -> RUN_DIR/analysis/compare
    report    the findings (rllc.study.findings) and the HTML page -> RUN_DIR/analysis/report.html

The analysis stages are recomputed on every run (they take seconds). timings.json keeps the
latest run's stage times (a rerun that reuses finished work records its own, shorter, times),
the first run that finished every stage (``first_full``) and a short history.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("data", "train", "estimate", "noise", "probe", "cluster", "compare", "report")
TIMINGS = "timings.json"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_TRAIN_CONFIG = "experiments/demo.toml"
DEFAULT_ESTIMATE_CONFIG = "experiments/demo_estimate.toml"
CALIBRATION = "experiments/demo_calibration/calibration.toml"
# Settings the estimation config must share with the calibration it was derived from (draws, chains and
# execution may differ: more draws only lengthen the chains the calibration judged).
CALIBRATED = ("sampler", "epsilon", "nbeta", "gamma", "burn_in", "paired", "crn", "batch_size")
# (dataset, components) per estimation pass: the weight-refined LLC of every head and the full-model LLC on
# the distribution the model was trained on, the data-refined LLC of every head on code (the paper's Pile ‖ GitHub).
ESTIMATE_PASSES = (("train", ["heads", "model"]), ("code", ["heads"]))
NOISE_SEEDS = (1, 2, 3)  # further seeds at the last checkpoint, beside the run's own
# --quick: a tiny model on both corpora and very short chains; for tests and smoke runs.
QUICK_TRAIN = dict(data=["prose", "code"])
QUICK_ESTIMATE = dict(chains=2, draws=8, batch_size=4, workers=1)
QUICK_CLUSTER = dict(algorithms=["kmeans", "ward", "kshape"], ks=range(2, 6))
QUICK_COMPARE = dict(curves=False)  # no per-signal curve figures: the slowest part of compare
HISTORY = 20


class DemoError(ValueError):
    """The demo cannot run as asked (a missing config file, a checkpoint directory of another run)."""


@dataclass
class DemoResult:
    run_dir: Path
    checkpoints: Path
    report: Path | None
    timings: dict[str, Any]
    failed_tasks: int = 0
    findings: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_tasks == 0 and self.report is not None


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def find_file(path: str | Path, default: str) -> Path:
    """`path` as given; the repository's copy of a default file when run from elsewhere."""
    p = Path(path)
    if p.exists():
        return p
    if str(path) == default and (REPO / default).exists():
        return REPO / default
    raise DemoError(f"{p}: no such config file")


# --- timings.json ------------------------------------------------------------------------

class Timings:
    """RUN_DIR/timings.json, rewritten (atomically) after every stage, so an interrupted demo keeps
    the times of the stages it finished."""

    def __init__(self, run_dir: Path, quick: bool):
        self.path = run_dir / TIMINGS
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}
        self.current = dict(started=_now(), finished=None, complete=False, quick=quick, stages={}, total_s=0.0)
        self.data["latest"] = self.current

    def record(self, stage: str, seconds: float, note: str = "", **extra: Any) -> None:
        self.current["stages"][stage] = dict(seconds=round(seconds, 3), note=note, **extra)
        self.current["total_s"] = round(sum(s["seconds"] for s in self.current["stages"].values()), 3)
        self.write()

    def finish(self) -> None:
        self.current["finished"] = _now()
        self.current["complete"] = all(s in self.current["stages"] for s in STAGES)
        if self.current["complete"] and "first_full" not in self.data:
            self.data["first_full"] = self.current
        history = self.data.get("history", [])
        history.append(dict(started=self.current["started"], total_s=self.current["total_s"],
                            complete=self.current["complete"],
                            stages={k: v["seconds"] for k, v in self.current["stages"].items()}))
        self.data["history"] = history[-HISTORY:]
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


# --- the stages --------------------------------------------------------------------------

def train_config(*, preset: str | None = None, config: str | Path | None = None, quick: bool = False):
    """The training config: --quick (tiny preset on prose + code), --config, --preset, else
    experiments/demo.toml when it exists, else the demo preset."""
    from rllc.train import load_train_config, preset as make_preset

    if quick:
        return make_preset(preset or "tiny", **QUICK_TRAIN)
    if config is not None:
        return load_train_config(find_file(config, DEFAULT_TRAIN_CONFIG))
    if preset is not None:
        return make_preset(preset)
    try:
        return load_train_config(find_file(DEFAULT_TRAIN_CONFIG, DEFAULT_TRAIN_CONFIG))
    except DemoError:
        return make_preset("demo")


def estimate_options(path: str | Path | None, quick: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    from rllc.runs.options import ESTIMATE_DEFAULTS, read_toml

    opts: dict[str, Any] = {}
    if path is not None or not quick:
        opts = read_toml(find_file(path or DEFAULT_ESTIMATE_CONFIG, DEFAULT_ESTIMATE_CONFIG), ESTIMATE_DEFAULTS)
    if quick:
        opts.update(QUICK_ESTIMATE)
    opts.update({k: v for k, v in overrides.items() if v is not None})
    for k in ("datasets", "components"):  # the demo's passes say what to compute
        opts.pop(k, None)
    return opts


def check_checkpoint_dir(cfg, ckpt: Path) -> None:
    """Fail before any work when `ckpt` holds a training run of another configuration."""
    from rllc.models.checkpoints import read_json

    path = ckpt / "config.json"
    if not path.exists():
        return
    existing = read_json(path)
    if isinstance(existing.get("train"), dict):
        existing["train"] = {"inject": {}, **existing["train"]}
    wanted = {"model": cfg.model_config().to_dict(), "train": cfg.to_dict()}
    if {k: existing.get(k) for k in wanted} != json.loads(json.dumps(wanted)):
        raise DemoError(f"{ckpt} already holds a training run with another configuration; pass another "
                        "--checkpoints directory (and --out), or delete it (make clean-demo)")


def training_finished(cfg, ckpt: Path) -> bool:
    from rllc.models.checkpoints import step_filename
    from rllc.train import RESUME_FILE

    return (ckpt / step_filename(cfg.n_steps)).exists() and not (ckpt / RESUME_FILE).exists()


def stage_data(cfg, ckpt: Path) -> str:
    from rllc.data import load_corpus, tokenize_corpus
    from rllc.train import build_datasets, default_cache_dir

    tokenizer, train_ds, _, _ = build_datasets(cfg, ckpt)
    if tokenizer is None:
        return f"{len(train_ds.tokens):,} training tokens (token arrays, no tokenizer)"
    sizes = []
    for name in [n for n, _ in ESTIMATE_PASSES if n != "train"]:  # corpora the estimation reads, tokenised once here
        tokens = tokenize_corpus(load_corpus(name), tokenizer, default_cache_dir())
        sizes.append(f"{name} {len(tokens):,}")
    return (f"tokenizer {ckpt / 'tokenizer.json'} (vocab {tokenizer.get_vocab_size()}); training mix "
            f"{len(train_ds.tokens):,} tokens; estimation tokens: {', '.join(sizes)}")


def stage_train(cfg, ckpt: Path, progress: bool) -> tuple[str, dict]:
    from rllc.train import train

    if training_finished(cfg, ckpt):
        return f"already finished ({cfg.n_steps} steps); reused", dict(trained=False)
    train(cfg, ckpt, progress=progress)
    return f"trained to step {cfg.n_steps}", dict(trained=True)


def calibration_mismatch(opts: dict[str, Any], calibration: str | Path = CALIBRATION) -> dict[str, tuple]:
    """{setting: (estimation value, calibrated value)} for the CALIBRATED settings that differ from the
    committed calibration (empty when they agree)."""
    from rllc.runs.options import ESTIMATE_DEFAULTS, read_toml

    calibrated = {**ESTIMATE_DEFAULTS, **read_toml(find_file(calibration, CALIBRATION), ESTIMATE_DEFAULTS)}
    used = {**ESTIMATE_DEFAULTS, **opts}
    return {k: (used[k], calibrated[k]) for k in CALIBRATED if used[k] != calibrated[k]}


def stage_estimate(ckpt: Path, run: Path, opts: dict, progress: bool, result: DemoResult | None = None,
                   check: bool = False) -> tuple[str, dict]:
    from rllc.runs import run_estimate

    done = skipped = failed = 0
    parts = []
    if check:  # the committed calibration is what the demo's settings claim to be
        differ = calibration_mismatch(opts)
        if differ and result is not None:
            result.notes.append(f"the estimation settings differ from the calibration ({CALIBRATION}): " + ", ".join(
                f"{k} {a} vs calibrated {b}" for k, (a, b) in differ.items()) + "; rerun rllc calibrate")
        parts.append("settings as calibrated" if not differ else f"{len(differ)} setting(s) differ from the calibration")
    for dataset, components in ESTIMATE_PASSES:
        s = run_estimate(ckpt, run, **{**opts, "datasets": [dataset], "components": components,
                                       "quiet": not progress})
        done, skipped, failed = done + s.done, skipped + s.skipped, failed + s.failed
        parts.append(f"{dataset} [{'+'.join(components)}]: {s.done} computed, {s.skipped} reused, "
                     f"{s.failed} failed")
    return "; ".join(parts), dict(computed=done, skipped=skipped, failed=failed)


def stage_noise(ckpt: Path, run: Path, opts: dict, progress: bool, state: dict) -> tuple[str, dict]:
    """The heads' wrLLC at the run's last checkpoint with NOISE_SEEDS (each its own run directory under
    RUN_DIR/seed_noise, so the main store keeps one seed per checkpoint), beside the run's own estimate:
    rows step, component, seed, value in RUN_DIR/seed_noise/values.csv and state["seed_noise"]."""
    import pandas as pd

    from rllc.results import load_results
    from rllc.runs import run_estimate

    dataset, _ = ESTIMATE_PASSES[0]
    main = load_results(run)
    own = main[(main["signal"] == "llc") & (main["dataset"] == dataset) & main["component"].str.contains(":")]
    if own.empty:
        return "skipped: no per-head estimates in the run", dict(failed=0)
    last = int(own["step"].max())
    seed = int(opts.get("seed", 0) or 0)
    frames = [own[own["step"] == last].assign(seed=seed)]
    failed = computed = skipped = 0
    for s in NOISE_SEEDS:
        out = run / "seed_noise" / f"seed-{s}"
        summary = run_estimate(ckpt, out, **{**opts, "datasets": [dataset], "components": ["heads"],
                                             "steps": str(last), "seed": seed + s, "workers": 1, "threads": None,
                                             "quiet": not progress})
        failed, computed, skipped = failed + summary.failed, computed + summary.done, skipped + summary.skipped
        rows = load_results(out)
        frames.append(rows[(rows["signal"] == "llc") & (rows["step"] == last)].assign(seed=seed + s))
    values = pd.concat(frames, ignore_index=True)[["step", "component", "seed", "value"]]
    values.to_csv(run / "seed_noise" / "values.csv", index=False)
    state["seed_noise"] = values
    return (f"step {last}: {values['component'].nunique()} heads x {values['seed'].nunique()} seeds",
            dict(computed=computed, skipped=skipped, failed=failed))


def stage_probe(ckpt: Path, run: Path, opts: dict, progress: bool) -> tuple[str, dict]:
    from rllc.runs import run_probe

    execution = {k: opts[k] for k in ("workers", "threads", "ray", "steps", "every") if opts.get(k) is not None}
    s = run_probe(ckpt, run, quiet=not progress, **execution)
    return (f"{s.done} checkpoints probed, {s.skipped} reused, {s.failed} failed",
            dict(computed=s.done, skipped=s.skipped, failed=s.failed))


def run_demo(
    *,
    preset: str | None = None,
    config: str | Path | None = None,
    estimate_config: str | Path | None = None,
    checkpoints: str | Path | None = None,
    out: str | Path | None = None,
    quick: bool = False,
    threads: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage (module docstring) and return where the report is, with the timings."""
    import torch

    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    ckpt = Path(checkpoints) if checkpoints else Path("checkpoints") / ("demo-quick" if quick else "demo")
    run = Path(out) if out else Path("runs") / ("demo-quick" if quick else "demo")
    cfg = train_config(preset=preset, config=config, quick=quick)
    opts = estimate_options(estimate_config, quick, dict(threads=threads, workers=workers))
    if threads:  # an explicit --threads applies to every stage; the config's `threads` only to estimation tasks
        torch.set_num_threads(int(threads))
    check_checkpoint_dir(cfg, ckpt)
    run.mkdir(parents=True, exist_ok=True)
    timings = Timings(run, quick)
    result = DemoResult(run, ckpt, None, timings.data)
    state: dict[str, Any] = {}
    m = cfg.model
    describe = {
        "data": "prose and code corpora, tokenizer, token arrays",
        "train": f"{m['n_layers']} layers x {m['n_heads']} heads, d_model {m['d_model']}, n_ctx {m['n_ctx']}, "
                 f"{cfg.n_steps} steps -> {ckpt}",
        "estimate": f"wrLLC of every head + full-model LLC on the training distribution, drLLC of every head on code "
                    f"({opts.get('chains')} chains x {opts.get('draws')} draws, batch {opts.get('batch_size')}) -> {run}",
        "noise": f"the heads' wrLLC at the last checkpoint with seeds {', '.join(map(str, NOISE_SEEDS))} -> "
                 f"{run / 'seed_noise'}",
        "probe": "behaviour signals per checkpoint (rllc probe defaults)",
        "cluster": "per-head LLC trajectories (train ‖ code) -> analysis/cluster",
        "compare": "correlations, critical points, stages -> analysis/compare",
        "report": "findings and the HTML report -> analysis/report.html",
    }

    def stage(i: int, name: str, fn) -> None:
        say(f"\n==> [{i}/{len(STAGES)}] {name}: {describe[name]}")
        t0 = time.perf_counter()
        out_ = fn()
        note, extra = out_ if isinstance(out_, tuple) else (out_ or "", {})
        seconds = time.perf_counter() - t0
        timings.record(name, seconds, note, **extra)
        say(f"    {name} done in {seconds:.1f} s" + (f": {note}" if note else ""))
        result.failed_tasks += int(extra.get("failed", 0) or 0)

    try:
        stage(1, "data", lambda: stage_data(cfg, ckpt))
        stage(2, "train", lambda: stage_train(cfg, ckpt, progress))
        stage(3, "estimate", lambda: stage_estimate(ckpt, run, opts, progress, result, check=estimate_config is None
                                                    and not quick))
        stage(4, "noise", lambda: stage_noise(ckpt, run, opts, progress, state))
        stage(5, "probe", lambda: stage_probe(ckpt, run, opts, progress))
        stage(6, "cluster", lambda: stage_cluster(run, quick, state, result))
        stage(7, "compare", lambda: stage_compare(run, state, result))
        stage(8, "report", lambda: stage_report(run, quick, state, result, timings))
    finally:
        timings.finish()
    result.timings = timings.data
    total = timings.current["total_s"]
    say(f"\n==> demo finished in {total:.1f} s ({total / 60:.1f} min): "
        + ", ".join(f"{k} {v['seconds']:.1f}" for k, v in timings.current["stages"].items()))
    if result.findings is not None:
        say("findings:")
        for f in result.findings:
            say(f"  [{f.status}] {f.title}: {f.summary}")
    for note in result.notes:
        say(f"note: {note}")
    return result


def _table(run: Path, state: dict):
    if "table" not in state:
        from rllc.analysis.trajectories import annotate
        from rllc.results import load_results

        state["table"] = annotate(load_results(run))
    return state["table"]


def stage_cluster(run: Path, quick: bool, state: dict, result: DemoResult) -> str:
    from rllc.analysis.compare import stages_of
    from rllc.analysis.outputs import write_cluster
    from rllc.analysis.trajectories import AnalysisError

    table = _table(run, state)
    options = dict(QUICK_CLUSTER) if quick else {}
    state["cluster_options"] = options
    state["compare_options"] = dict(QUICK_COMPARE) if quick else {}
    try:
        stages = stages_of(table)
        state["cluster"] = write_cluster(table, run / "analysis" / "cluster", None,
                                         stages=stages if len(stages) else None, **options)
    except AnalysisError as e:
        result.notes.append(f"clustering skipped: {e}")
        return f"skipped: {e}"
    results, _ = state["cluster"]
    return "; ".join(f"{r.scope}: " + ", ".join(f"{a} k={k}" for a, k in r.chosen.items()) for r in results)


def stage_compare(run: Path, state: dict, result: DemoResult) -> str:
    from rllc.analysis.outputs import write_compare
    from rllc.analysis.trajectories import AnalysisError

    table = _table(run, state)
    try:
        state["comparison"] = write_compare(table, run / "analysis" / "compare", **state.get("compare_options", {}))
    except AnalysisError as e:
        result.notes.append(f"comparison skipped: {e}")
        return f"skipped: {e}"
    cmp, _ = state["comparison"]
    bounds = [f"{r.end:.0f}" for r in cmp.stages.itertuples() if getattr(r, "boundary", None)]
    return f"{len(cmp.keys)} signals, {len(cmp.points)} critical points, stage boundaries at {', '.join(bounds) or 'none'}"


def stage_report(run: Path, quick: bool, state: dict, result: DemoResult, timings: Timings) -> str:
    from rllc.analysis.report import build_report
    from rllc.results import load_run_config
    from rllc.study.findings import study_findings
    from rllc.study.report import study_sections

    table = _table(run, state)
    noise = state.get("seed_noise")
    if noise is None and (run / "seed_noise" / "values.csv").exists():
        import pandas as pd

        noise = pd.read_csv(run / "seed_noise" / "values.csv")
    findings = study_findings(table, timings.data, seed_noise=noise)
    result.findings = findings
    try:
        config = load_run_config(run)
    except (OSError, ValueError, KeyError) as e:
        config = {}
        result.notes.append(f"run configuration could not be read: {e}")
    title = f"rllc demo: {run.resolve().name}" + (" (quick)" if quick else "")
    notes = ["Stage times in the findings are those of the stages before the report; timings.json has all."]
    sections, more = study_sections(table, run, run / "analysis", findings=findings)
    result.report = build_report(table, config, run / "analysis", title=title, notes=notes + more,
                                 cluster=state.get("cluster"), comparison=state.get("comparison"),
                                 sections=sections, precomputed=True)
    counts = {s: sum(f.status == s for f in findings) for s in ("PASS", "FAIL", "reported", "missing")}
    return f"{result.report}; findings " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)


def cmd_demo(args) -> int:
    try:
        result = run_demo(preset=args.preset, config=args.config, estimate_config=args.estimate_config,
                          checkpoints=args.checkpoints, out=args.out, quick=args.quick, threads=args.threads,
                          workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted; finished work is saved: rerun the same command to continue", file=sys.stderr)
        return 130
    if result.report is not None:
        print(f"report: {result.report}")
    if result.failed_tasks:
        print(f"rllc demo: {result.failed_tasks} task(s) failed (see {result.run_dir}/run.log); rerun to retry them",
              file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole study: data, train, estimate, noise, probe, cluster, compare, report (resumable)",
        description="Build the corpora and tokenizer, train the demo model, estimate wrLLC (all heads) and the "
                    "full-model LLC on the training distribution and drLLC (all heads) on code with the calibrated "
                    "settings, re-estimate the heads at the last checkpoint with further seeds (precision check), "
                    "probe behaviour, cluster, compare and "
                    "write the report with its findings; each stage's wall time goes into RUN_DIR/timings.json. "
                    "Rerunning reuses finished work (training resumes; finished estimation and probe tasks are "
                    "skipped; the analysis is recomputed).")
    p.add_argument("--preset", choices=["tiny", "demo", "paper"],
                   help="training preset (default: experiments/demo.toml, else the demo preset)")
    p.add_argument("--config", metavar="FILE.toml", help="training config (rllc train --config)")
    p.add_argument("--estimate-config", metavar="FILE.toml",
                   help=f"estimation settings (default: {DEFAULT_ESTIMATE_CONFIG})")
    p.add_argument("--checkpoints", metavar="DIR", help="checkpoint directory (default: checkpoints/demo)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model and very short chains, for tests and smoke runs (default directories "
                        "checkpoints/demo-quick, runs/demo-quick)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads for every stage (default: torch's choice; estimation tasks use the "
                        "estimation config's `threads`)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes for estimate and probe (default: the estimation config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (stage banners still print)")
    p.set_defaults(func=cmd_demo)
