"""Models with known learning coefficients, to check a sampler and its settings.

* A regular model: linear regression with d weights at its least-squares
  minimum. lambda = d/2, or k/2 when refined to k of its weights.
* Normal-crossing potentials K(w) on w in R^2 with known lambda (and
  multiplicity m): w1^2 (1/2), w1^2 + w2^2 (1), w1^4 (1/4), (w1 w2)^2 (1/2, m=2).

The estimator's target at finite nbeta and gamma is not lambda but

    E[nbeta * (L(w) - L(w*))],  w ~ exp(-nbeta L(w) - gamma/2 |w - w*|^2),

which tends to lambda as nbeta / gamma^(degree/2) grows, slowly
(like (m-1)/log nbeta) when m > 1. `expected_llc` gives that target exactly
(closed form or 1-D quadrature), and for quadratics also the value SGLD
actually converges to at step size epsilon (full batch): the Euler-Maruyama
chain on a quadratic with curvature a has stationary variance 1/(a (1 - eps a/4)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import integrate
from torch import Tensor, nn


# --- linear regression ------------------------------------------------------------------


@dataclass
class LinearRegression:
    """y = X w + noise, with the model at the least-squares solution w*."""

    model: nn.Linear
    data: list[tuple[Tensor, Tensor]]
    hessian: np.ndarray  # of the loss below, = X^T X / n

    @staticmethod
    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return 0.5 * ((model(x) - y) ** 2).mean()

    def expected_llc(self, nbeta: float, gamma: float, epsilon: float | None = None,
                     coords: list[int] | None = None) -> float:
        """E[nbeta (L(w) - L(w*))] under the localized posterior (or under full-batch SGLD at `epsilon`),
        moving only weight coordinates `coords` (default: all)."""
        h = self.hessian if coords is None else self.hessian[np.ix_(coords, coords)]
        eig = np.linalg.eigvalsh(h)
        a = nbeta * eig + gamma
        shrink = 1.0 if epsilon is None else 1.0 - epsilon * a / 4.0
        if np.any(shrink <= 0):
            raise ValueError(f"epsilon {epsilon} is past the stability limit of SGLD on this quadratic")
        return float(0.5 * np.sum(nbeta * eig / (a * shrink)))


def make_linear_regression(d: int = 10, n: int = 1000, n_batches: int = 1, noise: float = 1.0,
                           seed: int = 0) -> LinearRegression:
    """float64 data with anisotropic inputs (feature scales 0.5..1.5), model at its minimum."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + noise * torch.randn(n, 1, generator=g,
                                                                                      dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    data = list(zip(x.chunk(n_batches), y.chunk(n_batches)))
    return LinearRegression(model, data, (x.T @ x / n).numpy())


# --- normal-crossing potentials ------------------------------------------------------------


class Potential(nn.Module):
    """Two weights w, starting at w* = 0; the loss is K(w) (no data)."""

    def __init__(self, name: str):
        super().__init__()
        if name not in POTENTIALS:
            raise KeyError(f"unknown potential {name!r}; known: {sorted(POTENTIALS)}")
        self.name = name
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, batch=None) -> Tensor:
        return POTENTIALS[self.name].K(self.w[0], self.w[1])

    @staticmethod
    def loss_fn(model: "Potential", batch) -> Tensor:
        return model()


@dataclass(frozen=True)
class PotentialSpec:
    K: Callable
    lam: float  # learning coefficient
    multiplicity: int
    expected: Callable[[float, float], float]  # (nbeta, gamma) -> E[nbeta K]


def _quad(f: Callable[[float], float], scale: float) -> float:
    """Integral over R of an even function concentrated within ~scale of 0 (split there for accuracy)."""
    kw = dict(epsabs=0.0, epsrel=1e-11, limit=500)
    return 2.0 * (integrate.quad(f, 0.0, 10 * scale, **kw)[0] + integrate.quad(f, 10 * scale, np.inf, **kw)[0])


def _expected_quartic(nbeta: float, gamma: float) -> float:
    s = nbeta ** -0.25  # typical |w1|
    z = _quad(lambda w: np.exp(-nbeta * w ** 4 - gamma / 2 * w * w), s)
    m = _quad(lambda w: nbeta * w ** 4 * np.exp(-nbeta * w ** 4 - gamma / 2 * w * w), s)
    return m / z


