"""Projected SGLD: Langevin dynamics on one component of any torch model.

For the coordinates w of the component (everything else stays at w*):

    D(w)   = nbeta * grad L_B(w) + gamma * (w - w*) + weight_decay * w
    w'     = w - (eps/2) * D(w) + sqrt(eps) * xi,     xi ~ N(0, I)
    w'     = clamp(w', w* - box, w* + box)            (optional bounding box)

Reproducibility contract (a batched fast path must follow it to agree with
this kernel on identical seeds):

* Chains run in lockstep: at step t every chain uses batch t of one stream.
* Chain c owns a ``torch.Generator`` seeded with ``chain_seeds[c]``
  (:func:`chain_seed` of (seed, c) unless given). At each step it draws, for
  every parameter the component touches and in the model's parameter order,
  one standard normal tensor of that parameter's **full shape**; the
  component's coordinates take their noise from it. One draw therefore serves
  every head of a layer, and the stream is independent of which head (or which
  layer of equal shape) is sampled.
* The arithmetic per coordinate is devinterp 2.0.1's SGMCMC.sgld:
  ``d = g*nbeta; d += (wd*w + gamma*(w - w*)); w += -eps/2 * d; w += sqrt(eps)*xi``.
  With ``chain_seeds = [init_seed + c]`` and the same batches, the noise equals
  devinterp's (which draws full-shape noise from the global generator seeded
  with init_seed + c, in param_masks order).

Only the touched parameters have ``requires_grad``; the gradient is read at
the component's coordinates. Coordinates outside the component are never
written, so they stay at w* bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rllc.models.components import Component
from rllc.sampling.diagnostics import ChainDivergedError


def chain_seed(seed: int, chain: int) -> int:
    """The generator seed of chain `chain` of a run seeded `seed` (well mixed: no overlap across seeds)."""
    return int(np.random.SeedSequence([seed, chain]).generate_state(1, dtype=np.uint64)[0])


@dataclass
class StepInfo:
    loss: float  # L_B(w_t), at the weights before the step
    sq_distance: float  # |w_t - w*|^2 over the component
    log_accept: float  # MALA log acceptance ratio of the previous move (NaN at the first step)


_STALE = object()


class _ChainState:
    def __init__(self, w_star: list[Tensor], seed: int, device: torch.device):
        self.w = [w.clone() for w in w_star]
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.steps = 0
        # For the MALA ratio of the previous move w_prev -> w.
        self.w_prev: list[Tensor] | None = None
        self.potential_prev = math.nan
        self.forward_sq = math.nan


class ProjectedSGLD:
    """Several SGLD chains on one component of `model`, sharing the model's memory.

    Use as a context manager: on exit the component's coordinates are written
    back to w* and the parameters' ``requires_grad`` and ``.grad`` restored.
    """

    def __init__(self, model: nn.Module, component: Component, loss_fn: Callable[[nn.Module, Any], Tensor], *,
                 epsilon: float, nbeta: float, gamma: float, chain_seeds: Sequence[int],
                 weight_decay: float = 0.0, bounding_box: float | None = None, max_loss: float = math.inf):
        if epsilon <= 0 or nbeta <= 0 or gamma < 0 or weight_decay < 0:
            raise ValueError(f"need epsilon > 0, nbeta > 0, gamma >= 0, weight_decay >= 0; got "
                             f"epsilon={epsilon}, nbeta={nbeta}, gamma={gamma}, weight_decay={weight_decay}")
        if bounding_box is not None and bounding_box <= 0:
            raise ValueError(f"bounding_box must be positive or None, got {bounding_box}")
        self.model, self.component, self.loss_fn = model, component, loss_fn
        self.epsilon, self.nbeta, self.gamma = float(epsilon), float(nbeta), float(gamma)
        self.weight_decay, self.bounding_box, self.max_loss = float(weight_decay), bounding_box, max_loss
        params = dict(model.named_parameters())
        self._params = [params[name] for name, _ in component.entries]
        self._index = [index for _, index in component.entries]
        with torch.no_grad():
            self.w_star = [self._read(p, i).clone() for p, i in zip(self._params, self._index)]
        device = self._params[0].device
        self.chains = [_ChainState(self.w_star, s, device) for s in chain_seeds]
        self._saved = None
        self._loaded: object = _STALE  # which chain's coordinates the model holds (None: w*)

    # --- context: freeze everything but the component --------------------------------

    def __enter__(self) -> "ProjectedSGLD":
        touched = {id(p) for p in self._params}
        self._saved = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        for p, _, _ in self._saved:
            p.requires_grad_(id(p) in touched)
            p.grad = None
        return self

    def __exit__(self, *exc) -> None:
        self.load(None)
        for p, requires_grad, grad in self._saved or ():
            p.requires_grad_(requires_grad)
            p.grad = grad

    # --- reading and writing the component -----------------------------------------

    @staticmethod
    def _read(p: Tensor, index) -> Tensor:
        return p.data if index is None else p.data[index]

    @staticmethod
    def _write(p: Tensor, index, value: Tensor) -> None:
        if index is None:
            p.data.copy_(value)
        else:
            p.data[index] = value

    def load(self, chain: int | None) -> None:
        """Put chain `chain`'s coordinates (or w* for None) into the model."""
        if chain is not None and self._loaded == chain:
            return
        values = self.w_star if chain is None else self.chains[chain].w
        with torch.no_grad():
            for p, i, v in zip(self._params, self._index, values):
                self._write(p, i, v)
        self._loaded = chain

    # --- one SGLD step -----------------------------------------------------------------

    def step(self, chain: int, batch: Any, loss_offset: float = 0.0) -> StepInfo:
        """Advance chain `chain` by one step on `batch`; returns the loss before the step.

        `loss_offset` is subtracted from the loss in the MALA potential (the
        estimator passes L_B(w*), which removes most of the batch-to-batch
        variation from the acceptance ratio).
        """
        state = self.chains[chain]
        t = state.steps
        self.load(chain)
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            loss = self.loss_fn(self.model, batch)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                self._diverged(chain, t, f"the minibatch loss is {loss_value}")
            if loss_value > self.max_loss:
                self._diverged(chain, t, f"the loss exploded to {loss_value:.4g} (threshold {self.max_loss:.4g})")
            loss.backward()

        eps, sqrt_eps = self.epsilon, self.epsilon ** 0.5
        # Squared norms are summed in float64: the MALA ratio subtracts two sums of size ~eps * n_coords.
        dist_sq, norm_sq, forward_sq, backward_sq = [], [], [], []
        w_prev = state.w_prev if state.w_prev is not None else [None] * len(state.w)
        new_w = []
        with torch.no_grad():
            for p, index, w, w0, wp in zip(self._params, self._index, state.w, self.w_star, w_prev):
                g = torch.zeros_like(w) if p.grad is None else self._read_grad(p, index)
                diff = w - w0
                drift = g.mul(self.nbeta)  # D(w), in devinterp's order of operations
                prior = diff.mul(self.gamma)
                if self.weight_decay:
                    prior = w.mul(self.weight_decay) + prior
                    norm_sq.append(_sq(w))
                drift.add_(prior)
                w_next = w.clone()
                w_next.add_(drift, alpha=-0.5 * eps)
                noise = torch.randn(p.shape, generator=state.generator, dtype=p.dtype, device=p.device)
                w_next.add_(noise if index is None else noise[index], alpha=sqrt_eps)
                if self.bounding_box is not None:
                    torch.clamp_(w_next, min=w0 - self.bounding_box, max=w0 + self.bounding_box)
                dist_sq.append(_sq(diff))
                forward_sq.append(_sq(w_next - w + (0.5 * eps) * drift))
                if wp is not None:
                    backward_sq.append(_sq(wp - w + (0.5 * eps) * drift))
                new_w.append(w_next)
        sq_dist, forward_sq = _total(dist_sq), _total(forward_sq)
        sq_norm_w = _total(norm_sq)

        if not math.isfinite(forward_sq):
            self._diverged(chain, t, "the gradient or the weights became NaN/Inf")
        potential = (self.nbeta * (loss_value - loss_offset) + 0.5 * self.gamma * sq_dist
                     + 0.5 * self.weight_decay * sq_norm_w)
        log_accept = math.nan
        if state.w_prev is not None:
            # q(x'|x) = N(x - eps/2 D(x), eps I); ratio of the move w_prev -> w and its reverse.
            log_accept = -(potential - state.potential_prev) - (_total(backward_sq) - state.forward_sq) / (2 * eps)
        state.w_prev, state.w = state.w, new_w
        state.potential_prev, state.forward_sq = potential, forward_sq
        state.steps += 1
        self._loaded = _STALE  # the model holds this chain's previous coordinates
        return StepInfo(loss=loss_value, sq_distance=sq_dist, log_accept=log_accept)

    @staticmethod
    def _read_grad(p: Tensor, index) -> Tensor:
        return p.grad if index is None else p.grad[index]

    def _diverged(self, chain: int, step: int, reason: str):
        raise ChainDivergedError(self.component.name, chain, step, reason,
                                 epsilon=self.epsilon, gamma=self.gamma, nbeta=self.nbeta)


def _sq(x: Tensor) -> Tensor:
    return x.pow(2).sum(dtype=torch.float64)


def _total(terms: list[Tensor]) -> float:
    return float(torch.stack(terms).sum()) if terms else 0.0
