"""Sweep SGLD hyperparameters on one checkpoint and recommend a setting on the plateau.

A good setting is one where the estimate does not move when epsilon moves:
the step is small enough that discretization bias is negligible and large
enough that the chains mix within the draws. For each (nbeta, gamma) the
epsilons are ordered. A cell is *healthy* if no chain diverged, the estimate
is positive, split R-hat <= max_rhat and ESS >= min_ess. The *plateau* is the
longest run of consecutive healthy epsilons whose estimates all lie in a band
of width rel_tol * |median| + 2 * (largest standard error in the run); ties
go to the flatter run. The recommendation is the largest epsilon of the
plateau (fastest mixing) of the (nbeta, gamma) with the longest plateau.
The MALA acceptance is reported but not used: on minibatched losses it is
too approximate to gate on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from rllc.models.components import resolve_component
from rllc.sampling.diagnostics import ChainDivergedError
from rllc.sampling.llc import estimate_llc


def calibrate(
    model: nn.Module,
    data: Iterable,
    *,
    epsilons: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    nbetas: Sequence[float] = (30.0,),
    gammas: Sequence[float] = (200.0,),
    chains: int = 2,
    draws: int = 100,
    rel_tol: float = 0.1,
    max_rhat: float = 1.05,
    min_ess: float = 50.0,
    plot: str | Path | None = None,
    **estimate_kwargs: Any,
) -> pd.DataFrame:
    """Estimate the LLC on every cell of epsilons x nbetas x gammas; one row per cell.

    Columns: everything in LLCEstimate.to_row(), plus `status` ("ok" or
    "diverged"), `error`, `healthy`, `plateau` and `recommended`. The
    recommendation is also in ``df.attrs["recommendation"]`` (None if no cell
    is on a plateau). `plot`: a file path to draw the sweep to.
    Other keyword arguments go to estimate_llc (component, loss_fn, seed, ...).
    """
    data = data if isinstance(data, (list, tuple)) else list(data)  # every cell must see the same batches
    component = resolve_component(model, estimate_kwargs.get("component")).name  # fail early on a bad spec
    plain = {k: v for k, v in estimate_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}
    rows = []
    for nbeta in nbetas:
        for gamma in gammas:
            for epsilon in epsilons:
                kwargs = dict(estimate_kwargs, epsilon=epsilon, nbeta=nbeta, gamma=gamma, chains=chains, draws=draws)
                try:
                    row = estimate_llc(model, data, **kwargs).to_row()
                    row.update(status="ok", error="")
                except ChainDivergedError as exc:
                    row = dict(plain, component=component, epsilon=epsilon, nbeta=nbeta, gamma=gamma, chains=chains,
                               draws=draws, value=math.nan, std=math.nan, status="diverged", error=str(exc),
                               diverged_chain=exc.chain, diverged_step=exc.step)
                rows.append(row)
    df = pd.DataFrame(rows)
    _mark_plateau(df, rel_tol, max_rhat, min_ess)
    if plot is not None:
        plot_calibration(df, plot)
    return df


def _mark_plateau(df: pd.DataFrame, rel_tol: float, max_rhat: float, min_ess: float) -> None:
    rhat = df["rhat"] if "rhat" in df else pd.Series(np.nan, index=df.index)
    n_eff = df["ess"] if "ess" in df else pd.Series(np.nan, index=df.index)
    df["healthy"] = (df["status"] == "ok") & (df["value"] > 0) & ~(rhat > max_rhat) & ~(n_eff < min_ess)
    df["plateau"] = False
    df["recommended"] = False
    best: tuple[int, float, list] | None = None  # (length, -spread, cells)
    for _, group in df.groupby(["nbeta", "gamma"], sort=False):
        run = _longest_band(group.sort_values("epsilon"), rel_tol)
        if run is None:
            continue
        df.loc[run[2], "plateau"] = True
        if best is None or run[:2] > best[:2]:
            best = run
    if best is None:
        df.attrs["recommendation"] = None
        return
    pick = best[2][-1]
    df.at[pick, "recommended"] = True
    df.attrs["recommendation"] = {k: df.at[pick, k] for k in ("epsilon", "nbeta", "gamma", "value", "std")}


def _longest_band(group: pd.DataFrame, rel_tol: float) -> tuple[int, float, list] | None:
    """The longest run (>= 2 cells) of consecutive healthy cells whose estimates fit in the band."""
    values = group["value"].to_numpy()
    ses = group["se"].fillna(0.0).to_numpy() if "se" in group else np.zeros(len(group))
    healthy = group["healthy"].to_numpy()
    best = None
    for i in range(len(group)):
        for j in range(i + 1, len(group)):
            if not healthy[i:j + 1].all():
                break
            seg = values[i:j + 1]
            spread = seg.max() - seg.min()
            if spread > rel_tol * abs(np.median(seg)) + 2.0 * ses[i:j + 1].max():
                break
            run = (j - i + 1, -spread / abs(np.median(seg)), list(group.index[i:j + 1]))
            if best is None or run[:2] > best[:2]:
                best = run
    return best


def plot_calibration(df: pd.DataFrame, path: str | Path) -> Path:
    """LLC and MALA acceptance against epsilon, one line per (nbeta, gamma); written with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_llc, ax_acc = fig.subplots(1, 2)
    for (nbeta, gamma), group in df.groupby(["nbeta", "gamma"], sort=False):
        group = group.sort_values("epsilon")
        ok = group[group["status"] == "ok"]
        label = f"nβ={nbeta:g}, γ={gamma:g}"
        line = ax_llc.errorbar(ok["epsilon"], ok["value"], yerr=ok["std"], marker="o", capsize=3, label=label)
        color = line[0].get_color()
        plateau = ok[ok["plateau"]]
        ax_llc.scatter(plateau["epsilon"], plateau["value"], s=120, facecolors="none", edgecolors=color)
        bad = group[group["status"] != "ok"]
        if len(bad):
            low = ok["value"].min() if len(ok) else 0.0
            ax_llc.scatter(bad["epsilon"], [low] * len(bad), marker="x", color=color, s=60)
        if "mala_accept" in ok:
            ax_acc.plot(ok["epsilon"], ok["mala_accept"], marker="o", color=color, label=label)
    rec = df[df["recommended"]]
    if len(rec):
        ax_llc.scatter(rec["epsilon"], rec["value"], marker="*", s=300, color="gold", edgecolors="k",
                       zorder=5, label="recommended")
    for ax in (ax_llc, ax_acc):
        ax.set_xscale("log")
        ax.set_xlabel("epsilon")
        ax.grid(alpha=0.3)
    ax_llc.set_ylabel("LLC estimate ± chain std")
    ax_llc.set_title("circled: plateau, ×: diverged", fontsize=9)
    ax_acc.set_ylabel("MALA acceptance (approx.)")
    ax_acc.set_title("approximate on minibatched losses", fontsize=9)
    ax_acc.set_ylim(0, 1.05)
    ax_llc.legend(fontsize=8)
    component = df["component"].iloc[0] if len(df) else ""
    fig.suptitle(f"SGLD calibration, component {component}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
