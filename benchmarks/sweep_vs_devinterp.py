"""wrLLC of every head: devinterp 2.0.1 (one run per head) vs rllc's batched fast path, in one run.

    python benchmarks/sweep_vs_devinterp.py [--draws 10] [--train-steps 200] [--init-batches 4]
                                            [--bf16] [--skip-devinterp] [--no-scaling] [--threads N]

Reference model: 2 layers, d_model 256, 8 heads, d_head 32, ctx 256, vocab 5000, attention-only,
shortformer positions, LayerNorm. "Trained checkpoint": random init (seed 0) plus --train-steps AdamW
steps (lr 1e-3, batch 8 x 256) on synthetic induction data (random tokens, each sequence's second
half repeats its first), so the heads are not at a random point.

Hyperparameters for both: eps 1e-3, nbeta 30, gamma 200, 4 chains, batch 8 x 256 tokens, no burn-in,
--draws draws, --init-batches batches for devinterp's initial loss (rllc's reference is over the draws'
batches), the same batch order (devinterp's
shuffled DataLoader seeded init_seed, replayed by rllc). rllc runs twice: with devinterp's chain seeds
(init_seed + c, so each head's chains replay devinterp's trajectories up to float rounding) and with its
own seeds (independent draws: agreement must hold within Monte Carlo error). Wall times are for the
whole sweep (initial loss included); the speed-up is devinterp / rllc (own seeds). --bf16 adds a sweep
with compute_dtype='bf16' (own seeds; its time includes the fp32-vs-bf16 validation pilot).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp prints a progress bar per chain

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rllc.models import ModelConfig, Transformer
from rllc.models.components import heads
from rllc.sampling import next_token_loss
from rllc.sampling import estimate_llcs

HYPER = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0)
CHAINS, BATCH, CTX, INIT_SEED = 4, 8, 256, 100


class Plain(nn.Module):
    """devinterp treats anything with cfg.n_heads as a HookedTransformer; hide the config."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, tokens):
        return self.net(tokens)


