"""Can a head's wrLLC be trusted at a CPU budget? The issue's criteria, measured in one run.

At one checkpoint (default: the last), for each setting, the wrLLC of all 16 heads (batched fast
path, paired estimator, reference loss over the draws' batches) is estimated with `--reps` seeds at
gamma and once each at gamma/2 and 2*gamma; printed as a Markdown table:

* seconds per all-heads estimate (2 threads by default: the machine's two cores);
* (a) gamma sensitivity: the largest and the median over heads of |v(gamma/2 or 2 gamma) / v(gamma) - 1|,
  and how many heads change by more than 15 % *and* more than the Monte Carlo error of the difference;
* (b) the sd between the heads' (seed-averaged) values over the mean between-seed sd;
* (c) the share of all estimates (heads x seeds) with R-hat <= 1.1;
* (d) how many estimates are negative by more than their Monte Carlo error.

Settings: `before` is what the demo used until now (the paper's eps 1e-3, nbeta 30, gamma 200 on
prose, 2 chains x 25 draws, batch 16); `paper@train` the same cell on the training distribution at
the calibration's shape; `calibrated` the TOML that `rllc calibrate` wrote (--config).

`--setting` adds rows on the training distribution (e.g. what criterion (a) would take).

Then common random numbers: for pairs of neighbouring checkpoints (--crn-steps, default the last two),
the sd over --reps repetitions of each head's step-to-step difference v(step2) - v(step1), averaged
over heads, with the same seed at both checkpoints (CRN, the default of series runs) and with
independent seeds, in the calibrated setting.

    python benchmarks/head_llc_noise.py checkpoints/demo --config runs/demo/calibration/calibration.toml \
        --crn-steps '4900,5000;5500,6000' --setting 1e-4,300,100,2,150,150,8
"""

from __future__ import annotations

import argparse
import time
import tomllib
import warnings

import numpy as np
import torch

from rllc.models.checkpoints import load_checkpoints
from rllc.runs.datasets import resolve_dataset
from rllc.sampling import estimate_llcs

BEFORE = dict(dataset="prose", epsilon=1e-3, nbeta=30.0, gamma=200.0, chains=2, draws=25, burn_in=0, batch_size=16)
GAMMA_REL = 0.15


def from_toml(path: str) -> dict:
    raw = {k.replace("-", "_"): v for k, v in tomllib.loads(open(path).read()).items()}
    return dict(dataset=raw["datasets"][0], epsilon=raw["epsilon"], nbeta=raw["nbeta"], gamma=raw["gamma"],
                chains=raw["chains"], draws=raw["draws"], burn_in=raw["burn_in"], batch_size=raw["batch_size"])


def estimate(model, data_cache, series, setting, seed, gamma=None):
    key = (setting["dataset"], setting["batch_size"])
    if key not in data_cache:
        ds = resolve_dataset(setting["dataset"], series, batch_size=setting["batch_size"], seed=0)
        data_cache[key] = list(ds.batches(setting["burn_in"] + setting["draws"]))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate_llcs(model, data_cache[key], None, epsilon=setting["epsilon"], nbeta=setting["nbeta"],
                                 gamma=setting["gamma"] if gamma is None else gamma, chains=setting["chains"],
                                 draws=setting["draws"], burn_in=setting["burn_in"], seed=seed)
    heads = sorted(est)
    return (np.array([est[h].mean for h in heads]), np.array([est[h].diagnostics["se"] for h in heads]),
            np.array([est[h].diagnostics["rhat"] for h in heads]), time.perf_counter() - t0)


