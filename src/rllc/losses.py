"""Batches and losses, shared by the estimators (rllc.sampling and rllc.curvature import them; neither
owns them): the minibatch stream, finiteness checks, token ids and logits of a batch, and the
next-token and teacher losses.

Every SGLD chain sees batch t of the same stream at step t (steps count burn-in
too), and the reference loss at w* is taken over the batches of the draws
(rllc.sampling.data.reference_losses). The stream caches batches the first time they are read and replays
them when the data run out, like ``itertools.cycle``: a shuffling DataLoader is
read once, so its first-epoch order is the order every chain sees (this is
also what devinterp does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[nn.Module, Any], Tensor]


class NonFiniteDataError(ValueError):
    """A batch (or the teacher's targets) contains NaN or Inf."""


class BatchStream:
    """Batch t of `data`, cycling; each batch is checked for NaN/Inf once, when first read, and moved to
    `device` (the model's) if given, so CPU batches serve a model on a GPU."""

    def __init__(self, data: Iterable, prepare: Callable[[Any], Any] | None = None,
                 device: torch.device | None = None):
        if isinstance(data, Tensor):
            raise TypeError("data must be an iterable of batches (e.g. a list of LongTensor[batch, pos]), "
                            "not one tensor; wrap a single batch in a list")
        self._source: Iterator | None = iter(data)
        self._cache: list = []
        self._prepare = prepare
        self._prepared: tuple[int, Any] | None = None
        self._device = device

    def raw(self, t: int) -> Any:
        while self._source is not None and len(self._cache) <= t:
            try:
                batch = next(self._source)
            except StopIteration:
                self._source = None
                break
            check_finite(batch, f"batch {len(self._cache)} of the data")
            self._cache.append(batch if self._device is None else to_device(batch, self._device))
        if not self._cache:
            raise ValueError("data yielded no batches")
        return self._cache[t % len(self._cache)]

    def index(self, t: int) -> int:
        """Which distinct batch step t reads (t itself until the data run out, then t modulo their number)."""
        self.raw(t)
        return t % len(self._cache)

    def __getitem__(self, t: int) -> Any:
        """Batch t after `prepare` (e.g. teacher targets); the last one is kept for the chains of a step."""
        if self._prepared is not None and self._prepared[0] == t:
            return self._prepared[1]
        batch = self.raw(t)
        if self._prepare is not None:
            batch = self._prepare(batch)
        self._prepared = (t, batch)
        return batch

    @property
    def n_distinct(self) -> int:
        """Distinct batches read so far."""
        return len(self._cache)


def to_device(obj: Any, device: torch.device) -> Any:
    """The tensors of a batch (a tensor, or a dict / tuple / list of them) on `device`."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (tuple, list)):
        values = [to_device(value, device) for value in obj]
        return type(obj)(*values) if hasattr(obj, "_fields") else type(obj)(values)
    return obj


def check_finite(obj: Any, where: str, path: str = "") -> None:
    """Raise NonFiniteDataError naming the first tensor in `obj` with NaN or Inf."""
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            bad = ~torch.isfinite(obj)
            if bool(bad.any()):
                n_nan = int(torch.isnan(obj).sum())
                first = tuple(int(i) for i in bad.nonzero()[0])
                field = f" field {path}" if path else ""
                raise NonFiniteDataError(
                    f"{where}{field} (shape {tuple(obj.shape)}) contains {n_nan} NaN and "
                    f"{int(bad.sum()) - n_nan} Inf values, the first at index {first}")
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            check_finite(value, where, f"{path}[{key!r}]")
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        for i, value in enumerate(obj):
            check_finite(value, where, f"{path}[{i}]")


def check_finite_weights(model: nn.Module) -> None:
    """Raise ValueError naming the first parameter with NaN or Inf: every estimator refuses such a w* alike."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"parameter {name} of the model contains NaN/Inf at w*: the checkpoint is broken")


def tokens_of(batch: Any) -> Tensor:
    """The token ids of a batch: a LongTensor, a dict with 'input_ids', or the first element of a tuple."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return batch["input_ids"]
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"cannot find token ids in a batch of type {type(batch).__name__}; "
                    "pass loss_fn=... for data that are not token batches")


def logits_of(output: Any) -> Tensor:
    return output.logits if hasattr(output, "logits") else output


def next_token_losses(model: nn.Module, batch: Any) -> Tensor:
    """Per-token next-token cross-entropy [batch, pos-1] of a model mapping token ids [batch, pos] to logits
    (position p predicts token p+1)."""
    tokens = tokens_of(batch)
    log_probs = F.log_softmax(logits_of(model(tokens)), dim=-1)
    return -log_probs[..., :-1, :].gather(dim=-1, index=tokens[..., 1:, None])[..., 0]


def next_token_loss(model: nn.Module, batch: Any) -> Tensor:
    """Mean next-token cross-entropy of a model mapping token ids [batch, pos] to logits.

    Written as devinterp 2.0.1 writes it (log_softmax, gather, mean over
    batch x (pos-1)), so the same weights give the same float32 loss.
    """
    return next_token_losses(model, batch).mean()


class TeacherTargets:
    """`prepare` for data refinement by a teacher: tokens -> (tokens, teacher log-probs)."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher

    @torch.no_grad()
    def __call__(self, batch: Any) -> tuple[Tensor, Tensor]:
        tokens = tokens_of(batch)
        log_probs = F.log_softmax(logits_of(self.teacher(tokens)).float(), dim=-1)
        check_finite(log_probs, "the teacher's next-token distribution")
        return tokens, log_probs


def teacher_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Cross-entropy of the model against the teacher's soft next-token targets, at every position.

    -(1/(B*T)) sum_{b,t} sum_v p_teacher(v | x_<=t) log p_model(v | x_<=t). It
    differs from the KL divergence only by the teacher's entropy, a constant
    that cancels in L(w) - L(w*).
    """
    tokens, teacher_log_probs = batch
    log_probs = F.log_softmax(logits_of(model(tokens)), dim=-1)
    return -(teacher_log_probs.exp() * log_probs).sum(-1).mean()
