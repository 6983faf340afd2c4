"""The SGLD update and its MALA diagnostic, once, for K stacked chains.

Both back-ends use this: the generic kernel (``rllc.sampling.kernel``, K = its
chains, one row at a time) and the batched head sampler
(``rllc.sampling.fast``, K = heads x chains of a layer). A block holds, per
parameter the component touches, a [K, ...] tensor of the chains' current
coordinates; the caller supplies the gradients of the minibatch loss and the
standard normal noise (the noise is part of each back-end's reproducibility
contract, so it is drawn there).

With D(w) = nbeta * grad L_B(w) + gamma * (w - w*) + weight_decay * w:

sgld (Welling & Teh 2011; devinterp 2.0.1's SGMCMC.sgld, same float order)::

    w' = w - (eps/2) D(w) + sqrt(eps) sigma xi           (sigma = noise_level, 1 for SGLD)

rmsprop (pSGLD: Li, Chen, Carlson & Carin 2016, "Preconditioned stochastic
gradient Langevin dynamics for deep neural networks", AAAI; devinterp 2.0.1's
SGMCMC.rmsprop_sgld, same float order, without the Gamma correction term as
there)::

    V  = alpha V + (1 - alpha) g*g          g = grad L_B(w), V_0 = 0
    G  = 1 / (rmsprop_eps + sqrt(V))
    w' = w - (eps/2) G D(w) + sqrt(eps G) sigma xi

then the optional bounding box clamps w' to w* +- box.

MALA diagnostic. The log Metropolis-Hastings ratio of each move w_prev -> w,
under the exact potential U(w) = nbeta (L_B(w) - L_B(w*)) + gamma/2 |w - w*|^2
+ wd/2 |w|^2 on the batch of the step that follows, and the proposal the
sampler used: N(w - (eps/2) G D(w), eps G) with G = 1 for sgld. For rmsprop G
is the preconditioner of that move, held fixed for the reverse move as well
(so the log-determinants cancel): the ratio is exact for a proposal with that
fixed G; that G itself adapts along the chain is not in it. Sums of squares
are accumulated in float64 (the ratio subtracts two sums of size ~eps x coords).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from rllc.sampling.diagnostics import ChainDivergedError
from rllc.sampling.settings import SGLDSettings


def accumulator(device: torch.device) -> torch.dtype:
    """float64 for the sums of squares, except where the device has none (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sq(x: Tensor) -> Tensor:
    """Per-row sum of squares in float64 (see accumulator): [k, ...] -> [k]."""
    return x.pow(2).flatten(1).sum(-1, dtype=accumulator(x.device))


def noise_streams(seeds: Sequence[int], antithetic: bool) -> tuple[list[int], list[bool]]:
    """Per chain, the seed of the generator its noise is drawn from and whether that noise is negated. Plain:
    chain c's own seed. Antithetic pairs (settings.antithetic): chain 2i+1 draws from chain 2i's seed and
    negates, so its noise is exactly -1 times its partner's at every step (its own seed is unused). Both
    back-ends take their noise through this, so they stay equal on the same seeds."""
    if not antithetic:
        return list(seeds), [False] * len(seeds)
    return [seeds[c - c % 2] for c in range(len(seeds))], [c % 2 == 1 for c in range(len(seeds))]


class ChainBlock:
    """K chains' coordinates, stacked [K, ...] per parameter, and what the update carries between steps.

    `labels[k]` = (component name, chain index) of row k, for error messages.
    """

    def __init__(self, w_star: Sequence[Tensor], settings: SGLDSettings, labels: Sequence[tuple[str, int]]):
        """w_star: [K, ...] per parameter, owned by the block and never written (rows may share memory: the
        generic kernel passes one copy of w* expanded over its chains, so w* costs one copy, not K)."""
        self.settings = settings
        self.labels = list(labels)
        self.w_star = [w.detach() for w in w_star]
        self.w = [w.contiguous().clone() for w in self.w_star]
        k = self.w_star[0].shape[0]
        if len(self.labels) != k:
            raise ValueError(f"{len(self.labels)} labels for {k} chains")
        self.has_prev = np.zeros(k, dtype=bool)
        self.w_prev = [torch.zeros_like(w) for w in self.w]
        rms = settings.sampler == "rmsprop"
        self.square_avg = [torch.zeros_like(w) for w in self.w] if rms else None
        self.precond_prev = [torch.ones_like(w) for w in self.w] if rms else None
        self.potential_prev = np.full(k, np.nan)
        self.forward_sq_prev = np.full(k, np.nan)

    @property
    def size(self) -> int:
        return len(self.labels)

    def check_losses(self, rows: slice, losses: np.ndarray, step: int, max_loss: float) -> None:
        """Raise ChainDivergedError for the first chain of `rows` whose loss is not finite or exploded."""
        for k, value in zip(range(*rows.indices(self.size)), losses):
            if not math.isfinite(value):
                self.diverged(k, step, f"the minibatch loss is {value}")
            if value > max_loss:
                self.diverged(k, step, f"the loss exploded to {value:.4g} (threshold {max_loss:.4g})")

    def diverged(self, k: int, step: int, reason: str):
        s = self.settings
        name, chain = self.labels[k]
        raise ChainDivergedError(name, chain, step, reason, epsilon=s.epsilon, gamma=s.gamma, nbeta=s.nbeta)

    @torch.no_grad()
    def step(self, rows: slice, grads: Sequence[Tensor], noise: Sequence[Tensor], losses: np.ndarray,
             loss_offset: float, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Move chains `rows` one step; grads and noise are [len(rows), ...] per parameter.

        losses: L_B(w) of these chains at their current coordinates (the loss the gradients are of);
        loss_offset: L_B(w*) on the same batch. Returns (|w - w*|^2 before the move, log MALA ratio of
        the previous move, NaN where there is none), both [len(rows)].
        """
        s = self.settings
        eps, sqrt_eps = s.epsilon, s.epsilon ** 0.5
        rms = self.square_avg is not None
        n = len(losses)
        device = self.w[0].device
        dist_sq, norm_sq, forward_sq, backward_sq = (torch.zeros(n, dtype=accumulator(device), device=device)
                                                     for _ in range(4))
        for i, (g, xi) in enumerate(zip(grads, noise)):
            w, w0, wp = self.w[i][rows], self.w_star[i][rows], self.w_prev[i][rows]
            diff = w - w0
            prior = diff.mul(s.gamma)
            if s.weight_decay:
                prior = w.mul(s.weight_decay) + prior
                norm_sq += sq(w)
            if rms:
                v = self.square_avg[i][rows]
                v.mul_(s.rmsprop_alpha).addcmul_(g, g, value=1 - s.rmsprop_alpha)
                precond = 1.0 / (torch.sqrt(v) + s.rmsprop_eps)
                precond_sqrt = precond.sqrt()
                drift = precond * g.mul(s.nbeta)  # devinterp's order of operations
                drift.add_(precond * prior)
                # The reverse of the previous move uses that move's preconditioner (see the module docstring).
                g_prev = self.precond_prev[i][rows]
                raw = g.mul(s.nbeta).add_(prior)
                backward = wp - w + (0.5 * eps) * g_prev * raw
                backward_sq += sq(backward / g_prev.sqrt())
            else:
                drift = g.mul(s.nbeta)  # D(w) in devinterp's order of operations
                drift.add_(prior)
                backward_sq += sq(wp - w + (0.5 * eps) * drift)
            w_next = w.clone()
            w_next.add_(drift, alpha=-0.5 * eps)
            w_next.add_(precond_sqrt * xi if rms else xi, alpha=sqrt_eps * s.noise_level)
            if s.bounding_box is not None:
                torch.clamp_(w_next, min=w0 - s.bounding_box, max=w0 + s.bounding_box)
            dist_sq += sq(diff)
            forward = w_next - w + (0.5 * eps) * drift
            forward_sq += sq(forward / precond_sqrt if rms else forward)
            wp.copy_(w)
            w.copy_(w_next)
            if rms:
                self.precond_prev[i][rows] = precond
        dist, fwd, bwd, norm = (x.cpu().numpy() for x in (dist_sq, forward_sq, backward_sq, norm_sq))
        for j, k in enumerate(range(*rows.indices(self.size))):
            if not math.isfinite(fwd[j]):
                self.diverged(k, step, "the gradient or the weights became NaN/Inf")
        potential = s.nbeta * (np.asarray(losses, dtype=np.float64) - loss_offset) + 0.5 * s.gamma * dist \
            + 0.5 * s.weight_decay * norm
        had = self.has_prev[rows]
        log_accept = np.where(had, -(potential - self.potential_prev[rows]) - (bwd - self.forward_sq_prev[rows])
                              / (2 * eps * s.noise_level ** 2), np.nan)
        self.has_prev[rows] = True
        self.potential_prev[rows], self.forward_sq_prev[rows] = potential, fwd
        return dist, log_accept

    def coordinates(self, k: int) -> list[Tensor]:
        """Chain k's current coordinates, one tensor per parameter."""
        return [w[k] for w in self.w]
