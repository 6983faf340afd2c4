"""The verbs `rllc cluster`, `rllc compare` and `rllc report`.

`register(subparsers)` adds them to the `rllc` command's argparse subparsers;
`main(argv)` runs them on their own (for tests and `python -m
rllc.analysis.cli`). RUN_DIR is read with `rllc.results.load_results` and
`rllc.results.load_run_config`; outputs go to RUN_DIR/analysis/{cluster,compare}
(or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rllc.deprecation import DeprecatedFlag

ALGORITHM_CHOICES = ("kmeans", "ward", "kshape", "dtw")


def load_results_table(run_dir):
    """The run's results table (`rllc.results.load_results`); a run without results is an error naming the run
    directory and the command that would produce them."""
    from rllc.results import RunError, load_results, no_results_message

    df = load_results(run_dir)
    if df.empty:
        raise RunError(no_results_message(run_dir))
    return df


def load_config(run_dir) -> dict:
    """The run's configuration (`rllc.results.load_run_config`)."""
    from rllc.results import load_run_config

    return load_run_config(run_dir)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _algorithms(text: str) -> list[str]:
    names = _csv(text)
    bad = [n for n in names if n not in ALGORITHM_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"algorithms: choose from {', '.join(ALGORITHM_CHOICES)}")
    return names


def _add_keys(g, flag: str, old: str, dest: str, help: str) -> None:
    """A repeatable signal-key flag named after the keyword it feeds, and its old name (deprecated)."""
    g.add_argument(flag, dest=dest, action="append", metavar="KEY", help=help)
    g.add_argument(old, dest=dest, action=DeprecatedFlag, new=flag, append=True, help=argparse.SUPPRESS)


def add_cluster_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The clustering flags; `prefix` "cluster-" names the key flag --cluster-key (rllc report: cluster_keys)."""
    g = p.add_argument_group("clustering")
    _add_keys(g, f"--{prefix}key", f"--{prefix}signal", "cluster_keys",
              "signal key to cluster, e.g. llc@prose (repeat to concatenate several, each normalised on its own; "
              "default: the per-head llc curves of every dataset)")
    g.add_argument("--algorithms", type=_algorithms, default=list(ALGORITHM_CHOICES), metavar="LIST",
                   help="comma-separated: kmeans, ward, kshape, dtw (default: all four)")
    g.add_argument("--k-min", type=int, default=2, help="smallest k (default: 2)")
    g.add_argument("--k-max", type=int, default=8, help="largest k; capped at heads − 1 (default: 8)")
    g.add_argument("--k", type=int, help="use this k for every algorithm instead of choosing it")
    g.add_argument("--criterion", choices=["silhouette", "calinski_harabasz", "davies_bouldin", "vote"],
                   default="silhouette", help="how k is chosen (default: silhouette)")
    g.add_argument("--normalisation", choices=["none", "zscore", "minmax"], default="zscore",
                   help="per-curve normalisation over time (default: zscore)")
    g.add_argument("--normalise", action=DeprecatedFlag, new="--normalisation", dest="normalisation",
                   choices=["none", "zscore", "minmax"], help=argparse.SUPPRESS)
    g.add_argument("--log-time", action="store_true",
                   help="resample the curves evenly in log10(step + offset) before clustering")
    g.add_argument("--n-points", type=int, metavar="N",
                   help="points of the log-time grid (default: as many as steps)")
    g.add_argument("--points", action=DeprecatedFlag, new="--n-points", dest="n_points", type=int, help=argparse.SUPPRESS)
    g.add_argument("--per-layer", action="store_true", help="cluster each layer's heads on their own")
    g.add_argument("--dtw-radius", type=float, metavar="F",
                   help="Sakoe-Chiba band for dtw, as a fraction of the series length (default: none)")
    g.add_argument("--kshape-engine", choices=["numpy", "tslearn"], default="numpy",
                   help="k-Shape implementation (default: numpy, the fast vectorised one)")
    g.add_argument("--seed", type=int, default=0, help="seed of every algorithm (default: 0)")


def add_compare_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The comparison flags; `prefix` "compare-" names the key flag --compare-key (rllc report: compare_keys)."""
    g = p.add_argument_group("comparison")
    _add_keys(g, f"--{prefix}key", f"--{prefix}signal", "compare_keys",
              "signal key to compare (repeat; default: every per-head signal)")
    g.add_argument("--method", choices=["spearman", "kendall"], default="spearman",
                   help="rank correlation (default: spearman)")
    g.add_argument("--min-heads", type=int, default=5, help="fewest heads for a correlation (default: 5)")
    g.add_argument("--pairs", choices=["max", "mean", "none"], default="max",
                   help="how pair signals (composition) become per-head .in/.out signals (default: max)")
    g.add_argument("--smoothing", choices=["gaussian", "savgol", "none"], default="gaussian",
                   help="smoothing before critical points (default: gaussian)")
    g.add_argument("--width", type=float, default=0.08,
                   help="smoothing width in decades of log-step: Gaussian sigma or Savitzky-Golay window "
                        "(default: 0.08)")
    g.add_argument("--prominence", type=float, default=0.1,
                   help="peaks/troughs: least prominence as a fraction of the curve's range (default: 0.1)")
    g.add_argument("--slope-prominence", type=float, default=0.2,
                   help="inflections: least prominence as a fraction of max |slope| (default: 0.2)")
    g.add_argument("--noise-factor", type=float, default=3.0,
                   help="least size of any critical point in units of the curve's noise level (default: 3)")
    g.add_argument("--max-lag", type=float, default=0.5,
                   help="widest alignment of two events, in decades of log-step (default: 0.5)")
    _add_keys(g, "--reference-key", "--reference", "reference_keys",
              "signal whose events the others are aligned to (repeat; default: the per-head llc keys)")
    g.add_argument("--stage-key", metavar="KEY",
                   help="full-model curve for the stages (default: the model-level llc with most steps)")
    g.add_argument("--stage-signal", dest="stage_key", action=DeprecatedFlag, new="--stage-key",
                   help=argparse.SUPPRESS)


