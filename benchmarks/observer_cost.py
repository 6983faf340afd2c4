"""What observing probe sets costs the sampler: `estimate_llcs` with and without a TokenLossObserver.

    python benchmarks/observer_cost.py [--ckpt checkpoints/demo] [--step 6000]

The demo's checkpoint; 50 training-distribution batches of 8 x 64 tokens; eps 1e-3, nbeta 30, gamma 200,
2 chains x 50 draws, seed 0, 2 threads; probe sets as in susceptibility_speed.py (train, code, repeated:
8 sequences each). Times every head (the batched sweep) and the full model (generic back-end), each
with and without the observer, one after the other in one process.
"""

from __future__ import annotations

import argparse
import time

import torch

from rllc.models.checkpoints import load_checkpoints
from rllc.runs.datasets import resolve_dataset
from rllc.sampling import estimate_llcs
from rllc.sampling.observables import TokenLossObserver
from susceptibility_speed import probe_sets  # the same probe sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="checkpoints/demo")
    ap.add_argument("--step", type=int, default=6000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    series = load_checkpoints(args.ckpt)
    model = series[args.step].eval()
    sampling = list(resolve_dataset("train", series, batch_size=8, seed=0).batches(50))
    probes = probe_sets(series, model)
    settings = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, chains=2, draws=50, burn_in=0, seed=0)
    for label, comps in (("16 heads", None), ("full model", ["model"])):
        for observer in (None, TokenLossObserver(probes, sampling="train")):
            t0 = time.perf_counter()
            estimate_llcs(model, sampling, comps, observer=observer, **settings)
            print(f"{label:10s} {'with' if observer else 'without'} observer: {time.perf_counter() - t0:5.1f} s")


if __name__ == "__main__":
    main()
