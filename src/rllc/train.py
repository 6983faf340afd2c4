"""Train small transformers with a checkpoint schedule, resumably.

The batch of step `s` is a pure function of (seed, s), AdamW is deterministic
on CPU, and the resume state (weights, optimizer, step) is written atomically,
so a run that was killed and resumed ends with the same weights as one that
was not.

Output directory (the ``rllc`` checkpoint format, read by `load_checkpoints`)::

    config.json              {"format": "rllc", "model": ..., "train": ..., "data": ...}
    tokenizer.json
    step_00000000.safetensors ...   one per scheduled step
    metrics.jsonl            train/eval loss per checkpoint
    resume.pt                weights + optimizer + step, for resuming (tensors only)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from rllc.models.checkpoints import RLLC_FORMAT, read_json, step_filename
from rllc.models.config import ModelConfig
from rllc.models.transformer import Transformer
from rllc.progress import progress_bar
from rllc.schedule import checkpoint_steps

RESUME_FILE = "resume.pt"


@dataclass
class TrainConfig:
    model: dict[str, Any]
    data: list[str] = field(default_factory=lambda: ["prose"])
    max_chars: int | None = None  # cap on corpus characters (per source), for quick runs
    vocab_size: int = 5000
    n_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0  # linear warmup from lr/warmup_steps to lr over the first steps, then constant
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    schedule: str = "log:40,linear:20"
    eval_batches: int = 8
    eval_fraction: float = 0.05
    seed: int = 0
    # Synthetic structure injected into training rows, {kind: fraction of every batch}; see
    # rllc.data.inject (kinds: repeated_spans, repeated_random, key_retrieval). Eval stays natural.
    inject: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rllc.data.inject import check_inject

        if isinstance(self.data, str):  # `data = "prose,code"` in a TOML file, as on the command line
            self.data = [d.strip() for d in self.data.split(",") if d.strip()]
        check_train_options(self)
        self.inject = check_inject(self.inject)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; valid: {sorted(names)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict({"d_vocab": self.vocab_size, "seed": self.seed, **self.model})


# The `rllc train` flags of the options that have one, for the messages.
TRAIN_FLAGS = {"n_steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed", "data": "--data",
               "max_chars": "--max-chars", "schedule": "--schedule"}


def check_train_options(cfg: TrainConfig) -> None:
    """Type and range of every training option (the model fields are ModelConfig's to check), as one-line
    errors naming it, before anything is written."""

    def option(name: str) -> str:
        return f"{name} ({TRAIN_FLAGS[name]})" if name in TRAIN_FLAGS else name

    def number(name: str, low: float, low_ok: bool, high: float | None = None, optional: bool = False) -> None:
        value = getattr(cfg, name)
        if optional and value is None:
            return
        bound = f"at least {low:g}" if low_ok else f"greater than {low:g}"
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value >= low if low_ok else value > low) and (high is None or value < high))
        if not ok:
            span = f"{bound} and below {high:g}" if high is not None else bound
            raise ValueError(f"training option {option(name)} must be a number {span}, got {value!r}")

    def integer(name: str, low: int, optional: bool = False) -> None:
        value = getattr(cfg, name)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"training option {option(name)} must be an integer of at least {low}, got {value!r}")

    if not isinstance(cfg.model, dict):
        raise ValueError(f"training option model must be a table of model fields, got {cfg.model!r}")
    if not isinstance(cfg.data, (list, tuple)) or not cfg.data or not all(isinstance(d, str) for d in cfg.data):
        raise ValueError(f"training option data must be a list of sources (prose, code, files), got {cfg.data!r}")
    for name in ("n_steps", "batch_size", "eval_batches"):
        integer(name, 1)
    integer("vocab_size", 3)
    integer("warmup_steps", 0)
    integer("seed", 0)
    integer("max_chars", 1, optional=True)
    number("lr", 0, low_ok=False)
    number("weight_decay", 0, low_ok=True)
    number("grad_clip", 0, low_ok=False, optional=True)
    number("eval_fraction", 0, low_ok=False, high=1)
    betas = cfg.betas
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"training option betas must be two numbers in [0, 1), got {betas!r}")
    if not isinstance(cfg.schedule, str):
        raise ValueError(f"training option schedule must be a string such as 'log:40,linear:20', got {cfg.schedule!r}")
    checkpoint_steps(cfg.schedule, cfg.n_steps)  # a ScheduleError (ValueError) naming the bad item


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: for tests and trying the tools.
    "tiny": dict(
        model=dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32),
        data=["prose"], max_chars=200_000, vocab_size=512, n_steps=300, batch_size=16,
        schedule="log:10,linear:5", eval_batches=4,
    ),
    # Minutes on 2 CPU cores: 2 layers x 8 heads, attention-only, shortformer.
    # Prose + code with repeated spans injected into every row of every batch (rllc.data.inject:
    # a quarter of the rows repeat a span of their own text, three quarters a span of random
    # tokens, inside natural text), lr 1e-2 after a 100-step warmup: previous-token and induction
    # heads form together between steps ~3100 and ~3600 (runs so far), inside the dense part of the
    # schedule (2500-5000).
    # See docs/training.md.
    "demo": dict(
        model=dict(n_layers=2, d_model=128, n_heads=8, d_head=16, n_ctx=64),
        data=["prose", "code"], vocab_size=512, n_steps=6000, batch_size=32,
        lr=1e-2, warmup_steps=100, inject={"repeated_spans": 0.25, "repeated_random": 0.75},
        schedule="100,250,500,1000-2000/500,2500-5000/100,5500",
    ),
    # The rLLC paper's model and schedule (107 checkpoints); a GPU or a cluster job.
    "paper": dict(
        model=dict(n_layers=2, d_model=256, n_heads=8, d_head=32, n_ctx=1024),
        data=["prose", "code"], vocab_size=5000, n_steps=50_000, batch_size=32,
        schedule="0,100,200-10000/200,10400-20000/400,21000-50000/1000",
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    d = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if "model" in overrides and overrides["model"]:
        d["model"] = {**PRESETS[name]["model"], **overrides["model"]}
    return TrainConfig.from_dict(d)


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A TOML file: optional `preset = "demo"`, then any TrainConfig field; [model] overrides."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read training config ({e})") from e
    d = d.get("train", d)
    base = d.pop("preset", "tiny")
    try:
        preset(base, **d).model_config()  # the file's own options first, so an error in them names the file
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    return preset(base, **{**d, **{k: v for k, v in overrides.items() if v is not None}})


def build_datasets(cfg: TrainConfig, out: Path, cache_dir: Path | None = None):
    """Tokenizer (trained once, saved with the run) and train/eval token datasets.

    Text sources are tokenised with a BPE tokenizer trained on them; `.npy`
    sources are token ids already (all sources must then be `.npy`, and
    `vocab_size` must cover their ids; the run has no tokenizer).
    """
    from rllc.data import TokenDataset, load_corpus, load_tokenizer, save_tokenizer, tokenize_corpus, train_tokenizer

    n_ctx = cfg.model["n_ctx"]
    npy = [str(s).lower().endswith(".npy") for s in cfg.data]
    if any(npy):
        if not all(npy):
            raise ValueError("--data mixes .npy token arrays with text; their token ids would not agree")
        tokens, meta = load_npy_sources(cfg)
        tokenizer, name = None, "+".join(Path(s).stem for s in cfg.data)
    else:
        corpus = mix_corpora([cap_corpus(load_corpus(source), cfg.max_chars) for source in cfg.data])
        tok_path = out / "tokenizer.json"
        if tok_path.exists():
            tokenizer = load_tokenizer(tok_path)
        else:
            tokenizer = train_tokenizer(corpus, vocab_size=cfg.vocab_size, seed=cfg.seed)
            save_tokenizer(tokenizer, tok_path)
        tokens = tokenize_corpus(corpus, tokenizer, cache_dir or default_cache_dir())
        meta, name = corpus.meta, corpus.name
    train_ds = TokenDataset(tokens, n_ctx, split="train", eval_fraction=cfg.eval_fraction, name=name)
    eval_ds = TokenDataset(tokens, n_ctx, split="eval", eval_fraction=cfg.eval_fraction, name=name)
    return tokenizer, train_ds, eval_ds, meta


def load_npy_sources(cfg: TrainConfig):
    import hashlib

    import numpy as np

    from rllc.data import load_token_array

    arrays = [load_token_array(s, vocab_size=cfg.vocab_size) for s in cfg.data]
    tokens = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    digest = hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest()
    return tokens, {"source": [str(Path(s).resolve()) for s in cfg.data], "n_tokens": int(len(tokens)),
                    "content_hash": digest}


def cap_corpus(corpus, max_chars: int | None):
    """The leading documents of a corpus, up to `max_chars` characters."""
    from rllc.data import Corpus

    if max_chars is None or corpus.n_chars <= max_chars:
        return corpus
    docs, total = [], 0
    for doc in corpus.documents:
        docs.append(doc[: max_chars - total])
        total += len(docs[-1])
        if total >= max_chars:
            break
    return Corpus.from_documents(corpus.name, docs, source=corpus.meta.get("source", corpus.name),
                                 capped_at_chars=max_chars, uncapped_hash=corpus.content_hash)


def mix_corpora(corpora):
    """Interleave documents in proportion to each corpus's length.

    Each document is placed by its relative position within its own corpus, so
    every stretch of the result (the eval split at the tail included) holds
    every source in the same proportion as the whole.
    """
    from rllc.data import Corpus

    if len(corpora) == 1:
        return corpora[0]
    keyed = []
    for c in corpora:
        position = 0
        for doc in c.documents:
            position += len(doc)
            keyed.append((position / c.n_chars, len(keyed), doc))
    return Corpus.from_documents(
        "+".join(c.name for c in corpora), [doc for _, _, doc in sorted(keyed)],
        source=" + ".join(c.meta.get("source", c.name) for c in corpora),
        parts=[c.meta for c in corpora], order="interleaved by relative position",
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("RLLC_CACHE", Path.home() / ".cache" / "rllc"))


def atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(model: Transformer, out: Path, step: int) -> Path:
    path = out / step_filename(step)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    return path


@torch.no_grad()
def evaluate(model: Transformer, batches: list[torch.Tensor]) -> float:
    model.eval()
    loss = sum(model(b, return_type="loss").item() for b in batches) / len(batches)
    model.train()
    return loss


@contextlib.contextmanager
def deterministic_kernels():
    """Deterministic torch kernels while training, the previous setting restored after.

    With two threads, some CPU kernels sum in an order that varies between runs: two runs of one
    config drifted apart (max weight difference 3e-4 after 30 steps) and the demo's phase change
    moved by ~300 steps. The deterministic kernels made the runs bit-identical and cost no measurable
    time (demo preset, 400 steps, 2 threads: 17.0-17.4 s against 18.1-18.3 s)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def train(cfg: TrainConfig, out: str | Path, *, progress: bool = True, resume_every_s: float = 60.0) -> Path:
    """Train into `out`, resuming if it holds an unfinished run of the same config. Two runs of one
    config give bit-identical checkpoints (for the same torch build and thread count)."""
    out = Path(out)
    created = not out.exists()
    try:
        with deterministic_kernels():
            return _train(cfg, out, progress=progress, resume_every_s=resume_every_s)
    except Exception:
        if created and out.is_dir() and not any(out.iterdir()):  # a bad input found before anything was written
            out.rmdir()
        raise


def _train(cfg: TrainConfig, out: str | Path, *, progress: bool, resume_every_s: float) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = cfg.model_config()
    record = {"format": RLLC_FORMAT, "version": 1, "model": model_cfg.to_dict(), "train": cfg.to_dict()}
    config_path = out / "config.json"
    if config_path.exists():
        existing = read_json(config_path)
        if isinstance(existing.get("train"), dict):  # runs from before `inject` existed had none
            existing["train"] = {"inject": {}, **existing["train"]}
        if {k: existing.get(k) for k in ("model", "train")} != {k: record[k] for k in ("model", "train")}:
            raise ValueError(
                f"{out} already holds a run with a different configuration; "
                "choose a new --out directory (or delete the old run)"
            )

    resume_path = out / RESUME_FILE
    if not resume_path.exists() and (out / step_filename(cfg.n_steps)).exists():
        if progress:
            print(f"{out}: training already finished ({cfg.n_steps} steps); nothing to do")
        return out

    tokenizer, train_ds, eval_ds, data_meta = build_datasets(cfg, out)
    if not config_path.exists():
        record["data"] = data_meta
        atomic_write_bytes(config_path, lambda p: p.write_text(json.dumps(record, indent=2)))

    model = Transformer(model_cfg).fused_attention()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    step, train_losses = 0, []
    if resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, train_losses = int(state["step"]), state["train_losses"].tolist()
        if progress:
            print(f"resuming {out} from step {step}")
    schedule = set(checkpoint_steps(cfg.schedule, cfg.n_steps))
    # Rows after the resumed step are recomputed, identically, below. A resume state saved at a
    # checkpoint step is written after that step's checkpoint and row, whose mean training loss
    # it no longer holds (it was reset), so that row is kept rather than recomputed.
    kept = [m for m in read_metrics(out) if m["step"] < step or (m["step"] == step and step in schedule)]
    write_metrics(out, kept)
    done = {m["step"] for m in kept}
    from rllc.data.inject import Injector

    inject = Injector(cfg.inject, cfg.vocab_size, cfg.seed, tokenizer)
    eval_batches = eval_ds.fixed_batches(cfg.eval_batches, cfg.batch_size, seed=cfg.seed + 1)
    tokens_per_step = cfg.batch_size * model_cfg.n_ctx

    def save_resume_state() -> None:
        # Written only between optimizer steps, so it is always a consistent state.
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "train_losses": torch.tensor(train_losses, dtype=torch.float64)}
        atomic_write_bytes(resume_path, lambda p: torch.save(state, p))

    bar = progress_bar(total=cfg.n_steps, initial=step, disable=not progress, unit="step", desc=f"train {out.name}")
    t0, step0, last_save, last_eval = time.monotonic(), step, time.monotonic(), "-"
    model.train()
    while True:
        if step in schedule and step not in done:
            save_checkpoint(model, out, step)
            row = {"step": step, "train_loss": mean_or_none(train_losses),
                   "eval_loss": evaluate(model, eval_batches), "tokens": step * tokens_per_step}
            append_metric(out, row)
            train_losses = []
            last_eval = f"{row['eval_loss']:.3f}"
            bar.set_postfix(eval=last_eval)
        if step >= cfg.n_steps:
            break
        if step in schedule or time.monotonic() - last_save > resume_every_s:
            save_resume_state()
            last_save = time.monotonic()
        batch = inject(train_ds.batch_at(step, cfg.batch_size, seed=cfg.seed), step)
        if cfg.warmup_steps:
            for group in optimizer.param_groups:  # a pure function of the step, so resuming is exact
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        loss = model(batch, return_type="loss")
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        train_losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(train=f"{sum(train_losses[-25:]) / len(train_losses[-25:]):.3f}", eval=last_eval)
    bar.close()
    resume_path.unlink(missing_ok=True)  # finished: the last checkpoint is the whole state
    elapsed = time.monotonic() - t0
    if progress and step > step0:
        print(f"{step - step0} steps in {elapsed:.1f} s ({(step - step0) * tokens_per_step / elapsed:,.0f} tokens/s); "
              f"checkpoints in {out}")
    return out


def mean_or_none(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(out: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_bytes(out / "metrics.jsonl", lambda p: p.write_text(text))


def append_metric(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
