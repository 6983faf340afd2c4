"""Interleaved A/B of the batched head sampler's execution settings, on the demo's last checkpoint.

    python benchmarks/sweep_ab.py checkpoints/demo [--reps 5] [--draws 30] [--threads 2]

All 16 heads x 2 antithetic chains at the calibrated settings of experiments/demo_calibration (eps 1e-3,
nbeta 30, gamma 200, batch 8 x 64, burn-in 7), the same seeds and batches for every variant, run in
turn `reps` times (so that a slow spell of the machine hits every variant alike); medians of ms per step.

Variants:
* `ce 128 tok, 1 sweep`: the fused cross-entropy in blocks of 128 tokens (its block before 2026-12-02);
* `ce 1250 tok, 1 sweep`: blocks of CE_BLOCK_ELEMENTS logits (= 1,250 tokens at vocab 512: one block a batch);
* `ce 1250 tok, 2 sweeps`: the same, heads split into two sweeps side by side (workers=2, the default on
  two threads).
The largest difference between the variants' estimates is printed (float rounding only).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import rllc.sampling.fast as fast
from rllc.models.checkpoints import load_checkpoints
from rllc.sampling import estimate_llcs
from time_to_precision import BATCH, BURN_IN, SETTINGS, batches_for

VARIANTS = {  # name: (CE_BLOCK_ELEMENTS, workers)
    "ce 128 tok, 1 sweep": (None, 1),
    "ce 1250 tok, 1 sweep": (fast.CE_BLOCK_ELEMENTS, 1),
    "ce 1250 tok, 2 sweeps": (fast.CE_BLOCK_ELEMENTS, 2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    series = load_checkpoints(args.checkpoints)
    model = series[series.steps[-1]]
    data = batches_for(series, 0, BURN_IN + args.draws)
    vocab = model.cfg.d_vocab
    print(f"torch {torch.__version__}, {args.threads} threads; step {series.steps[-1]}, batch {BATCH}, "
          f"{BURN_IN} + {args.draws} steps, {args.reps} interleaved repetitions")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    values: dict[str, dict[str, float]] = {}
    default = fast.CE_BLOCK_ELEMENTS
    try:
        for _ in range(args.reps):
            for name, (elements, workers) in VARIANTS.items():
                fast.CE_BLOCK_ELEMENTS = elements if elements is not None else 128 * vocab
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est = estimate_llcs(model, data, None, chains=2, draws=args.draws, burn_in=BURN_IN, seed=0,
                                        antithetic=True, workers=workers, **SETTINGS)
                times[name].append(1000 * (time.perf_counter() - t0) / (BURN_IN + args.draws))
                values[name] = {h: e.value for h, e in est.items()}
    finally:
        fast.CE_BLOCK_ELEMENTS = default
    first = next(iter(VARIANTS))
    base = statistics.median(times[first])
    print("| variant | ms per step (median) | runs | vs first |\n| --- | --- | --- | --- |")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {' '.join(f'{t:.0f}' for t in ts)} | "
              f"{base / statistics.median(ts):.2f}x |")
    diff = max(abs(values[n][h] - values[first][h]) for n in values for h in values[n])
    print(f"largest |difference| between the variants' estimates: {diff:.1e}")


if __name__ == "__main__":
    main()
