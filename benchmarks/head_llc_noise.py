"""How noisy is a head's wrLLC estimate at demo settings, and what do more chains or draws buy?

For one checkpoint, estimates the wrLLC of every head (batched fast path, paired estimator, prose
batches of 16 x n_ctx as `rllc estimate` builds them) several times with different seeds, for each
setting, and prints the mean over heads of the between-seed sd beside the sd between the heads'
mean estimates. The demo's choice of chains x draws (experiments/demo_estimate.toml) rests on it.

    python benchmarks/head_llc_noise.py checkpoints/demo --reps 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rllc.models.checkpoints import load_checkpoints
from rllc.runs.datasets import resolve_dataset
from rllc.sampling.fast import estimate_llc_sweep

SETTINGS = {"2x25": dict(chains=2, draws=25), "2x50": dict(chains=2, draws=50), "4x25": dict(chains=4, draws=25)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    ap.add_argument("--reps", type=int, default=3, help="seeds per setting")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    series = load_checkpoints(args.checkpoints)
    step = series.steps[-1] if args.step is None else args.step
    model = series[step]
    data = list(resolve_dataset("prose", series, batch_size=16, seed=0).batches(200))
    print(f"{args.checkpoints} step {step}: wrLLC of every head, eps 1e-3, n*beta 30, gamma 200, paired, "
          f"batch 16 x {series.config.n_ctx}, {args.reps} seeds per setting")
    print("| setting | seconds per estimate of all heads | between-seed sd (mean over heads) | sd between heads |")
    print("| --- | --- | --- | --- |")
    for name in args.settings:
        values, t0 = [], time.perf_counter()
        for r in range(args.reps):
            est = estimate_llc_sweep(model, data, None, seed=100 + r, init_loss_batches=4, paired=True,
                                     **SETTINGS[name])
            values.append([est[h].mean for h in sorted(est)])
        v = np.asarray(values)
        seconds = (time.perf_counter() - t0) / args.reps
        print(f"| {name} | {seconds:.1f} | {v.std(axis=0, ddof=1).mean():.3f} | {v.mean(axis=0).std():.3f} |")


if __name__ == "__main__":
    main()
