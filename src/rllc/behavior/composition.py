"""Q-, K- and V-composition scores between heads of different layers (Elhage et al. 2021).

score = ||left @ right||_F / (||left||_F ||right||_F), with left = W_OV = W_V W_O
of the earlier head and right = W_QK = W_Q W_K^T (Q), W_QK^T (K) or W_OV (V)
of the later head (row-vector convention, as TransformerLens). Products of
d_model x d_model matrices are never formed: with left = A B and right = C D
(A, C: d_model x d_head), ||A B C D||^2 = tr(M^T (A^T A) M (D D^T)) with the
d_head x d_head matrix M = B C, so every head pair costs a few small matmuls.

A pair in which either matrix is zero (a pruned or dead head: W_O = 0, or a
receiver with W_Q = 0, ...) scores 0, not 0/0: a head that writes or reads
nothing composes with nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import pandas as pd
import torch
from torch import Tensor

from rllc.behavior.common import (
    BehaviorError,
    Models,
    as_models,
    config_of,
    for_each_checkpoint,
    head_label,
    rows_frame,
)
from rllc.models.transformer import Transformer

SIDES = ("q", "k", "v")


def factored_composition(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """||A B C D||_F / (||A B||_F ||C D||_F) over broadcast leading dims; 0 where A B or C D is zero.

    A: [..., d, e], B: [..., e, d], C: [..., d, e2], D: [..., e2, d]."""
    g_a, g_b = A.mT @ A, B @ B.mT
    g_c, g_d = C.mT @ C, D @ D.mT
    m = B @ C
    num2 = ((g_a @ m @ g_d) * m).sum((-2, -1)).clamp(min=0)
    left2 = (g_a * g_b).sum((-2, -1))
    right2 = (g_c * g_d).sum((-2, -1))
    denom = left2 * right2
    # A zero factor makes the numerator zero too: score it 0 (a zero-norm head composes with nothing).
    return torch.where(denom > 0, num2 / denom.where(denom > 0, torch.ones_like(denom)), torch.zeros_like(denom)).sqrt()


def head_weights(model: Transformer, layer: int, fold_ln: bool) -> dict[str, Tensor]:
    """W_Q, W_K, W_V [heads, d_model, d_head] and W_O [heads, d_head, d_model] in
    float64; with `fold_ln`, the reading matrices include ln1's weight and mean
    subtraction (LN(x) W = (1/scale) x P diag(w) W, P = I - 11^T/d), as
    TransformerLens's fold_ln + centering would."""
    block = model.blocks[layer]
    w = {name: getattr(block.attn, f"W_{name}").detach().double() for name in ("Q", "K", "V", "O")}
    if fold_ln and model.cfg.normalization_type == "LN":
        gain = block.ln1.w.detach().double()[:, None]
        for name in ("Q", "K", "V"):
            folded = gain * w[name]
            w[name] = folded - folded.mean(-2, keepdim=True)
    return w


def right_factors(w: dict[str, Tensor], side: str) -> tuple[Tensor, Tensor]:
    if side == "q":
        return w["Q"], w["K"].mT
    if side == "k":
        return w["K"], w["Q"].mT
    return w["V"], w["O"]


@lru_cache(maxsize=16)
def random_baseline(d_model: int, d_head: int, n_samples: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the score for i.i.d. Gaussian factors of a head's shapes
    (the same for Q, K and V: the four factors are exchangeable in law)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(n_samples, *shape, generator=g, dtype=torch.float64)  # noqa: E731
    scores = factored_composition(draw(d_model, d_head), draw(d_head, d_model), draw(d_model, d_head),
                                  draw(d_head, d_model))
    return scores.mean().item(), scores.std().item()


def composition_scores(
    models: Models,
    *,
    sides: Sequence[str] = SIDES,
    fold_ln: bool = False,
    baseline_samples: int = 200,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Composition scores of every (earlier head, later head) pair.

    Rows: step, signal="composition", sender (earlier head), receiver (later
    head), dataset="weights", value, side, baseline and baseline_std (the
    random-matrix score; read value well above baseline as composition above chance).
    """
    bad = set(sides) - set(SIDES)
    if bad:
        raise BehaviorError(f"unknown sides {sorted(bad)}; use some of {SIDES}")
    models = as_models(models)
    cfg = config_of(models)
    base_mean, base_std = random_baseline(cfg.d_model, cfg.d_head, baseline_samples, seed)

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        weights = [head_weights(model, layer, fold_ln) for layer in range(cfg.n_layers)]
        rows = []
        for l1 in range(cfg.n_layers):
            A, B = weights[l1]["V"][:, None], weights[l1]["O"][:, None]  # [h1, 1, ...]
            for l2 in range(l1 + 1, cfg.n_layers):
                for side in sides:
                    C, D = right_factors(weights[l2], side)
                    scores = factored_composition(A, B, C[None], D[None])  # [h1, h2]
                    rows += [
                        dict(step=s, signal="composition", sender=head_label(l1, h1), receiver=head_label(l2, h2),
                             dataset="weights", value=scores[h1, h2].item(), side=side,
                             baseline=base_mean, baseline_std=base_std)
                        for h1 in range(cfg.n_heads)
                        for h2 in range(cfg.n_heads)
                    ]
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "composition")
