"""Per-token susceptibilities and the Bayesian influence function, from losses observed along the chains.

Susceptibilities (Baker et al. 2025, "Structural inference: interpreting small language models with
susceptibilities", arXiv 2504.18274, App. C.4; devinterp 2.0.1 ``compute_susceptibilities``). Sample the
posterior restricted to a component C on the sampling distribution, and the unrestricted one (the full
model, F); at every draw evaluate the per-token loss l of fixed probe sequences and the mean loss pt of
fixed sequences of the sampling distribution. With phi = pt - L0 (L0: the sampling sequences' mean loss
at w*), per probe token

    chi_C = E_C[phi * pt] - E_C[phi * l] - E_C[phi] * (E_F[pt] - E_F[l])

(expectations over C's or F's draws, chains pooled). If C is the whole model this is Var(pt) - Cov(pt, l):
how the component's posterior loss responds to shifting the data distribution towards that token. It is
computed from streamed sums (``rllc.sampling.observables``), so memory does not grow with the draws; its
standard error is the spread over sqrt(chains) of the values of chain c of C against chain c of F (with
antithetic chain pairs, of the pairs' means: the chains of a pair are not independent).

Bayesian influence function (BIF; Timaeus 2025, devinterp ``compute_bif``): the correlation (or
covariance) across posterior draws, chains stacked, between the per-token losses of query sequences and
those of training sequences: Hessian-free data attribution.

Both run every component through the one entry point (``rllc.sampling.llc.estimate_llcs``), so all heads
of an attention-only transformer share one batched sweep; the LLC estimates come with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from rllc.models.components import Component, ComponentSpec, heads, resolve_component
from rllc.sampling.llc import estimate_llcs
from rllc.sampling.observables import ProbeMoments, TokenLossFn, TokenLossObserver
from rllc.sampling.result import LLCEstimate, independent_chains
from rllc.sampling.settings import SGLDSettings, split_settings

FULL = "model"  # the unrestricted posterior: the reference every susceptibility is centred with

__all__ = ["BIF", "Susceptibilities", "bif", "chi_from_moments", "susceptibilities"]


def _pooled(moments: Sequence[ProbeMoments]) -> ProbeMoments:
    out = ProbeMoments()
    for m in moments:
        out.n += m.n
        out.phi += m.phi
        out.phi2 += m.phi2
        for name in m.loss:
            for mine, theirs in ((out.loss, m.loss), (out.loss2, m.loss2), (out.phi_loss, m.phi_loss)):
                mine[name] = mine[name] + theirs[name] if name in mine else theirs[name].copy()
        if m.cross is not None:
            out.cross = m.cross.copy() if out.cross is None else out.cross + m.cross
    return out


def chi_from_moments(c: ProbeMoments, full: ProbeMoments, probe: str, init_loss: float) -> np.ndarray:
    """chi_C per probe token (module docstring) from C's and F's streamed sums; the moments' phi is pt."""
    n, nf = c.n, full.n
    e_pt, e_pt2 = c.phi / n, c.phi2 / n
    e_l, e_pt_l = c.loss[probe] / n, c.phi_loss[probe] / n
    full_delta = full.phi / nf - full.loss[probe] / nf
    return (e_pt2 - init_loss * e_pt) - (e_pt_l - init_loss * e_l) - (e_pt - init_loss) * full_delta


