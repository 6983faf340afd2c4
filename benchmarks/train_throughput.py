"""Training throughput of the presets on this machine: seconds per step and tokens/s.

    python benchmarks/train_throughput.py [--presets tiny demo paper] [--steps 20] [--threads N] [--compare-attention]

Times full optimizer steps (forward, backward, clip, AdamW) on random tokens
after warm-up; data loading is excluded (it costs ~0.1 ms per batch).
"""

from __future__ import annotations

import argparse
import time

import torch

from rllc.models import Transformer
from rllc.train import preset


def time_steps(name: str, steps: int, fused: bool = True) -> tuple[float, int, int]:
    cfg = preset(name)
    model = Transformer(cfg.model_config()).fused_attention(fused)  # rllc.train uses fused attention
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_ctx = cfg.model["n_ctx"]
    batch = torch.randint(0, cfg.vocab_size, (cfg.batch_size, n_ctx), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    return seconds, cfg.batch_size * n_ctx, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo", "paper"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare-attention", action="store_true",
                        help="also time the explicit einsum attention that estimators and hooks use")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':8} {'attention':>9} {'params':>10} {'tokens/step':>12} {'s/step':>8} {'tokens/s':>10} "
          f"{'steps (preset)':>15} {'est. time':>10}")
    for name in args.presets:
        steps = max(2, args.steps if name != "paper" else args.steps // 4)
        for fused in (True, False) if args.compare_attention else (True,):
            seconds, tokens, params = time_steps(name, steps, fused)
            total = preset(name).n_steps * seconds
            print(f"{name:8} {'fused' if fused else 'explicit':>9} {params:>10,} {tokens:>12,} {seconds:>8.3f} "
                  f"{tokens / seconds:>10,.0f} {preset(name).n_steps:>15,} {total / 60:>8.1f} m")


if __name__ == "__main__":
    main()
