"""Time to a trustworthy answer: wall time until the 16 heads' wrLLCs are within a target RMSE of a gold value.

    python benchmarks/time_to_precision.py checkpoints/demo [--seeds 3] [--draws 400] [--devinterp-draws 150]

Methods: rllc with each sampler (sgld, rmsprop) and SGLD with antithetic chain pairs (`sgld+antithetic`:
settings.antithetic, the odd chain's noise the negative of its partner's), devinterp with each sampler.

What a researcher pays for is the wall time until the per-head estimates are precise enough to compare
heads, not the time per step. One run measures it, for rllc and devinterp 2.0.1, each with each of its
samplers (plain SGLD and RMSProp-preconditioned SGLD), on the demo's last checkpoint and its training
distribution (`train`: batches built like the training batches), at the calibrated settings of
experiments/demo_calibration (eps 1e-3, nbeta 30, gamma 200, batch 8, burn-in 7, 2 chains).

Gold. rllc, plain SGLD, 8 chains x 1,000 draws after 50 burn-in steps, seed 999, on its own 1,050
batches (data seed 999). Cached in benchmarks/time_to_precision_gold.json (keyed by checkpoint and
settings; delete it, or pass --regold, to recompute). Its per-head standard errors are printed.

Each method and seed s (s = 0..seeds-1) runs once: a data seed s gives the batches (devinterp reads
them from a Dataset shuffled by its DataLoader seeded 100 + s; rllc replays that order), chains are
seeded 100 + s + c for devinterp (its scheme) and chain_seed(s, c) for rllc. From each run the estimate
after the first n draws is what a run of n draws would have returned (same seeds, same batches: the
trajectories are prefixes of each other):

* rllc: its default (paired) estimator over draws burn-in .. burn-in + n - 1;
* devinterp as shipped: nbeta * (mean loss over all steps *including burn-in* - init_loss over its
  first 32 batches), i.e. devinterp's compute_llc on a run of n draws;
* devinterp tuned: the same with num_init_loss_batches = the run's burn-in + n steps, the best a
  devinterp user can set (its init loss is then over the batches its steps use; burn-in is still
  averaged in). Computed from the same run: devinterp's init loss over k batches is the mean loss at
  w* over its first k batches (tests/test_llc_devinterp.py checks this);
* devinterp's chains with rllc's estimator (a hybrid no devinterp user gets; shown to separate the
  sampler's speed from the estimator's precision).

RMSE(n) = sqrt(mean over heads (estimate - gold)^2), averaged over seeds. Wall time of n draws = the
run's measured wall time x (burn-in + n) / (burn-in + draws) (for devinterp the sum of its 16 per-head
runs; its per-run fixed costs are scaled down with n too, which favours it). Time to target: the first n
on the grid where the seed-averaged RMSE is below the target. Targets, fixed before any result was
seen: a quarter and a tenth of the sd of the gold values over the 16 heads.

Results of each (method, seed) are cached in benchmarks/time_to_precision_runs.json as they finish, so
an interrupted run resumes (pass --fresh to discard them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp prints a progress bar per chain

import numpy as np
import torch
from torch.utils.data import DataLoader

from rllc.models.checkpoints import load_checkpoints
from rllc.models.components import heads
from rllc.runs.datasets import resolve_dataset
from rllc.sampling import ChainDivergedError, estimate_llcs, next_token_loss
from rllc.losses import BatchStream
from rllc.sampling.data import reference_losses
from sweep_vs_devinterp import Plain, head_masks  # devinterp's view of our model and its masks for one head

HERE = Path(__file__).resolve().parent
GOLD_FILE, RUNS_FILE = HERE / "time_to_precision_gold.json", HERE / "time_to_precision_runs.json"
SETTINGS = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0)  # experiments/demo_calibration/calibration.toml
BATCH, BURN_IN, CHAINS = 8, 7, 2
GOLD = dict(chains=8, draws=1000, burn_in=50, seed=999)
DEVINTERP_INIT_BATCHES = 32  # devinterp 2.0.1's default num_init_loss_batches
DEVINTERP_SAMPLER = {"sgld": "sgmcmc_sgld", "rmsprop": "rmsprop_sgld"}
TARGETS = (4, 10)  # RMSE targets: the between-head sd of the gold values divided by these


def batches_for(series, data_seed: int, n: int) -> list[torch.Tensor]:
    return list(resolve_dataset("train", series, batch_size=BATCH, seed=data_seed).batches(n))


def gold_values(series, model, key: str, regold: bool) -> dict:
    cached = json.loads(GOLD_FILE.read_text()) if GOLD_FILE.exists() else {}
    if key in cached and not regold:
        print(f"gold: cached in {GOLD_FILE.name} ({cached[key]['seconds']:.0f} s when computed)")
        return cached[key]
    g = GOLD
    print(f"gold: rllc sgld, {g['chains']} chains x {g['draws']} draws + {g['burn_in']} burn-in ...", flush=True)
    data = batches_for(series, g["seed"], g["burn_in"] + g["draws"])
    t0 = time.perf_counter()
    est = estimate_llcs(model, data, None, chains=g["chains"], draws=g["draws"], burn_in=g["burn_in"], seed=g["seed"],
                        **SETTINGS)
    out = dict(values={h: e.mean for h, e in est.items()}, se={h: e.diagnostics["se"] for h, e in est.items()},
               rhat={h: e.diagnostics["rhat"] for h, e in est.items()}, seconds=time.perf_counter() - t0, settings=g)
    cached[key] = out
    GOLD_FILE.write_text(json.dumps(cached, indent=1))
    return out


def seed_data(series, seed: int, steps: int):
    """Seed `seed`'s rows as devinterp reads them (a Dataset its DataLoader shuffles with a generator seeded
    100 + seed) and the same batches in that order for rllc: (dataset, batches)."""
    import datasets

    rows = torch.cat(batches_for(series, seed, steps))
    hf = datasets.Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    order = DataLoader(hf, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(100 + seed),
                       drop_last=True)
    return hf, [b["input_ids"] for b in order]


def run_rllc(model, batches, sampler: str, seed: int, draws: int, **overrides) -> dict:
    """One rllc run at the benchmark's settings (`overrides`, e.g. epsilon=, replace some of them)."""
    settings = {**SETTINGS, **overrides}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate_llcs(model, batches, None, chains=CHAINS, draws=draws, burn_in=BURN_IN, seed=seed,
                            sampler=sampler, **settings)
    seconds = time.perf_counter() - t0
    nbeta = settings["nbeta"]
    # per head: [chains, draws] paired values nbeta * (L_t(w_t) - L_t(w*))
    values = {h: (nbeta * (e.loss_trace - e.diagnostics["loss_at_w_star_trace"][None])).tolist()
              for h, e in est.items()}
    return dict(seconds=seconds, steps=BURN_IN + draws, paired=values)


