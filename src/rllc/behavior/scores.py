"""Head-type scores and the selectivity survey, read off attention patterns.

One forward pass (stopped after the last attention pattern, so no logits are
computed) gives every head's pattern; each target class is a boolean
[query, key] mask, and each head's statistics are a few reductions of its
pattern against the mask, done inside the `hook_pattern` hooks so that no
pattern is stored. Definitions and sources: docs/behavior.md.
"""

from __future__ import annotations

from collections.abc import Sequence

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

TARGETS = ("previous", "induction", "duplicate", "first", "self", "local")

# head score -> (target class, default probe batch)
HEAD_SCORES = {
    "previous_token": ("previous", "random_tokens"),
    "current_token": ("self", "random_tokens"),
    "duplicate_token": ("duplicate", "repeated_random"),
    "induction": ("induction", "repeated_random"),
}


def target_mask(target: str, tokens: Tensor, local_window: int = 4) -> Tensor:
    """Bool [batch or 1, query, key]: the key positions that class `target` expects.

    previous: k = q-1; self: k = q; first: k = 0; local: 2 <= q-k <= local_window;
    duplicate: k < q with tokens[k] == tokens[q]; induction: 1 <= k <= q with
    tokens[k-1] == tokens[q] (the token after an earlier copy of the current one).
    """
    n = tokens.shape[1]
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    if target == "previous":
        return (k == q - 1)[None]
    if target == "self":
        return (k == q)[None]
    if target == "first":
        return (k == 0).expand(n, n)[None]
    if target == "local":
        return ((q - k >= 2) & (q - k <= local_window))[None]
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, q, k]
    if target == "duplicate":
        return same & (k < q)
    if target == "induction":
        shifted = torch.zeros_like(same)
        shifted[:, :, 1:] = same[:, :, :-1]  # key k matches when tokens[k-1] == tokens[q]
        return shifted & (k <= q)
    raise BehaviorError(f"unknown target {target!r}; use one of {TARGETS}")


def attention_tallies(
    model: Transformer, tokens: Tensor, targets: Sequence[str], local_window: int = 4
) -> dict[str, dict[str, Tensor]]:
    """Per target: `score` [layers, heads] (mean attention mass on the target over
    query rows that have one) and `selectivity` [layers, heads] (mean attention
    per target position over mean attention per other earlier position)."""
    cfg = model.cfg
    tokens = check_tokens(tokens, cfg)
    b, n = tokens.shape
    q_pos = torch.arange(n)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    prepared = {}
    for t in targets:
        mask = target_mask(t, tokens, local_window)
        # the other keys get their own mask rather than 1 - mass, which rounds
        # to 0 in float32 for sharp heads
        other = causal & ~mask
        n_target = mask.sum(-1).expand(b, n).float()  # [b, q]
        n_other = other.sum(-1).expand(b, n).float()
        has_target = (n_target > 0) & (q_pos >= 1)  # position 0 sees only itself
        prepared[t] = (mask.float(), other.float(), n_target, n_other, has_target, has_target & (n_other > 0))
    shape = (cfg.n_layers, cfg.n_heads)
    sums = {t: {k: torch.zeros(shape, dtype=torch.float64) for k in ("mass", "dens_t", "dens_o")} for t in targets}

    def masked_sum(pattern: Tensor, mask: Tensor) -> Tensor:  # -> [b, h, q]
        if mask.shape[0] == 1:
            return torch.einsum("bhqk,qk->bhq", pattern, mask[0])
        return torch.einsum("bhqk,bqk->bhq", pattern, mask)

    def tally(pattern: Tensor, hook) -> None:  # pattern [b, h, q, k]
        layer = int(hook.name.split(".")[1])
        for t, (mask, other, n_target, n_other, has_target, comparable) in prepared.items():
            mass = masked_sum(pattern, mask)
            s = sums[t]
            s["mass"][layer] = (mass * has_target[:, None]).sum((0, 2)).double()
            dens_t = mass / n_target.clamp(min=1)[:, None]
            dens_o = masked_sum(pattern, other) / n_other.clamp(min=1)[:, None]
            s["dens_t"][layer] = (dens_t * comparable[:, None]).sum((0, 2)).double()
            s["dens_o"][layer] = (dens_o * comparable[:, None]).sum((0, 2)).double()

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)]
    run_until(model, tokens, [(name, tally) for name in names], names[-1])
    out = {}
    for t, (*_, has_target, comparable) in prepared.items():
        n_rows = has_target.sum().item()
        s = sums[t]
        out[t] = {
            "score": s["mass"] / n_rows if n_rows else torch.full(shape, float("nan"), dtype=torch.float64),
            "selectivity": (s["dens_t"] / s["dens_o"]) if comparable.any() else torch.full(shape, float("nan")),
        }
    return out


