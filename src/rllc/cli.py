"""The `rllc` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rllc.deprecation import DeprecatedFlag


class UsageError(Exception):
    """A command line argparse cannot parse; main() prints it as one line (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `rllc COMMAND: error: ...` with a --help hint, not a usage dump."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}; see `{self.prog} --help`")


def cmd_train(args: argparse.Namespace) -> int:
    from rllc.train import load_train_config, preset, train

    overrides = dict(n_steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                     schedule=args.schedule, max_chars=args.max_chars,
                     data=args.data.split(",") if args.data else None)
    cfg = load_train_config(args.config, **overrides) if args.config else preset(args.preset, **overrides)
    out = Path(args.out) if args.out else Path("checkpoints") / (Path(args.config).stem if args.config else args.preset)
    try:
        train(cfg, out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume from the last saved state in {out}",
              file=sys.stderr)
        return 130
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rllc.models.checkpoints import compress_steps, load_checkpoints
    from rllc.models.transformer import Transformer

    series = load_checkpoints(args.path)
    cfg = series.config
    n_params = sum(p.numel() for p in Transformer(cfg).parameters())
    mlp = "attention-only" if cfg.attn_only else f"MLP d_mlp={cfg.d_mlp} ({cfg.act_fn})"
    print(f"directory     {series.path}")
    print(f"format        {series.format}")
    print(f"architecture  {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_head {cfg.d_head}, "
          f"n_ctx {cfg.n_ctx}, vocab {cfg.d_vocab}, {mlp}")
    print(f"              positions {cfg.positional_embedding_type}, norm {cfg.normalization_type or 'none'}, "
          f"{n_params:,} parameters")
    print(f"steps         {len(series)}: {compress_steps(series.steps)}")
    print(f"tokenizer     {series.tokenizer_path or 'none'}")
    metrics = series.metrics()
    if metrics:
        last = metrics[-1]
        print(f"last metrics  step {last['step']}: train loss {last.get('train_loss')}, eval loss {last.get('eval_loss')}")
    problems = series.problems + series.verify(full=args.check)
    print(f"problems      {len(problems) or 'none'}")
    for p in problems:
        print(f"  - {p}")
    return 1 if problems and args.check else 0


def series_options(args: argparse.Namespace, defaults: dict) -> dict:
    """Options from --config (TOML, keys = option names) overridden by the flags actually given."""
    from rllc.runs.options import read_toml

    given = {k: v for k, v in vars(args).items() if k in defaults and v is not None}
    return {**(read_toml(args.config, defaults) if args.config else {}), **given}