def reference_model(train_steps: int, n_ctx: int = CTX) -> tuple[Transformer, float, float]:
    cfg = ModelConfig(n_layers=2, d_model=256, n_ctx=n_ctx, d_head=32, n_heads=8, d_vocab=5000, seed=0,
                      positional_embedding_type="shortformer", normalization_type="LN")
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.fused_attention(True)
    first = last = math.nan
    for step in range(train_steps):
        tokens = induction_tokens(BATCH, n_ctx, g)
        loss = next_token_loss(model, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if step == 0 else first
        last = float(loss.detach())
    model.fused_attention(False)
    model.zero_grad(set_to_none=True)
    return model, first, last


def induction_tokens(n: int, n_ctx: int, g: torch.Generator) -> torch.Tensor:
    half = torch.randint(0, 5000, (n, n_ctx // 2), generator=g)
    return torch.cat([half, half], dim=1)


def head_masks(model: nn.Module, layer: int, head: int) -> dict[str, torch.Tensor]:
    masks = {}
    for name, p in model.named_parameters():
        if name.startswith(f"blocks.{layer}.attn.") and name.rsplit(".", 1)[1] in (
                "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            mask = torch.zeros_like(p, dtype=torch.bool)
            mask[head] = True
            masks["net." + name] = mask
    return masks


def run_devinterp(model, ds, names, draws, init_batches, tmp):
    from devinterp.slt.llc import llc

    out = {}
    for name in names:
        layer, head = map(int, name.split(":"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = llc(Plain(model), ds, {}, lr=HYPER["epsilon"], n_beta=HYPER["nbeta"],
                      localization=HYPER["gamma"], param_masks=head_masks(model, layer, head), num_chains=CHAINS,
                      num_draws=draws, batch_size=BATCH, num_init_loss_batches=init_batches, init_seed=INIT_SEED,
                      output_path=os.path.join(tmp, f"di_{layer}_{head}.zarr"))
        per_chain = np.asarray(res.llc_per_chain.values, dtype=float)
        out[name] = (per_chain, np.asarray(res.loss_trace.values, dtype=float), float(res.init_loss))
    return out


def scaling_tables(draws: int) -> None:
    print(f"\n## Time per sweep (rllc fast path, fp32, 4 chains, {draws} draws)")
    model, _, _ = reference_model(0)
    g = torch.Generator().manual_seed(2)
    all_heads = heads(model)
    rows = []
    for n_heads, seq in [(1, 256), (4, 256), (16, 256), (16, 64), (16, 128)]:
        names = all_heads[:n_heads] if n_heads < 16 else all_heads
        if n_heads == 4:
            names = ["0:0", "0:1", "1:0", "1:1"]  # two per layer: layers cost differently
        data = [torch.randint(0, 5000, (BATCH, seq), generator=g) for _ in range(draws)]
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            estimate_llcs(model, data, names, chains=CHAINS, draws=draws, **HYPER)
            best = min(best, time.perf_counter() - t0)
        rows.append((n_heads, seq, best, best / draws, best / (draws * CHAINS * n_heads)))
    print("| heads | seq len | s per sweep | s per step (all heads x chains) | s per head-chain-step |")
    print("| --- | --- | --- | --- | --- |")
    for n_heads, seq, total, per_step, per_pair in rows:
        print(f"| {n_heads} | {seq} | {total:.2f} | {per_step:.3f} | {per_pair:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--init-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="also time the validated bf16 compute mode")
    parser.add_argument("--skip-devinterp", action="store_true")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--scaling-draws", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    model, first, last = reference_model(args.train_steps)
    print(f"checkpoint: random init + {args.train_steps} AdamW steps on synthetic induction data "
          f"(loss {first:.3f} -> {last:.3f}, {time.perf_counter() - t0:.0f} s)")

    g = torch.Generator().manual_seed(3)
    n_rows = BATCH * (args.draws + args.init_batches)
    tokens = torch.cat([induction_tokens(n_rows // 2, CTX, g), torch.randint(0, 5000, (n_rows - n_rows // 2, CTX),
                                                                            generator=g)])
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(INIT_SEED),
                        drop_last=True)
    batches = list(loader)
    names = heads(model)
    common = dict(chains=CHAINS, draws=args.draws, **HYPER)

    t0 = time.perf_counter()
    mine = estimate_llcs(model, batches, names, seed=1, **common)
    t_rllc = time.perf_counter() - t0
    print(f"rllc fast path, own seeds:        {t_rllc:7.1f} s (load {os.getloadavg()[0]:.2f})")
    t0 = time.perf_counter()
    replay = estimate_llcs(model, batches, names, chain_seeds=[INIT_SEED + c for c in range(CHAINS)], **common)
    t_replay = time.perf_counter() - t0
    print(f"rllc fast path, devinterp seeds:  {t_replay:7.1f} s (load {os.getloadavg()[0]:.2f})")
    low = None
    if args.bf16:
        t0 = time.perf_counter()
        low = estimate_llcs(model, batches, names, seed=1, compute_dtype="bf16", **common)
        t_low = time.perf_counter() - t0
        check = low[names[0]].diagnostics["bf16_check"]
        print(f"rllc fast path, bf16, own seeds:  {t_low:7.1f} s (load {os.getloadavg()[0]:.2f}; "
              f"{'accepted' if check['accepted'] else 'REFUSED'}: worst head {check['worst_head']} at "
              f"{check['worst_ratio']:.2f} MC errors; pilot {check['pilot_draws']} draws, {check['seconds']:.1f} s)")
    ref = None
    if not args.skip_devinterp:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ref = run_devinterp(model, ds, names, args.draws, args.init_batches, tmp)
            t_di = time.perf_counter() - t0
        print(f"devinterp 2.0.1, one run per head: {t_di:7.1f} s (load {os.getloadavg()[0]:.2f})")
        print(f"speed-up devinterp / rllc: {t_di / t_rllc:.1f}x (own seeds), {t_di / t_replay:.1f}x (devinterp seeds)"
              + (f", {t_di / t_low:.1f}x (bf16 incl. pilot)" if low is not None else ""))
        print(f"per head-chain-step: devinterp {t_di / (len(names) * CHAINS * args.draws):.3f} s, "
              f"rllc {t_rllc / (len(names) * CHAINS * args.draws):.3f} s")

    print(f"\n## Per-head wrLLC ({args.draws} draws x {CHAINS} chains; +- is the chain std / sqrt(chains))")
    print("| head | rllc (own seeds) | devinterp | z | rllc (devinterp seeds) | max abs diff to devinterp per chain |"
          + (" rllc bf16 (own seeds) |" if low is not None else ""))
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if low is not None else ""))
    zs, diffs = [], []
    for name in names:
        r = mine[name]
        se_r = r.std / math.sqrt(CHAINS)
        rp = replay[name]
        if ref is not None:
            d_pc, _, d_init = ref[name]
            # devinterp's reference is L(w*) over its first --init-batches batches, ours over the draws' batches:
            # move its numbers to ours (same losses at w*), so that both estimate the same quantity.
            d_pc = d_pc + HYPER["nbeta"] * (d_init - rp.init_loss)
            d_mean, se_d = float(d_pc.mean()), float(d_pc.std(ddof=1)) / math.sqrt(CHAINS)
            z = (r.mean - d_mean) / math.hypot(se_r, se_d)
            diff = float(np.abs(rp.per_chain - d_pc).max())
            zs.append(z)
            diffs.append(diff)
            print(f"| {name} | {r.mean:.2f} +- {se_r:.2f} | {d_mean:.2f} +- {se_d:.2f} | {z:+.2f} | "
                  f"{rp.mean:.2f} +- {rp.std / math.sqrt(CHAINS):.2f} | {diff:.1e} |"
                  + (f" {low[name].mean:.2f} +- {low[name].std / math.sqrt(CHAINS):.2f} |" if low is not None else ""))
        else:
            print(f"| {name} | {r.mean:.2f} +- {se_r:.2f} | - | - | {rp.mean:.2f} | - |")
    if zs:
        print(f"max |z| = {max(abs(z) for z in zs):.2f} over {len(zs)} heads "
              f"({sum(abs(z) < 3 for z in zs)} within 3 combined standard errors); "
              f"same-seed replay: max per-chain |rllc - devinterp| = {max(diffs):.1e}")
    if not args.no_scaling:
        scaling_tables(args.scaling_draws)


if __name__ == "__main__":
    main()
