"""The generic back-end: SGLD chains on one component of any torch model, with any loss.

One :class:`rllc.sampling.kernel.ProjectedSGLD` per component; chains in
lockstep on one minibatch stream (step t: batch t for every chain). Called by
the entry point ``rllc.sampling.llc``; never calls back up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from rllc.models.components import Component
from rllc.losses import BatchStream, LossFn
from rllc.sampling.data import reference_losses
from rllc.sampling.kernel import ProjectedSGLD
from rllc.sampling.observables import TokenLossObserver
from rllc.sampling.result import LLCEstimate, assemble
from rllc.sampling.settings import SGLDSettings


def run(model: nn.Module, stream: BatchStream, loss_fn: LossFn, comp: Component, settings: SGLDSettings,
        seeds: Sequence[int], hyper: dict[str, Any], on_step: Callable[[int], None] | None = None,
        observer: TokenLossObserver | None = None) -> LLCEstimate:
    """The estimate of one component; `hyper` (seed, data refinement...) joins the settings in its record.
    `on_step(t)` is called after step t of every chain (progress, or any per-step plug-in); `observer`
    records its probe sets' per-token losses at each chain's state w_t of the draws it wants."""
    s = settings
    start = time.perf_counter()
    steps = s.burn_in + s.draws
    ref = reference_losses(model, loss_fn, stream, steps)
    init_loss = float(ref[s.burn_in:].mean())
    kernel = ProjectedSGLD(model, comp, loss_fn, settings=s, chain_seeds=seeds, max_loss=s.max_loss(init_loss))
    losses = np.empty((s.chains, steps))
    sq_dist = np.empty((s.chains, steps))
    log_accept = np.full((s.chains, steps), np.nan)
    with kernel:
        for t in range(steps):
            batch = stream[t]
            for c in range(s.chains):
                if observer is not None and observer.wants(t):
                    kernel.load(c)  # w_t of chain c, the state step t starts from (step() would load it too)
                    observer.record(comp.name, c, observer.evaluate(model))
                info = kernel.step(c, batch, loss_offset=ref[t])
                losses[c, t], sq_dist[c, t], log_accept[c, t] = info.loss, info.sq_distance, info.log_accept
            if on_step is not None:
                on_step(t)
    seconds = time.perf_counter() - start
    return assemble(losses=losses, sq_dist=sq_dist, log_accept=log_accept, ref=ref, init_loss=init_loss,
                    settings=s, n_distinct=stream.n_distinct, seconds=seconds, component=comp.name,
                    n_coords=comp.n_coords, hyper=hyper)
