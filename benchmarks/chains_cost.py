"""Cost per chain-step of the batched head sampler as the chains (and pairs per batched pass) grow.

    python benchmarks/chains_cost.py checkpoints/demo

All 16 heads of the demo's last checkpoint, `train` batches of 8, 30 draws, twice each: if the per-minibatch
work shared by the pairs (the forward pass at w*) were a large share, more chains per sweep would be cheaper
per chain-step. They are not (README: 51-77 ms per chain-step at 2 to 16 chains).
"""
import sys
import time

import torch
from rllc.models.checkpoints import load_checkpoints
from rllc.runs.datasets import resolve_dataset
from rllc.sampling import estimate_llcs
torch.set_num_threads(2)
series = load_checkpoints(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/demo"); model = series[series.steps[-1]]
data = list(resolve_dataset("train", series, batch_size=8, seed=0).batches(30))
for rep in range(2):
    for chains, chunk in ((2, 8), (4, 8), (8, 8), (8, 16), (16, 16), (16, 32)):
        t = time.perf_counter(); estimate_llcs(model, data, None, chains=chains, draws=30, pair_chunk=chunk)
        s = time.perf_counter() - t
        print(f"chains {chains:2d} pair_chunk {chunk:2d}: {s:6.2f} s, {s / (30 * chains) * 1000:6.1f} ms per chain-step (16 heads)", flush=True)
