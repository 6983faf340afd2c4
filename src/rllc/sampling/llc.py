"""Local learning coefficient estimation: weight- and data-refined, any torch model.

    llc_hat = nbeta * ( mean_t L_{B_t}(w_t) - L_init )                 (standard)
    llc_hat = nbeta *   mean_t ( L_{B_t}(w_t) - L_{B_t}(w*) )          (paired)

w_t are SGLD draws from the localized tempered posterior restricted to a
component (see kernel.py), B_t the minibatch of step t (shared by all
chains). The loss of draw t is the one computed for the gradient of step t,
at the weights before that step, so draw 0 is w* itself when burn_in = 0.

The reference loss. ``L_init = mean_t L_{B_t}(w*)`` over exactly the draws'
batches (t = burn_in .. burn_in + draws - 1, each batch weighted by how often
the cycling stream hands it to a draw). Any other reference biases the
standard estimator by ``nbeta * (mean loss at w* over the draws' batches -
the reference)``: with ~n/log n for nbeta that is several units (a singular
regression with lambda = 6 gave -4.8 with a reference over the first 16 of
20 batches; see docs/llc.md). With this reference both estimators have the
same mean; they differ in their per-draw values, and so in their standard
error and R-hat. The paired one (the default) removes the batch-to-batch
variation of the loss at w*, which cancels exactly in the mean, so its
standard error is the honest one; the standard one's overstates the error.
Each distinct batch's loss at w* is computed once (one forward pass), so
both cost the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rllc.models.components import ComponentSpec, resolve_component
from rllc.sampling.data import (BatchStream, LossFn, TeacherTargets, check_finite_weights, next_token_loss,
                                teacher_loss)
from rllc.sampling.diagnostics import trace_summary
from rllc.sampling.kernel import ProjectedSGLD, chain_seed


@dataclass(eq=False)
class LLCEstimate:
    """An LLC estimate with its spread, traces, hyperparameters and diagnostics."""

    mean: float
    std: float  # across chains (ddof=1; devinterp reports ddof=0)
    per_chain: np.ndarray
    loss_trace: np.ndarray = field(repr=False)  # [chains, draws]: L_{B_t}(w_t), burn-in excluded
    init_loss: float
    component: str
    n_coords: int
    hyperparameters: dict[str, Any]
    diagnostics: dict[str, Any] = field(repr=False)

    def to_row(self) -> dict[str, Any]:
        """One flat row for a tidy table: the estimate, its hyperparameters and scalar diagnostics."""
        d = self.diagnostics
        row = {
            "component": self.component,
            "n_coords": self.n_coords,
            "estimator": d["estimator"],
            "llc_mean": self.mean,
            "llc_std": self.std,
            "llc_se": d["se"],
            "init_loss": self.init_loss,
            **self.hyperparameters,
            "rhat": d["rhat"],
            "ess": d["ess"],
            "ess_tail": d["ess_tail"],
            "mala_accept": d["mala_accept"],
            "distance_max": float(np.max(d["distance_max"])),
            "seconds": d["seconds"],
            "seconds_per_step": d["seconds_per_step"],
        }
        for name in ("standard", "paired"):
            if name in d:
                for key in ("mean", "std", "se"):
                    row[f"llc_{name}_{key}"] = d[name][key]
        return row


def estimate_llc(
    model: nn.Module,
    data: Iterable,
    *,
    loss_fn: LossFn | None = None,
    component: ComponentSpec = None,
    epsilon: float = 1e-3,
    nbeta: float = 30.0,
    gamma: float = 200.0,
    chains: int = 4,
    draws: int = 200,
    burn_in: int = 0,
    seed: int = 0,
    paired: bool = True,
    teacher: nn.Module | None = None,
    weight_decay: float = 0.0,
    bounding_box: float | None = None,
    chain_seeds: Sequence[int] | None = None,
    max_loss_increase: float | None = None,
    fast: bool | str = "auto",
) -> LLCEstimate:
    """Estimate the (refined) LLC of `model` at its current weights w*.

    data: iterable of batches, cycled (batch t at step t for every chain).
    loss_fn(model, batch) -> scalar mean loss; None: next-token cross-entropy
        on token batches, or with `teacher`, cross-entropy against the
        teacher's next-token distribution on the batches' contexts (a custom
        loss_fn with a teacher receives (tokens, teacher_log_probs) batches).
    component: which coordinates move (see rllc.models.components); None: all.
    paired: report the paired estimator nbeta * mean_t(L_{B_t}(w_t) - L_{B_t}(w*))
        (default) rather than the standard one; both have the same mean (the
        reference loss is over the draws' own batches, see the module
        docstring) and both are in .diagnostics; they differ in standard error.
    chain_seeds: explicit generator seeds per chain (default chain_seed(seed, c)).
    max_loss_increase: a draw whose loss exceeds L_init by more than this
        raises ChainDivergedError (default 10 * max(1, |L_init|)).

    fast: "auto" (default) uses the batched attention-head sampler of
        rllc.sampling.fast when the model is a supported attention-only
        Transformer, the component is one head "l:h" and the loss is the
        default next-token loss; True requires it (error if unsupported);
        False always uses the generic kernel. Both follow the same
        reproducibility contract, so they agree to float tolerance.

    The model is used in its current train/eval mode and left exactly as it
    was (weights bit for bit, requires_grad, .grad), also after an error.
    """
    if fast not in (True, False, "auto"):
        raise ValueError(f"fast must be True, False or 'auto', got {fast!r}")
    if fast is not False:
        from rllc.sampling import fast as fast_mod

        reason = fast_mod.unsupported_reason(model, [component], loss_fn=loss_fn, teacher=teacher)
        if reason is None:
            return fast_mod.estimate_llc_sweep(
                model, data, components=[component], epsilon=epsilon, nbeta=nbeta, gamma=gamma, chains=chains,
                draws=draws, burn_in=burn_in, seed=seed, paired=paired,
                weight_decay=weight_decay, bounding_box=bounding_box, chain_seeds=chain_seeds,
                max_loss_increase=max_loss_increase, fast=True)[component.strip()]
        if fast is True:
            raise ValueError(f"fast=True, but the fast path does not apply: {reason}")
    if chains < 1 or draws < 1 or burn_in < 0:
        raise ValueError(f"need chains >= 1, draws >= 1, burn_in >= 0; got "
                         f"chains={chains}, draws={draws}, burn_in={burn_in}")
    comp = resolve_component(model, component)
    if loss_fn is None:
        loss_fn = teacher_loss if teacher is not None else next_token_loss
    stream = BatchStream(data, TeacherTargets(teacher) if teacher is not None else None)
    seeds = list(chain_seeds) if chain_seeds is not None else [chain_seed(seed, c) for c in range(chains)]
    if len(seeds) != chains:
        raise ValueError(f"chain_seeds has {len(seeds)} seeds for {chains} chains")
    check_finite_weights(model)

    start = time.perf_counter()
    steps = burn_in + draws
    ref = reference_losses(model, loss_fn, stream, steps)
    init_loss = float(ref[burn_in:].mean())
    increase = 10.0 * max(1.0, abs(init_loss)) if max_loss_increase is None else max_loss_increase
    kernel = ProjectedSGLD(model, comp, loss_fn, epsilon=epsilon, nbeta=nbeta, gamma=gamma, chain_seeds=seeds,
                           weight_decay=weight_decay, bounding_box=bounding_box, max_loss=init_loss + increase)
    losses = np.empty((chains, steps))
    sq_dist = np.empty((chains, steps))
    log_accept = np.full((chains, steps), np.nan)
    with kernel:
        for t in range(steps):
            batch = stream[t]
            for c in range(chains):
                info = kernel.step(c, batch, loss_offset=ref[t])
                losses[c, t], sq_dist[c, t], log_accept[c, t] = info.loss, info.sq_distance, info.log_accept
    seconds = time.perf_counter() - start

    return _assemble(losses=losses, sq_dist=sq_dist, log_accept=log_accept, ref=ref, init_loss=init_loss,
                     burn_in=burn_in, draws=draws, chains=chains, nbeta=nbeta, paired=paired,
                     n_distinct=stream.n_distinct, seconds=seconds, component=comp.name, n_coords=comp.n_coords,
                     hyper=dict(epsilon=epsilon, nbeta=nbeta, gamma=gamma, weight_decay=weight_decay,
                                bounding_box=bounding_box, chains=chains, draws=draws, burn_in=burn_in,
                                seed=seed, paired=paired, reference="draws",
                                data_refinement="teacher" if teacher is not None else "data"))


def _assemble(*, losses: np.ndarray, sq_dist: np.ndarray, log_accept: np.ndarray, ref: np.ndarray,
              init_loss: float, burn_in: int, draws: int, chains: int, nbeta: float, paired: bool,
              n_distinct: int, seconds: float, component: str, n_coords: int, hyper: dict[str, Any],
              steps_done: int | None = None) -> LLCEstimate:
    """An LLCEstimate from the per-step records of one component's chains (shared by the fast path)."""
    steps = burn_in + draws
    trace = losses[:, burn_in:]
    standard = _summarize(nbeta * (trace - init_loss))
    diagnostics: dict[str, Any] = {
        "estimator": "paired" if paired else "standard",
        "standard": standard,
        "chain_mean_loss": trace.mean(axis=1),
        "chain_std_loss": trace.std(axis=1, ddof=1) if draws > 1 else np.full(chains, np.nan),
        "mala_accept_per_chain": np.nanmean(np.minimum(1.0, np.exp(np.minimum(log_accept, 0.0))), axis=1)
        if steps > 1 else np.full(chains, np.nan),
        "distance_final": np.sqrt(sq_dist[:, -1]),
        "distance_max": np.sqrt(sq_dist.max(axis=1)),
        "distance_trace": np.sqrt(sq_dist),
        "burn_in_loss_trace": losses[:, :burn_in],
        "n_distinct_batches": n_distinct,
        "seconds": seconds,
        "seconds_per_step": seconds / ((steps_done or steps) * chains),
    }
    diagnostics["mala_accept"] = float(np.mean(diagnostics["mala_accept_per_chain"]))
    diagnostics["paired"] = paired_summary = _summarize(nbeta * (trace - ref[None, burn_in:]))
    diagnostics["loss_at_w_star_trace"] = ref[burn_in:]
    chosen = paired_summary if paired else standard
    diagnostics.update(rhat=chosen["rhat"], ess=chosen["ess"], ess_tail=chosen["ess_tail"], se=chosen["se"],
                       burn_in=burn_in)
    return LLCEstimate(mean=chosen["mean"], std=chosen["std"], per_chain=chosen["per_chain"], loss_trace=trace,
                       init_loss=init_loss, component=component, n_coords=n_coords, hyperparameters=hyper,
                       diagnostics=diagnostics)


