"""Behaviour signals per head and checkpoint, as tidy rows.

Every public function takes a `Transformer` (with an optional `step`), a
`CheckpointSeries` or a checkpoint directory (with optional `steps`), and
returns a pandas DataFrame with columns step, signal, head (or sender and
receiver), dataset, value and signal-specific extras. Definitions, sources and
defaults: docs/behavior.md.
"""

from rllc.behavior.ablation import (
    METHODS,
    ablation_hooks,
    ablation_scores,
    derangement,
    icl_positions,
    icl_score,
    path_patching,
)
from rllc.behavior.attribution import direct_logit_attribution, engagement_stats, gini, head_dla
from rllc.behavior.common import BehaviorError
from rllc.behavior.composition import composition_scores, factored_composition, random_baseline
from rllc.behavior.participation import elbow_split, participation_ratio, participation_ratios, pr_trajectory_stats
from rllc.behavior.scores import TARGETS, attention_tallies, classify_heads, head_scores, selectivity, target_mask
from rllc.behavior.signals import all_signals

__all__ = [
    "METHODS",
    "TARGETS",
    "BehaviorError",
    "ablation_hooks",
    "ablation_scores",
    "all_signals",
    "attention_tallies",
    "classify_heads",
    "composition_scores",
    "derangement",
    "direct_logit_attribution",
    "elbow_split",
    "engagement_stats",
    "factored_composition",
    "gini",
    "head_dla",
    "head_scores",
    "icl_positions",
    "icl_score",
    "participation_ratio",
    "participation_ratios",
    "path_patching",
    "pr_trajectory_stats",
    "random_baseline",
    "selectivity",
    "target_mask",
]
