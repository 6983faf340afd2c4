"""All 16 heads' per-token susceptibilities at one checkpoint: rllc (one batched sweep) against devinterp
2.0.1's `susceptibilities()` (one sampling run per weight restriction), same model, data and settings, in
one process, one after the other.

    python benchmarks/susceptibility_speed.py [--ckpt checkpoints/demo] [--step 6000] [--draws 50]

Model: the demo's checkpoint (train it with `rllc train --config experiments/demo.toml --out
checkpoints/demo`). Sampling data: batches built like its training batches (`train`, batch 8 x 64
tokens); probe sets, 8 sequences each: `train` (the sampling distribution; pt), `code`, `repeated`
(32 random tokens, then the same 32 again). Settings: the demo's calibrated eps 1e-3, nbeta 30, gamma 200, 2 chains, no
burn-in. Both tools sample the full model as the reference. Reported: wall time of each, their ratio,
and the per-(head, probe) mean susceptibilities of both side by side (they sample with different noise
and batch orders, so they agree within Monte Carlo error at best; devinterp's L0 is its initial-loss
batches' mean, ours the sampling probe's).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rllc.models.checkpoints import load_checkpoints
from rllc.models.components import resolve_component
from rllc.runs.datasets import resolve_dataset
from rllc.sampling.susceptibility import susceptibilities


def probe_sets(series, model, batch: int = 8) -> dict[str, torch.Tensor]:
    """The benchmarks' probe sets, `batch` sequences each: `train` (the sampling distribution's own), `code`,
    and `repeated` (a random half repeated: devinterp needs full-length rows)."""
    half = torch.randint(model.cfg.d_vocab, (batch, model.cfg.n_ctx // 2), generator=torch.Generator().manual_seed(1))
    return {"train": resolve_dataset("train", series, batch_size=batch, seed=1).batches(1)[0],
            "code": resolve_dataset("code", series, batch_size=batch, seed=1).batches(1)[0],
            "repeated": torch.cat([half, half], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="checkpoints/demo")
    ap.add_argument("--step", type=int, default=6000)
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    series = load_checkpoints(args.ckpt)
    model = series[args.step].eval()
    batch = 8
    sampling = resolve_dataset("train", series, batch_size=batch, seed=0).batches(args.draws)  # [n, 8, 64]
    probes = probe_sets(series, model, batch)
    heads = [f"{layer}:{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    settings = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, chains=args.chains, draws=args.draws, burn_in=0)

    from datasets import Dataset
    from devinterp.slt.sampling import sample
    from devinterp.slt.susceptibilities import compute_susceptibilities

    def hf(rows: torch.Tensor) -> Dataset:
        return Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")

    params = dict(model.named_parameters())
    restrictions = {"full": None}
    for h in heads:
        comp = resolve_component(model, h)
        restrictions[h] = {name: comp.mask(name, params[name]) for name in comp.param_names}
    # devinterp's susceptibilities() is this loop (one sample() per weight restriction) followed by
    # compute_susceptibilities; run by hand to read its L0 (init_loss) from the full model's samples.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        wr_map = {}
        for name, masks in restrictions.items():
            masks = masks if masks is not None else {n: None for n in params}
            wr_map[name] = sample(model, hf(sampling.flatten(0, 1)), {k: (hf(v), 1) for k, v in probes.items()},
                                  param_masks=masks, lr=settings["epsilon"], n_beta=settings["nbeta"],
                                  localization=settings["gamma"], num_chains=args.chains, num_draws=args.draws,
                                  batch_size=batch, num_burnin_steps=0, num_init_loss_batches=4, device="cpu",
                                  output_path=Path(tmp) / f"samples_{name.replace(':', '_')}.zarr")
        theirs = compute_susceptibilities(wr_map, "train")
        t_theirs = time.perf_counter() - t0
        their_l0 = float(wr_map["full"].dataset["init_loss"].values.mean())

    t0 = time.perf_counter()
    ours = susceptibilities(model, list(sampling), probes, sampling_probe="train", components=heads, seed=0,
                            **settings)
    t_ours = time.perf_counter() - t0
    matched = susceptibilities(model, list(sampling), probes, sampling_probe="train", components=heads, seed=0,
                               init_loss=their_l0, **settings)
    sus = theirs["susceptibilities"].dataset
    names = list(sus.attrs["dataset_id_to_name"])
    rows = []
    own, same = ours.summary().set_index(["component", "probe"]), matched.summary().set_index(["component", "probe"])
    for h in heads:
        for i, probe in enumerate(names):
            value = float(sus["sus"].sel(wr=h).values[sus["dataset_id"].values == i].mean())
            rows.append(dict(head=h, probe=probe, rllc=own.loc[(h, probe), "value"],
                             rllc_devinterp_l0=same.loc[(h, probe), "value"], se=same.loc[(h, probe), "se"],
                             devinterp=value))
    table = pd.DataFrame(rows)
    table["z"] = (table["rllc_devinterp_l0"] - table["devinterp"]) / table["se"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2e}"))
    rho = table[["rllc_devinterp_l0", "devinterp"]].corr(method="spearman").iloc[0, 1]
    print(f"\n{len(heads)} heads + the full model, {args.chains} chains x {args.draws} draws, 3 probe sets x "
          f"{batch} sequences x {sampling.shape[-1] - 1} tokens, {args.threads} threads")
    print(f"L0: rllc (the sampling probe's loss at w*) {ours.init_loss:.4f}, devinterp (its initial-loss batches) "
          f"{their_l0:.4f}")
    print(f"rllc      {t_ours:8.1f} s")
    print(f"devinterp {t_theirs:8.1f} s")
    print(f"ratio     {t_theirs / t_ours:8.2f}x")
    print(f"per-(head, probe) mean susceptibility with devinterp's L0, rllc vs devinterp: Spearman {rho:.3f}; "
          f"|difference| / rllc se: median {np.median(np.abs(table['z'])):.2f}, max {np.abs(table['z']).max():.2f}")
    print(f"with rllc's own L0 the mean over heads and probes of |rllc| is {table['rllc'].abs().mean():.2e}, with "
          f"devinterp's {table['rllc_devinterp_l0'].abs().mean():.2e}")


if __name__ == "__main__":
    main()
