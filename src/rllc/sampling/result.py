"""An LLC estimate and how it is assembled from the chains' per-step records (every back-end).

    llc_hat = nbeta * ( mean_t L_{B_t}(w_t) - L_init )                 (standard)
    llc_hat = nbeta *   mean_t ( L_{B_t}(w_t) - L_{B_t}(w*) )          (paired)

with L_init = mean_t L_{B_t}(w*) over the draws' own batches (see
rllc.sampling.llc for why), so both have the same mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rllc.sampling.diagnostics import trace_summary
from rllc.sampling.settings import SGLDSettings


@dataclass(eq=False)
class LLCEstimate:
    """An LLC estimate with its spread, traces, hyperparameters and diagnostics."""

    mean: float
    std: float  # across chains (ddof=1; devinterp reports ddof=0)
    per_chain: np.ndarray
    loss_trace: np.ndarray = field(repr=False)  # [chains, draws]: L_{B_t}(w_t), burn-in excluded
    init_loss: float
    component: str
    n_coords: int
    hyperparameters: dict[str, Any]
    diagnostics: dict[str, Any] = field(repr=False)

    @property
    def value(self) -> float:
        """The estimate (the mean over chains): `value` and `se` are what every estimate offers (rows, the store,
        curvature estimates)."""
        return self.mean

    @property
    def se(self) -> float:
        """Its standard error (diagnostics["se"]: of the paired or standard estimator, see docs/llc.md)."""
        return self.diagnostics["se"]

    def to_row(self) -> dict[str, Any]:
        """One flat row for a tidy table: the estimate (`value`, its standard error `se`, the across-chain `std`),
        its hyperparameters and scalar diagnostics; with both estimators, `standard_value`, `paired_se`, ..."""
        d = self.diagnostics
        row = {
            "component": self.component,
            "n_coords": self.n_coords,
            "estimator": d["estimator"],
            "value": self.value,
            "std": self.std,
            "se": self.se,
            "init_loss": self.init_loss,
            **self.hyperparameters,
            "rhat": d["rhat"],
            "ess": d["ess"],
            "ess_tail": d["ess_tail"],
            "mala_accept": d["mala_accept"],
            "distance_max": float(np.max(d["distance_max"])),
            "seconds": d["seconds"],
            "seconds_per_step": d["seconds_per_step"],
        }
        for name in ("standard", "paired"):
            if name in d:
                for column, key in (("value", "mean"), ("std", "std"), ("se", "se")):
                    row[f"{name}_{column}"] = d[name][key]
        return row


def assemble(*, losses: np.ndarray, sq_dist: np.ndarray, log_accept: np.ndarray, ref: np.ndarray,
             init_loss: float, settings: SGLDSettings, n_distinct: int, seconds: float, component: str,
             n_coords: int, hyper: dict[str, Any]) -> LLCEstimate:
    """An LLCEstimate from the per-step records of one component's chains (every back-end)."""
    burn_in, draws, chains, nbeta, paired = (settings.burn_in, settings.draws, settings.chains, settings.nbeta,
                                             settings.paired)
    steps = burn_in + draws
    trace = losses[:, burn_in:]
    pairs = settings.antithetic
    standard = _summarize(nbeta * (trace - init_loss), pairs)
    diagnostics: dict[str, Any] = {
        "estimator": "paired" if paired else "standard",
        "standard": standard,
        "chain_mean_loss": trace.mean(axis=1),
        "chain_std_loss": trace.std(axis=1, ddof=1) if draws > 1 else np.full(chains, np.nan),
        "mala_accept_per_chain": np.nanmean(np.minimum(1.0, np.exp(np.minimum(log_accept, 0.0))), axis=1)
        if steps > 1 else np.full(chains, np.nan),
        "distance_final": np.sqrt(sq_dist[:, -1]),
        "distance_max": np.sqrt(sq_dist.max(axis=1)),
        "distance_trace": np.sqrt(sq_dist),
        "burn_in_loss_trace": losses[:, :burn_in],
        "n_distinct_batches": n_distinct,
        "seconds": seconds,
        "seconds_per_step": seconds / (steps * chains),
    }
    diagnostics["mala_accept"] = float(np.mean(diagnostics["mala_accept_per_chain"]))
    diagnostics["paired"] = paired_summary = _summarize(nbeta * (trace - ref[None, burn_in:]), pairs)
    diagnostics["loss_at_w_star_trace"] = ref[burn_in:]
    chosen = paired_summary if paired else standard
    diagnostics.update(rhat=chosen["rhat"], ess=chosen["ess"], ess_tail=chosen["ess_tail"], se=chosen["se"],
                       burn_in=burn_in)
    if settings.sampler == "rmsprop":
        diagnostics["mala_note"] = "MALA ratio for the preconditioned proposal, the preconditioner held fixed per move"
    return LLCEstimate(mean=chosen["mean"], std=chosen["std"], per_chain=chosen["per_chain"], loss_trace=trace,
                       init_loss=init_loss, component=component, n_coords=n_coords,
                       hyperparameters={**settings.as_dict(), **hyper},
                       diagnostics=diagnostics)


def independent_chains(per_chain: np.ndarray, antithetic: bool) -> np.ndarray:
    """The independent replicates among per-chain values [chains, ...]: the chains themselves, or with
    antithetic pairs (settings.antithetic) the pair means [chains / 2, ...]; every spread-based standard
    error and R-hat is taken over these."""
    return (per_chain[0::2] + per_chain[1::2]) / 2 if antithetic else per_chain


def _summarize(draw_values: np.ndarray, pairs: bool = False) -> dict[str, Any]:
    """Estimate, spreads and ArviZ diagnostics from per-draw values nbeta*(L - reference), [chains, draws].

    `se` is the Monte Carlo standard error of the mean of all draws (arviz-stats' MCSE, which accounts
    for autocorrelation within chains and differences between them). With antithetic pairs (`pairs`) the
    chains of a pair are not independent: se, R-hat and ESS are those of the pair means [chains / 2, draws]
    (a single pair: split R-hat and the MCSE of its one series), the units that are independent.
    """
    per_chain = draw_values.mean(axis=1)
    summary = trace_summary(independent_chains(draw_values, pairs))
    return {
        "mean": float(per_chain.mean()),
        "std": float(per_chain.std(ddof=1)) if per_chain.size > 1 else math.nan,
        "per_chain": per_chain,
        "se": summary["mcse"],
        "draw_std": float(draw_values.std(ddof=1)) if draw_values.size > 1 else math.nan,
        "rhat": summary["rhat"],
        "ess": summary["ess_bulk"],
        "ess_tail": summary["ess_tail"],
    }




def estimates_table(estimates: dict[str, LLCEstimate]):
    """A tidy pandas DataFrame, one row per component (LLCEstimate.to_row)."""
    import pandas as pd

    return pd.DataFrame([est.to_row() for est in estimates.values()])
