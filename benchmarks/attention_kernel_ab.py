"""A/B of the batched head sampler's attention kernel: the fused kernel everywhere against explicit batched
matmuls at short contexts (`rllc.sampling.fast.EXPLICIT_ATTENTION_MAX_T`), with and without an observer.

    python benchmarks/attention_kernel_ab.py [REPETITIONS]      (default 2; benchmarks/README.md quotes 5)

`estimate_llcs` over all 16 heads of the demo's checkpoint at step 6000 (`checkpoints/demo`), 20
training-distribution batches of 8 x 64 tokens, eps 1e-3, nbeta 30, gamma 200, 2 chains x 20 draws, seed 0,
2 threads; the observer evaluates the three probe sets of susceptibility_speed.py (8 sequences each). The
four configurations run interleaved in every repetition; each line prints one configuration's wall times.
"""

import sys
import time

import torch

from rllc.models.checkpoints import load_checkpoints
from rllc.runs.datasets import resolve_dataset
from rllc.sampling import estimate_llcs, fast
from rllc.sampling.observables import TokenLossObserver
from susceptibility_speed import probe_sets  # the same probe sets


def main() -> None:
    repetitions = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(2)
    series = load_checkpoints("checkpoints/demo")
    model = series[6000].eval()
    sampling = list(resolve_dataset("train", series, batch_size=8, seed=0).batches(20))
    probes = probe_sets(series, model)
    settings = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, chains=2, draws=20, burn_in=0, seed=0)
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(repetitions):
        for kernel, max_t in (("fused", 0), ("explicit at T <= 64", 64)):
            fast.EXPLICIT_ATTENTION_MAX_T = max_t
            for observed in (False, True):
                observer = TokenLossObserver(probes, sampling="train") if observed else None
                t0 = time.perf_counter()
                estimate_llcs(model, sampling, None, observer=observer, **settings)
                times.setdefault((kernel, observed), []).append(time.perf_counter() - t0)
    for (kernel, observed), seconds in times.items():
        print(f"{kernel:20s} {'with' if observed else 'without'} observer: "
              + " ".join(f"{s:.2f}" for s in seconds) + f"  (median {sorted(seconds)[len(seconds) // 2]:.2f} s)")


if __name__ == "__main__":
    main()
