"""Geometry against behaviour (`rllc compare`): the public API of
`rllc.analysis.compare` and `rllc.analysis.critical`. See docs/analysis.md."""

from rllc.analysis.compare import (
    CORRELATION_METHODS,
    CompareResult,
    compare,
    correlation_keys,
    correlation_matrix,
    default_reference_keys,
    head_signal_matrix,
    model_llc_key,
    pairs_to_heads,
    rank_correlations,
    series_correlations,
    stage_boundaries,
    stages_of,
    with_pair_signals,
)
from rllc.analysis.critical import (
    KINDS,
    Smoothing,
    align_events,
    alignment_summary,
    critical_points,
    critical_points_table,
    smooth_curve,
)
from rllc.analysis.outputs import write_compare
from rllc.analysis.trajectories import AnalysisError

__all__ = [
    "CORRELATION_METHODS",
    "KINDS",
    "AnalysisError",
    "CompareResult",
    "Smoothing",
    "align_events",
    "alignment_summary",
    "compare",
    "correlation_keys",
    "correlation_matrix",
    "critical_points",
    "critical_points_table",
    "default_reference_keys",
    "head_signal_matrix",
    "model_llc_key",
    "pairs_to_heads",
    "rank_correlations",
    "series_correlations",
    "smooth_curve",
    "stage_boundaries",
    "stages_of",
    "with_pair_signals",
    "write_compare",
]
