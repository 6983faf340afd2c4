"""Lanczos: extreme eigenvalues and stochastic Lanczos quadrature (SLQ) of the spectral density.

Lanczos with full reorthogonalization (two passes of classical Gram-Schmidt
against every previous basis vector, in float64) runs on several start
vectors at once, so that SLQ's probes share each pass over the data.

Extreme eigenvalues: the Ritz values of the tridiagonal T_m. For each Ritz
value theta_i the residual |beta_m s_{m,i}| bounds the distance to the
nearest eigenvalue of the operator (exact arithmetic); that bound is the
reported error. Ritz values always lie inside [lambda_min, lambda_max], so a
converged extreme Ritz value can only underestimate the range. Power iteration
is not offered: Lanczos gives both ends, converges faster for the same number
of products, and comes with the residual bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rllc.curvature.operator import CurvatureOperator, hessian_operator, rademacher
from rllc.curvature.results import CurvatureEstimate, mean_se
from rllc.models.components import ComponentSpec
from rllc.losses import LossFn


@dataclass
class LanczosResult:
    """Tridiagonals of Lanczos runs from `alpha.shape[0]` start vectors."""

    alpha: np.ndarray  # [runs, steps]
    beta: np.ndarray  # [runs, steps]: beta[:, j] couples steps j and j+1
    lengths: np.ndarray  # [runs]: steps taken before an invariant subspace was found
    start_norm_sq: np.ndarray  # [runs]: |v0|^2 (n for Rademacher starts)
    n_hvp: int
    seconds: float

    def ritz(self, run: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), Gauss quadrature weights (sum |v0|^2) and residual bounds of one run."""
        m = int(self.lengths[run])
        t = np.diag(self.alpha[run, :m]) + np.diag(self.beta[run, :m - 1], 1) + np.diag(self.beta[run, :m - 1], -1)
        values, vectors = np.linalg.eigh(t)
        weights = vectors[0] ** 2 * self.start_norm_sq[run]
        bounds = np.abs(self.beta[run, m - 1] * vectors[m - 1])
        return values, weights, bounds


