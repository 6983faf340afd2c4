"""Observables along the chains: per-token losses of fixed probe sequences at the draws.

A :class:`TokenLossObserver` is handed to the entry point (``estimate_llcs(..., observer=...)``). At
every draw it wants (after burn-in, every `every`-th step) each back-end evaluates the per-token loss of
every probe set at each (component, chain) state w_t (the same state as the loss trace's draw t: before
step t's update) and calls :meth:`TokenLossObserver.record`:

* the generic back-end loads the chain's coordinates into the model and calls `token_loss_fn`;
* the batched head sampler evaluates all (head, chain) pairs at once on forward passes at w* of the
  probe sequences cached at the start (``rllc.sampling.fast``).

Memory is bounded: per (component, chain) the observer keeps streamed sums over the recorded draws,
not the draws (unless ``keep_draws=True``):

* n, and per probe set the sums of losses and of squared losses (one per probe token);
* with a `sampling` probe set (the probe sequences of the distribution the chains sample on): the sums
  of phi, phi², and per probe token of phi * loss, where phi is the mean loss of the sampling probe
  set at the draw; this is what susceptibilities need (``rllc.sampling.susceptibility``);
* with ``cross=(a, b)``: the sums of the outer products loss_a loss_b^T over the tokens of probe sets
  a and b; this is what the Bayesian influence function needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from rllc.losses import next_token_losses

TokenLossFn = Callable[[nn.Module, Tensor], Tensor]  # (model, tokens [n, T]) -> per-token losses [n, T - 1]


@dataclass
class ProbeMoments:
    """Streamed sums of one (component, chain) over its recorded draws (module docstring)."""

    n: int = 0
    loss: dict[str, np.ndarray] = field(default_factory=dict)  # probe -> sum of per-token losses [n_seq, T-1]
    loss2: dict[str, np.ndarray] = field(default_factory=dict)  # probe -> sum of squared per-token losses
    phi: float = 0.0
    phi2: float = 0.0
    phi_loss: dict[str, np.ndarray] = field(default_factory=dict)  # probe -> sum of phi * loss
    cross: np.ndarray | None = None  # sum of outer(loss_a.ravel(), loss_b.ravel())
    draws: dict[str, list[np.ndarray]] = field(default_factory=dict)  # with keep_draws: probe -> [draw] arrays


class TokenLossObserver:
    """Per-token losses of probe sets along the chains, streamed (module docstring).

    probes: {name: token ids [n_seq, T]} (fixed sequences, evaluated at every recorded draw).
    sampling: the name of the probe set drawn from the sampling distribution (for phi), or None.
    cross: (a, b) probe names whose token-by-token cross moments are kept (Bayesian influence), or None.
    burn_in, every: the draws recorded are steps burn_in, burn_in + every, ... (set `burn_in` to the
        sampler's; :func:`rllc.sampling.susceptibility.susceptibilities` does).
    token_loss_fn(model, tokens) -> [n_seq, T-1]: the generic back-end's per-token loss (default:
        next-token cross-entropy); the batched head sampler always uses next-token cross-entropy.
    keep_draws: also keep every recorded draw's per-token losses (for checks against other tools).
    """

    def __init__(self, probes: Mapping[str, Tensor], *, sampling: str | None = None,
                 cross: tuple[str, str] | None = None, burn_in: int = 0, every: int = 1,
                 token_loss_fn: TokenLossFn | None = None, keep_draws: bool = False):
        if not probes:
            raise ValueError("no probe sets: pass probes={name: token ids [n_seq, T]}")
        for name in [sampling, *(cross or ())]:
            if name is not None and name not in probes:
                raise ValueError(f"probe set {name!r} is not among the probes: {', '.join(probes)}")
        if every < 1 or burn_in < 0:
            raise ValueError(f"every must be >= 1 and burn_in >= 0, got every={every}, burn_in={burn_in}")
        self.probes = {name: torch.as_tensor(t) for name, t in probes.items()}
        # The probe sets grouped by sequence length, [(names, their sequences stacked)]: sets of one length go
        # through one forward pass (rows are independent, so the per-token losses are the same).
        lengths: dict[int, list[str]] = {}
        for name, tokens in self.probes.items():
            lengths.setdefault(tokens.shape[1], []).append(name)
        self.stacked = [(names, torch.cat([self.probes[n] for n in names])) for names in lengths.values()]
        self.sampling, self.cross, self.burn_in, self.every = sampling, cross, burn_in, every
        self.token_loss_fn = token_loss_fn or next_token_losses
        self.keep_draws = keep_draws
        self.moments: dict[tuple[str, int], ProbeMoments] = {}

    def wants(self, t: int) -> bool:
        return t >= self.burn_in and (t - self.burn_in) % self.every == 0

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, np.ndarray]:
        """Every probe set's per-token losses at the model's current weights (the generic back-end's way)."""
        device = next((p.device for p in model.parameters()), None)
        out = {}
        for names, tokens in self.stacked:
            losses = self.token_loss_fn(model, tokens.to(device)).double().cpu().numpy()
            out.update(zip(names, np.split(losses, np.cumsum([len(self.probes[n]) for n in names])[:-1])))
        return out

    def record(self, component: str, chain: int, losses: Mapping[str, np.ndarray]) -> None:
        """Add one draw of (component, chain): {probe: per-token losses [n_seq, T-1]}."""
        m = self.moments.setdefault((component, chain), ProbeMoments())
        phi = float(np.mean(losses[self.sampling])) if self.sampling is not None else 0.0
        m.n += 1
        m.phi += phi
        m.phi2 += phi * phi
        for name, values in losses.items():
            values = np.asarray(values, dtype=np.float64)
            if name not in m.loss:
                m.loss[name] = np.zeros_like(values)
                m.loss2[name] = np.zeros_like(values)
                m.phi_loss[name] = np.zeros_like(values)
            m.loss[name] += values
            m.loss2[name] += values * values
            m.phi_loss[name] += phi * values
            if self.keep_draws:
                m.draws.setdefault(name, []).append(values.copy())
        if self.cross is not None:
            a, b = (np.asarray(losses[k], dtype=np.float64).ravel() for k in self.cross)
            outer = np.outer(a, b)
            m.cross = outer if m.cross is None else m.cross + outer

    def components(self) -> list[str]:
        return list(dict.fromkeys(c for c, _ in self.moments))

    def chains(self, component: str) -> list[ProbeMoments]:
        """The per-chain moments of a component, in chain order."""
        found = sorted((c, m) for (name, c), m in self.moments.items() if name == component)
        if not found:
            raise KeyError(f"no recorded draws of {component!r}; recorded: {', '.join(self.components())}")
        return [m for _, m in found]

    def draws(self, component: str, probe: str) -> np.ndarray:
        """With keep_draws: the recorded per-token losses [chains, draws, n_seq, T-1]."""
        if not self.keep_draws:
            raise ValueError("draws are kept only with keep_draws=True")
        return np.stack([np.stack(m.draws[probe]) for m in self.chains(component)])
