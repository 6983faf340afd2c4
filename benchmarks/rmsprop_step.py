"""RMSProp-SGLD at a step size of its own against the SGLD gold of time_to_precision.py.

    python benchmarks/rmsprop_step.py 1e-4

time_to_precision.py runs RMSProp-SGLD at SGLD's calibrated eps (1e-3), where its preconditioner (up to
1 / rmsprop_eps = 10) makes the effective step up to 10x SGLD's and the estimate another quantity. This runs
rllc's RMSProp-SGLD at the given eps (e.g. eps / 10, the same largest effective step), otherwise the benchmark's
settings, seeds and batches (3 seeds x 2 chains x 400 draws), and prints its RMSE against the cached SGLD gold
and its time to the benchmark's targets (a quarter and a tenth of the between-head sd).
"""

import json
import sys

import numpy as np
import torch

import time_to_precision as ttp  # run from the repository root or benchmarks/: the benchmark's data and gold
from rllc.models.checkpoints import load_checkpoints
from rllc.models.components import heads

torch.set_num_threads(2)
series = load_checkpoints("checkpoints/demo")
model = series[series.steps[-1]]
gold = list(json.loads(open(ttp.GOLD_FILE).read()).values())[0]
names = heads(model)
g = np.array([gold["values"][h] for h in names])
sd = g.std(ddof=1)
eps, draws = float(sys.argv[1]), 400
grid = list(range(1, draws + 1))
rmse, secs = [], []
for seed in range(3):
    _, batches = ttp.seed_data(series, seed, ttp.BURN_IN + draws)
    run = ttp.run_rllc(model, batches, "rmsprop", seed, draws, epsilon=eps)
    secs.append(run["seconds"])
    est = ttp.prefix_estimates("rllc", run, grid)
    prefix = np.stack([est[h] for h in names])  # [heads, grid]
    rmse.append(np.sqrt(((prefix - g[:, None]) ** 2).mean(0)))
    print(f"seed {seed}: {secs[-1]:.1f} s, mean head value {prefix[:, -1].mean():.3f}", flush=True)
rmse, s = np.mean(rmse, 0), np.mean(secs)
print(f"rmsprop eps {eps:g}: RMSE at 25/50/100/400 draws " + " / ".join(f"{rmse[n - 1]:.3f}" for n in (25, 50, 100, 400)))
for t in ttp.TARGETS:
    ok = np.nonzero(rmse < sd / t)[0]
    print(f"  sd/{t} ({sd / t:.3f}): " + (f"{s * (ttp.BURN_IN + ok[0] + 1) / (ttp.BURN_IN + draws):.1f} s "
                                          f"({ok[0] + 1} draws)" if len(ok) else "not reached"))
