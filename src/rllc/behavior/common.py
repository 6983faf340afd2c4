"""Plumbing shared by the behaviour signals: head labels, checkpoint iteration,
default probe batches, per-token losses and tidy result frames."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from os import PathLike
from typing import Union

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from rllc.data import random_tokens, repeated_random
from rllc.models.checkpoints import CheckpointSeries, load_checkpoints
from rllc.models.config import ModelConfig
from rllc.models.transformer import Transformer
from rllc.progress import progress_bar

Models = Union[Transformer, CheckpointSeries, str, PathLike]
Head = tuple[int, int]
HeadSpec = Union[str, Head, Sequence]

# Column order of every result frame; columns a signal does not use are left out.
LEADING_COLUMNS = ("step", "signal", "head", "sender", "receiver", "dataset", "value")


class BehaviorError(ValueError):
    """Arguments that do not fit the model (a head it lacks, a batch too long, ...)."""


# --- heads ---------------------------------------------------------------

def head_label(layer: int, head: int) -> str:
    return f"{layer}:{head}"


def all_heads(cfg: ModelConfig) -> list[Head]:
    return [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]


def parse_head_set(spec: HeadSpec, cfg: ModelConfig) -> tuple[str, list[Head]]:
    """One head set and its label: ``"1:6"``, ``(1, 6)``, ``"0:*"`` (a whole layer)
    or a list of those (their union, labelled ``"0:1+0:4"``)."""
    if isinstance(spec, str):
        layer_s, _, head_s = spec.partition(":")
        if not layer_s.isdigit() or not (head_s.isdigit() or head_s == "*"):
            raise BehaviorError(f"head spec {spec!r}: write heads as 'layer:head' (e.g. '1:6') or 'layer:*'")
        layer = int(layer_s)
        heads = [(layer, h) for h in range(cfg.n_heads)] if head_s == "*" else [(layer, int(head_s))]
        label = spec
    elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        heads, label = [spec], head_label(*spec)
    elif isinstance(spec, Sequence) and len(spec) > 0:
        parts = [parse_head_set(s, cfg) for s in spec]
        heads = sorted({h for _, hs in parts for h in hs})
        label = "+".join(lbl for lbl, _ in parts)
    else:
        raise BehaviorError(f"head spec {spec!r}: expected 'l:h', 'l:*', (l, h) or a list of those")
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise BehaviorError(
                f"head {layer}:{head} is not in this model ({cfg.n_layers} layers x {cfg.n_heads} heads)"
            )
    return label, heads


def parse_head_sets(specs: Iterable[HeadSpec] | None, cfg: ModelConfig) -> list[tuple[str, list[Head]]]:
    """``None``: every single head. Otherwise one set per entry."""
    if specs is None:
        return [(head_label(*h), [h]) for h in all_heads(cfg)]
    if isinstance(specs, str) or (isinstance(specs, tuple) and all(isinstance(x, int) for x in specs)):
        specs = [specs]
    return [parse_head_set(s, cfg) for s in specs]


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


# --- models and checkpoint series ----------------------------------------

def as_models(models: Models) -> Transformer | CheckpointSeries:
    if isinstance(models, (str, PathLike)):
        return load_checkpoints(models)
    if not isinstance(models, (Transformer, CheckpointSeries)):
        raise BehaviorError(
            f"expected an rllc Transformer, a CheckpointSeries or a checkpoint directory, got {type(models).__name__}"
        )
    return models


def config_of(models: Transformer | CheckpointSeries) -> ModelConfig:
    return models.config if isinstance(models, CheckpointSeries) else models.cfg


def for_each_checkpoint(
    compute: Callable[[Transformer, int | None], pd.DataFrame],
    models: Transformer | CheckpointSeries,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "",
) -> pd.DataFrame:
    """`compute(model, step)` on one model, or on every (chosen) step of a series."""
    if isinstance(models, Transformer):
        with torch.no_grad():
            return compute(models, step)
    chosen = models.steps if steps is None else list(steps)
    missing = [s for s in chosen if s not in models]
    if missing:
        raise BehaviorError(f"steps {missing} are not in {models.path}")
    frames = []
    for s in progress_bar(chosen, desc=desc or "checkpoints", disable=not progress, unit="ckpt"):
        with torch.no_grad():
            frames.append(compute(models[s], s))
    if not frames:
        return pd.DataFrame(columns=LEADING_COLUMNS)
    return leading_columns_first(pd.concat(frames, ignore_index=True))


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    return leading_columns_first(pd.DataFrame(rows))


def leading_columns_first(df: pd.DataFrame) -> pd.DataFrame:
    lead = [c for c in LEADING_COLUMNS if c in df.columns]
    return df[lead + [c for c in df.columns if c not in lead]]


# --- probe batches -------------------------------------------------------

def default_seq_len(cfg: ModelConfig, seq_len: int | None) -> int:
    seq_len = cfg.n_ctx if seq_len is None else seq_len
    if seq_len > cfg.n_ctx:
        raise BehaviorError(f"seq_len {seq_len} exceeds the model's n_ctx {cfg.n_ctx}")
    return seq_len


def probe_batch(kind: str, cfg: ModelConfig, batch_size: int, seq_len: int | None, seed: int) -> Tensor:
    """``"random_tokens"`` (BOS + uniform tokens) or ``"repeated_random"`` (BOS +
    a random span + the same span), as long as the context allows."""
    seq_len = default_seq_len(cfg, seq_len)
    if kind == "random_tokens":
        return random_tokens(batch_size, seq_len, cfg.d_vocab, seed)
    if kind == "repeated_random":
        return repeated_random(batch_size, (seq_len - 1) // 2, cfg.d_vocab, seed)
    raise BehaviorError(f"unknown probe batch {kind!r}; use 'random_tokens' or 'repeated_random'")


def check_tokens(tokens: Tensor, cfg: ModelConfig) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise BehaviorError("tokens must be a [batch, seq] integer tensor")
    if tokens.shape[1] > cfg.n_ctx:
        raise BehaviorError(f"tokens have {tokens.shape[1]} positions, more than the model's n_ctx {cfg.n_ctx}")
    return tokens.long()


# --- forward passes ------------------------------------------------------

class _StopForward(Exception):
    pass


def _stop(tensor, hook):
    raise _StopForward


def run_until(model: Transformer, tokens: Tensor, fwd_hooks: list, last_hook: str) -> None:
    """Run hooks up to `last_hook` and skip the rest of the forward (usually the
    unembedding, the most expensive part), for signals that need no logits."""
    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (last_hook, _stop)])
    except _StopForward:
        pass


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """[batch, seq - 1]: cross-entropy of the prediction at position p for token p + 1."""
    b, n = tokens.shape
    # score every position against the next token (the last one against nothing):
    # a view of the logits, where slicing off the last position would copy them
    targets = torch.cat([tokens[:, 1:], torch.full((b, 1), -100, dtype=tokens.dtype)], dim=1)
    losses = F.cross_entropy(logits.reshape(b * n, -1), targets.reshape(-1), reduction="none", ignore_index=-100)
    return losses.view(b, n)[:, :-1]


def losses_with_hooks(model: Transformer, tokens: Tensor, fwd_hooks: list | None = None) -> Tensor:
    return token_losses(model.run_with_hooks(tokens, fwd_hooks=fwd_hooks or []), tokens)


def mean_and_stderr(per_example: Tensor) -> tuple[float, float]:
    n = per_example.numel()
    mean = per_example.mean().item()
    stderr = (per_example.std() / n**0.5).item() if n > 1 else float("nan")
    return mean, stderr
