"""Every behaviour signal of a checkpoint (or of each checkpoint of a series) in one table."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import Tensor

from rllc.behavior.ablation import METHODS, ablation_scores, path_patching
from rllc.behavior.attribution import direct_logit_attribution, engagement_stats
from rllc.behavior.common import Models, as_models, for_each_checkpoint, leading_columns_first
from rllc.behavior.composition import composition_scores
from rllc.behavior.participation import participation_ratios
from rllc.behavior.scores import classify_heads, head_scores, selectivity
from rllc.models.transformer import Transformer


def all_signals(
    models: Models,
    tokens: Tensor | None = None,
    *,
    dataset: str | None = None,
    methods: Sequence[str] = METHODS,
    path_method: str = "resample",
    class_threshold: float = 3.0,
    score_batch_size: int = 32,
    pr_examples: int = 128,
    batch_size: int = 16,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Head scores, selectivity and head classes, PR, ablations and ICL, path
    patching, composition and DLA with engagement statistics, each with its
    defaults; `tokens` (default: a `repeated_random` batch of `batch_size` rows)
    are used for the loss-based signals and DLA. Each checkpoint is loaded once."""
    models = as_models(models)

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        common = dict(step=s, progress=False)
        data = dict(dataset=dataset, batch_size=batch_size, seed=seed, **common)
        sel = selectivity(model, batch_size=score_batch_size, seed=seed, **common)
        dla = direct_logit_attribution(model, tokens, **data)
        frames = [
            head_scores(model, batch_size=score_batch_size, seed=seed, **common),
            sel,
            classify_heads(sel, class_threshold),
            participation_ratios(model, n_examples=pr_examples, seed=seed, **common),
            ablation_scores(model, tokens, methods=methods, **data),
            path_patching(model, tokens, method=path_method, **data) if model.cfg.n_layers > 1 else None,
            composition_scores(model, seed=seed, **common) if model.cfg.n_layers > 1 else None,
            dla,
            engagement_stats(dla, "dla_abs"),
        ]
        return leading_columns_first(pd.concat([f for f in frames if f is not None and len(f)], ignore_index=True))

    return for_each_checkpoint(compute, models, step, steps, progress, "behaviour signals")