def lanczos(op: CurvatureOperator, steps: int, *, n_starts: int = 1, seed: int = 0,
            start: str = "gaussian") -> LanczosResult:
    """`steps` Lanczos steps from `n_starts` random start vectors (steps * n_starts products at most)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    started, before = time.perf_counter(), op.n_products
    gen = torch.Generator().manual_seed(seed)
    if start == "rademacher":
        v = rademacher(op.n, n_starts, gen)
    elif start == "gaussian":
        v = torch.randn(op.n, n_starts, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"start must be 'gaussian' or 'rademacher', got {start!r}")
    start_norm_sq = (v * v).sum(0).numpy()
    v = v / v.norm(dim=0)
    steps = min(steps, op.n)
    alpha, beta = np.zeros((n_starts, steps)), np.zeros((n_starts, steps))
    lengths = np.zeros(n_starts, dtype=int)
    active = np.ones(n_starts, dtype=bool)
    basis: list[torch.Tensor] = []
    v_prev, beta_prev = torch.zeros_like(v), torch.zeros(n_starts, dtype=torch.float64)
    scale = np.zeros(n_starts)
    for j in range(steps):
        cols = torch.from_numpy(np.flatnonzero(active))
        w = torch.zeros_like(v)
        w[:, cols] = op.matvec(v[:, cols])
        a = (v * w).sum(0)
        w = w - a * v - beta_prev * v_prev
        basis.append(v)
        stacked = torch.stack(basis)  # [j+1, n, runs]
        for _ in range(2):  # full reorthogonalization, twice for float64 orthogonality
            w = w - torch.einsum("inp,ip->np", stacked, torch.einsum("inp,np->ip", stacked, w))
        b = w.norm(dim=0)
        alpha[active, j] = a.numpy()[active]
        beta[active, j] = b.numpy()[active]
        lengths[active] = j + 1
        scale = np.maximum(scale, np.abs(a.numpy()) + b.numpy())
        broke = active & (b.numpy() <= 1e-10 * np.maximum(scale, 1e-300))  # invariant subspace: T is exact
        beta[broke, j] = 0.0
        active &= ~broke
        if not active.any():
            break
        v_prev, beta_prev = v, torch.where(torch.from_numpy(active), b, torch.zeros_like(b))
        v = torch.where(torch.from_numpy(active), w / b.clamp_min(1e-300), torch.zeros_like(w))
    return LanczosResult(alpha, beta, lengths, start_norm_sq, op.n_products - before, time.perf_counter() - started)


def extreme_eigenvalues(op: CurvatureOperator, steps: int = 30, *, seed: int = 0,
                        quantity_prefix: str = "") -> tuple[CurvatureEstimate, CurvatureEstimate]:
    """(lambda_max, lambda_min) of the operator, each with its residual bound, from one Lanczos run."""
    result = lanczos(op, steps, seed=seed)
    values, _, bounds = result.ritz(0)
    params = {"steps": steps, "seed": seed, "n_batches": op.n_batches}
    out = []
    for which, i in (("lambda_max", -1), ("lambda_min", 0)):
        out.append(CurvatureEstimate(
            quantity=quantity_prefix + which, value=float(values[i]), se=float(bounds[i]), estimator="lanczos",
            n_hvp=result.n_hvp, seconds=result.seconds, component=op.name, n_coords=op.n,
            error_kind="residual bound", params=dict(params),
            diagnostics={"lanczos_steps_taken": int(result.lengths[0])}))
    return out[0], out[1]


def hessian_eigenvalues(model: nn.Module, data: Iterable, *, component: ComponentSpec = None,
                        loss_fn: LossFn | None = None, teacher: nn.Module | None = None,
                        n_batches: int | None = None, steps: int = 30, seed: int = 0,
                        cache_graphs: int = 4) -> tuple[CurvatureEstimate, CurvatureEstimate]:
    """(lambda_max, lambda_min) of the component-restricted Hessian of the loss on `data`."""
    op = hessian_operator(model, data, component=component, loss_fn=loss_fn, teacher=teacher,
                          n_batches=n_batches, cache_graphs=cache_graphs)
    return extreme_eigenvalues(op, steps, seed=seed)


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Gauss nodes and weights (weights sum to n)."""

    nodes: np.ndarray  # [probes, steps]
    weights: np.ndarray  # [probes, steps]
    n: int
    n_hvp: int
    seconds: float
    component: str = "model"
    params: dict | None = None

    def count_above(self, threshold: float, two_sided: bool = False) -> tuple[float, float]:
        """Estimated number of eigenvalues > threshold (|lambda| > threshold if two_sided), and its se."""
        above = np.abs(self.nodes) > threshold if two_sided else self.nodes > threshold
        return mean_se((self.weights * above).sum(1))

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smoothed density of eigenvalues on `grid` (integrates to about n)."""
        diff = (np.asarray(grid)[:, None, None] - self.nodes[None]) / sigma
        kernel = np.exp(-0.5 * diff ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(-1).mean(-1)


def spectral_density(op: CurvatureOperator, steps: int = 50, n_probes: int = 10, *, seed: int = 0) -> SpectralDensity:
    """SLQ with Rademacher probes: steps * n_probes products."""
    result = lanczos(op, steps, n_starts=n_probes, seed=seed, start="rademacher")
    width = int(result.lengths.max())
    nodes, weights = np.zeros((n_probes, width)), np.zeros((n_probes, width))
    for p in range(n_probes):
        values, w, _ = result.ritz(p)
        nodes[p, :values.size], weights[p, :values.size] = values, w  # padding has weight 0
    return SpectralDensity(nodes, weights, op.n, result.n_hvp, result.seconds, op.name,
                           {"steps": steps, "n_probes": n_probes, "seed": seed, "n_batches": op.n_batches})


def slq_rank(op: CurvatureOperator, thresholds: Sequence[float], *, steps: int = 50, n_probes: int = 10,
             two_sided: bool = False, seed: int = 0, quantity: str = "hessian_rank") -> list[CurvatureEstimate]:
    """Number of eigenvalues above each threshold, from the SLQ quadrature."""
    dens = spectral_density(op, steps, n_probes, seed=seed)
    out = []
    for t in thresholds:
        value, se = dens.count_above(float(t), two_sided)
        out.append(CurvatureEstimate(
            quantity=quantity, value=value, se=se, estimator="slq", n_hvp=dens.n_hvp, seconds=dens.seconds,
            component=op.name, n_coords=op.n,
            params={"threshold": float(t), "two_sided": two_sided, **(dens.params or {})}))
    return out