def _expected_cross(nbeta: float, gamma: float) -> float:
    # Integrate w2 out: for fixed w1 it is Gaussian with precision a = 2 nbeta w1^2 + gamma, and
    # E[nbeta w1^2 w2^2 | w1] = nbeta w1^2 / a.
    a = lambda w1: 2.0 * nbeta * w1 * w1 + gamma
    weight = lambda w1: np.exp(-gamma / 2 * w1 * w1) / np.sqrt(a(w1))
    s = (nbeta * gamma) ** -0.5
    z = _quad(weight, s)
    m = _quad(lambda w1: weight(w1) * nbeta * w1 * w1 / a(w1), s)
    return m / z


POTENTIALS: dict[str, PotentialSpec] = {
    "w1^2": PotentialSpec(lambda w1, w2: w1 ** 2, 0.5, 1,
                          lambda nb, g: 0.5 * 2 * nb / (2 * nb + g)),
    "w1^2+w2^2": PotentialSpec(lambda w1, w2: w1 ** 2 + w2 ** 2, 1.0, 1,
                               lambda nb, g: 2 * nb / (2 * nb + g)),
    "w1^4": PotentialSpec(lambda w1, w2: w1 ** 4, 0.25, 1, _expected_quartic),
    "(w1*w2)^2": PotentialSpec(lambda w1, w2: (w1 * w2) ** 2, 0.5, 2, _expected_cross),
}


def quadratic_sgld_expectation(nbeta: float, gamma: float, epsilon: float, curvatures: list[float]) -> float:
    """What full-batch SGLD converges to for K = sum_i c_i w_i^2 / 2 (curvatures c_i)."""
    c = np.asarray(curvatures, dtype=float)
    a = nbeta * c + gamma
    return float(0.5 * np.sum(nbeta * c / (a * (1 - epsilon * a / 4))))


# --- reduced-rank regression (a singular model) ------------------------------------------------


def aoyagi_lambda(m: int, n: int, h: int, r: int) -> float:
    """Learning coefficient of reduced-rank regression y = B A x (A: h x m, B: n x h) at a true map of rank r.

    Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in Bayesian
    estimation", Neural Networks 18(7), Main Theorem: four cases by the dimensions.
    """
    if not 0 <= r <= h:
        raise ValueError(f"the true rank r={r} must lie in 0..h={h}")
    if m + h < n + r:
        return (h * m - h * r + n * r) / 2
    if n + h < m + r:
        return (h * n - h * r + m * r) / 2
    if m + n < h + r:
        return m * n / 2
    num = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
    return (num + ((m + h + n + r) % 2)) / 8


class ReducedRankModel(nn.Module):
    """y = B A x without biases (A: hidden x inputs, B: outputs x hidden), float64."""

    def __init__(self, m: int, n: int, h: int):
        super().__init__()
        self.A = nn.Linear(m, h, bias=False).double()
        self.B = nn.Linear(h, n, bias=False).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.B(self.A(x))


@dataclass
class ReducedRankRegression:
    """Reduced-rank regression at the empirical minimizer of rank h, and its learning coefficient."""

    model: ReducedRankModel
    data: list[tuple[Tensor, Tensor]]
    lam: float

    @staticmethod
    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return 0.5 * ((model(x) - y) ** 2).sum(-1).mean()


def make_reduced_rank_regression(m: int = 4, n: int = 4, h: int = 2, n_samples: int = 2000, n_batches: int = 20,
                                 noise: float = 1.0, seed: int = 0) -> ReducedRankRegression:
    """Data from a true map of rank h (singular values 1..3 x noise scale), model at the least-squares rank-h fit.

    The rank-h fit minimizes the loss over all the data (the union of the minibatches): ordinary least
    squares projected onto the top-h right singular vectors of the fitted values, split into balanced
    factors A, B. lambda is Aoyagi's for (m, n, h, r=h).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(m, h, **f64))[0]
    v = torch.linalg.qr(torch.randn(n, h, **f64))[0]
    true_map = u @ torch.diag(torch.linspace(1.0, 3.0, h, dtype=torch.float64)) @ v.T  # x @ true_map, [m, n]
    x = torch.randn(n_samples, m, **f64)
    y = x @ true_map + noise * torch.randn(n_samples, n, **f64)
    ols = torch.linalg.lstsq(x, y).solution
    vh = torch.linalg.svd(x @ ols, full_matrices=False)[2][:h]
    fit = ols @ vh.T @ vh  # rank h
    p, d, qt = torch.linalg.svd(fit, full_matrices=False)
    model = ReducedRankModel(m, n, h)
    with torch.no_grad():
        model.A.weight.copy_((p[:, :h] * d[:h].sqrt()).T)  # A x = (x @ A^T)
        model.B.weight.copy_((d[:h].sqrt()[:, None] * qt[:h]).T)
    data = list(zip(x.chunk(n_batches), y.chunk(n_batches)))
    return ReducedRankRegression(model, data, aoyagi_lambda(m, n, h, h))
