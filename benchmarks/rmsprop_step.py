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
import time

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

import time_to_precision as ttp  # run from the repository root or benchmarks/: the benchmark's data and gold
from rllc.models.checkpoints import load_checkpoints
from rllc.models.components import heads
from rllc.sampling import estimate_llcs
torch.set_num_threads(2)
series = load_checkpoints("checkpoints/demo"); model = series[series.steps[-1]]
gold = list(json.loads(open(ttp.GOLD_FILE).read()).values())[0]
names = heads(model); g = np.array([gold["values"][h] for h in names]); sd = g.std(ddof=1)
eps = float(sys.argv[1]); draws = 400
rmse = []; secs = []
for seed in range(3):
    rows = torch.cat(ttp.batches_for(series, seed, ttp.BURN_IN + draws))
    hf = datasets.Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    batches = [b["input_ids"] for b in DataLoader(hf, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(100 + seed), drop_last=True)]
    t = time.perf_counter()
    est = estimate_llcs(model, batches, None, chains=2, draws=draws, burn_in=ttp.BURN_IN, seed=seed, sampler="rmsprop",
                        epsilon=eps, nbeta=30.0, gamma=200.0)
    secs.append(time.perf_counter() - t)
    v = {h: 30.0 * (e.loss_trace - e.diagnostics["loss_at_w_star_trace"][None]) for h, e in est.items()}
    prefix = np.stack([[v[h][:, :n].mean() for n in range(1, draws + 1)] for h in names])
    rmse.append(np.sqrt(((prefix - g[:, None]) ** 2).mean(0)))
    print(f"seed {seed}: {secs[-1]:.1f} s, mean head value {np.mean([e.mean for e in est.values()]):.3f}", flush=True)
rmse = np.mean(rmse, 0); s = np.mean(secs)
print(f"rmsprop eps {eps:g}: RMSE at 25/50/100/400 draws " + " / ".join(f"{rmse[n-1]:.3f}" for n in (25, 50, 100, 400)))
for t in (4, 10):
    ok = np.nonzero(rmse < sd / t)[0]
    print(f"  sd/{t} ({sd/t:.3f}): " + (f"{s * (ttp.BURN_IN + ok[0] + 1) / (ttp.BURN_IN + draws):.1f} s ({ok[0]+1} draws)" if len(ok) else "not reached"))
