"""Head ablations, the in-context-learning score, and path patching.

Everything here acts through TransformerLens hooks on `hook_z` (a head's
output before W_O) or on the receiver's `hook_q/k/v`, so it composes with any
hooks a researcher adds. Replacement values:

* zero: z = 0 (the head writes nothing but its share of b_O, which belongs to
  no head);
* mean: z at each position = the mean of the head's clean z at that position
  over the `reference` tokens (default: the evaluated tokens themselves);
* resample: example i takes the clean z of another example: of the same batch
  through a fixed derangement (no example keeps its own), or, with
  `reference`, of a reference row drawn at random.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from rllc.behavior.common import (
    BehaviorError,
    Head,
    HeadSpec,
    Models,
    all_heads,
    as_models,
    check_tokens,
    config_of,
    for_each_checkpoint,
    head_label,
    heads_by_layer,
    losses_with_hooks,
    mean_and_stderr,
    parse_head_sets,
    probe_batch,
    rows_frame,
    run_until,
    token_losses,
)
from rllc.models.transformer import Transformer

METHODS = ("zero", "mean", "resample")
SIDES = ("q", "k", "v")


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A random permutation without fixed points: each i maps to the next
    element after it in a random cyclic order."""
    if n < 2:
        raise BehaviorError("resample ablation needs at least 2 examples in the batch")
    order = torch.randperm(n, generator=generator)
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-1)
    return out


def clean_z(model: Transformer, tokens: Tensor, layers: Iterable[int]) -> dict[int, Tensor]:
    """Clean `hook_z` [batch, pos, head, d_head] of the given layers (no logits computed)."""
    layers = sorted(set(layers))
    if not layers:
        return {}
    zs: dict[int, Tensor] = {}

    def grab(z: Tensor, hook) -> None:
        zs[int(hook.name.split(".")[1])] = z.detach()

    names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    run_until(model, tokens, [(n, grab) for n in names], names[-1])
    return zs


def replacement_z(
    method: str, heads: Sequence[Head], z_eval: dict[int, Tensor], z_ref: dict[int, Tensor] | None,
    generator: torch.Generator,
) -> dict[Head, Tensor]:
    """The [batch, pos, d_head] value each ablated head's z is replaced with.

    `z_eval` are the clean z's of the evaluated tokens and `z_ref` those of the
    reference tokens (None: the evaluated tokens are their own reference)."""
    if method not in METHODS:
        raise BehaviorError(f"unknown ablation method {method!r}; use one of {METHODS}")
    b, n = next(iter(z_eval.values())).shape[:2]
    if method == "resample":
        # one draw for the whole head set: together they take another example's activations
        if z_ref is None:
            rows = derangement(b, generator)
        else:
            rows = torch.randint(0, next(iter(z_ref.values())).shape[0], (b,), generator=generator)
    out = {}
    for layer, head in heads:
        ref = z_eval[layer] if z_ref is None else z_ref[layer]
        if ref.shape[1] < n:
            raise BehaviorError(f"reference tokens have {ref.shape[1]} positions, fewer than the evaluated {n}")
        ref = ref[:, :n, head]
        if method == "zero":
            out[(layer, head)] = torch.zeros_like(z_eval[layer][:, :, head])
        elif method == "mean":
            out[(layer, head)] = ref.mean(0, keepdim=True).expand(b, n, -1)
        else:
            out[(layer, head)] = ref[rows]
    return out


def z_patch_hooks(values: dict[Head, Tensor]) -> list[tuple[str, Callable]]:
    """Hooks that overwrite the given heads' z with `values` (out of place, so
    caches filled by earlier hooks keep the clean activations)."""
    hooks = []
    for layer, heads in heads_by_layer(values).items():
        vals = torch.stack([values[(layer, h)] for h in heads], dim=2)  # [b, pos, n_sel, d_head]

        def patch(z: Tensor, hook, heads=heads, vals=vals) -> Tensor:
            z = z.clone()
            z[:, :, heads] = vals.to(z.dtype)
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", patch))
    return hooks


