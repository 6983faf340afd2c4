"""The result type shared by every curvature estimator, and the error arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CurvatureEstimate:
    """One estimate: a trace, an extreme eigenvalue or a rank.

    se is the error against the estimator's target: a standard error for the
    stochastic estimators (error_kind "standard error"), the Lanczos residual
    bound for eigenvalues ("residual bound": some eigenvalue lies within it).
    n_hvp counts operator-vector products; each one is n_batches per-batch
    Hessian-vector products.
    """

    quantity: str  # hessian_trace, fim_trace, lambda_max, lambda_min, rank
    value: float
    se: float
    estimator: str  # hutchinson, hutch++, lanczos, chebyshev, slq
    n_hvp: int
    seconds: float
    component: str = "model"
    n_coords: int = 0
    error_kind: str = "standard error"
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_row(self) -> dict[str, Any]:
        """A flat dict for a tidy table: the estimate, its hyperparameters and scalar diagnostics."""
        row = {
            "quantity": self.quantity,
            "component": self.component,
            "n_coords": self.n_coords,
            "estimator": self.estimator,
            "value": self.value,
            "se": self.se,
            "error_kind": self.error_kind,
            "n_hvp": self.n_hvp,
            "seconds": self.seconds,
        }
        row.update(self.params)
        for key, value in self.diagnostics.items():
            if isinstance(value, (int, float, str, bool, np.integer, np.floating)) or value is None:
                row[key] = value.item() if isinstance(value, (np.integer, np.floating)) else value
        return row


def mean_se(samples: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (ddof=1) of independent samples; se is NaN for one sample."""
    samples = np.asarray(samples, dtype=float)
    if samples.size < 2:
        return float(samples.mean()), math.nan
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(samples.size))


def ratio_se(totals: np.ndarray, weights: np.ndarray) -> float:
    """Standard error of sum(totals) / sum(weights) across batches (delta method).

    With unit weights this is the usual standard error of the mean of the
    per-batch values; with importance weights it is the self-normalized
    estimator's error. NaN for one batch.
    """
    totals, weights = np.asarray(totals, dtype=float), np.asarray(weights, dtype=float)
    n = totals.size
    if n < 2:
        return math.nan
    ratio = totals.sum() / weights.sum()
    resid = totals - ratio * weights
    return float(math.sqrt(n / (n - 1) * np.sum(resid ** 2)) / weights.sum())


def combine_se(*parts: float) -> float:
    """sqrt of the sum of squares, ignoring NaN parts (NaN if all are)."""
    finite = [p for p in parts if not math.isnan(p)]
    return math.sqrt(sum(p * p for p in finite)) if finite else math.nan
