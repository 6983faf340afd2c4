"""Hessian rank: the number of eigenvalues above a threshold, by a Chebyshev step-function trace.

Ubaru & Saad (2016): with the spectrum inside [lo, hi], map M to
A = (M - c)/h, c = (hi + lo)/2, h = (hi - lo)/2, so the eigenvalues lie in
[-1, 1]. The indicator of [a, b] (here a = (threshold - c)/h, b = 1) has the
Chebyshev expansion

    gamma_0 = (arccos a - arccos b) / pi
    gamma_j = 2 (sin(j arccos a) - sin(j arccos b)) / (pi j)

truncated at degree M and damped by Jackson coefficients g_j (no Gibbs
oscillations, the approximation stays in [0, 1] up to rounding). Then

    rank ~ sum_j g_j gamma_j mean_probes v^T T_j(A) v

with Rademacher probes v and the three-term recurrence
w_{j+1} = 2 A w_j - w_{j-1}. Since T_{2j} = 2 T_j^2 - 1 and
T_{2j+1} = 2 T_j T_{j+1} - T_1, the moments up to degree 2K come from K
products per probe (v^T T_{2j} v = 2 |w_j|^2 - |v|^2), half the products of
the plain recurrence. One set of moments serves every threshold.

The range: fixed by the caller (e.g. bounds from the first or last
checkpoint, padded), or adapted per call from a Lanczos run, padded by `pad`
times its width plus the residual bounds. An eigenvalue outside the range
makes T_j(A) grow like cosh(j arccosh|x|) and ruins the estimate; that is
detected (|w_j| > |v| is impossible inside the range) and warned about, and a
fixed range is also checked against a short Lanczos run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from numpy.polynomial import chebyshev
from torch import nn

from rllc.curvature.operator import CurvatureOperator, hessian_operator, rademacher
from rllc.curvature.results import CurvatureEstimate, mean_se
from rllc.curvature.spectrum import lanczos, slq_rank
from rllc.models.components import ComponentSpec
from rllc.losses import LossFn

GROWTH_TOLERANCE = 1e-2  # |w_j|^2 / |v|^2 - 1 above this: an eigenvalue lies outside the range


class SpectrumRangeWarning(UserWarning):
    """An eigenvalue lies outside the Chebyshev range, or a threshold lies outside it."""


def jackson_coefficients(degree: int) -> np.ndarray:
    """Jackson damping g_0..g_degree."""
    j = np.arange(degree + 1)
    alpha = math.pi / (degree + 2)
    return ((1 - j / (degree + 2)) * math.sin(alpha) * np.cos(j * alpha)
            + math.cos(alpha) * np.sin(j * alpha) / (degree + 2)) / math.sin(alpha)


def step_coefficients(a: float, b: float, degree: int) -> np.ndarray:
    """Chebyshev coefficients of the indicator of [a, b] within [-1, 1] (undamped)."""
    a, b = float(np.clip(a, -1, 1)), float(np.clip(b, -1, 1))
    ta, tb = math.acos(a), math.acos(b)
    j = np.arange(1, degree + 1)
    return np.concatenate([[(ta - tb) / math.pi], 2 * (np.sin(j * ta) - np.sin(j * tb)) / (math.pi * j)])


def chebyshev_moments(op: CurvatureOperator, lo: float, hi: float, degree: int, n_probes: int, *,
                      seed: int = 0) -> tuple[np.ndarray, float]:
    """mu[j, p] = v_p^T T_j(A) v_p for j = 0..degree, and max_j |w_j|^2 / |v|^2 - 1 (range check)."""
    c, h = (hi + lo) / 2, (hi - lo) / 2

    def apply(x: torch.Tensor) -> torch.Tensor:
        return (op.matvec(x) - c * x) / h

    v = rademacher(op.n, n_probes, torch.Generator().manual_seed(seed))
    k = math.ceil(degree / 2)
    sq = np.zeros((k + 1, n_probes))  # |w_j|^2
    cross = np.zeros((k, n_probes))  # w_{j+1} . w_j
    w_prev, w = v, apply(v)
    sq[0] = (v * v).sum(0).numpy()
    sq[1] = (w * w).sum(0).numpy()
    cross[0] = (w * v).sum(0).numpy()
    for j in range(1, k):
        w_prev, w = w, 2 * apply(w) - w_prev
        sq[j + 1] = (w * w).sum(0).numpy()
        cross[j] = (w * w_prev).sum(0).numpy()
    mu0, mu1 = sq[0], cross[0]
    mu = np.zeros((2 * k + 1, n_probes))
    mu[0::2] = 2 * sq - mu0
    mu[1::2] = 2 * cross - mu1
    mu[0], mu[1] = mu0, mu1
    growth = float((sq / sq[0]).max() - 1)
    return mu[:degree + 1], growth


def _transition(coefs: np.ndarray, a: float, c: float, h: float) -> tuple[float, float]:
    """Where the damped step rises from 0.01 to 0.99 around a, in eigenvalue units."""
    x = np.linspace(-1, 1, 8001)
    psi = chebyshev.chebval(x, coefs)
    below = x[(x <= a) & (psi < 0.01)]
    above = x[(x >= a) & (psi > 0.99)]
    left = below.max() if below.size else -1.0
    right = above.min() if above.size else 1.0
    return c + h * left, c + h * right


def chebyshev_rank(op: CurvatureOperator, thresholds: Sequence[float], *, degree: int = 100, n_probes: int = 10,
                   spectrum_range: tuple[float, float] | None = None, pad: float = 0.05, lanczos_steps: int = 30,
                   range_check_steps: int = 10, two_sided: bool = False, seed: int = 0,
                   quantity: str = "hessian_rank") -> list[CurvatureEstimate]:
    """Number of eigenvalues above each threshold (|lambda| above it if two_sided), one estimate per threshold.

    spectrum_range=None: adapted from `lanczos_steps` Lanczos steps, padded
    by `pad` * width plus the residual bounds. A fixed (lo, hi) is used as
    given and checked by `range_check_steps` Lanczos steps (0: no check
    beyond the free growth check). Costs ceil(degree/2) * n_probes products
    plus the Lanczos steps; all thresholds share them (each row reports the
    shared cost).
    """
    if degree < 2 or n_probes < 2:
        raise ValueError(f"need degree >= 2 and n_probes >= 2, got degree={degree}, n_probes={n_probes}")
    started, before = time.perf_counter(), op.n_products
    diagnostics: dict = {}
    if spectrum_range is None:
        lo, hi = _adaptive_range(op, lanczos_steps, pad, seed, diagnostics)
        mode = "adaptive"
    else:
        lo, hi = (float(x) for x in spectrum_range)
        if not hi > lo:
            raise ValueError(f"spectrum_range must be (lo, hi) with hi > lo, got {spectrum_range}")
        mode = "fixed"
        if range_check_steps:
            _check_fixed_range(op, lo, hi, range_check_steps, seed, diagnostics)
    mu, growth = chebyshev_moments(op, lo, hi, degree, n_probes, seed=seed + 1)
    diagnostics["range_growth"] = growth
    if growth > GROWTH_TOLERANCE and not diagnostics.get("range_exceeded"):  # warned once is enough
        warnings.warn(f"{op.name}: an eigenvalue lies outside the Chebyshev range [{lo:.4g}, {hi:.4g}] "
                      f"(T_j(A) v grew by {1 + growth:.3g}x in squared norm); the rank estimates are unreliable. "
                      "Widen spectrum_range or use the adaptive range.", SpectrumRangeWarning, stacklevel=2)
    diagnostics["range_exceeded"] = diagnostics.get("range_exceeded", False) or growth > GROWTH_TOLERANCE
    c, h = (hi + lo) / 2, (hi - lo) / 2
    damping = jackson_coefficients(degree)
    n_hvp, seconds = op.n_products - before, time.perf_counter() - started
    out = []
    for t in thresholds:
        t = float(t)
        if two_sided and t < 0:
            raise ValueError(f"two_sided thresholds must be non-negative, got {t}")
        if not lo < t < hi:
            warnings.warn(f"{op.name}: threshold {t:.4g} lies outside the spectrum range [{lo:.4g}, {hi:.4g}]; "
                          "its count is 0 or all eigenvalues by construction", SpectrumRangeWarning, stacklevel=2)
        coefs = damping * step_coefficients((t - c) / h, 1.0, degree)
        if two_sided:
            coefs = coefs + damping * step_coefficients(-1.0, (-t - c) / h, degree)
        value, se = mean_se(coefs @ mu)
        t_lo, t_hi = _transition(damping * step_coefficients((t - c) / h, 1.0, degree), (t - c) / h, c, h)
        out.append(CurvatureEstimate(
            quantity=quantity, value=value, se=se, estimator="chebyshev", n_hvp=n_hvp, seconds=seconds,
            component=op.name, n_coords=op.n,
            params={"threshold": t, "degree": degree, "n_probes": n_probes, "range_mode": mode,
                    "range_lo": lo, "range_hi": hi, "pad": pad if mode == "adaptive" else math.nan,
                    "two_sided": two_sided, "seed": seed, "n_batches": op.n_batches},
            # A window reaching 0 smears the (usually huge) cluster of near-zero eigenvalues into the count.
            diagnostics={**diagnostics, "transition_lo": t_lo, "transition_hi": t_hi,
                         "resolved": not t_lo <= 0.0 <= t_hi}))
    return out


def _adaptive_range(op: CurvatureOperator, steps: int, pad: float, seed: int, diagnostics: dict) -> tuple[float, float]:
    values, _, bounds = lanczos(op, steps, seed=seed).ritz(0)
    lam_min, lam_max = float(values[0]), float(values[-1])
    width = max(lam_max - lam_min, 1e-12 * max(abs(lam_max), 1.0))
    diagnostics.update(lanczos_max=lam_max, lanczos_min=lam_min)
    return lam_min - pad * width - float(bounds[0]), lam_max + pad * width + float(bounds[-1])


def _check_fixed_range(op: CurvatureOperator, lo: float, hi: float, steps: int, seed: int, diagnostics: dict) -> None:
    values, _, _ = lanczos(op, steps, seed=seed).ritz(0)
    lam_min, lam_max = float(values[0]), float(values[-1])
    diagnostics.update(lanczos_max=lam_max, lanczos_min=lam_min)
    # Ritz values lie inside the spectrum: one outside the range proves an eigenvalue outside it.
    if lam_max > hi or lam_min < lo:
        diagnostics["range_exceeded"] = True
        warnings.warn(f"{op.name}: the spectrum reaches at least [{lam_min:.4g}, {lam_max:.4g}], outside the fixed "
                      f"Chebyshev range [{lo:.4g}, {hi:.4g}]; the rank estimates are unreliable. Widen spectrum_range.",
                      SpectrumRangeWarning, stacklevel=3)


def hessian_rank(model: nn.Module, data: Iterable, thresholds: Sequence[float], *, component: ComponentSpec = None,
                 loss_fn: LossFn | None = None, teacher: nn.Module | None = None, n_batches: int | None = None,
                 method: str = "chebyshev", degree: int = 100, n_probes: int = 10,
                 spectrum_range: tuple[float, float] | None = None, pad: float = 0.05, lanczos_steps: int = 30,
                 range_check_steps: int = 10, two_sided: bool = False, seed: int = 0,
                 cache_graphs: int = 4) -> list[CurvatureEstimate]:
    """Rank of the component-restricted Hessian of the loss on `data` at each threshold.

    method "chebyshev" (see chebyshev_rank) or "slq" (stochastic Lanczos
    quadrature with ceil(degree/2) steps per probe: the same number of
    products; the range arguments do not apply).
    """
    op = hessian_operator(model, data, component=component, loss_fn=loss_fn, teacher=teacher,
                          n_batches=n_batches, cache_graphs=cache_graphs)
    if method == "slq":
        return slq_rank(op, thresholds, steps=math.ceil(degree / 2), n_probes=n_probes, two_sided=two_sided,
                        seed=seed)
    if method != "chebyshev":
        raise ValueError(f"unknown rank method {method!r}; use 'chebyshev' or 'slq'")
    return chebyshev_rank(op, thresholds, degree=degree, n_probes=n_probes, spectrum_range=spectrum_range, pad=pad,
                          lanczos_steps=lanczos_steps, range_check_steps=range_check_steps, two_sided=two_sided,
                          seed=seed)
