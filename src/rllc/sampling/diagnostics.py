"""Convergence diagnostics for loss traces, and the error a diverged chain raises.

R-hat and ESS follow Gelman et al., BDA3 (split chains) and Stan's reference
implementation (Geyer's initial monotone sequence), without rank
normalization, applied to a [chains, draws] array.
"""

from __future__ import annotations

import numpy as np


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


def split_rhat(trace: np.ndarray) -> float:
    """Split R-hat of a [chains, draws] trace; NaN if there are fewer than 4 draws."""
    x = np.asarray(trace, dtype=np.float64)
    half = x.shape[1] // 2
    if half < 2:
        return float("nan")
    halves = np.concatenate([x[:, :half], x[:, -half:]], axis=0)
    within = halves.var(axis=1, ddof=1).mean()
    between = half * halves.mean(axis=1).var(ddof=1)
    if within == 0:
        return 1.0 if between == 0 else float("inf")
    var_plus = (half - 1) / half * within + between / half
    return float(np.sqrt(var_plus / within))


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each row, by FFT."""
    n = x.shape[-1]
    centered = x - x.mean(axis=-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centered, n=size, axis=-1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=-1)[..., :n] / n


def ess(trace: np.ndarray) -> float:
    """Effective sample size of a [chains, draws] trace (all chains together)."""
    x = np.asarray(trace, dtype=np.float64)
    m, n = x.shape
    if n < 4:
        return float("nan")
    acov = _autocovariance(x)
    chain_var = acov[:, 0] * n / (n - 1)
    mean_var = chain_var.mean()
    var_plus = mean_var * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    if var_plus == 0:
        return float("nan")
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sums of adjacent pairs, truncated at the first negative pair, made monotone.
    pairs = rho[: n - n % 2].reshape(-1, 2).sum(axis=1)
    negative = np.nonzero(pairs < 0)[0]
    pairs = pairs[: negative[0]] if negative.size else pairs
    pairs = np.minimum.accumulate(pairs)
    tau = -1.0 + 2.0 * pairs.sum()
    return float(m * n / max(tau, 1.0 / np.log10(max(m * n, 10))))


def trace_summary(trace: np.ndarray) -> dict:
    """Per-chain mean/std, split R-hat and ESS of a [chains, draws] trace."""
    x = np.asarray(trace, dtype=np.float64)
    return {
        "chain_mean": x.mean(axis=1),
        "chain_std": x.std(axis=1, ddof=1) if x.shape[1] > 1 else np.full(x.shape[0], np.nan),
        "rhat": split_rhat(x),
        "ess": ess(x),
    }