def criteria(model, series, setting, reps, data_cache):
    runs = [estimate(model, data_cache, series, setting, seed=100 + r) for r in range(reps)]
    v = np.stack([r[0] for r in runs])
    se = np.stack([r[1] for r in runs])
    rh = np.stack([r[2] for r in runs])
    seconds = [r[3] for r in runs]
    changes, failing = [], np.zeros(v.shape[1], dtype=bool)
    for g in (setting["gamma"] / 2, setting["gamma"] * 2):
        other, other_se, _, sec = estimate(model, data_cache, series, setting, seed=100, gamma=g)
        seconds.append(sec)
        diff = np.abs(other - v[0])
        failing |= (diff > GAMMA_REL * np.abs(v[0])) & (diff > np.hypot(other_se, se[0]))
        changes.append(np.abs(other / v[0] - 1))
    changes = np.max(changes, axis=0)
    seed_sd = v.std(axis=0, ddof=1).mean()
    head_sd = v.mean(axis=0).std(ddof=1)
    return dict(seconds=float(np.mean(seconds)), gamma_max=float(changes.max()), gamma_median=float(np.median(changes)),
                gamma_failing=int(failing.sum()), head_sd=float(head_sd), seed_sd=float(seed_sd),
                snr=float(head_sd / seed_sd), rhat_ok=float(np.mean(rh <= 1.1)),
                negative=int(np.sum(v < -se)), n=v.size, mean=float(v.mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints")
    ap.add_argument("--config", help="calibration.toml from `rllc calibrate` (the `calibrated` row)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    ap.add_argument("--reps", type=int, default=3, help="seeds per setting")
    ap.add_argument("--crn-steps", help="pairs of neighbouring steps for the CRN measurement, e.g. '4900,5000;5500,6000' "
                                        "(default: the last two)")
    ap.add_argument("--setting", action="append", default=[], metavar="EPS,NBETA,GAMMA,CHAINS,BURN_IN,DRAWS,BATCH",
                    help="an extra row on the training distribution (repeatable), e.g. what (a) would take")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    series = load_checkpoints(args.checkpoints)
    step = series.steps[-1] if args.step is None else args.step
    model = series[step]
    settings = {"before (prose, 2 x 25, batch 16)": BEFORE}
    if args.config:
        calibrated = from_toml(args.config)
        shape = {k: calibrated[k] for k in ("dataset", "chains", "draws", "burn_in", "batch_size")}
        if (calibrated["epsilon"], calibrated["nbeta"], calibrated["gamma"]) != (1e-3, 30.0, 200.0):
            settings["paper@train (eps 1e-3, nbeta 30, gamma 200)"] = dict(shape, epsilon=1e-3, nbeta=30.0, gamma=200.0)
        settings[f"calibrated (eps {calibrated['epsilon']:g}, nbeta {calibrated['nbeta']:g}, "
                 f"gamma {calibrated['gamma']:g})"] = calibrated
    for text in args.setting:
        eps, nbeta, gamma, chains, burn_in, draws, batch = text.split(",")
        settings[f"extra (eps {float(eps):g}, nbeta {float(nbeta):g}, gamma {float(gamma):g})"] = dict(
            dataset="train", epsilon=float(eps), nbeta=float(nbeta), gamma=float(gamma), chains=int(chains),
            burn_in=int(burn_in), draws=int(draws), batch_size=int(batch))
    cache: dict = {}
    print(f"{args.checkpoints} step {step}: wrLLC of all heads, paired, {args.reps} seeds per setting, "
          f"{args.threads} threads")
    print("| setting | data, chains x (burn-in + draws), batch | s per all-heads estimate | (a) gamma/2, 2 gamma: "
          "max / median change, heads failing | (b) sd between heads / mean between-seed sd | (c) R-hat <= 1.1 | "
          "(d) negative beyond MC error | mean value |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s in settings.items():
        c = criteria(model, series, s, args.reps, cache)
        print(f"| {name} | {s['dataset']}, {s['chains']} x ({s['burn_in']} + {s['draws']}), {s['batch_size']} | "
              f"{c['seconds']:.1f} | {c['gamma_max']:.0%} / {c['gamma_median']:.0%}, {c['gamma_failing']} of 16 | "
              f"{c['head_sd']:.3f} / {c['seed_sd']:.3f} = {c['snr']:.1f} | {c['rhat_ok']:.0%} | "
              f"{c['negative']} of {c['n']} | {c['mean']:.3f} |", flush=True)

    crn_name = next((n for n in settings if n.startswith("calibrated")), list(settings)[-1])
    crn_setting = settings[crn_name]
    pairs = ([[int(x) for x in pair.split(",")] for pair in args.crn_steps.split(";")] if args.crn_steps
             else [series.steps[-2:]])
    print(f"\nCommon random numbers, setting {crn_name}, {args.reps} repetitions per pair of neighbouring checkpoints:")
    print("| steps | seeds at the two checkpoints | sd of a head's step-to-step difference (mean over heads) | "
          "mean abs. difference |")
    print("| --- | --- | --- | --- |")
    for s1, s2 in pairs:
        m1, m2 = series[s1], series[s2]
        same, independent = [], []
        for r in range(args.reps):
            v1 = estimate(m1, cache, series, crn_setting, seed=200 + r)[0]
            same.append(estimate(m2, cache, series, crn_setting, seed=200 + r)[0] - v1)
            independent.append(estimate(m2, cache, series, crn_setting, seed=900 + r)[0] - v1)
        sd_same = np.std(same, axis=0, ddof=1).mean()
        sd_ind = np.std(independent, axis=0, ddof=1).mean()
        print(f"| {s1} -> {s2} | the same (CRN, the default) | {sd_same:.4f} | "
              f"{np.mean(np.abs(np.mean(same, axis=0))):.4f} |")
        print(f"| {s1} -> {s2} | independent (--no-crn) | {sd_ind:.4f} | "
              f"{np.mean(np.abs(np.mean(independent, axis=0))):.4f} |", flush=True)


if __name__ == "__main__":
    main()
