"""Calibrate the SGLD settings of per-head wrLLCs for the model at hand: `rllc calibrate CKPT_DIR`.

Hyperparameters transfer poorly between model sizes, so they are chosen on the series itself, by the
practice of Lau et al. (2023, "Quantifying degeneracy in singular models via the learning coefficient"),
Timaeus' guide to SGMCMC hyperparameter selection and devinterp's calibration notebooks, made
explicit and automatic. At a few checkpoints (first, middle, last), on the dataset the estimates will
use (by default `train`, the training distribution), every cell (epsilon, nbeta, gamma) of the grid is
run with all heads at once (the batched sampler) and judged:

* **diverged**: a chain produced NaN/Inf or its loss exploded (any checkpoint; at the untrained
  first checkpoint, where w* is a random initialization and no minimum, only this and the cost count);
* **burn-in** is read from the loss traces, not guessed: the first draw at which the mean over heads
  and chains of nbeta * (L_B(w_t) - L_B(w*)) reaches `BURN_IN_LEVEL` of its level over the second half
  of the chain; the draws before it are discarded for every judgement below (and by the TOML);
* **not_flat**: after burn-in, the mean of the second half of the draws differs from the first half
  by more than `FLAT_Z` combined Monte Carlo errors and more than `FLAT_REL` of the value, for more
  than `MAX_BAD_FRACTION` of the heads (drift: the chains are still moving away from w*);
* **rhat**: more than 5 % of the estimates (heads x the two seeds) have rank-normalized R-hat > 1.1;
* **mala**: the mean acceptance probability of the SGLD proposal, had it been a MALA proposal, is
  below `MIN_MALA` (the step is too coarse for the posterior it samples);
* **negative**: a head's wrLLC is below zero by more than its Monte Carlo error (trained checkpoints);
* **snr**: the sd between the 16 heads' values is less than `MIN_SNR` times the mean between-seed sd
  (two seeds; trained checkpoints);
* **gamma_sensitive**: halving or doubling gamma changes some head's value by more than 15 % and more than
  the Monte Carlo error of the difference (trained checkpoints). This is the test that the landscape,
  not the localization, sets the value; when no cell passes it the output says plainly that the
  values are localization-dominated (docs/llc.md explains what that means for reading them);
* **cost**: the seconds per all-heads estimate exceed `budget_s`. The work per estimate is the same in
  every cell (chains x steps x batch), so this is judged once for the whole grid, on the median over
  all of its runs: a few slow runs are the machine's jitter, not a property of a cell.

The chosen cell passes every judgement at every calibration checkpoint; among those, gamma-stable
cells first, then the highest SNR at the last checkpoint. If none passes, the cell that fails the
fewest judgements is reported as the least bad, marked `passed = false`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rllc.runs.options import CALIBRATE_DEFAULTS
from rllc.sampling.diagnostics import ChainDivergedError, mcse_mean, rhat

BURN_IN_LEVEL = 0.8  # burn-in ends where the pooled trace reaches this fraction of its second-half level
FLAT_Z, FLAT_REL = 3.0, 0.2
MAX_BAD_FRACTION = 0.05  # at most this fraction of heads may fail R-hat or flatness
MAX_RHAT = 1.1
MIN_MALA = 0.5
MIN_SNR = 4.0
GAMMA_REL = 0.15
D = CALIBRATE_DEFAULTS  # the grid and the run shape, declared once (rllc.runs.options)
CHECKS = ("diverged", "not_flat", "rhat", "mala", "negative", "snr", "gamma_sensitive", "cost")


@dataclass
class HeadRun:
    """All heads' per-draw paired values and MALA acceptance of one sampler run."""

    values: dict[str, np.ndarray]  # head -> [chains, draws] nbeta * (L_B(w_t) - L_B(w*))
    mala: float
    seconds: float


