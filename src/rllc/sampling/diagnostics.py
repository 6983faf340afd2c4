"""Convergence diagnostics for loss traces, and the error a diverged chain raises.

The diagnostics are thin wrappers over ArviZ's `arviz-stats` (array interface,
``arviz_stats.base.array_stats``) applied to a [chains, draws] array; they
follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat for assessing convergence of MCMC":

* `rhat`: rank-normalized split R-hat, the larger of the bulk R-hat (split
  chains, ranks mapped to normal scores) and the tail R-hat (the same on
  |x - median|);
* `ess_bulk`: split ESS of the rank-normalized draws (Geyer's initial monotone
  sequence over the chains' averaged autocorrelation);
* `ess_tail`: the smaller of the ESS of the indicators x <= q5% and x <= q95%;
* `mcse_mean`: Monte Carlo standard error of the mean of all draws,
  sd / sqrt(ESS of the mean), the ESS here of the split but not
  rank-normalized draws.

Defined behaviour on degenerate input (no exception, no warning):

* fewer than 4 draws per chain, or any NaN/Inf in the trace: NaN for all four;
* one chain: R-hat compares its two halves (split R-hat), so it needs at least
  8 draws (two halves of 4 draws, the minimum arviz asks of each chain), NaN
  below that; ESS and MCSE need 4 draws as above;
* a constant trace (every draw the same number): R-hat is NaN (as in arviz: the
  within-chain variance is 0), ESS bulk and tail are the number of draws, MCSE
  is 0. Chains that are each constant but differ give an R-hat that is huge
  (finite), not NaN.

A 1-D array is read as one chain.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
from arviz_stats.base import array_stats
from scipy import stats

MIN_DRAWS = 4  # per chain, as arviz requires
TAIL_PROB = (0.05, 0.95)  # the quantiles of the tail ESS, arviz's default


class ChainDivergedError(RuntimeError):
    """A chain produced NaN/Inf, or its loss exploded: the estimate would be meaningless."""

    def __init__(self, component: str, chain: int, step: int, reason: str, *, epsilon: float, gamma: float,
                 nbeta: float):
        self.component, self.chain, self.step, self.reason = component, chain, step, reason
        self.epsilon, self.gamma, self.nbeta = epsilon, gamma, nbeta
        super().__init__(
            f"SGLD chain {chain} for component {component!r} diverged at step {step}: {reason}. "
            f"Try a smaller epsilon (now {epsilon:g}, e.g. {epsilon / 10:g}) or a larger gamma "
            f"(now {gamma:g}, e.g. {gamma * 10:g}); rllc.calibrate() sweeps them. "
            f"(nbeta = {nbeta:g})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """arviz divides by a zero variance on constant traces: keep its RuntimeWarnings in here."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _as_trace(trace: np.ndarray) -> np.ndarray:
    x = np.asarray(trace, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"a trace is a [chains, draws] array, got shape {x.shape}")
    return x


def _usable(x: np.ndarray) -> bool:
    return x.shape[0] >= 1 and x.shape[1] >= MIN_DRAWS and bool(np.isfinite(x).all())


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Ranks over all draws (ties averaged) mapped to normal quantiles, (r - 3/8) / (S + 1/4) (Blom)."""
    ranks = stats.rankdata(x, method="average").reshape(x.shape)
    return stats.norm.ppf((ranks - 0.375) / (x.size + 0.25))


def _rhat_one_chain(x: np.ndarray) -> float:
    """Rank-normalized split R-hat of a [1, draws] trace: its halves are the two chains compared.

    arviz's `rhat` asks for 2 chains; this is its formula with the split done
    here: the classic (non-split) R-hat of the normal scores of the halves,
    and of the normal scores of the halves folded about their median; the
    larger of the two."""
    half = x.shape[1] // 2
    if half < MIN_DRAWS:
        return math.nan
    halves = np.vstack([x[:, :half], x[:, -half:]])
    bulk = array_stats.rhat(_normal_scores(halves), method="identity")
    tail = array_stats.rhat(_normal_scores(np.abs(halves - np.median(halves))), method="identity")
    return float(np.max([bulk, tail]))  # NaN if either is NaN


def _guarded(trace: np.ndarray, compute) -> float:
    """compute(x) on the [chains, draws] form of `trace`, NaN where it is unusable, arviz's warnings kept in."""
    x = _as_trace(trace)
    if not _usable(x):
        return math.nan
    with _quiet():
        return float(compute(x))


def rhat(trace: np.ndarray) -> float:
    """Rank-normalized split R-hat of a [chains, draws] trace (see the module docstring for edge cases)."""
    return _guarded(trace, lambda x: _rhat_one_chain(x) if x.shape[0] == 1 else array_stats.rhat(x, method="rank"))


def ess_bulk(trace: np.ndarray) -> float:
    """Bulk effective sample size (all chains together) of a [chains, draws] trace."""
    return _guarded(trace, lambda x: array_stats.ess(x, method="bulk"))


def ess_tail(trace: np.ndarray) -> float:
    """Tail effective sample size: the smaller ESS of the 5% and 95% quantile indicators."""
    return _guarded(trace, lambda x: array_stats.ess(x, method="tail", prob=TAIL_PROB))


def mcse_mean(trace: np.ndarray) -> float:
    """Monte Carlo standard error of the mean of all draws of a [chains, draws] trace."""
    return _guarded(trace, lambda x: array_stats.mcse(x, method="mean"))


def trace_summary(trace: np.ndarray) -> dict:
    """Per-chain mean and std, R-hat, bulk and tail ESS and MCSE of the mean of a [chains, draws] trace.

    Keys: ``chain_mean``, ``chain_std`` (arrays, one entry per chain; std NaN
    with fewer than 2 draws), ``rhat``, ``ess_bulk``, ``ess_tail``, ``mcse``
    (of the mean of all draws) and ``ess`` (= ``ess_bulk``, the older key)."""
    x = _as_trace(trace)
    n_chains, n_draws = x.shape
    bulk = ess_bulk(x)
    return {
        "chain_mean": x.mean(axis=1) if n_draws > 0 else np.full(n_chains, np.nan),
        "chain_std": x.std(axis=1, ddof=1) if n_draws > 1 else np.full(n_chains, np.nan),
        "rhat": rhat(x),
        "ess": bulk,
        "ess_bulk": bulk,
        "ess_tail": ess_tail(x),
        "mcse": mcse_mean(x),
    }