def run_devinterp(model, hf_dataset, batches, sampler: str, seed: int, draws: int) -> dict:
    from devinterp.slt.llc import llc

    nbeta = SETTINGS["nbeta"]
    ref = reference_losses(model, next_token_loss, BatchStream(batches), BURN_IN + draws)  # for the hybrid only
    out, seconds = {}, 0.0
    for name in heads(model):
        layer, head = map(int, name.split(":"))
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            res = llc(Plain(model), hf_dataset, {}, lr=SETTINGS["epsilon"], n_beta=nbeta,
                      localization=SETTINGS["gamma"], param_masks=head_masks(model, layer, head), num_chains=CHAINS,
                      num_draws=draws, num_burnin_steps=BURN_IN, batch_size=BATCH,
                      num_init_loss_batches=DEVINTERP_INIT_BATCHES, init_seed=100 + seed,
                      sampling_method=DEVINTERP_SAMPLER[sampler], output_path=os.path.join(tmp, "s.zarr"))
            trace = np.asarray(res.loss_trace.values, dtype=float)  # [chains, burn-in + draws]
            seconds += time.perf_counter() - t0
        out[name] = dict(trace=trace.tolist(), init_loss=float(res.init_loss))
    return dict(seconds=seconds, steps=BURN_IN + draws, heads=out, ref=ref.tolist())