def _summarize(draw_values: np.ndarray) -> dict[str, Any]:
    """Estimate, spreads and ArviZ diagnostics from per-draw values nbeta*(L - reference), [chains, draws].

    `se` is the Monte Carlo standard error of the mean of all draws (arviz-stats' MCSE, which accounts
    for autocorrelation within chains and differences between them).
    """
    per_chain = draw_values.mean(axis=1)
    summary = trace_summary(draw_values)
    return {
        "mean": float(per_chain.mean()),
        "std": float(per_chain.std(ddof=1)) if per_chain.size > 1 else math.nan,
        "per_chain": per_chain,
        "se": summary["mcse"],
        "draw_std": float(draw_values.std(ddof=1)) if draw_values.size > 1 else math.nan,
        "rhat": summary["rhat"],
        "ess": summary["ess_bulk"],
        "ess_tail": summary["ess_tail"],
    }


@torch.no_grad()
def reference_losses(model: nn.Module, loss_fn: LossFn, stream: BatchStream, steps: int) -> np.ndarray:
    """L_{B_t}(w*) for t = 0..steps-1: one forward pass per distinct batch, repeated as the stream cycles."""
    by_batch: dict[int, float] = {}
    out = np.empty(steps)
    for t in range(steps):
        i = stream.index(t)
        if i not in by_batch:
            value = float(loss_fn(model, stream[t]))
            if not math.isfinite(value):
                raise ValueError(f"the loss at w* on batch {i} is {value} although data and weights are finite; "
                                 "check loss_fn")
            by_batch[i] = value
        out[t] = by_batch[i]
    return out