@dataclass
class Susceptibilities:
    """Per-token susceptibilities of each component for each probe set (``values[component][probe]``:
    [n_seq, T-1], position p the loss of predicting token p+1), their standard errors, the probe tokens,
    and the LLC estimates of the same chains. The full model (component "model", the reference) is among
    the components: its chi is Var(pt) - Cov(pt, l)."""

    values: dict[str, dict[str, np.ndarray]]
    se: dict[str, dict[str, np.ndarray]]
    mean_se: dict[str, dict[str, float]]  # the standard error of each (component, probe) mean over tokens
    tokens: dict[str, np.ndarray]
    init_loss: float
    llc: dict[str, LLCEstimate]
    seconds: float = 0.0  # wall time of the sampling (all components, observables included)

    def table(self) -> pd.DataFrame:
        """One row per (component, probe, sequence, position): the predicted token, value, se."""
        frames = []
        for comp, by_probe in self.values.items():
            for probe, v in by_probe.items():
                seq, pos = np.indices(v.shape)
                frames.append(pd.DataFrame(dict(
                    component=comp, probe=probe, sequence=seq.ravel(), position=pos.ravel() + 1,
                    token=self.tokens[probe][:, 1:].ravel(), value=v.ravel(), se=self.se[comp][probe].ravel())))
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """Per (component, probe): the mean susceptibility over the probe's tokens and its standard error
        (the spread of the per-chain means), the per-head numbers a researcher clusters."""
        rows = []
        for comp, by_probe in self.values.items():
            for probe, v in by_probe.items():
                rows.append(dict(component=comp, probe=probe, value=float(v.mean()),
                                 se=float(self.mean_se[comp][probe])))
        return pd.DataFrame(rows)


def _settings(estimate_kwargs: Mapping[str, Any]) -> SGLDSettings:
    """The sampler settings estimate_llcs will use for these keyword arguments (burn-in, chains, pairing)."""
    given = {k: v for k, v in estimate_kwargs.items() if k in SGLDSettings.names()}
    return split_settings(given, estimate_kwargs.get("settings"))


def _spread_se(per_chain: np.ndarray, antithetic: bool) -> np.ndarray:
    """Standard error from the spread of per-chain values [chains, ...] over the independent replicates
    (the chains, or antithetic pairs' means); NaN with a single replicate."""
    units = independent_chains(per_chain, antithetic)
    k = units.shape[0]
    return units.std(axis=0, ddof=1) / np.sqrt(k) if k > 1 else np.full_like(units[0], np.nan)


def _chain_values(obs: TokenLossObserver, comp: str, probe: str, init_loss: float) -> np.ndarray:
    """chi of each chain on its own, chain c of the component against chain c of the full model (the
    chains are independent replicates of both samplers, so the spread of these values carries the
    variability of the full model's means too): [chains, n_seq, T-1]."""
    return np.stack([chi_from_moments(m, f, probe, init_loss) for m, f in zip(obs.chains(comp), obs.chains(FULL))])


def susceptibilities(
    model: nn.Module,
    data: Iterable,
    probes: Mapping[str, Tensor],
    *,
    sampling_probe: str,
    components: Sequence[ComponentSpec] | None = None,
    every: int = 1,
    init_loss: float | None = None,
    include_sampling_probe: bool = False,
    token_loss_fn: TokenLossFn | None = None,
    **estimate_kwargs: Any,
) -> Susceptibilities:
    """Per-token susceptibilities of `components` (default: every attention head) to each probe set.

    data: the minibatches the chains sample on (the training distribution), as for estimate_llcs.
    probes: {name: token ids [n_seq, T]}, fixed sequences; `sampling_probe` names the one drawn from the
        sampling distribution (its mean loss is pt). Its own susceptibilities are left out unless
        `include_sampling_probe`.
    every: record every `every`-th draw after burn-in.
    init_loss: L0 (default: the sampling probe's mean loss at w*; devinterp uses the mean loss of its
        initial-loss batches instead, which shifts chi where E_C[pt - l] differs from E_F[pt - l]).
    token_loss_fn(model, tokens) -> per-token losses [n_seq, T-1]: for models other than next-token
        predictors (default: next-token cross-entropy; the batched head sampler always uses it).
    estimate_kwargs: settings and options of :func:`rllc.sampling.llc.estimate_llcs` (settings=,
        epsilon=, nbeta=, gamma=, chains=, draws=, burn_in=, seed=, fast=, loss_fn=, progress=, ...).
    The full model is always sampled as well (component "model"): the reference of every chi, and in the
    result with its own values.
    """
    if sampling_probe not in probes:
        raise ValueError(f"sampling_probe {sampling_probe!r} is not among the probes: {', '.join(probes)}")
    comps = [c if isinstance(c, (str, Component)) else resolve_component(model, c)
             for c in (heads(model) if components is None else components)]
    names = [c.strip() if isinstance(c, str) else c.name for c in comps]
    if FULL in names:
        raise ValueError(f"{FULL!r} is the reference every susceptibility is centred with: leave it out of components")
    settings = _settings(estimate_kwargs)
    obs = TokenLossObserver(probes, sampling=sampling_probe, burn_in=settings.burn_in, every=every,
                            token_loss_fn=token_loss_fn)
    start = time.perf_counter()
    llc = estimate_llcs(model, data, [*comps, FULL], observer=obs, **estimate_kwargs)
    seconds = time.perf_counter() - start
    if init_loss is None:
        device = next((p.device for p in model.parameters()), None)
        with torch.no_grad():
            init_loss = float(obs.token_loss_fn(model, probes[sampling_probe].to(device)).double().mean())
    full = _pooled(obs.chains(FULL))
    kept = [p for p in probes if include_sampling_probe or p != sampling_probe]
    values, se, mean_se = {}, {}, {}
    for name in [*names, FULL]:
        pooled = _pooled(obs.chains(name))
        values[name], se[name], mean_se[name] = {}, {}, {}
        for probe in kept:
            values[name][probe] = chi_from_moments(pooled, full, probe, init_loss)
            per_chain = _chain_values(obs, name, probe, init_loss)
            se[name][probe] = _spread_se(per_chain, settings.antithetic)
            mean_se[name][probe] = float(_spread_se(per_chain.mean(axis=(1, 2)), settings.antithetic))
    return Susceptibilities(values, se, mean_se, {p: np.asarray(probes[p]) for p in kept}, init_loss,
                            {n: llc[n] for n in [*names, FULL]}, seconds)