def _add_log_x(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-x", action=argparse.BooleanOptionalAction, default=True,
                   help="figures: log-step axis (default); --no-log-x: linear step axis")
    p.add_argument("--linear-x", action=DeprecatedFlag, new="--no-log-x", dest="log_x", nargs=0, const=False,
                   help=argparse.SUPPRESS)


def _add_common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by rllc estimate/probe")
    p.add_argument("--out", metavar="DIR", help=f"output directory (default: RUN_DIR/analysis/{what})")
    _add_log_x(p)
    p.add_argument("--list-signals", action="store_true", help="print the run's signal keys and exit")


def register(subparsers, report_sections=None) -> None:
    """Add `cluster`, `compare` and `report` to an argparse subparsers object. `report_sections(table, run_dir,
    out, seed=) -> (sections, notes)`: a study's sections for the top of the report (`rllc.study.report`'s
    `study_sections`, passed in by the command line: this layer never imports the study)."""
    p = subparsers.add_parser(
        "cluster", help="cluster per-head trajectories (k-means, Ward, k-Shape, DTW) and score k",
        description="Cluster per-head curves of one or several signals with each algorithm for k in a range; "
                    "writes cluster_*.csv (metrics, choice, assignments, subdivision tree, ARI/NMI agreement) and "
                    "figures into RUN_DIR/analysis/cluster. See docs/analysis.md.")
    _add_common(p, "cluster")
    add_cluster_arguments(p)
    p.set_defaults(func=cmd_cluster)

    p = subparsers.add_parser(
        "compare", help="rank correlations between signals, critical points and their alignment, stages",
        description="Rank correlation over heads between every pair of signals per checkpoint and across the "
                    "series; critical points of every curve and their alignment; stages of the full-model LLC. "
                    "Writes CSV tables and figures into RUN_DIR/analysis/compare. See docs/analysis.md.")
    _add_common(p, "compare")
    add_compare_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "report", help="one self-contained HTML page: configuration, diagnostics, curves, clusters, comparison",
        description="Compute the study findings, run the clustering and the comparison and write "
                    "RUN_DIR/analysis/report.html (figures "
                    "embedded; the page needs no other file). Prints the page's path.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by rllc estimate/probe")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/analysis)")
    p.add_argument("--title", help="page title (default: 'rllc report: NAME-OF-RUN_DIR')")
    _add_log_x(p)
    p.add_argument("--rhat-max", type=float, default=1.1, help="r_hat above this is unhealthy (default: 1.1)")
    p.add_argument("--ess-min", type=float, help="ESS below this is unhealthy (default: not checked)")
    p.add_argument("--no-findings", action="store_true",
                   help="leave out the demo study's Findings section (default: computed from the results, "
                        "RUN_DIR/timings.json and RUN_DIR/seed_noise, shown when the run has their inputs)")
    add_cluster_arguments(p, "cluster-")
    add_compare_arguments(p, "compare-")
    p.set_defaults(func=cmd_report, report_sections=report_sections)


def _cluster_options(args) -> dict:
    return dict(algorithms=args.algorithms, ks=range(args.k_min, args.k_max + 1), k=args.k,
                normalisation=args.normalisation, log_time=args.log_time, n_points=args.n_points,
                per_layer=args.per_layer, criterion=args.criterion, seed=args.seed, dtw_radius=args.dtw_radius,
                kshape_engine=args.kshape_engine, log_x=args.log_x)


