"""The `rllc` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from rllc.train import load_train_config, preset, train

    overrides = dict(n_steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                     schedule=args.schedule, max_chars=args.max_chars,
                     data=args.data.split(",") if args.data else None)
    cfg = load_train_config(args.config, **overrides) if args.config else preset(args.preset, **overrides)
    out = Path(args.out) if args.out else Path("checkpoints") / (Path(args.config).stem if args.config else args.preset)
    try:
        train(cfg, out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume from the last saved state in {out}",
              file=sys.stderr)
        return 130
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rllc.models.checkpoints import compress_steps, load_checkpoints
    from rllc.models.transformer import Transformer

    series = load_checkpoints(args.path)
    cfg = series.config
    n_params = sum(p.numel() for p in Transformer(cfg).parameters())
    mlp = "attention-only" if cfg.attn_only else f"MLP d_mlp={cfg.d_mlp} ({cfg.act_fn})"
    print(f"directory     {series.path}")
    print(f"format        {series.format}")
    print(f"architecture  {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_head {cfg.d_head}, "
          f"n_ctx {cfg.n_ctx}, vocab {cfg.d_vocab}, {mlp}")
    print(f"              positions {cfg.positional_embedding_type}, norm {cfg.normalization_type or 'none'}, "
          f"{n_params:,} parameters")
    print(f"steps         {len(series)}: {compress_steps(series.steps)}")
    print(f"tokenizer     {series.tokenizer_path or 'none'}")
    metrics = series.metrics()
    if metrics:
        last = metrics[-1]
        print(f"last metrics  step {last['step']}: train loss {last.get('train_loss')}, eval loss {last.get('eval_loss')}")
    problems = series.problems + series.verify(full=args.check)
    print(f"problems      {len(problems) or 'none'}")
    for p in problems:
        print(f"  - {p}")
    return 1 if problems and args.check else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllc",
        description="Refined local learning coefficients per attention head over training checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a small transformer with a checkpoint schedule (resumable)",
                       description="Train a model into a checkpoint directory. Rerunning the same command "
                                   "after an interruption resumes from the last saved state.")
    p.add_argument("--preset", default="tiny", choices=["tiny", "demo", "paper"],
                   help="model/data/schedule preset (default: tiny)")
    p.add_argument("--config", help="TOML training config (`preset = ...` plus any training option)")
    p.add_argument("--out", help="checkpoint directory (default: checkpoints/PRESET)")
    p.add_argument("--steps", type=int, help="number of optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="comma-separated corpora: prose, code, or paths to .txt/.jsonl files")
    p.add_argument("--max-chars", type=int, help="use at most this many characters of each corpus")
    p.add_argument("--schedule", help="checkpoint schedule, e.g. 'log:40,linear:20' or '0,100,200-10000/200'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="describe a checkpoint directory: format, architecture, steps, problems")
    p.add_argument("path", help="checkpoint directory (rllc, TransformerLens state dicts, or Hugging Face)")
    p.add_argument("--check", action="store_true", help="load every checkpoint to verify it (slower)")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rllc.models.checkpoints import CheckpointError
    from rllc.models.config import ConfigError

    try:
        return args.func(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"rllc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