def run_series(args: argparse.Namespace, run, defaults: dict) -> int:
    out = Path(args.out) if args.out else Path("runs") / Path(args.checkpoint_dir).resolve().name
    try:
        summary = run(args.checkpoint_dir, out, **series_options(args, defaults))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished tasks are saved in {out}: rerun the same command to compute the rest",
              file=sys.stderr)
        return 130
    if not (args.quiet or summary.planned == 0):
        print(f"{summary.planned} tasks: {summary.skipped} already finished, {summary.done} computed, "
              f"{summary.failed} failed, in {summary.seconds:.1f} s; results in {summary.run_dir} "
              f"(rllc.load_results, rllc export)", file=sys.stderr)
        for line in summary.convergence_lines():  # R-hat of the run's LLC estimates, and what to change
            print(line, file=sys.stderr)
    if summary.failed:
        print(f"rllc {args.command}: {summary.failed} task(s) failed (see {summary.run_dir}/run.log); "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from rllc.runs import run_estimate
    from rllc.runs.options import ESTIMATE_DEFAULTS

    return run_series(args, run_estimate, ESTIMATE_DEFAULTS)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Errors in the inputs (checkpoints, dataset, steps, grid) reach main()'s one-line handler."""
    import torch

    from rllc.models.checkpoints import load_checkpoints
    from rllc.runs.calibrate import calibrate_series, verdict, write_calibration
    from rllc.runs.datasets import default_datasets, resolve_dataset
    from rllc.runs.options import CALIBRATE_DEFAULTS, RunError
    from rllc.runs.plan import select_steps

    for flag in ("chains", "draws", "batch_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise RunError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if not args.budget > 0:
        raise RunError(f"--budget must be a positive number of seconds, got {args.budget}")
    cells = CALIBRATE_DEFAULTS["cells"]
    eps = positive_floats("--epsilons", args.epsilons) if args.epsilons else [c[0] for c in cells]
    nbetas = positive_floats("--nbetas", args.nbetas) if args.nbetas else [c[1] for c in cells]
    if len(eps) != len(nbetas):
        raise RunError("--epsilons and --nbetas pair up: give as many of each")
    gammas = positive_floats("--gammas", args.gammas) if args.gammas else list(CALIBRATE_DEFAULTS["gammas"])
    if args.threads:
        torch.set_num_threads(args.threads)
    series = load_checkpoints(args.checkpoint_dir)
    ds = resolve_dataset(args.dataset or default_datasets(series)[0], series, batch_size=args.batch_size,
                         seed=args.seed)
    steps = select_steps(series, args.steps) if args.steps else None
    out = Path(args.out) if args.out else Path("runs") / series.path.resolve().name / "calibration"
    print(f"calibrating {args.sampler} on {ds.description}; {len(eps) * len(gammas)} cells, {args.chains} chains x "
          f"{args.draws} steps, batch {args.batch_size}", file=sys.stderr)
    table, choice, traces = calibrate_series(series, ds, steps=steps, cells=list(zip(eps, nbetas)), gammas=gammas,
                                             chains=args.chains, draws=args.draws, budget_s=args.budget,
                                             seed=args.seed, sampler=args.sampler,
                                             progress=lambda m: print(m, file=sys.stderr))
    command = "rllc calibrate " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "rllc calibrate"
    paths = write_calibration(out, table, choice, traces, series_path=series.path, dataset=ds.name,
                              batch_size=args.batch_size, chains=args.chains, command=command, sampler=args.sampler)
    print(verdict(choice))
    print(f"settings: {paths['toml']} (rllc estimate {args.checkpoint_dir} --config {paths['toml']}); "
          f"evidence: {paths['table']}, {paths['figure']}")
    return 0


def positive_floats(flag: str, text: str) -> list[float]:
    """A comma-separated list of positive numbers, or a one-line error naming the flag."""
    import math

    from rllc.runs.options import RunError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RunError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise RunError(f"{flag} must be positive numbers, got {text!r}")
    return values


def cmd_probe(args: argparse.Namespace) -> int:
    from rllc.runs import run_probe
    from rllc.runs.options import PROBE_DEFAULTS

    return run_series(args, run_probe, PROBE_DEFAULTS)


def cmd_export(args: argparse.Namespace) -> int:
    from rllc.results import export_results

    print(export_results(args.run_dir, args.format, args.out))
    return 0


EXIT_STATUS = "Exit status: 0 done, 1 some tasks failed (rerun to retry them), 2 usage error (one line on stderr)."


def add_series_arguments(p: argparse.ArgumentParser, defaults: dict) -> None:
    """Options shared by `estimate` and `probe`: where, which checkpoints, how to run."""
    p.add_argument("checkpoint_dir", metavar="CKPT_DIR",
                   help="checkpoint directory (rllc, TransformerLens state dicts, or Hugging Face)")
    p.add_argument("--out", metavar="RUN_DIR",
                   help="run directory holding the results store (default: runs/NAME-OF-CKPT_DIR); rerunning "
                        "into the same RUN_DIR computes only what is missing")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file whose keys are these option names (e.g. draws = 100); flags override it")
    p.add_argument("--steps", help="checkpoint steps: a range A-B (inclusive), -B, A-, or steps 0,100,500 "
                                   "(default: all)")
    p.add_argument("--every", type=int, metavar="K", help="every K-th of the selected checkpoints (default: 1)")
    p.add_argument("--seed", type=int, help=f"base seed; each task's seed derives from it and the task's key "
                                            f"(default: {defaults['seed']})")
    p.add_argument("--batch-size", type=int, help=f"sequences per batch (default: {defaults['batch_size']})")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: 1, in this process)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the tasks on a Ray cluster: 'auto' (the cluster this machine belongs to), "
                        "HOST:PORT or ray://HOST:PORT; 'local' starts Ray on this machine")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per task (default: torch's choice in this process; 1 per worker/Ray task)")
    p.add_argument("--quiet", action="store_true", default=None,
                   help="no progress bar or summary (per-task lines still go to RUN_DIR/run.log)")


def add_settings_arguments(g) -> None:
    """One option per SGLDSettings field (rllc.sampling.settings): name, type, default and help come from it."""
    from rllc.sampling.settings import SGLDSettings

    for f in SGLDSettings.describe():
        flag = "--" + f.name.replace("_", "-")
        meta, default = f.metadata, f.default
        shown = "none" if default is None else default
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
        elif meta["choices"]:
            g.add_argument(flag, choices=meta["choices"], help=f"{meta['help']} (default: {shown})")
        else:
            kinds = meta["kind"] if isinstance(meta["kind"], tuple) else (meta["kind"],)
            g.add_argument(flag, type=int if kinds == (int,) else float, help=f"{meta['help']} (default: {shown})")


def add_estimate_arguments(p: argparse.ArgumentParser, d: dict) -> None:
    p.add_argument("--datasets", metavar="LIST",
                   help="comma-separated: prose, code, random, repeated, induction, dyck, teacher:SOURCE@BASE "
                        "(SOURCE: final, first, a step or a checkpoint dir), self (fim-trace only), or .txt/.jsonl/"
                        ".npy files, or train: batches built like the series' training batches (corpora mix and "
                        "injected spans as `rllc train` recorded them). Default: train for a series made by "
                        "`rllc train` (weight-refined estimates); any other dataset gives data-refined ones")
    p.add_argument("--components", metavar="LIST",
                   help="comma-separated: heads, layers, model, l:h, l:*, layer:l, embed, unembed, or head sets "
                        "like 1:6+1:7 (default: heads)")
    p.add_argument("--estimators", metavar="LIST",
                   help="comma-separated: llc, hessian-trace, fim-trace, hessian-rank, susceptibility "
                        "(per-token susceptibilities of each component to the --probe-datasets; default: llc)")
    g = p.add_argument_group("SGLD (llc, susceptibility)")
    add_settings_arguments(g)
    g.add_argument("--n-batches", type=int,
                   help="distinct SGLD batches, cycled (default: burn-in + draws)")
    g.add_argument("--crn", action=argparse.BooleanOptionalAction, default=None,
                   help="common random numbers (default): every checkpoint gets the same seeds and batches, so a "
                        "curve's step-to-step changes are not independent seed noise; --no-crn: a seed per "
                        "checkpoint")
    g.add_argument("--precision", action=DeprecatedFlag, new="--compute-dtype", dest="compute_dtype",
                   choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    g.add_argument("--compute-dtype", choices=["fp32", "bf16"],
                   help="bf16: unembedding matmuls of the batched head sampler in bfloat16, validated against "
                        "fp32 on a pilot and refused (recorded in diagnostics) if they disagree (default: fp32)")
    g = p.add_argument_group("curvature (hessian-trace, fim-trace, hessian-rank)")
    g.add_argument("--probes", type=int, help=f"trace probes (default: {d['probes']})")
    g.add_argument("--trace-estimator", choices=["hutch++", "hutchinson"], help="default: hutch++")
    g.add_argument("--curvature-batches", type=int,
                   help=f"batches the curvature is averaged over (default: {d['curvature_batches']})")
    g.add_argument("--fim-method", choices=["analytic", "sampled"], help="default: analytic")
    g.add_argument("--fim-seqs", type=int,
                   help=f"sequences sampled from the model for dataset 'self' (default: {d['fim_seqs']})")
    g.add_argument("--rank-threshold", type=float,
                   help=f"count Hessian eigenvalues above this (default: {d['rank_threshold']})")
    g.add_argument("--rank-degree", type=int, help=f"Chebyshev degree (default: {d['rank_degree']})")
    g.add_argument("--rank-probes", type=int, help=f"rank probes (default: {d['rank_probes']})")
    g = p.add_argument_group("susceptibility")
    g.add_argument("--probe-datasets", metavar="LIST",
                   help="probe sets whose per-token susceptibilities are estimated, dataset specs as for "
                        f"--datasets (default: {','.join(d['probe_datasets'])}); the sampling dataset's own "
                        "fixed sequences are the reference probe")
    g.add_argument("--probe-sequences", type=int,
                   help=f"fixed sequences per probe set (default: {d['probe_sequences']})")
    g.add_argument("--observe-every", type=int, metavar="K",
                   help=f"record the probe losses every K-th draw (default: {d['observe_every']})")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rllc",
        description="Refined local learning coefficients per attention head over training checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a small transformer with a checkpoint schedule (resumable)",
                       description="Train a model into a checkpoint directory. Rerunning the same command "
                                   "after an interruption resumes from the last saved state.")
    p.add_argument("--preset", default="tiny", choices=["tiny", "demo", "paper"],
                   help="model/data/schedule preset (default: tiny)")
    p.add_argument("--config", help="TOML training config (`preset = ...` plus any training option)")
    p.add_argument("--out", help="checkpoint directory (default: checkpoints/PRESET)")
    p.add_argument("--steps", type=int, help="number of optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="comma-separated corpora: prose, code, or paths to .txt/.jsonl files")
    p.add_argument("--max-chars", type=int, help="use at most this many characters of each corpus")
    p.add_argument("--schedule", help="checkpoint schedule, e.g. 'log:40,linear:20' or '0,100,200-10000/200'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="describe a checkpoint directory: format, architecture, steps, problems")
    p.add_argument("path", help="checkpoint directory (rllc, TransformerLens state dicts, or Hugging Face)")
    p.add_argument("--check", action="store_true", help="load every checkpoint to verify it (slower)")
    p.set_defaults(func=cmd_info)

    from rllc.runs.options import CALIBRATE_DEFAULTS, ESTIMATE_DEFAULTS, PROBE_DEFAULTS
    from rllc.sampling.settings import SAMPLERS

    p = sub.add_parser("estimate", help="rLLCs and curvature over a checkpoint series into a results store "
                                        "(resumable, local or Ray)",
                       description="Estimate (refined) LLCs, Hessian/FIM traces and Hessian ranks for every "
                                   "selected checkpoint x component x dataset x estimator. Each finished task is "
                                   "committed to RUN_DIR/results.sqlite at once; rerunning the same command "
                                   "computes only what is missing; changed hyperparameters are new rows "
                                   "(another config_hash), never overwrites. See docs/cli.md.",
                       epilog=EXIT_STATUS)
    add_series_arguments(p, ESTIMATE_DEFAULTS)
    add_estimate_arguments(p, ESTIMATE_DEFAULTS)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("calibrate", help="choose SGLD settings for per-head wrLLCs on this series (a TOML for "
                                         "rllc estimate --config, with its evidence)",
                       description="Sweeps (epsilon, nbeta) pairs x gammas with all heads at once at the first, a "
                                   "middle and the last checkpoint; rejects settings whose chains diverge, drift, "
                                   "fail R-hat, have poor MALA acceptance, give negative heads, cannot tell heads "
                                   "apart from seed noise, or exceed the time budget; tests gamma halved and "
                                   "doubled; writes calibration.toml/.csv/.png and verdict.txt (docs/llc.md).")
    p.add_argument("checkpoint_dir", metavar="CKPT_DIR")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/NAME-OF-CKPT_DIR/calibration, which "
                                                "`rllc report` of that run shows)")
    p.add_argument("--dataset", help="dataset spec as in rllc estimate (default: train, the training distribution)")
    p.add_argument("--steps", help="checkpoint steps as in rllc estimate, e.g. 0,3500,6000 or 1000- "
                                   "(default: first, middle, last)")
    cal = CALIBRATE_DEFAULTS
    p.add_argument("--epsilons", help="comma-separated step sizes, paired with --nbetas (default: "
                                      f"{','.join(f'{e:g}' for e, _ in cal['cells'])})")
    p.add_argument("--nbetas", help="comma-separated nbetas, paired with --epsilons (default: "
                                    f"{','.join(f'{n:g}' for _, n in cal['cells'])})")
    p.add_argument("--gammas", help="comma-separated gammas, each also tested halved and doubled (default: "
                                    f"{','.join(f'{g:g}' for g in cal['gammas'])})")
    p.add_argument("--sampler", choices=SAMPLERS, default=cal["sampler"],
                   help=f"the sampler to calibrate: its step size is its own (default: {cal['sampler']})")
    p.add_argument("--chains", type=int, default=cal["chains"], help=f"chains (default: {cal['chains']})")
    p.add_argument("--draws", type=int, default=cal["draws"],
                   help=f"SGLD steps per chain, burn-in included (default: {cal['draws']})")
    p.add_argument("--batch-size", type=int, default=cal["batch_size"],
                   help=f"sequences per batch (default: {cal['batch_size']})")
    p.add_argument("--budget", type=float, default=cal["budget_s"],
                   help=f"most seconds per all-heads estimate (default: {cal['budget_s']:g})")
    p.add_argument("--seed", type=int, default=cal["seed"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("probe", help="behaviour signals over a checkpoint series into the same results store",
                       description="Head scores, selectivity, participation ratio, ablations, path patching, "
                                   "composition and DLA (rllc.behavior.all_signals) for every selected checkpoint, "
                                   "into RUN_DIR/results.sqlite (resumable like estimate).",
                       epilog=EXIT_STATUS)
    add_series_arguments(p, PROBE_DEFAULTS)
    p.add_argument("--datasets", metavar="LIST",
                   help="token batches for the loss-based signals and DLA: prose, code, random, repeated, "
                        "induction, dyck or a .txt/.jsonl/.npy file (default: a repeated-random batch)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("export", help="write a run's results table to CSV or Parquet")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by rllc estimate/probe")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv", help="default: csv")
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/results.csv or .parquet)")
    p.set_defaults(func=cmd_export)

    from rllc.analysis.cli import register

    register(sub, report_sections=_study_sections)  # cluster, compare, report (with the demo's findings)

    from rllc.study.demo import register as register_demo

    register_demo(sub)  # demo: every stage of the study in order
    return parser


def _study_sections(*args, **kwargs):
    """The demo study's sections for `rllc report` (imported when a report is made, not for --help)."""
    from rllc.study.report import study_sections

    return study_sections(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    from rllc.models.checkpoints import CheckpointError
    from rllc.models.config import ConfigError

    try:
        return args.func(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"rllc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