def prefix_estimates(kind: str, run: dict, grid: list[int]) -> dict[str, np.ndarray]:
    """{head: [len(grid)]}: the estimate a run of n draws would have returned, for n in grid."""
    nbeta = SETTINGS["nbeta"]
    out = {}
    if kind == "rllc":
        for h, v in run["paired"].items():
            v = np.asarray(v)
            out[h] = np.array([v[:, :n].mean() for n in grid])
        return out
    ref = np.asarray(run["ref"])
    for h, r in run["heads"].items():
        trace = np.asarray(r["trace"])
        if kind == "devinterp":
            out[h] = np.array([nbeta * (trace[:, :BURN_IN + n].mean() - r["init_loss"]) for n in grid])
        elif kind == "devinterp_tuned":
            out[h] = np.array([nbeta * (trace[:, :BURN_IN + n].mean() - ref[:BURN_IN + n].mean()) for n in grid])
        else:  # hybrid: devinterp's chains, rllc's estimator
            out[h] = np.array([nbeta * (trace[:, BURN_IN:BURN_IN + n] - ref[None, BURN_IN:BURN_IN + n]).mean()
                               for n in grid])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=400, help="draws per rllc run")
    ap.add_argument("--devinterp-draws", type=int, default=150, help="draws per devinterp run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--regold", action="store_true")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--skip-devinterp", action="store_true")
    ap.add_argument("--gold-draws", type=int, default=GOLD["draws"], help="(for a quick smoke run)")
    ap.add_argument("--cache-dir", default=str(HERE), help="where the gold and run caches live")
    args = ap.parse_args()
    global GOLD_FILE, RUNS_FILE
    GOLD["draws"] = args.gold_draws
    GOLD_FILE = Path(args.cache_dir) / GOLD_FILE.name
    RUNS_FILE = Path(args.cache_dir) / RUNS_FILE.name
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    series = load_checkpoints(args.checkpoints)
    step = series.steps[-1]
    model = series[step]
    key = f"{Path(args.checkpoints).resolve().name}@{step}|{json.dumps(SETTINGS)}|batch {BATCH}|{json.dumps(GOLD)}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}; "
          f"checkpoint {args.checkpoints} step {step}; eps {SETTINGS['epsilon']:g}, nbeta {SETTINGS['nbeta']:g}, "
          f"gamma {SETTINGS['gamma']:g}, batch {BATCH}, burn-in {BURN_IN}, {CHAINS} chains")
    gold = gold_values(series, model, key, args.regold)
    names = heads(model)
    g = np.array([gold["values"][h] for h in names])
    head_sd = float(g.std(ddof=1))
    print(f"gold: between-head sd {head_sd:.3f}; per-head SE median {np.median(list(gold['se'].values())):.3f}, "
          f"max {max(gold['se'].values()):.3f}; R-hat max {max(gold['rhat'].values()):.3f}")
    print("| head | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    print("| gold | " + " | ".join(f"{gold['values'][h]:.2f}" for h in names) + " |")

    runs = json.loads(RUNS_FILE.read_text()) if RUNS_FILE.exists() and not args.fresh else {}
    runs = {k: v for k, v in runs.items() if v.get("key") == key}
    methods = [("rllc", "sgld"), ("rllc", "rmsprop"), ("rllc", "sgld+antithetic")]
    if not args.skip_devinterp:
        methods += [("devinterp", "sgld"), ("devinterp", "rmsprop")]
    for seed in range(args.seeds):
        hf, batches = seed_data(series, seed, BURN_IN + max(args.draws, args.devinterp_draws))
        for tool, sampler in methods:
            name = f"{tool}|{sampler}|{seed}"
            if name in runs:
                continue
            t0 = time.perf_counter()
            try:
                if tool == "rllc":
                    base, *options = sampler.split("+")  # "sgld+antithetic": SGLD with antithetic chain pairs
                    result = run_rllc(model, batches, base, seed, args.draws, **{o: True for o in options})
                else:
                    result = run_devinterp(model, hf, batches, sampler, seed, args.devinterp_draws)
            except ChainDivergedError as e:
                result = dict(diverged=str(e))
            result["key"] = key
            runs[name] = result
            RUNS_FILE.write_text(json.dumps(runs))
            print(f"{name}: {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.2f})", flush=True)

    report(runs, methods, names, g, head_sd, args)


def report(runs, methods, names, g, head_sd, args) -> None:
    rows = []
    variants = []
    for tool, sampler in methods:
        kinds = ["rllc"] if tool == "rllc" else ["devinterp", "devinterp_tuned", "hybrid"]
        for kind in kinds:
            variants.append((tool, sampler, kind))
    print(f"\n## Time to precision ({args.seeds} seeds; RMSE over 16 heads against the gold, averaged over seeds)")
    print("| method | s per run (mean) | draws | RMSE at 25 / 50 / 100 / all draws | "
          + " | ".join(f"time to RMSE < sd/{t} ({head_sd / t:.2f})" for t in TARGETS) + " |")
    print("| --- | --- | --- | --- | " + " --- |" * len(TARGETS))
    best = {}
    for tool, sampler, kind in variants:
        seeds = [runs.get(f"{tool}|{sampler}|{s}") for s in range(args.seeds)]
        label = {"rllc": f"rllc {sampler}", "devinterp": f"devinterp {sampler} (as shipped)",
                 "devinterp_tuned": f"devinterp {sampler} (init-loss batches = its steps)",
                 "hybrid": f"devinterp {sampler} chains, rllc's estimator"}[kind]
        if any(r is None for r in seeds):
            print(f"| {label} | missing runs | | | " + " |" * len(TARGETS))
            continue
        if any("diverged" in r for r in seeds):
            print(f"| {label} | diverged: {next(r['diverged'] for r in seeds if 'diverged' in r)[:120]} | | | "
                  + " |" * len(TARGETS))
            continue
        steps = seeds[0]["steps"]
        draws = steps - BURN_IN
        grid = list(range(1, draws + 1))
        rmse = []
        for r in seeds:
            est = prefix_estimates("rllc" if kind == "rllc" else kind, r, grid)
            err = np.stack([est[h] for h in names]) - g[:, None]  # [heads, grid]
            rmse.append(np.sqrt((err ** 2).mean(axis=0)))
        rmse = np.mean(rmse, axis=0)
        seconds = float(np.mean([r["seconds"] for r in seeds]))
        at = [rmse[min(n, draws) - 1] for n in (25, 50, 100, draws)]
        cells = []
        for t in TARGETS:
            ok = np.nonzero(rmse < head_sd / t)[0]
            if len(ok):
                n = grid[ok[0]]
                sec = seconds * (BURN_IN + n) / steps
                cells.append(f"{sec:.1f} s ({n} draws)")
                if kind != "hybrid":
                    best.setdefault((t, tool), []).append((sec, label, seconds))
            else:
                cells.append(f"not within {draws} draws ({seconds:.0f} s)")
                if kind != "hybrid":
                    best.setdefault((t, tool), []).append((math.inf, label, seconds))
        rows.append(label)
        print(f"| {label} | {seconds:.1f} | {draws} | " + " / ".join(f"{x:.2f}" for x in at) + " | "
              + " | ".join(cells) + " |")
    for t in TARGETS:
        mine = min(best.get((t, "rllc"), [(math.inf, "-", 0.0)]))
        theirs = min(best[(t, "devinterp")]) if best.get((t, "devinterp")) else None
        if theirs is None or math.isinf(mine[0]):
            continue
        if math.isinf(theirs[0]):
            # a lower bound: every devinterp variant ran at least this long without reaching the target
            shortest = min(seconds for _, _, seconds in best[(t, "devinterp")])
            print(f"target sd/{t}: rllc's best ({mine[1]}) {mine[0]:.1f} s; no devinterp variant reached it "
                  f"(each ran >= {shortest:.0f} s): > {shortest / mine[0]:.1f}x")
        else:
            print(f"target sd/{t}: rllc's best ({mine[1]}) {mine[0]:.1f} s vs devinterp's best ({theirs[1]}) "
                  f"{theirs[0]:.1f} s: {theirs[0] / mine[0]:.1f}x")


if __name__ == "__main__":
    main()
