"""Direct logit attribution (DLA) per head, and how engagement spreads across heads.

A head's DLA at position p is its output z W_O read straight off by the
unembedding toward the correct next token, through ln_final as the clean run
applied it (the cached scale is held fixed, as in TransformerLens's
`apply_ln_to_stack`): (z W_O - mean(z W_O)) / scale . (w_ln * W_U[:, t]).
Biases (b_O, ln_final.b, b_U) belong to no head and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor

from rllc.behavior.common import (
    Models,
    as_models,
    check_tokens,
    config_of,
    for_each_checkpoint,
    head_label,
    probe_batch,
    rows_frame,
    run_until,
)
from rllc.models.transformer import Transformer


def head_dla(model: Transformer, tokens: Tensor) -> Tensor:
    """[layers, heads, batch, seq - 1]: each head's direct logit attribution to
    the token that actually comes next."""
    cfg = model.cfg
    tokens = check_tokens(tokens, cfg)
    zs: dict[int, Tensor] = {}
    scale: list[Tensor] = []

    def grab(act: Tensor, hook) -> None:
        if hook.name == "ln_final.hook_scale":
            scale.append(act)
        else:
            zs[int(hook.name.split(".")[1])] = act

    names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    if cfg.normalization_type == "LN":
        names.append("ln_final.hook_scale")
    run_until(model, tokens, [(n, grab) for n in names], names[-1])
    u = model.unembed.W_U.T[tokens[:, 1:]]  # [batch, seq - 1, d_model]: W_U column of each target
    if cfg.normalization_type == "LN":
        # centring commutes into the read-out vector: (x - mean x) . v = x . (v - mean v)
        v = u * model.ln_final.w
        v = (v - v.mean(-1, keepdim=True)) / scale[0][:, :-1]
    else:
        v = u
    out = torch.stack([
        torch.einsum("bphe,hed,bpd->hbp", zs[layer][:, :-1], model.blocks[layer].attn.W_O, v)
        for layer in range(cfg.n_layers)
    ])
    return out


def direct_logit_attribution(
    models: Models,
    tokens: Tensor | None = None,
    *,
    dataset: str | None = None,
    batch_size: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Mean DLA of every head toward the correct next token (signal "dla") and
    its mean absolute value, the head's engagement (signal "dla_abs"), over all
    predicted positions of `tokens` (default: a `repeated_random` batch)."""
    models = as_models(models)
    cfg = config_of(models)
    if tokens is None:
        tokens, name = probe_batch("repeated_random", cfg, batch_size, seq_len, seed), dataset or "repeated_random"
    else:
        tokens, name = check_tokens(tokens, cfg), dataset or "tokens"

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        dla = head_dla(model, tokens)
        rows = []
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                x = dla[l, h]
                rows.append(dict(step=s, signal="dla", head=head_label(l, h), dataset=name, value=x.mean().item()))
                rows.append(dict(step=s, signal="dla_abs", head=head_label(l, h), dataset=name,
                                 value=x.abs().mean().item()))
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "DLA")


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal (all zero included), (n-1)/n
    when one holds everything; NaN for no values."""
    x = np.sort(np.asarray(values, dtype=float))
    n, total = len(x), x.sum()
    if n == 0:
        return float("nan")
    if total <= 0:
        return 0.0
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * x) / (n * total))


def engagement_stats(rows: pd.DataFrame, signal: str = "dla_abs") -> pd.DataFrame:
    """Shape of the distribution of a per-head signal across heads, per step
    and dataset: Gini (of |value|), interquartile range and excess kurtosis.
    Rows: step, signal "<signal>_gini" / "_iqr" / "_kurtosis", head "", dataset, value. The kurtosis
    row is left out where every head has the same value (0/0: no spread to describe)."""
    sel = rows[rows["signal"] == signal]
    out = []
    for (s, name), group in sel.groupby(["step", "dataset"], dropna=False, sort=False):
        x = group["value"].to_numpy(dtype=float)
        step = None if pd.isna(s) else s
        q75, q25 = np.percentile(x, [75, 25])
        kurtosis = stats.kurtosis(x) if np.ptp(x) > 0 else None
        for stat, value in (("gini", gini(np.abs(x))), ("iqr", q75 - q25), ("kurtosis", kurtosis)):
            if value is None:
                continue
            out.append(dict(step=step, signal=f"{signal}_{stat}", head="", dataset=name, value=float(value)))
    return rows_frame(out)
