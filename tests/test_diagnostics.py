"""Convergence diagnostics (rllc.sampling.diagnostics, over arviz-stats): known answers on processes
whose ESS is known, the published R-hat formula on a small case, and the documented edge cases."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from rllc.sampling.diagnostics import ess_bulk, ess_tail, mcse_mean, rhat, trace_summary


def ar1(rng, chains, n, r, shift=None):
    """Stationary AR(1) chains x_t = r x_{t-1} + e_t (unit noise), optionally shifted per chain."""
    x = np.zeros((chains, n))
    x[:, 0] = rng.standard_normal(chains) / math.sqrt(1 - r * r)
    for t in range(1, n):
        x[:, t] = r * x[:, t - 1] + rng.standard_normal(chains)
    return x if shift is None else x + np.asarray(shift)[:, None]


@pytest.fixture(autouse=True)
def no_warnings():
    """Every diagnostic here must run without a warning, degenerate input included."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_iid_normal_draws():
    x = np.random.default_rng(0).standard_normal((4, 1000))
    assert 0.99 <= rhat(x) <= 1.01
    assert ess_bulk(x) == pytest.approx(4000, rel=0.2)
    assert ess_tail(x) == pytest.approx(4000, rel=0.2)  # the quantile indicators of iid draws are iid
    assert mcse_mean(x) == pytest.approx(x.std(ddof=1) / math.sqrt(4000), rel=0.15)


def test_ar1_ess_and_mcse_match_the_known_autocorrelation_time():
    phi, n = 0.9, 4 * 4000
    x = ar1(np.random.default_rng(0), 4, 4000, phi)
    n_eff = n * (1 - phi) / (1 + phi)  # 842
    assert ess_bulk(x) == pytest.approx(n_eff, rel=0.25)
    assert mcse_mean(x) == pytest.approx(1 / math.sqrt(1 - phi * phi) / math.sqrt(n_eff), rel=0.25)
    assert rhat(x) < 1.01


def test_shifted_chains_and_a_drifting_chain_fail_rhat():
    rng = np.random.default_rng(1)
    shifted = rng.standard_normal((4, 1000)) + np.arange(4)[:, None]  # 1 sd between consecutive chains
    assert rhat(shifted) > 1.1
    one = rng.standard_normal((1, 1000))
    one[:, 500:] += 1.0  # one chain whose second half sits 1 sd higher: only the split can see it
    assert rhat(one) > 1.1
    assert rhat(rng.standard_normal((1, 1000))) < 1.01


def published_rank_rhat(chains: np.ndarray) -> float:
    """Vehtari et al. (2021), eqs. 1-4 and the folding of section 4.2, written out independently."""
    n = chains.shape[1] // 2
    split = np.vstack([chains[:, :n], chains[:, -n:]])

    def z(a):
        r = stats.rankdata(a, method="average").reshape(a.shape)
        return stats.norm.ppf((r - 3 / 8) / (a.size + 1 / 4))

    def classic(a):
        w = a.var(axis=1, ddof=1).mean()
        b = n * a.mean(axis=1).var(ddof=1)
        return math.sqrt(((n - 1) / n * w + b / n) / w)

    return max(classic(z(split)), classic(z(np.abs(split - np.median(split)))))


def test_rhat_is_the_published_formula_on_a_small_case():
    x = np.array([[0.3, 1.2, -0.4, 0.8, 2.1, 0.0, 1.5, 0.9],
                  [1.1, 2.4, 1.9, 3.0, 2.2, 1.7, 2.8, 2.5]])
    assert rhat(x) == pytest.approx(published_rank_rhat(x), rel=1e-12)
    assert rhat(x[:1]) == pytest.approx(published_rank_rhat(x[:1]), rel=1e-12)  # one chain: its two halves
    assert rhat(x) > rhat(x[:1])  # the second chain sits ~1.5 higher


def test_degenerate_traces_give_the_documented_values():
    rng = np.random.default_rng(2)
    for short in (rng.standard_normal((4, 3)), rng.standard_normal((1, 3)), np.zeros((4, 0))):
        s = trace_summary(short)
        assert all(math.isnan(s[k]) for k in ("rhat", "ess", "ess_bulk", "ess_tail", "mcse"))

    const = np.full((4, 50), 2.5)
    s = trace_summary(const)
    assert math.isnan(s["rhat"]) and s["ess_bulk"] == s["ess_tail"] == s["ess"] == 200 and s["mcse"] == 0
    assert list(s["chain_mean"]) == [2.5] * 4 and list(s["chain_std"]) == [0.0] * 4
    assert math.isnan(rhat(np.full((1, 50), 2.5)))
    assert rhat(np.repeat(np.arange(4.0)[:, None], 50, axis=1)) > 1e6  # constant chains that disagree

    one = rng.standard_normal(1000)  # a 1-D array is one chain
    assert rhat(one) == pytest.approx(1.0, abs=0.02) and ess_bulk(one) == pytest.approx(1000, rel=0.2)
    assert rhat(one[None, :]) == rhat(one)
    seven = rng.standard_normal((1, 7))  # one chain needs two halves of 4 draws for R-hat, not for ESS
    assert math.isnan(rhat(seven)) and ess_bulk(seven) > 0 and mcse_mean(seven) > 0

    bad = rng.standard_normal((2, 20))
    bad[1, 5] = np.nan
    assert math.isnan(rhat(bad)) and math.isnan(ess_bulk(bad)) and math.isnan(mcse_mean(bad))
    with pytest.raises(ValueError, match="chains, draws"):
        rhat(np.zeros((2, 3, 4)))


def test_trace_summary_keys():
    x = np.random.default_rng(3).standard_normal((2, 100))
    s = trace_summary(x)
    assert {"chain_mean", "chain_std", "rhat", "ess", "ess_bulk", "ess_tail", "mcse"} <= set(s)
    assert s["chain_mean"].shape == s["chain_std"].shape == (2,)
    assert s["ess"] == s["ess_bulk"] == ess_bulk(x) and s["rhat"] == rhat(x) and s["mcse"] == mcse_mean(x)


def test_rhat_and_ess_on_known_processes():
    """The checks tests/test_sampling.py made of the hand-written diagnostics, on the arviz ones."""
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 2000))
    assert ess_bulk(iid) == pytest.approx(8000, rel=0.1)
    assert rhat(iid) == pytest.approx(1.0, abs=0.01)
    slow = ar1(rng, 4, 4000, 0.9)
    assert ess_bulk(slow) == pytest.approx(16000 * 0.1 / 1.9, rel=0.25)  # N (1 - r) / (1 + r)
    assert rhat(slow) < 1.05
    apart = ar1(rng, 4, 1000, 0.9, shift=[0, 0, 0, 8])
    assert rhat(apart) > 1.4  # rank-normalized R-hat saturates: 1.505 here (the split R-hat before: 1.91)
    assert math.isnan(rhat(iid[:, :3]))
