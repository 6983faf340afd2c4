"""Known answer with the data shape users pass: a DataLoader of many minibatches, default estimator settings.

Reduced-rank regression y = B A x with 4 inputs, 4 outputs, 2 hidden units, fitted at rank 2: a
singular model (A, B are identified only up to an invertible 2 x 2 matrix) whose learning
coefficient is Aoyagi & Watanabe's lambda = 6 (12 effective of 16 parameters). 2,000 samples in
minibatches of 100 (5 % of the data, so 20 distinct batches); nbeta = n / log n, the inverse
temperature of the WBIC (Watanabe 2013); gamma = 1 (nbeta * curvature >> gamma, so the prior does not
set the value). epsilon 5e-5 keeps the step-size bias of minibatch SGLD at a few percent (measured
below); everything else is estimate_llc's default: the paired estimator and the reference loss over
the draws' own batches.

Before the reference-loss fix (L(w*) over the first 16 of the 20 batches, then the default) the
standard estimator gave -4.8 on this kind of case and the regular model of the second test 14.3;
now both estimators are within 10 % of the truth.
"""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rllc.sampling import estimate_llc
from rllc.sampling.toys import aoyagi_lambda, make_linear_regression, make_reduced_rank_regression


def loader(data, batch_size):
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def test_aoyagi_lambda_cases():
    assert aoyagi_lambda(4, 4, 2, 2) == 6.0  # = (16 - 4) / 2: the model is regular up to GL(2)
    assert aoyagi_lambda(3, 3, 3, 1) == 4.0  # an over-parameterized case, well below 18 / 2
    assert aoyagi_lambda(2, 6, 1, 1) == (1 * 2 - 1 + 6) / 2  # m + h < n + r
    assert aoyagi_lambda(2, 2, 5, 1) == 2.0  # m + n < h + r: m n / 2


@pytest.mark.slow
@pytest.mark.parametrize("paired", [True, False], ids=["paired (default)", "standard"])
def test_reduced_rank_regression_with_minibatches(paired):
    problem = make_reduced_rank_regression(m=4, n=4, h=2, n_samples=2000, n_batches=20, noise=0.5, seed=0)
    n = 2000
    data = loader(problem.data, batch_size=n // 20)
    est = estimate_llc(problem.model, data, loss_fn=problem.loss_fn, epsilon=5e-5, nbeta=n / math.log(n),
                       gamma=1.0, chains=4, draws=2000, burn_in=200, seed=0, paired=paired)
    assert est.diagnostics["n_distinct_batches"] == 20
    assert abs(est.mean - problem.lam) < 0.1 * problem.lam, (est.mean, est.diagnostics["se"])
    assert est.diagnostics["rhat"] < 1.05


def test_regular_model_with_minibatches():
    """Linear regression, d = 20: lambda = d / 2 = 10, with 20 minibatches and the default estimator."""
    n = 2000
    problem = make_linear_regression(d=20, n=n, n_batches=20, noise=0.5, seed=3)
    data = loader(problem.data, batch_size=n // 20)
    est = estimate_llc(problem.model, data, loss_fn=problem.loss_fn, epsilon=5e-5, nbeta=n / math.log(n),
                       gamma=1.0, chains=4, draws=2000, burn_in=200, seed=0)
    assert abs(est.mean - 10.0) < 1.0, (est.mean, est.diagnostics["se"])


@pytest.mark.slow
def test_rmsprop_known_lambda_with_minibatches():
    """RMSProp-SGLD on the known-answer cases above, at epsilon / 10 (the preconditioner is at most
    1 / rmsprop_eps = 10, so the largest effective step is SGLD's there). Most coordinates then move
    slower than under SGLD: with SGLD's 2,000 draws the estimate was within 10 % but R-hat was 1.057 on
    the reduced-rank case, so this runs 4,000."""
    n = 2000
    rrr = make_reduced_rank_regression(m=4, n=4, h=2, n_samples=n, n_batches=20, noise=0.5, seed=0)
    lin = make_linear_regression(d=20, n=n, n_batches=20, noise=0.5, seed=3)
    for problem, lam in ((rrr, rrr.lam), (lin, 10.0)):
        est = estimate_llc(problem.model, loader(problem.data, batch_size=n // 20), loss_fn=problem.loss_fn,
                           sampler="rmsprop", epsilon=5e-6, nbeta=n / math.log(n), gamma=1.0, chains=4, draws=4000,
                           burn_in=200, seed=0)
        print(f"{problem.__class__.__name__}: {est.mean:.3f} +- {est.diagnostics['se']:.3f} (lambda {lam}), "
              f"R-hat {est.diagnostics['rhat']:.3f}")
        assert abs(est.mean - lam) < 0.1 * lam, (est.mean, est.diagnostics["se"])
        assert est.diagnostics["rhat"] < 1.05


@pytest.mark.slow
def test_antithetic_pairs_known_lambda_with_minibatches():
    """Antithetic chain pairs leave the estimand alone: linear regression (lambda = d/2 = 10) and reduced-rank
    regression (Aoyagi's lambda) with 20 shuffled minibatches, the default estimator, 4 chains = 2 pairs, the
    same settings as the plain tests; their standard errors (over pair means) cover the truth."""
    n = 2000
    problem = make_linear_regression(d=20, n=n, n_batches=20, noise=0.5, seed=3)
    est = estimate_llc(problem.model, loader(problem.data, batch_size=n // 20), loss_fn=problem.loss_fn,
                       epsilon=5e-5, nbeta=n / math.log(n), gamma=1.0, chains=4, draws=2000, burn_in=200, seed=0,
                       antithetic=True)
    print(f"\nlinear regression, antithetic: {est.mean:.2f} +- {est.se:.2f} (lambda 10), R-hat "
          f"{est.diagnostics['rhat']:.3f}")
    assert abs(est.mean - 10.0) < max(1.0, 3 * est.se)
    problem = make_reduced_rank_regression(m=4, n=4, h=2, n_samples=n, n_batches=20, noise=0.5, seed=0)
    est = estimate_llc(problem.model, loader(problem.data, batch_size=n // 20), loss_fn=problem.loss_fn,
                       epsilon=5e-5, nbeta=n / math.log(n), gamma=1.0, chains=4, draws=2000, burn_in=200, seed=0,
                       antithetic=True)
    print(f"reduced-rank regression, antithetic: {est.mean:.2f} +- {est.se:.2f} (lambda {problem.lam}), R-hat "
          f"{est.diagnostics['rhat']:.3f}")
    assert abs(est.mean - problem.lam) < 0.1 * problem.lam and est.diagnostics["rhat"] < 1.05
