"""Interleaved A/B of the batched head sampler's execution settings, on the demo's last checkpoint.

    python benchmarks/sweep_ab.py checkpoints/demo [--reps 5] [--draws 30] [--threads 2]
    python benchmarks/sweep_ab.py reference [--reps 3] [--draws 3]

All 16 heads x 2 antithetic chains at the calibrated settings of experiments/demo_calibration (eps 1e-3,
nbeta 30, gamma 200, batch 8 x 64, burn-in 7), the same seeds and batches for every variant, run in
turn `reps` times (so that a slow spell of the machine hits every variant alike); medians of ms per step.
`reference` instead takes sweep_vs_devinterp.py's reference model (d_model 256, ctx 256, vocab 5,000; its
random init: the cost per step does not depend on training) on batches of 8 x 256 of its induction data,
no burn-in.

Variants:
* `ce 128 tok, 1 sweep`: the fused cross-entropy in blocks of 128 tokens (its block before 2026-12-02);
* `ce 1250 tok, 1 sweep`: blocks of CE_BLOCK_ELEMENTS logits (= 1,250 tokens at vocab 512: one block a batch;
  128 tokens at vocab 5,000, so on the reference model this is the first variant again);
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
    ap.add_argument("checkpoints", help="a checkpoint directory (its last step), or 'reference'")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoints == "reference":
        from sweep_vs_devinterp import BATCH as REF_BATCH, CTX, induction_tokens, reference_model

        model, burn_in = reference_model(0)[0], 0
        g = torch.Generator().manual_seed(0)
        data = [induction_tokens(REF_BATCH, CTX, g) for _ in range(args.draws)]
        what = f"reference model, batch {REF_BATCH} x {CTX}"
    else:
        series = load_checkpoints(args.checkpoints)
        model, burn_in = series[series.steps[-1]], BURN_IN
        data = batches_for(series, 0, BURN_IN + args.draws)
        what = f"{args.checkpoints} step {series.steps[-1]}, batch {BATCH}"
    vocab = model.cfg.d_vocab
    print(f"torch {torch.__version__}, {args.threads} threads; {what}, {burn_in} + {args.draws} steps, "
          f"{args.reps} interleaved repetitions")
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
                    est = estimate_llcs(model, data, None, chains=2, draws=args.draws, burn_in=burn_in, seed=0,
                                        antithetic=True, workers=workers, **SETTINGS)
                times[name].append(1000 * (time.perf_counter() - t0) / (burn_in + args.draws))
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
