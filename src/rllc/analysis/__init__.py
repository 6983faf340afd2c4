"""Analysis of a run's results table: per-head trajectories, their clustering,
geometry against behaviour, figures and the HTML report.

    trajectories.py  the long table -> per-head curves (signal keys, normalisation, log-time)
    cluster.py       k-means, Ward, k-Shape, DTW k-means; metrics over k; subdivision tree; ARI/NMI
    critical.py      smoothing in log-step; peaks, troughs, inflections; their alignment
    compare.py       rank correlations per checkpoint and across the series; stages of the model LLC
    figures.py       matplotlib figures (PNG)
    outputs.py       tables and figures of `rllc cluster` / `rllc compare` written to a directory
    report.py        the self-contained HTML report and its diagnostics section
    cli.py           `register(subparsers)` for the verbs cluster, compare, report
    synthetic.py     synthetic results tables (planted groups; a demo-like run) for tests and examples

Every library function takes the results DataFrame of `rllc.load_results`
(plus options). See docs/analysis.md.
"""

from rllc.analysis.cluster import (
    ALGORITHMS,
    CRITERIA,
    ClusterResult,
    agreement,
    best_k_per_metric,
    canonical_labels,
    choose_k,
    cluster_set,
    cluster_trajectories,
    default_cluster_keys,
    fit_labels,
    kshape_fit,
    consensus_labels,
    metrics_over_k,
    paper_clustering,
    sbd_matrix,
    subdivision_tree,
)
from rllc.analysis.compare import (
    CORRELATION_METHODS,
    CompareResult,
    compare,
    correlation_keys,
    correlation_matrix,
    curve_features,
    default_reference_keys,
    feature_agreement,
    head_signal_matrix,
    model_llc_key,
    pairs_to_heads,
    rank_correlations,
    series_correlations,
    stage_boundaries,
    stages_of,
    with_pair_signals,
)
from rllc.analysis.critical import (KINDS, Smoothing, align_events, alignment_summary, critical_points,
                                    critical_points_table, smooth_curve)
from rllc.analysis.outputs import write_cluster, write_compare
from rllc.analysis.trajectories import (
    AnalysisError,
    TrajectorySet,
    annotate,
    head_types,
    log_resample,
    normalise,
    signal_keys,
    stack_trajectories,
    trajectories,
)
from rllc.deprecation import forward

__all__ = [
    "ALGORITHMS",
    "CORRELATION_METHODS",
    "CRITERIA",
    "KINDS",
    "canonical_labels",
    "correlation_keys",
    "default_cluster_keys",
    "default_reference_keys",
    "head_signal_matrix",
    "model_llc_key",
    "smooth_curve",
    "with_pair_signals",
    "write_cluster",
    "write_compare",
    "AnalysisError",
    "ClusterResult",
    "CompareResult",
    "Smoothing",
    "TrajectorySet",
    "agreement",
    "align_events",
    "alignment_summary",
    "annotate",
    "best_k_per_metric",
    "choose_k",
    "cluster_set",
    "cluster_trajectories",
    "compare",
    "consensus_labels",
    "paper_clustering",
    "curve_features",
    "feature_agreement",
    "correlation_matrix",
    "critical_points",
    "critical_points_table",
    "fit_labels",
    "head_types",
    "kshape_fit",
    "log_resample",
    "metrics_over_k",
    "normalise",
    "pairs_to_heads",
    "rank_correlations",
    "sbd_matrix",
    "series_correlations",
    "signal_keys",
    "stack_trajectories",
    "stage_boundaries",
    "stages_of",
    "subdivision_tree",
    "trajectories",
]

# The study's findings moved to rllc.study.findings (the demo study, apart from the library); the old names
# forward there with a DeprecationWarning for one release, by name at first use (no import of the study here).
__getattr__ = forward("rllc.analysis", "rllc.study.findings", ["StudyFindings", "study_findings"])
