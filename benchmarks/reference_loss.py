"""Bias and standard error of the LLC estimators with minibatches: the old reference loss against the new.

On reduced-rank regression (4 -> 2 -> 4 at rank 2, Aoyagi's lambda = 6), 2,000 samples in a DataLoader
of 20 shuffled minibatches (5 % each), nbeta = n / log n, gamma 1, epsilon 5e-5, 4 chains x 2,000 draws
after 200 burn-in steps, `--seeds` SGLD seeds on the same batches:

* old standard: nbeta * (mean draw loss - L(w*) over the first 16 batches), the default before the fix
  (init_loss_batches = 16), computed from the same chains;
* standard: the reference over the draws' own batches (now);
* paired: nbeta * mean(L_B(w_t) - L_B(w*)) (now the default).

For each: mean over seeds minus lambda (bias), the sd of the estimate between seeds (its real Monte
Carlo error), the mean standard error the estimator reports, and seconds per estimate. The two new
estimators share their draws, so their cost is the same by construction.

    python benchmarks/reference_loss.py --seeds 8
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from rllc.sampling import estimate_llc
from rllc.sampling.toys import make_reduced_rank_regression


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = 2000
    problem = make_reduced_rank_regression(m=4, n=4, h=2, n_samples=n, n_batches=20, noise=args.noise, seed=0)
    x = torch.cat([b[0] for b in problem.data])
    y = torch.cat([b[1] for b in problem.data])
    loader = DataLoader(TensorDataset(x, y), batch_size=n // 20, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)  # the stream the estimator reads once and cycles
    with torch.no_grad():
        first16 = float(np.mean([float(problem.loss_fn(problem.model, b)) for b in batches[:16]]))
    nbeta = n / math.log(n)
    rows = {"old standard (first 16 batches)": ([], []), "standard (draws' batches)": ([], []),
            "paired (default)": ([], [])}
    seconds = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        est = estimate_llc(problem.model, batches, loss_fn=problem.loss_fn, epsilon=5e-5, nbeta=nbeta, gamma=1.0,
                           chains=4, draws=2000, burn_in=200, seed=seed)
        seconds.append(time.perf_counter() - t0)
        d = est.diagnostics
        old = nbeta * (est.loss_trace.mean() - first16)
        rows["old standard (first 16 batches)"][0].append(old)
        rows["old standard (first 16 batches)"][1].append(d["standard"]["se"])
        rows["standard (draws' batches)"][0].append(d["standard"]["mean"])
        rows["standard (draws' batches)"][1].append(d["standard"]["se"])
        rows["paired (default)"][0].append(d["paired"]["mean"])
        rows["paired (default)"][1].append(d["paired"]["se"])
    print(f"reduced-rank regression, lambda = {problem.lam}, 20 minibatches of 100, noise {args.noise}, "
          f"{args.seeds} seeds, {np.mean(seconds):.1f} s per estimate (one thread)")
    print("| estimator | mean over seeds | bias | sd between seeds | mean reported SE |")
    print("| --- | --- | --- | --- | --- |")
    for name, (values, ses) in rows.items():
        v = np.asarray(values)
        print(f"| {name} | {v.mean():.2f} | {v.mean() - problem.lam:+.2f} | {v.std(ddof=1):.3f} | "
              f"{np.mean(ses):.3f} |")


if __name__ == "__main__":
    main()
