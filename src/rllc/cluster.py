"""Clustering of per-head trajectories (`rllc cluster`): the public API of
`rllc.analysis.cluster` and the trajectory helpers it needs. See docs/analysis.md."""

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
    metrics_over_k,
    sbd_matrix,
    subdivision_tree,
)
from rllc.analysis.outputs import write_cluster
from rllc.analysis.trajectories import (
    AnalysisError,
    TrajectorySet,
    head_types,
    log_resample,
    normalise,
    signal_keys,
    stack_trajectories,
    trajectories,
)

__all__ = [
    "ALGORITHMS",
    "CRITERIA",
    "AnalysisError",
    "ClusterResult",
    "TrajectorySet",
    "agreement",
    "best_k_per_metric",
    "canonical_labels",
    "choose_k",
    "cluster_set",
    "cluster_trajectories",
    "default_cluster_keys",
    "fit_labels",
    "head_types",
    "kshape_fit",
    "log_resample",
    "metrics_over_k",
    "normalise",
    "sbd_matrix",
    "signal_keys",
    "stack_trajectories",
    "subdivision_tree",
    "trajectories",
    "write_cluster",
]
