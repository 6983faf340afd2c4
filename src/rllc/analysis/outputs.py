"""Writing the tables (CSV) and figures (PNG) of `rllc cluster` and `rllc
compare` into a directory, for the command line and the report."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rllc.analysis import figures
from rllc.analysis.cluster import ALGORITHMS, ClusterResult, best_k_per_metric, cluster_trajectories
from rllc.analysis.compare import CompareResult, compare, model_llc_key, with_pair_signals
from rllc.analysis.critical import Smoothing
from rllc.analysis.trajectories import annotate, default_offset, head_types, resolve_key, trajectories


def slug(text: str) -> str:
    """A file-name-safe version of a signal key or scope."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


@dataclass
class Written:
    """What a writer produced: its results, and the files by role."""

    directory: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


def write_cluster(
    df: pd.DataFrame,
    out: str | Path,
    keys: Sequence[str] | None = None,
    *,
    algorithms: Sequence[str] = ALGORITHMS,
    ks: Sequence[int] = range(2, 9),
    k: int | None = None,
    normalisation: str = "zscore",
    log_time: bool = False,
    n_points: int | None = None,
    per_layer: bool = False,
    criterion: str = "silhouette",
    seed: int = 0,
    dtw_radius: float | None = None,
    kshape_engine: str = "numpy",
    log_x: bool = True,
    stages: pd.DataFrame | None = None,
) -> tuple[list[ClusterResult], Written]:
    """`cluster_trajectories` and its outputs in `out`:

    tables ``cluster_metrics.csv`` (scope, algorithm, k, silhouette,
    calinski_harabasz, davies_bouldin, n_clusters), ``cluster_choice.csv``
    (the k each criterion picks and the chosen k), ``cluster_assignments.csv``
    (scope, head, algorithm, k, cluster, chosen, head_type),
    ``cluster_tree.csv`` (the subdivision trees), ``cluster_agreement.csv``
    (ARI/NMI); figures ``cluster_metrics_<scope>.png``,
    ``clusters_<algorithm>_<key>_<scope>.png`` (curves coloured by cluster at
    the chosen k), ``dendrogram_<scope>.png`` and ``tree_<algorithm>_<scope>.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = annotate(df)
    results = cluster_trajectories(table, keys, algorithms=algorithms, ks=ks, k=k, normalisation=normalisation,
                                   log_time=log_time, n_points=n_points, per_layer=per_layer, criterion=criterion,
                                   seed=seed, dtw_radius=dtw_radius, kshape_engine=kshape_engine)
    w = Written(out)
    metrics = pd.concat([r.metrics for r in results], ignore_index=True)
    choice = []
    for r in results:
        best = best_k_per_metric(r.metrics)
        best.insert(0, "scope", r.scope)
        best["chosen"] = best["algorithm"].map(r.chosen)
        choice.append(best)
    trees = []
    for r in results:
        for algorithm, tree in r.trees.items():
            t = tree.copy()
            t["members"] = [" ".join(r.heads[m] for m in mem) for mem in t["members"]]
            t.insert(0, "algorithm", algorithm)
            t.insert(0, "scope", r.scope)
            trees.append(t)
    frames = {
        "cluster_metrics": metrics,
        "cluster_choice": pd.concat(choice, ignore_index=True),
        "cluster_assignments": pd.concat([r.assignments() for r in results], ignore_index=True),
        "cluster_tree": pd.concat(trees, ignore_index=True),
        "cluster_agreement": pd.concat([r.agreement for r in results], ignore_index=True),
    }
    for name, frame in frames.items():
        w.tables[name] = out / f"{name}.csv"
        frame.to_csv(w.tables[name], index=False)
    for r in results:
        s = slug(r.scope)
        ts = r.trajectories
        setting = f"{' ‖ '.join(ts.keys)}; {ts.normalisation}{', log-time' if ts.log_time else ''}; {r.scope}"
        w.figures[f"metrics:{r.scope}"] = out / f"cluster_metrics_{s}.png"
        figures.plot_cluster_metrics(r.metrics, r.chosen, title=f"Cluster quality over k ({setting})",
                                     path=w.figures[f"metrics:{r.scope}"])
        for algorithm in r.chosen:
            labels = r.chosen_labels(algorithm).map(lambda c: f"cluster {c}")
            for key in ts.keys:
                name = f"clusters:{algorithm}:{key}:{r.scope}"
                w.figures[name] = out / f"clusters_{algorithm}_{slug(key)}_{s}.png"
                figures.plot_head_curves(ts.raw[key], labels, title=f"{key}, coloured by {algorithm} cluster "
                                         f"(k={r.chosen[algorithm]}, {r.scope})", ylabel=key, log_x=log_x,
                                         stages=stages, legend_title=algorithm, path=w.figures[name])
            w.figures[f"tree:{algorithm}:{r.scope}"] = out / f"tree_{algorithm}_{s}.png"
            figures.plot_subdivision_tree(r.trees[algorithm], r.heads,
                                          title=f"Subdivision tree, {algorithm} ({r.scope})",
                                          path=w.figures[f"tree:{algorithm}:{r.scope}"])
        w.figures[f"dendrogram:{r.scope}"] = out / f"dendrogram_{s}.png"
        figures.plot_dendrogram(ts.flat, ts.heads, r.head_types,
                                title=f"Ward dendrogram of {' ‖ '.join(ts.keys)} ({r.scope})",
                                path=w.figures[f"dendrogram:{r.scope}"])
    return results, w


def write_compare(
    df: pd.DataFrame,
    out: str | Path,
    keys: Sequence[str] | None = None,
    *,
    method: str = "spearman",
    min_heads: int = 5,
    pairs: str | None = "max",
    smoothing: Smoothing = Smoothing(),
    prominence: float = 0.1,
    slope_prominence: float = 0.2,
    noise_factor: float = 3.0,
    max_lag: float = 0.5,
    reference_keys: Sequence[str] | None = None,
    stage_key: str | None = None,
    log_x: bool = True,
    curves: bool = True,
    max_point_heads: int = 8,
) -> tuple[CompareResult, Written]:
    """`compare` and its outputs in `out`:

    tables ``correlations_per_step.csv``, ``correlations_series.csv``,
    ``critical_points.csv``, ``alignment.csv``, ``stages.csv``; figures
    ``correlation_matrix.png`` (pooled over the series),
    ``correlation_matrix_last.png`` (at the last checkpoint),
    ``correlation_over_time_<key>.png`` (each reference key against the
    others), ``stages.png`` (full-model LLC), ``composition.png``,
    ``critical_points_<key>.png`` (reference keys) and, with `curves`,
    ``curves_<key>.png`` (every per-head signal coloured by head type, stages
    shaded)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = annotate(df)
    result = compare(table, keys, method=method, min_heads=min_heads, pairs=pairs, smoothing=smoothing,
                     prominence=prominence, slope_prominence=slope_prominence, noise_factor=noise_factor,
                     max_lag=max_lag, reference_keys=reference_keys, stage_key=stage_key)
    w = Written(out)
    frames = {
        "correlations_per_step": result.per_step,
        "correlations_series": result.series,
        "critical_points": result.points,
        "alignment": result.alignment,
        "stages": result.stages,
    }
    for name, frame in frames.items():
        w.tables[name] = out / f"{name}.csv"
        frame.to_csv(w.tables[name], index=False)
    stages = result.stages if len(result.stages) else None
    w.figures["correlation_matrix"] = out / "correlation_matrix.png"
    figures.plot_correlation_matrix(result.matrix("pooled_rho"),
                                    title=f"{method.title()} correlation over heads, pooled over the series",
                                    path=w.figures["correlation_matrix"])
    if len(result.per_step):
        last = int(result.per_step["step"].max())
        from rllc.analysis.compare import correlation_matrix

        w.figures["correlation_matrix_last"] = out / "correlation_matrix_last.png"
        figures.plot_correlation_matrix(
            correlation_matrix(result.per_step[result.per_step["step"] == last], "rho", result.keys),
            title=f"{method.title()} correlation over heads at step {last}",
            path=w.figures["correlation_matrix_last"])
    refs = list(dict.fromkeys(result.alignment["ref_key"])) if len(result.alignment) else result.keys[:1]
    for key in refs:
        name = f"correlation_over_time:{key}"
        w.figures[name] = out / f"correlation_over_time_{slug(key)}.png"
        figures.plot_correlation_over_time(result.per_step, key, log_x=log_x, stages=stages,
                                           title=f"Rank correlation over heads with {key} at each checkpoint",
                                           path=w.figures[name])
    stage_name = model_llc_key(table, stage_key)
    if stage_name is not None:
        curve = trajectories(table, stage_name, level="model").iloc[0]
        w.figures["stages"] = out / "stages.png"
        figures.plot_model_curve(curve, stages, smoothing=smoothing, ylabel=f"{stage_name} (model)",
                                 title="Full-model LLC and its stages", log_x=log_x, path=w.figures["stages"])
    if figures.plot_composition_heatmaps(table, path=out / "composition.png", log_x=log_x) is not None:
        w.figures["composition"] = out / "composition.png"
    types = head_types(table)
    for key in refs:
        pts = result.points[result.points["key"] == key]
        wide = trajectories(table, key)
        if len(wide) > max_point_heads:  # the heads whose curves move most, in head order
            moving = (wide.max(axis=1) - wide.min(axis=1)).nlargest(max_point_heads).index
            wide = wide.loc[[h for h in wide.index if h in set(moving)]]
        name = f"critical_points:{key}"
        w.figures[name] = out / f"critical_points_{slug(key)}.png"
        figures.plot_critical_points(wide, pts, smoothing=smoothing, log_x=log_x,
                                     title=f"Critical points of {key} "
                                           f"({smoothing.describe(default_offset(wide.columns))})",
                                     path=w.figures[name])
    if curves:
        full = with_pair_signals(table, pairs) if pairs else table
        for key in result.keys:
            name = f"curves:{key}"
            w.figures[name] = out / f"curves_{slug(key)}.png"
            figures.plot_head_curves(trajectories(full, resolve_key(full, key)), types,
                                     title=f"{key} per head, coloured by head type", ylabel=key, log_x=log_x,
                                     stages=stages, legend_title="head type", path=w.figures[name])
    return result, w