def ablation_hooks(
    model: Transformer, heads: HeadSpec, method: str, tokens: Tensor,
    reference: Tensor | None = None, seed: int = 0,
) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks that ablate a head set while running `tokens`.

    Use them as `model.run_with_hooks(tokens, fwd_hooks=ablation_hooks(...) + yours)`.
    """
    cfg = model.cfg
    tokens = check_tokens(tokens, cfg)
    ((_, head_set),) = parse_head_sets([heads], cfg)
    layers = {layer for layer, _ in head_set}
    with torch.no_grad():
        z_eval = clean_z(model, tokens, layers)
        z_ref = None if reference is None or method == "zero" else clean_z(model, check_tokens(reference, cfg), layers)
    gen = torch.Generator().manual_seed(seed)
    return z_patch_hooks(replacement_z(method, head_set, z_eval, z_ref, gen))


def icl_positions(n_predicted: int, late: int = 500, early: int = 50) -> tuple[int, int]:
    """Loss positions of the ICL score: (late, early) as given when the context
    predicts more than `late` tokens, else both scaled by (n_predicted - 1) / late,
    so that `late` becomes the last predicted position."""
    scale = min(1.0, (n_predicted - 1) / late)
    t_late, t_early = round(late * scale), round(early * scale)
    if t_early >= t_late:
        raise BehaviorError(f"a context predicting {n_predicted} tokens is too short for an ICL score")
    return t_late, t_early


def _default_tokens(tokens: Tensor | None, cfg, batch_size: int, seq_len: int | None, seed: int, dataset):
    if tokens is None:
        return probe_batch("repeated_random", cfg, batch_size, seq_len, seed), dataset or "repeated_random"
    return check_tokens(tokens, cfg), dataset or "tokens"


def ablation_scores(
    models: Models,
    tokens: Tensor | None = None,
    *,
    heads: Iterable[HeadSpec] | None = None,
    methods: Sequence[str] = METHODS,
    reference: Tensor | None = None,
    icl: bool = True,
    late: int = 500,
    early: int = 50,
    dataset: str | None = None,
    batch_size: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Loss increase when each head set in `heads` (default: every single head)
    is ablated by each of `methods`, on `tokens` (default: a `repeated_random`
    batch of `batch_size` rows), plus the ICL score, clean and under each ablation.

    Rows (one forward pass per head set and method):
    * signal "ablation": value = mean over examples of (ablated - clean) mean
      token loss; method, baseline (clean loss), stderr (across examples);
    * signal "icl_ablated": the ICL score with the head set ablated; method,
      baseline (clean ICL score), stderr;
    * signal "icl" (head ""): the clean ICL score, with stderr and the positions.
    """
    models = as_models(models)
    cfg = config_of(models)
    tokens, name = _default_tokens(tokens, cfg, batch_size, seq_len, seed, dataset)
    reference = None if reference is None else check_tokens(reference, cfg)
    head_sets = parse_head_sets(heads, cfg)
    for m in methods:
        if m not in METHODS:
            raise BehaviorError(f"unknown ablation method {m!r}; use one of {METHODS}")
    t_late, t_early = icl_positions(tokens.shape[1] - 1, late, early) if icl else (None, None)

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        layers = range(cfg.n_layers)
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_z"))
        clean = token_losses(logits, tokens)
        del logits
        z_eval = {layer: cache[f"blocks.{layer}.attn.hook_z"] for layer in layers}
        needs_ref = reference is not None and any(m != "zero" for m in methods)
        z_ref = clean_z(model, reference, layers) if needs_ref else None
        clean_loss = clean.mean().item()
        rows = []
        if icl:
            clean_icl = clean[:, t_late] - clean[:, t_early]
            value, stderr = mean_and_stderr(clean_icl)
            rows.append(dict(step=s, signal="icl", head="", dataset=name, value=value, stderr=stderr,
                             late=t_late, early=t_early))
        for method in methods:
            for label, head_set in head_sets:
                gen = torch.Generator().manual_seed(seed)  # the same resampled rows for every head set
                values = replacement_z(method, head_set, z_eval, z_ref, gen)
                ablated = losses_with_hooks(model, tokens, z_patch_hooks(values))
                value, stderr = mean_and_stderr((ablated - clean).mean(1))
                rows.append(dict(step=s, signal="ablation", head=label, dataset=name, value=value,
                                 method=method, baseline=clean_loss, stderr=stderr))
                if icl:
                    value, stderr = mean_and_stderr(ablated[:, t_late] - ablated[:, t_early])
                    rows.append(dict(step=s, signal="icl_ablated", head=label, dataset=name, value=value,
                                     method=method, baseline=clean_icl.mean().item(), stderr=stderr,
                                     late=t_late, early=t_early))
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "ablations")