def head_scores(
    models: Models,
    tokens: Tensor | None = None,
    *,
    dataset: str | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Previous-token, current-token, duplicate-token and induction scores of every head.

    Without `tokens`, the first two are measured on `random_tokens` and the last
    two on `repeated_random` batches (`batch_size` rows, `seq_len` = n_ctx by
    default, fixed `seed`); with `tokens`, all four on those tokens.
    Rows: step, signal, head, dataset, value.
    """
    models = as_models(models)
    cfg = config_of(models)
    if tokens is None:
        plan = {}
        for signal, (target, kind) in HEAD_SCORES.items():
            plan.setdefault(kind, []).append((signal, target))
        batches = {kind: probe_batch(kind, cfg, batch_size, seq_len, seed) for kind in plan}
    else:
        plan = {dataset or "tokens": [(signal, target) for signal, (target, _) in HEAD_SCORES.items()]}
        batches = {dataset or "tokens": check_tokens(tokens, cfg)}

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        rows = []
        for name, pairs in plan.items():
            tallies = attention_tallies(model, batches[name], [t for _, t in pairs])
            for signal, target in pairs:
                score = tallies[target]["score"]
                rows += [
                    dict(step=s, signal=signal, head=head_label(l, h), dataset=name, value=score[l, h].item())
                    for l in range(cfg.n_layers)
                    for h in range(cfg.n_heads)
                ]
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "head scores")


def selectivity(
    models: Models,
    tokens: Tensor | None = None,
    *,
    targets: Sequence[str] = TARGETS,
    local_window: int = 4,
    dataset: str | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Selectivity of every head for each target class (1 = no preference).

    Measured on `tokens` or a `repeated_random` batch (which holds targets of
    every class). Rows: step, signal="selectivity", head, dataset, value,
    target, mass (the head's mean attention mass on the target).
    """
    models = as_models(models)
    cfg = config_of(models)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise BehaviorError(f"unknown targets {sorted(unknown)}; use some of {TARGETS}")
    name = dataset or ("repeated_random" if tokens is None else "tokens")
    batch = probe_batch("repeated_random", cfg, batch_size, seq_len, seed) if tokens is None else tokens

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        tallies = attention_tallies(model, batch, targets, local_window)
        rows = [
            dict(
                step=s, signal="selectivity", head=head_label(l, h), dataset=name,
                value=tallies[t]["selectivity"][l, h].item(), target=t, mass=tallies[t]["score"][l, h].item(),
            )
            for l in range(cfg.n_layers)
            for h in range(cfg.n_heads)
            for t in targets
        ]
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "selectivity")


def classify_heads(selectivity_rows: pd.DataFrame, threshold: float = 3.0) -> pd.DataFrame:
    """Each head's class: the target of largest selectivity if it is at least
    `threshold`, else "unclassified". Rows: step, signal="head_class", head,
    dataset, value (the largest selectivity), label."""
    sel = selectivity_rows[selectivity_rows["signal"] == "selectivity"].dropna(subset=["value"])
    rows = []
    for (s, head, name), group in sel.groupby(["step", "head", "dataset"], dropna=False, sort=False):
        best = group.loc[group["value"].idxmax()]
        label = best["target"] if best["value"] >= threshold else "unclassified"
        rows.append(dict(step=None if pd.isna(s) else s, signal="head_class", head=head, dataset=name,
                         value=float(best["value"]), label=label))
    return rows_frame(rows)