def _compare_options(args) -> dict:
    from rllc.analysis.critical import Smoothing

    return dict(method=args.method, min_heads=args.min_heads, pairs=None if args.pairs == "none" else args.pairs,
                smoothing=Smoothing(args.smoothing, args.width), prominence=args.prominence,
                slope_prominence=args.slope_prominence, noise_factor=args.noise_factor, max_lag=args.max_lag,
                reference_keys=args.reference_keys, stage_key=args.stage_key, log_x=args.log_x)


def _list_signals(df) -> int:
    from rllc.analysis.trajectories import signal_keys

    print(signal_keys(df).to_string(index=False))
    return 0


def cmd_cluster(args) -> int:
    from rllc.analysis.outputs import write_cluster

    df = load_results_table(args.run_dir)
    if args.list_signals:
        return _list_signals(df)
    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis" / "cluster"
    results, written = write_cluster(df, out, args.cluster_keys, **_cluster_options(args))
    for r in results:
        chosen = ", ".join(f"{a} k={k}" for a, k in r.chosen.items())
        print(f"{r.scope}: {len(r.heads)} heads, {' ‖ '.join(r.trajectories.keys)}: {chosen}")
    if results and results[0].trajectories.left_out:
        steps = ", ".join(str(int(s)) for s in results[0].trajectories.left_out)
        print(f"left out: step(s) {steps} (median head LLC < 0: w* is not a local minimum there)")
    print(out)
    return 0


def cmd_compare(args) -> int:
    from rllc.analysis.outputs import write_compare

    df = load_results_table(args.run_dir)
    if args.list_signals:
        return _list_signals(df)
    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis" / "compare"
    result, written = write_compare(df, out, args.compare_keys, **_compare_options(args))
    stages = ", ".join(f"{r.boundary} at {r.end:.0f}" for r in result.stages.itertuples() if r.boundary)
    print(f"{len(result.keys)} signals compared; {len(result.points)} critical points; "
          f"stage boundaries: {stages or 'none'}")
    print(out)
    return 0


def cmd_report(args) -> int:
    from rllc.analysis.report import build_report

    df = load_results_table(args.run_dir)
    notes = []
    try:
        config = load_config(args.run_dir)
    except (OSError, ValueError, KeyError) as e:
        config, notes = {}, [f"run configuration could not be read: {e}"]
    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis"
    cluster_options = _cluster_options(args)
    compare_options = _compare_options(args)
    title = args.title or f"rllc report: {Path(args.run_dir).resolve().name}"
    sections = []  # a study's own sections, from the provider the command line registered (the demo's findings)
    if args.report_sections is not None and not args.no_findings:
        sections, more = args.report_sections(df, args.run_dir, out, seed=cluster_options.get("seed", 0))
        notes += more
    token_view = susceptibility_arrays(args.run_dir, df)
    path = build_report(df, config, out, title=title, cluster_keys=args.cluster_keys,
                        cluster_options=cluster_options, compare_keys=args.compare_keys,
                        compare_options=compare_options, rhat_max=args.rhat_max, ess_min=args.ess_min,
                        notes=notes, sections=sections, token_view=token_view,
                        calibration=calib if (calib := Path(args.run_dir) / "calibration").is_dir() else None)
    print(path)
    return 0


def susceptibility_arrays(run_dir: str | Path, df) -> dict | None:
    """The per-token susceptibilities of a run at its last checkpoint with any ({"step", "arrays": {probe:
    {component: [n_seq, T-1]}}}), for the report's token view; None if the run has none."""
    if "signal" not in df.columns or not (df["signal"] == "susceptibility").any():
        return None
    from rllc.results import load_susceptibility

    rows = df[df["signal"] == "susceptibility"]
    step = int(rows["step"].max())
    rows = rows[(rows["step"] == step) & (rows["config_hash"] == rows["config_hash"].iloc[-1])]
    arrays: dict[str, dict] = {}
    for r in rows.itertuples():
        probe = dict(p.split("=", 1) for p in str(r.variant).split(",") if "=" in p).get("probe", "")
        values, _ = load_susceptibility(run_dir, r.checkpoint, r.component, probe, r.dataset, r.config_hash)
        arrays.setdefault(probe, {})[r.component] = values
    return {"step": step, "arrays": arrays}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rllc", description="Analysis of a run's results.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run one verb; errors in the request (an unknown signal,
    too few heads, a missing run) print one line and return 2."""
    args = build_parser().parse_args(argv)

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # AnalysisError, and the store's RunError
        print(f"rllc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