def icl_score(
    models: Models,
    tokens: Tensor | None = None,
    *,
    late: int = 500,
    early: int = 50,
    dataset: str | None = None,
    batch_size: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """ICL score: loss at a late position minus loss at an early one (`icl_positions`).
    Rows: step, signal="icl", head="", dataset, value, stderr, late, early."""
    models = as_models(models)
    cfg = config_of(models)
    tokens, name = _default_tokens(tokens, cfg, batch_size, seq_len, seed, dataset)
    t_late, t_early = icl_positions(tokens.shape[1] - 1, late, early)

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        losses = token_losses(model(tokens), tokens)
        value, stderr = mean_and_stderr(losses[:, t_late] - losses[:, t_early])
        return rows_frame([dict(step=s, signal="icl", head="", dataset=name, value=value, stderr=stderr,
                                late=t_late, early=t_early)])

    return for_each_checkpoint(compute, models, step, steps, progress, "ICL score")


def path_patching(
    models: Models,
    tokens: Tensor | None = None,
    *,
    senders: Iterable[HeadSpec] | None = None,
    receivers: Iterable[HeadSpec] | None = None,
    sides: Sequence[str] = SIDES,
    method: str = "resample",
    reference: Tensor | None = None,
    dataset: str | None = None,
    batch_size: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Loss increase when a sender head set is ablated only along its direct
    path into one receiver head's query, key or value input.

    The receiver's input on that side is recomputed from the clean residual
    stream before its layer plus the change the ablation makes to the senders'
    outputs (z W_O), through the receiver layer's ln1 (and the shortformer
    positions for q and k); every other head, and the senders' other paths,
    stay clean. The receiver's changed output then propagates as usual.
    Defaults: senders = each earlier layer as one set ("0:*", ...), receivers =
    every head after layer 0; pairs whose senders are not all before the
    receiver's layer are skipped.

    Rows: step, signal="path_patching", sender, receiver, dataset, value, side,
    method, baseline (clean loss), stderr.
    """
    models = as_models(models)
    cfg = config_of(models)
    tokens, name = _default_tokens(tokens, cfg, batch_size, seq_len, seed, dataset)
    reference = None if reference is None else check_tokens(reference, cfg)
    if method not in METHODS:
        raise BehaviorError(f"unknown ablation method {method!r}; use one of {METHODS}")
    bad = set(sides) - set(SIDES)
    if bad:
        raise BehaviorError(f"unknown sides {sorted(bad)}; use some of {SIDES}")
    if senders is None:
        senders = [f"{layer}:*" for layer in range(cfg.n_layers - 1)]
    sender_sets = parse_head_sets(senders, cfg)
    if receivers is None:
        receivers = [head_label(l, h) for l, h in all_heads(cfg) if l > 0]
    receiver_heads = []
    for label, hs in parse_head_sets(receivers, cfg):
        if len(hs) != 1:
            raise BehaviorError(f"receiver {label!r} must be a single head")
        receiver_heads.append((label, hs[0]))
    pairs = [
        (sl, shs, rl, rh)
        for sl, shs in sender_sets
        for rl, rh in receiver_heads
        if max(layer for layer, _ in shs) < rh[0]
    ]
    sender_layers = {layer for _, shs, _, _ in pairs for layer, _ in shs}
    receiver_layers = {rh[0] for _, _, _, rh in pairs}

    def compute(model: Transformer, s: int | None) -> pd.DataFrame:
        wanted = {f"blocks.{l}.attn.hook_z" for l in sender_layers}
        wanted |= {f"blocks.{l}.hook_resid_pre" for l in receiver_layers} | {"hook_pos_embed"}
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        clean = token_losses(logits, tokens)
        del logits
        z_eval = {l: cache[f"blocks.{l}.attn.hook_z"] for l in sender_layers}
        z_ref = clean_z(model, reference, sender_layers) if reference is not None and method != "zero" else None
        shortformer_pos = cache["hook_pos_embed"] if cfg.positional_embedding_type == "shortformer" else None
        rows = []
        for s_label, s_heads, r_label, (r_layer, r_head) in pairs:
            gen = torch.Generator().manual_seed(seed)
            values = replacement_z(method, s_heads, z_eval, z_ref, gen)
            # the senders' change to the residual stream, through their W_O only
            delta = sum((values[(l, h)] - z_eval[l][:, :, h]) @ model.blocks[l].attn.W_O[h] for l, h in s_heads)
            block = model.blocks[r_layer]
            x = block.ln1(cache[f"blocks.{r_layer}.hook_resid_pre"] + delta)
            for side in sides:
                inp = x + shortformer_pos if side in ("q", "k") and shortformer_pos is not None else x
                w = getattr(block.attn, f"W_{side.upper()}")[r_head]
                new = inp @ w + getattr(block.attn, f"b_{side.upper()}")[r_head]  # [batch, pos, d_head]

                def patch(act: Tensor, hook, new=new, r_head=r_head) -> Tensor:
                    act = act.clone()
                    act[:, :, r_head] = new
                    return act

                patched = losses_with_hooks(model, tokens, [(f"blocks.{r_layer}.attn.hook_{side}", patch)])
                value, stderr = mean_and_stderr((patched - clean).mean(1))
                rows.append(dict(step=s, signal="path_patching", sender=s_label, receiver=r_label, dataset=name,
                                 value=value, side=side, method=method, baseline=clean.mean().item(), stderr=stderr))
        return rows_frame(rows)

    return for_each_checkpoint(compute, models, step, steps, progress, "path patching")
