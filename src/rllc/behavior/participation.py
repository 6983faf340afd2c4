"""Participation ratio of head outputs, and its statistics over training.

PR = exp(H(p)) with p = sigma^2 / sum(sigma^2), the squared singular values of
the uncentred [n_examples, d_head] matrix of a head's `hook_z` at one query
position: 1 when every example's z points the same way, k when the z's spread
evenly over k orthogonal directions. The matrix is not centred on purpose: a
head that writes one constant vector has PR 1, not an undefined value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from rllc.behavior.common import (
    BehaviorError,
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


def participation_ratio(z: Tensor) -> float:
    """PR of a [n_examples, d] matrix (0 if it is all zeros: no direction at all, its rank)."""
    sigma2 = torch.linalg.svdvals(z.double()) ** 2
    total = sigma2.sum()
    if total <= 0:
        return 0.0
    p = sigma2[sigma2 > 0] / total
    return torch.exp(-(p * p.log()).sum()).item()


def participation_ratios(
    models: Models,
    tokens: Tensor | None = None,
    *,
    query_pos: int | Tensor = -1,
    dataset: str | None = None,
    n_examples: int = 128,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """PR of every head's z at `query_pos` (an int, or a [batch] tensor of
    per-example positions such as a key-retrieval batch's `query_pos`).

    Default data: `n_examples` rows of `repeated_random`, whose last position
    is an induction query. Rows: step, signal="participation_ratio", head,
    dataset, value, n_examples.
    """
    models = as_models(models)
    cfg = config_of(models)
    batch = probe_batch("repeated_random", cfg, n_examples, seq_len, seed) if tokens is None else tokens
    batch = check_tokens(batch, cfg)
    name = dataset or ("repeated_random" if tokens is None else "tokens")
    rows_idx = torch.arange(batch.shape[0])
    if isinstance(query_pos, Tensor):
        if query_pos.shape != (batch.shape[0],):
            raise BehaviorError(f"query_pos must be an int or a [batch={batch.shape[0]}] tensor")
        pos = query_pos.long()
    else:
        pos = torch.full((batch.shape[0],), query_pos % batch.shape[1])

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        zs = {}

        def grab(z: Tensor, hook) -> None:  # z [b, pos, head, d_head]
            zs[int(hook.name.split(".")[1])] = z[rows_idx, pos]

        names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
        run_until(model, batch, [(n, grab) for n in names], names[-1])
        rows = [
            dict(step=s, signal="participation_ratio", head=head_label(l, h), dataset=name,
                 value=participation_ratio(zs[l][:, h]), n_examples=batch.shape[0])
            for l in range(cfg.n_layers)
            for h in range(cfg.n_heads)
        ]
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "participation ratio")


def elbow_split(values: Sequence[float]) -> int | None:
    """How many of `values` (sorted in decreasing order) lie above the elbow.

    The elbow is the point farthest from the chord joining the first and last
    points, both axes scaled to [0, 1]. Points before it are above the elbow;
    the elbow itself joins the upper group when it lies above the chord (a
    plateau that ends in a drop) and the lower group when below it (a drop
    that ends in a plateau). None when there are fewer than 3 values or all
    are equal.
    """
    y = np.asarray(values, dtype=float)
    if len(y) < 3:
        return None
    if np.any(np.diff(y) > 0):
        raise BehaviorError("elbow_split expects values sorted in decreasing order")
    if y[0] == y[-1]:
        return None
    x = np.linspace(0.0, 1.0, len(y))
    y = (y - y[-1]) / (y[0] - y[-1])
    offset = x + y - 1.0  # signed distance to the chord x + y = 1, times sqrt(2)
    elbow = int(np.argmax(np.abs(offset)))
    return elbow + 1 if offset[elbow] > 0 else elbow


def pr_trajectory_stats(pr_rows: pd.DataFrame) -> pd.DataFrame:
    """Per head and dataset, over the steps of `pr_rows` (participation_ratios
    of a series): PR spread (max - min), PR integral (trapezoid of
    max(PR - 1, 0) over steps) and, per dataset, the elbow of the integrals
    sorted in decreasing order (`elbow_split`).

    Rows: signal "pr_spread" / "pr_integral", head, dataset, value; integral
    rows also carry `rank` (0 = largest) and `above_elbow`.
    `step` is None: these summarise the whole series.
    """
    pr = pr_rows[pr_rows["signal"] == "participation_ratio"]
    if pr["step"].isna().any():
        raise BehaviorError("PR trajectory statistics need a step on every row (use a checkpoint series)")
    rows = []
    for name, by_dataset in pr.groupby("dataset", sort=False):
        integrals = {}
        for head, g in by_dataset.groupby("head", sort=False):
            g = g.sort_values("step")
            steps = g["step"].to_numpy(dtype=float)
            values = g["value"].to_numpy(dtype=float)
            excess = np.clip(values - 1.0, 0.0, None)
            integral = float(np.sum((excess[1:] + excess[:-1]) / 2 * np.diff(steps))) if len(steps) > 1 else 0.0
            integrals[head] = integral
            rows.append(dict(step=None, signal="pr_spread", head=head, dataset=name,
                             value=float(np.nanmax(values) - np.nanmin(values))))
        order = sorted(integrals, key=lambda h: -integrals[h])
        n_high = elbow_split([integrals[h] for h in order])
        for rank, head in enumerate(order):
            rows.append(dict(step=None, signal="pr_integral", head=head, dataset=name, value=integrals[head],
                             rank=rank, above_elbow=n_high is not None and rank < n_high))
    return rows_frame(rows)
