"""Projected SGLD: Langevin dynamics on one component of any torch model.

The coordinates w of the component move (everything else stays at w*) by
the update of ``rllc.sampling.update`` (plain SGLD or RMSProp-preconditioned
SGLD, then the optional bounding box); this module owns the model, the
gradients and the noise.

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
* The arithmetic per coordinate is devinterp 2.0.1's SGMCMC.sgld (or
  rmsprop_sgld), in its order of float operations. With ``chain_seeds = [init_seed + c]`` and the same batches, the noise equals
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
from rllc.sampling.settings import SGLDSettings, split_settings
from rllc.sampling.update import ChainBlock, noise_streams


def chain_seed(seed: int, chain: int) -> int:
    """The generator seed of chain `chain` of a run seeded `seed` (well mixed: no overlap across seeds)."""
    return int(np.random.SeedSequence([seed, chain]).generate_state(1, dtype=np.uint64)[0])


@dataclass
class StepInfo:
    loss: float  # L_B(w_t), at the weights before the step
    sq_distance: float  # |w_t - w*|^2 over the component
    log_accept: float  # MALA log acceptance ratio of the previous move (NaN at the first step)


_STALE = object()


class ProjectedSGLD:
    """Several SGLD chains on one component of `model`, sharing the model's memory.

    Use as a context manager: on exit the component's coordinates are written
    back to w* and the parameters' ``requires_grad`` and ``.grad`` restored.
    The update arithmetic is :class:`rllc.sampling.update.ChainBlock`'s (one
    row per chain); this class owns the model, the gradients and the noise.
    """

    def __init__(self, model: nn.Module, component: Component, loss_fn: Callable[[nn.Module, Any], Tensor], *,
                 chain_seeds: Sequence[int], settings: SGLDSettings | None = None, max_loss: float = math.inf,
                 **setting_values: Any):
        settings = split_settings(setting_values, settings)
        self.model, self.component, self.loss_fn = model, component, loss_fn
        self.settings, self.max_loss = settings, max_loss
        params = dict(model.named_parameters())
        self._params = [params[name] for name, _ in component.entries]
        self._index = [index for _, index in component.entries]
        with torch.no_grad():  # one copy of w* (the model's memory is overwritten while sampling), seen by every chain
            w_star = [self._read(p, i).clone().unsqueeze(0).expand(len(chain_seeds), *self._read(p, i).shape)
                      for p, i in zip(self._params, self._index)]
        self.block = ChainBlock(w_star, settings, [(component.name, c) for c in range(len(chain_seeds))])
        device = self._params[0].device
        noise_seeds, self._negate = noise_streams(chain_seeds, settings.antithetic)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in noise_seeds]
        self.steps = [0] * len(chain_seeds)
        self._saved = None
        self._loaded: object = _STALE  # which chain's coordinates the model holds (None: w*)

    @property
    def w_star(self) -> list[Tensor]:
        """The component's coordinates at w*, one tensor per parameter entry."""
        return [w[0] for w in self.block.w_star]

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
        block = self.block
        values = self.w_star if chain is None else block.coordinates(chain)
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
        t = self.steps[chain]
        self.load(chain)
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            loss = self.loss_fn(self.model, batch)
            loss_value = float(loss.detach())
            rows = slice(chain, chain + 1)
            self.block.check_losses(rows, [loss_value], t, self.max_loss)
            loss.backward()
        with torch.no_grad():
            grads = [(torch.zeros_like(self._read(p, i)) if p.grad is None else self._read_grad(p, i)).unsqueeze(0)
                     for p, i in zip(self._params, self._index)]
            noise = []
            for p, i in zip(self._params, self._index):
                full = torch.randn(p.shape, generator=self.generators[chain], dtype=p.dtype, device=p.device)
                if self._negate[chain]:
                    full = full.neg_()
                noise.append((full if i is None else full[i]).unsqueeze(0))
        sq_dist, log_accept = self.block.step(rows, grads, noise, [loss_value], loss_offset, t)
        self.steps[chain] += 1
        self._loaded = _STALE  # the model holds this chain's previous coordinates
        return StepInfo(loss=loss_value, sq_distance=float(sq_dist[0]), log_accept=float(log_accept[0]))

    @staticmethod
    def _read_grad(p: Tensor, index) -> Tensor:
        return p.grad if index is None else p.grad[index]