def sample_heads(model, data, *, epsilon: float, nbeta: float, gamma: float, chains: int, steps: int,
                 seed: int, sampler: str = D["sampler"]) -> HeadRun:
    """One batched run over every head, burn-in 0 (it is chosen afterwards from the traces)."""
    from rllc.sampling import estimate_llcs

    t0 = time.perf_counter()
    est = estimate_llcs(model, data, None, sampler=sampler, epsilon=epsilon, nbeta=nbeta, gamma=gamma, chains=chains,
                             draws=steps, burn_in=0, seed=seed)
    seconds = time.perf_counter() - t0
    values = {h: nbeta * (e.loss_trace - e.diagnostics["loss_at_w_star_trace"][None, :]) for h, e in est.items()}
    mala = float(np.nanmean([e.diagnostics["mala_accept"] for e in est.values()]))
    return HeadRun(values, mala, seconds)


def choose_burn_in(values: dict[str, np.ndarray]) -> int:
    """First draw where the pooled trace reaches BURN_IN_LEVEL of its second-half level (at most half the chain)."""
    pooled = np.mean([v.mean(axis=0) for v in values.values()], axis=0)
    n = len(pooled)
    level = pooled[n // 2:].mean()
    if not level > 0:
        return 0
    reached = np.nonzero(pooled >= BURN_IN_LEVEL * level)[0]
    return int(min(reached[0] if reached.size else n // 2, n // 2))


def summarize(values: dict[str, np.ndarray], burn_in: int) -> pd.DataFrame:
    """Per head: value (mean after burn-in), its MCSE, R-hat and the half-vs-half drift."""
    rows = []
    for head, v in values.items():
        kept = v[:, burn_in:]
        half = kept.shape[1] // 2
        first, second = kept[:, :half], kept[:, half:]
        drift = second.mean() - first.mean()
        drift_se = math.hypot(mcse_mean(first), mcse_mean(second))
        rows.append(dict(head=head, value=float(kept.mean()), se=mcse_mean(kept), rhat=rhat(kept),
                         drift=float(drift), drift_se=drift_se))
    return pd.DataFrame(rows).set_index("head")


def judge_cell(runs: dict[str, HeadRun], burn_in: int, *, trained: bool) -> dict[str, Any]:
    """The judgements of one cell at one checkpoint. runs: 'base', and for trained checkpoints 'seed2',
    'gamma/2', 'gamma*2' (absent if they diverged)."""
    out: dict[str, Any] = {c: False for c in CHECKS}
    base = summarize(runs["base"].values, burn_in)
    n = len(base)
    not_flat = (base["drift"].abs() > FLAT_Z * base["drift_se"]) & (base["drift"].abs() > FLAT_REL * base["value"].abs())
    out["frac_not_flat"] = float(not_flat.mean())
    # R-hat over every estimate of the cell's own gamma (both seeds at trained checkpoints): one seed of 16
    # heads is too few to tell 95 % from 85 %.
    seed2 = summarize(runs["seed2"].values, burn_in).reindex(base.index) if "seed2" in runs else None
    rhats = np.concatenate([base["rhat"].to_numpy()] + ([seed2["rhat"].to_numpy()] if seed2 is not None else []))
    out["frac_rhat_ok"] = float(np.mean(rhats <= MAX_RHAT))
    out["mala_accept"] = runs["base"].mala
    if trained:  # at the untrained first checkpoint w* is no minimum: chains may drift; only divergence and cost count
        out["not_flat"] = out["frac_not_flat"] > MAX_BAD_FRACTION
        out["rhat"] = out["frac_rhat_ok"] < 1 - MAX_BAD_FRACTION
        out["mala"] = runs["base"].mala < MIN_MALA
    out["seconds"] = float(np.median([r.seconds for r in runs.values()]))
    out["run_seconds"] = [r.seconds for r in runs.values()]  # cost is judged over the whole grid (judge_cost)
    out["mean_value"] = float(base["value"].mean())
    out["min_z"] = float((base["value"] / base["se"]).min())
    out["n_heads"] = n
    if not trained:
        return out
    out["negative"] = bool((base["value"] < -base["se"]).any())
    if seed2 is not None:
        pair = np.stack([base["value"].to_numpy(), seed2["value"].to_numpy()])
        seed_sd = float(np.mean(np.abs(pair[0] - pair[1]) / math.sqrt(2)))
        head_sd = float(pair.mean(axis=0).std(ddof=1))
        out.update(seed_sd=seed_sd, head_sd=head_sd, snr_value=head_sd / seed_sd if seed_sd > 0 else math.inf)
        out["snr"] = not out["snr_value"] >= MIN_SNR
    else:
        out["snr"] = True
    worst = 0.0
    gamma_ok = True
    for key in ("gamma/2", "gamma*2"):
        if key not in runs:
            gamma_ok, worst = False, math.inf
            continue
        other = summarize(runs[key].values, burn_in).reindex(base.index)
        diff = (other["value"] - base["value"]).abs()
        tolerance = np.maximum(GAMMA_REL * base["value"].abs(), np.hypot(other["se"], base["se"]))
        gamma_ok &= bool((diff <= tolerance).all())
        rel = (other["value"] / base["value"]).to_numpy()
        out[f"ratio_{key}"] = float(np.median(rel))
        worst = max(worst, float(np.max(np.abs(rel - 1.0))))
    out["gamma_worst_change"] = worst
    out["gamma_sensitive"] = not gamma_ok
    return out


def calibrate_checkpoint(model, data, *, step: int = 0, trained: bool = True, cells=D["cells"],
                         gammas=D["gammas"], chains: int = D["chains"], draws: int = D["draws"], seed: int = D["seed"],
                         sampler: str = D["sampler"], progress=print) -> tuple[list[dict[str, Any]], dict]:
    """Every cell of the grid on one model (one checkpoint): (rows with every judgement, pooled traces)."""
    rows, traces = [], {}
    for epsilon, nbeta in cells:
        for gamma in gammas:
            label = f"step {step}: eps {epsilon:g}, nbeta {nbeta:g}, gamma {gamma:g}"
            row: dict[str, Any] = dict(step=step, sampler=sampler, epsilon=epsilon, nbeta=nbeta, gamma=gamma,
                                       trained=trained)
            runs: dict[str, HeadRun] = {}
            variants = [("base", gamma, seed)]
            if trained:
                variants += [("seed2", gamma, seed + 1), ("gamma/2", gamma / 2, seed), ("gamma*2", gamma * 2, seed)]
            try:
                for key, g, s in variants:
                    try:
                        runs[key] = sample_heads(model, data, epsilon=epsilon, nbeta=nbeta, gamma=g, chains=chains,
                                                 steps=draws, seed=s, sampler=sampler)
                    except ChainDivergedError:
                        if key in ("base", "seed2"):  # the cell's own gamma; a diverging gamma/2 or 2 gamma
                            raise                     # shows as a failed gamma test instead
                burn_in = choose_burn_in(runs["base"].values)
                row.update(burn_in=burn_in, **judge_cell(runs, burn_in, trained=trained))
                traces[(step, epsilon, nbeta, gamma)] = np.mean(
                    [v.mean(axis=0) for v in runs["base"].values.values()], axis=0)
            except ChainDivergedError as e:
                row.update({c: False for c in CHECKS}, diverged=True, error=str(e))
            row["failed"] = ",".join(c for c in CHECKS if row.get(c) is True)
            rows.append(row)
            if "mean_value" in row:
                label += (f": mean head value {row['mean_value']:.3g}, SNR {row.get('snr_value', math.nan):.3g}, "
                          f"gamma change {row.get('gamma_worst_change', math.nan):.0%}, "
                          f"R-hat <= 1.1 {row['frac_rhat_ok']:.0%}, MALA {row['mala_accept']:.2f}, "
                          f"{row['seconds']:.1f} s")
            progress(f"{label} -> {'fails ' + row['failed'] if row['failed'] else 'passes'}")
    return rows, traces


def calibrate_heads(model, data, **kwargs) -> tuple[pd.DataFrame, dict[str, Any], dict]:
    """The calibration on one trained model and its batches (at least `draws` of them): (table, choice, traces).

    Keyword arguments as in :func:`calibrate_checkpoint` (cells, gammas, chains, draws, seed, progress),
    and `budget_s`. `rllc calibrate` runs this at several checkpoints of a series (:func:`calibrate_series`).
    """
    budget_s = kwargs.pop("budget_s", D["budget_s"])
    rows, traces = calibrate_checkpoint(model, list(data), trained=True, **kwargs)
    table = judge_cost(pd.DataFrame(rows), budget_s)
    return table, choose(table, kwargs.get("draws", D["draws"])), traces


def calibrate_series(series, dataset, *, steps: list[int] | None = None, draws: int = D["draws"],
                     budget_s: float = D["budget_s"],
                     **kwargs) -> tuple[pd.DataFrame, dict[str, Any], dict]:
    """The grid at `steps` (default: first, middle, last) of a series on a resolved dataset, and the choice.

    Returns (table: one row per checkpoint x cell with every judgement, the choice, the pooled loss
    traces {(step, epsilon, nbeta, gamma): [draws]} for the figure). The first checkpoint of the series
    counts as untrained (only divergence and cost are judged there).
    """
    steps = steps or sorted({series.steps[0], series.steps[len(series.steps) // 2], series.steps[-1]})
    data = list(dataset.batches(draws))
    rows, traces = [], {}
    for step in steps:
        r, t = calibrate_checkpoint(series[step], data, step=step, trained=step != series.steps[0], draws=draws,
                                    **kwargs)
        rows += r
        traces.update(t)
    table = judge_cost(pd.DataFrame(rows), budget_s)
    return table, choose(table, draws), traces


def judge_cost(table: pd.DataFrame, budget_s: float) -> pd.DataFrame:
    """The cost check for every row at once: the median seconds of all the grid's runs against the budget."""
    runs = [s for row in table.get("run_seconds", pd.Series(dtype=object)).dropna() for s in row]
    median = float(np.median(runs)) if runs else math.nan
    table = table.drop(columns=["run_seconds"], errors="ignore")
    table["grid_median_seconds"] = median
    table["cost"] = bool(median > budget_s)
    table["failed"] = [",".join(c for c in CHECKS if row.get(c) is True) for row in table.to_dict("records")]
    return table


def choose(table: pd.DataFrame, steps: int) -> dict[str, Any]:
    """The cell that passes everything at every checkpoint (gamma-stable first, then SNR at the last)."""
    last = table["step"].max()
    scored = []
    for (epsilon, nbeta, gamma), cell in table.groupby(["epsilon", "nbeta", "gamma"], sort=False):
        failures = [f"{c} at step {r.step}" for r in cell.itertuples() for c in (r.failed.split(",") if r.failed else [])]
        hard = [f for f in failures if not f.startswith("gamma_sensitive")]
        at_last = cell[cell["step"] == last].iloc[0]
        snr = at_last.get("snr_value", 0.0)
        snr = 0.0 if snr != snr else float(snr)
        scored.append(((len(hard), len(failures), -snr),
                       dict(epsilon=float(epsilon), nbeta=float(nbeta), gamma=float(gamma),
                            burn_in=int(at_last.get("burn_in", 0) or 0), failures=failures,
                            passed=not failures, passed_except_gamma=not hard, snr=float(snr),
                            gamma_worst_change=float(at_last.get("gamma_worst_change", math.nan)),
                            seconds=float(at_last.get("grid_median_seconds", at_last.get("seconds", math.nan))))))
    best = min(scored, key=lambda s: s[0])[1]
    best["draws"] = steps - best["burn_in"]
    best["localization_dominated"] = not best["passed"] and best["passed_except_gamma"]
    return best


def verdict(choice: dict[str, Any]) -> str:
    """What the chosen settings mean, in plain words."""
    cell = f"epsilon {choice['epsilon']:g}, nbeta {choice['nbeta']:g}, gamma {choice['gamma']:g}"
    if choice["passed"]:
        return (f"{cell} passes every check at every calibration checkpoint: the values do not depend on the "
                f"localization (gamma halved or doubled changes no head by more than 15 % or its Monte Carlo "
                f"error; worst change {choice['gamma_worst_change']:.0%}).")
    if choice["localization_dominated"]:
        return (f"{cell} passes every check except the gamma test, and no cell of the grid passes it: the values "
                f"are LOCALIZATION-DOMINATED (halving or doubling gamma changes a head's value by up to "
                f"{choice['gamma_worst_change']:.0%}). Within the time budget the chains cannot equilibrate at a "
                f"gamma small against nbeta times the curvature of the directions that matter, so the absolute "
                f"level is set by gamma: compare heads and checkpoints estimated with the same settings (their "
                f"ordering and changes are meaningful), never the absolute values across settings or models, "
                f"and do not read them as learning coefficients. See docs/llc.md, 'Calibration'.")
    return (f"NO CELL PASSES the hard checks; the least bad is {cell}, which fails: {', '.join(choice['failures'])}. "
            f"Its estimates are not trustworthy; widen the grid (--epsilons, --nbetas, --gammas) or the budget.")


def plot_traces(traces: dict, choice: dict[str, Any], path: Path) -> Path:
    """Pooled loss trace (mean over heads and chains of nbeta * (L_B(w_t) - L_B(w*))) per cell, one panel per step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = sorted({k[0] for k in traces})
    fig = Figure(figsize=(4.2 * max(1, len(steps)), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(steps)), squeeze=False)[0]
    for ax, step in zip(axes, steps):
        for (s, epsilon, nbeta, gamma), trace in traces.items():
            if s != step:
                continue
            chosen = (epsilon, nbeta, gamma) == (choice["epsilon"], choice["nbeta"], choice["gamma"])
            ax.plot(trace, lw=2.5 if chosen else 1.0, alpha=1.0 if chosen else 0.7,
                    label=f"ε {epsilon:g}, nβ {nbeta:g}, γ {gamma:g}" + (" (chosen)" if chosen else ""))
        ax.axvline(choice["burn_in"], color="k", ls=":", lw=1)
        ax.set_title(f"step {step}", fontsize=10)
        ax.set_xlabel("draw")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over heads of nβ (L_B(w_t) − L_B(w*))")
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.suptitle("SGLD calibration: pooled loss traces per setting (dotted: chosen burn-in)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_calibration(out: Path, table: pd.DataFrame, choice: dict[str, Any], traces: dict, *, series_path: Path,
                      dataset: str, batch_size: int, chains: int, command: str,
                      sampler: str = D["sampler"]) -> dict[str, Path]:
    """calibration.toml (for `rllc estimate --config`), calibration.csv, calibration.png and verdict.txt in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(table=out / "calibration.csv", figure=out / "calibration.png", toml=out / "calibration.toml",
                 verdict=out / "verdict.txt")
    table.to_csv(paths["table"], index=False)
    plot_traces(traces, choice, paths["figure"])
    text = verdict(choice)
    paths["verdict"].write_text(text + "\n")
    lines = [f"# {'SGLD' if sampler == 'sgld' else 'RMSProp-SGLD'} settings for the per-head wrLLCs of {series_path}, chosen by `rllc calibrate`:",
             f"#   {command}",
             "# Evidence: calibration.csv (every cell x checkpoint with its checks) and calibration.png (loss traces).",
             *("# " + line for line in _wrap(text)),
             f"# At the last calibration checkpoint: SNR (sd between heads / mean between-seed sd) {choice['snr']:.2f}, "
             f"{choice['seconds']:.1f} s per all-heads estimate.",
             "#   rllc estimate CKPT_DIR --config calibration.toml",
             f'datasets = ["{dataset}"]', 'components = ["heads"]', 'estimators = ["llc"]', f'sampler = "{sampler}"',
             f"epsilon = {choice['epsilon']!r}", f"nbeta = {choice['nbeta']!r}", f"gamma = {choice['gamma']!r}",
             f"chains = {chains}", f"draws = {choice['draws']}", f"burn-in = {choice['burn_in']}",
             "paired = true", "crn = true", f"batch-size = {batch_size}", ""]
    paths["toml"].write_text("\n".join(lines))
    return paths


def _wrap(text: str, width: int = 110) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)