@dataclass
class BIF:
    """Token-wise Bayesian influence between query and training sequences: ``values`` [n_query, n_train,
    T-1, T-1] (query position, training position), as devinterp's ``compute_bif`` lays it out, with the
    standard error from the spread of the per-chain values; ``correlation`` says whether it is the
    correlation (default) or the covariance across draws."""

    values: np.ndarray
    se: np.ndarray
    correlation: bool
    llc: LLCEstimate

    def sequence_average(self) -> np.ndarray:
        """The influence of each training sequence on each query sequence, averaged over token pairs."""
        return self.values.mean(axis=(2, 3))


def _bif_from_moments(m: ProbeMoments, query: str, train: str, correlation: bool) -> np.ndarray:
    n = m.n
    a, b = m.loss[query].ravel() / n, m.loss[train].ravel() / n
    cov = (m.cross - n * np.outer(a, b)) / (n - 1)
    if correlation:
        var_a = (m.loss2[query].ravel() - n * a * a) / (n - 1)
        var_b = (m.loss2[train].ravel() - n * b * b) / (n - 1)
        cov = cov / np.sqrt(np.outer(var_a, var_b))
    nq, tq = m.loss[query].shape
    nt, tt = m.loss[train].shape
    return cov.reshape(nq, tq, nt, tt).transpose(0, 2, 1, 3)


def bif(model: nn.Module, data: Iterable, query: Tensor, train: Tensor, *, component: ComponentSpec = None,
        correlation: bool = True, every: int = 1, token_loss_fn: TokenLossFn | None = None,
        **estimate_kwargs: Any) -> BIF:
    """Token-wise Bayesian influence of each training token on each query token (module docstring).

    data: the minibatches the chains sample on; query, train: token ids [n, T] (fixed sequences);
    component: the weights that move (default: the whole model); estimate_kwargs as for estimate_llcs.
    Memory: one [n_query * (T-1), n_train * (T-1)] sum per chain.
    """
    settings = _settings(estimate_kwargs)
    obs = TokenLossObserver({"query": query, "train": train}, cross=("query", "train"), burn_in=settings.burn_in,
                            every=every, token_loss_fn=token_loss_fn)
    spec = FULL if component is None else component
    (name, est), = estimate_llcs(model, data, [spec], observer=obs, **estimate_kwargs).items()
    chains = obs.chains(name)
    values = _bif_from_moments(_pooled(chains), "query", "train", correlation)
    per_chain = np.stack([_bif_from_moments(m, "query", "train", correlation) for m in chains])
    return BIF(values, _spread_se(per_chain, settings.antithetic), correlation, est)
