"""Stochastic trace estimation: Hutchinson and Hutch++ with Rademacher probes.

Hutchinson: tr M ~ mean_j v_j^T M v_j, v_j Rademacher; variance per probe
2 (|M|_F^2 - sum_i M_ii^2).

Hutch++ (Meyer, Musco, Musco & Woodruff 2021) spends a third of the products
on a sketch Y = M S, takes Q = orth(Y), computes tr(Q^T M Q) exactly (a
third) and runs Hutchinson on the deflated M' = (I - QQ^T) M (I - QQ^T) with
the last third. The top of the spectrum, which dominates Hutchinson's
variance for Hessians with a few large outliers, is thereby taken exactly;
the reported standard error is that of the deflated Hutchinson part, given Q.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from rllc.curvature.operator import CurvatureOperator, hessian_operator, rademacher
from rllc.curvature.results import CurvatureEstimate, combine_se, mean_se, ratio_se
from rllc.models.components import ComponentSpec
from rllc.losses import LossFn

ESTIMATORS = ("hutchinson", "hutch++")


def hutchinson(op: CurvatureOperator, n_probes: int = 50, *, seed: int = 0,
               quantity: str = "hessian_trace") -> CurvatureEstimate:
    """tr(op) from n_probes Rademacher quadratic forms (n_probes products)."""
    if n_probes < 2:
        raise ValueError(f"n_probes must be at least 2 for a standard error, got {n_probes}")
    start, before = time.perf_counter(), op.n_products
    probes = rademacher(op.n, n_probes, torch.Generator().manual_seed(seed))
    quads = op.quads(probes).numpy()
    return _trace_estimate(op, quads, np.zeros(op.n_batches), "hutchinson", quantity,
                           {"n_probes": n_probes, "seed": seed}, start, before)


def hutch_plus_plus(op: CurvatureOperator, n_probes: int = 50, *, seed: int = 0,
                    quantity: str = "hessian_trace") -> CurvatureEstimate:
    """tr(op) by Hutch++ with n_probes products in all (a third each: sketch, exact part, residual)."""
    if n_probes < 6:
        raise ValueError(f"Hutch++ needs n_probes >= 6 (two residual probes for an error), got {n_probes}")
    start, before = time.perf_counter(), op.n_products
    gen = torch.Generator().manual_seed(seed)
    k = n_probes // 3
    sketch = op.matvec(rademacher(op.n, k, gen))
    q, r = torch.linalg.qr(sketch)
    q = q[:, _independent_columns(r)]
    exact = op.quads(q).sum(1).numpy() if q.shape[1] else np.zeros(op.n_batches)  # per batch tr(Q^T M_b Q)
    probes = rademacher(op.n, n_probes - 2 * k, gen)
    probes = probes - q @ (q.T @ probes)
    quads = op.quads(probes).numpy()
    params = {"n_probes": n_probes, "seed": seed}
    est = _trace_estimate(op, quads, exact, "hutch++", quantity, params, start, before)
    est.diagnostics["trace_sketch"] = float(exact.sum() / op.batch_weights.sum())
    est.diagnostics["sketch_rank"] = int(q.shape[1])
    return est


def _independent_columns(r: torch.Tensor) -> torch.Tensor:
    """Columns of Q that carry a direction of the sketch (a low-rank M gives a rank-deficient sketch)."""
    diag = r.diagonal().abs()
    return diag > 1e-10 * max(float(diag.max()), 1e-300)


def _trace_estimate(op: CurvatureOperator, quads: np.ndarray, exact: np.ndarray, estimator: str, quantity: str,
                    params: dict, start: float, before: int) -> CurvatureEstimate:
    """quads [batches, probes]: per-batch residual quadratic forms; exact [batches]: per-batch exact part."""
    w = op.batch_weights.sum()
    per_probe = (exact.sum() + quads.sum(0)) / w
    value, se_probe = mean_se(per_probe)
    se_data = ratio_se(exact + quads.mean(1), op.batch_weights)
    return CurvatureEstimate(
        quantity=quantity, value=value, se=se_probe, estimator=estimator,
        n_hvp=op.n_products - before, seconds=time.perf_counter() - start,
        component=op.name, n_coords=op.n, params={**params, "n_batches": op.n_batches},
        diagnostics={"se_probe": se_probe, "se_data": se_data, "se_total": combine_se(se_probe, se_data)},
    )


def estimate_trace(op: CurvatureOperator, n_probes: int = 50, *, estimator: str = "hutch++", seed: int = 0,
                   quantity: str = "hessian_trace") -> CurvatureEstimate:
    if estimator == "hutchinson":
        return hutchinson(op, n_probes, seed=seed, quantity=quantity)
    if estimator == "hutch++":
        return hutch_plus_plus(op, n_probes, seed=seed, quantity=quantity)
    raise ValueError(f"unknown trace estimator {estimator!r}; use one of {ESTIMATORS}")


def hessian_trace(model: nn.Module, data: Iterable, *, component: ComponentSpec = None, loss_fn: LossFn | None = None,
                  teacher: nn.Module | None = None, n_batches: int | None = None, n_probes: int = 50,
                  estimator: str = "hutch++", seed: int = 0, cache_graphs: int = 4) -> CurvatureEstimate:
    """Trace of the Hessian of the loss on `data`, restricted to `component`, at the model's weights.

    The loss is averaged over the first n_batches batches (all by default),
    so each of the n_probes products costs n_batches per-batch products.
    se: the probe noise (the target is the Hessian on these batches);
    diagnostics["se_data"]: the spread across batches, i.e. how far the
    trace on other data of the same kind may lie.
    """
    op = hessian_operator(model, data, component=component, loss_fn=loss_fn, teacher=teacher,
                          n_batches=n_batches, cache_graphs=cache_graphs)
    return estimate_trace(op, n_probes, estimator=estimator, seed=seed)
