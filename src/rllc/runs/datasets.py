"""Dataset specs of a series run, resolved into deterministic token batches.

A spec is one of

* ``train``: the distribution the series was trained on (rllc format only):
  contexts from the training split of the same (mixed) corpora or ``.npy``
  arrays, tokenised with the run's tokenizer.json, with the same synthetic
  injection (``inject`` kinds and fractions) applied per batch, exactly as
  `rllc train` builds its batches (see `TrainingDistribution`). The default
  for an rllc series: a wrLLC measured on it is the plain (not data-refined)
  refined LLC;
* ``prose``, ``code``: the built-in corpora, tokenised with the series' tokenizer;
* a ``.txt`` file, a directory of them or a ``.jsonl`` file: tokenised the same way;
* a ``.npy`` token array (ids already);
* ``random``, ``repeated``, ``induction``, ``dyck``: synthetic probe batches
  (rllc.data.synthetic) sized to the model's context and vocabulary;
* ``teacher:SOURCE@BASE``: contexts from dataset BASE, loss against a teacher
  model's next-token distribution; SOURCE is ``final``, ``first``, a step of
  this series, or another checkpoint directory (its last step);
* ``self``: sequences sampled from the model itself (fim-trace only).

Batches are drawn in a fixed order from a seed that depends on the dataset's
name, so the first k batches are the same whatever the total and whichever
checkpoint or estimator asks: every checkpoint is measured on the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rllc.data import (
    BUILTIN_CORPORA,
    DataError,
    Injector,
    TokenDataset,
    dyck_batch,
    induction_batch,
    load_corpus,
    load_token_array,
    random_tokens,
    repeated_random,
    tokenize_corpus,
)
from rllc.models.checkpoints import CheckpointSeries, load_checkpoints, read_json
from rllc.models.config import ModelConfig
from rllc.runs.options import RunError, derive_seed

TRAIN = "train"
TRAIN_VERSION = "v1"  # bump when TrainingDistribution.batches changes what it draws
SYNTHETIC = {"random": "random", "random_tokens": "random", "repeated": "repeated", "repeated_random": "repeated",
             "induction": "induction", "dyck": "dyck"}
# Bump a kind's version when its generator changes what it draws (repeated v2: spans without repeated tokens).
SYNTHETIC_VERSIONS = {"random": "v1", "repeated": "v2", "induction": "v1", "dyck": "v1"}
SELF = "self"
TEACHER_PREFIX = "teacher:"


@dataclass
class Teacher:
    """A teacher checkpoint: the driver loads it once and ships it with each task."""

    path: Path
    step: int
    config: ModelConfig

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_checkpoints(self.path).state_dict(self.step)


@dataclass
class TrainingDistribution:
    """Batches drawn as `rllc train` draws its training batches.

    Batch ``i`` for seed ``s`` is ``Injector(inject, vocab_size, s, tokenizer)(tokens.batch_at(i, batch_size,
    seed=s), i)``: the batch a training run with seed ``s`` saw at step ``i``, i.e. the training code's own
    sampler (uniform offsets into the train split) and injection (exactly ``round(fraction * batch_size)``
    rows per kind), at the estimator's batch size. It is a pure function of ``(s, i)``, so batch ``i`` does
    not depend on how many batches are asked for.
    """

    tokens: TokenDataset  # the train split, as build_datasets makes it
    inject: dict[str, float]
    vocab_size: int
    tokenizer: object | None = None  # only key_retrieval injection reads it

    def injector(self, seed: int) -> Injector:
        return Injector(self.inject, self.vocab_size, seed, self.tokenizer)

    def batches(self, n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        inject = self.injector(seed)
        return [inject(self.tokens.batch_at(i, batch_size, seed=seed), i) for i in range(n)]


@dataclass
class Dataset:
    name: str  # the `dataset` column
    spec: str  # as the user wrote it
    fingerprint: str  # what the tokens are (content, tokenizer, generator): part of config_hash
    description: str
    source: TokenDataset | TrainingDistribution | str | None  # token contexts, the training distribution,
    # a synthetic kind, or None for `self`
    cfg: ModelConfig
    batch_size: int
    seed: int
    teacher: Teacher | None = None
    data_name: str | None = None  # whose batches these are (a teacher dataset uses its base's contexts)

    @property
    def is_self(self) -> bool:
        return self.source is None

    def batches(self, n: int) -> torch.Tensor:
        """LongTensor [n, batch_size, n_ctx]; batch i is the same for every n > i."""
        if self.source is None:
            raise RunError(f"dataset {self.name!r} samples from the model and has no fixed batches")
        data_seed = derive_seed("data", self.seed, self.data_name or self.name)
        if isinstance(self.source, TrainingDistribution):
            return torch.stack(self.source.batches(n, self.batch_size, data_seed))
        if isinstance(self.source, TokenDataset):
            return torch.stack(self.source.fixed_batches(n, self.batch_size, seed=data_seed))
        return torch.stack([synthetic_batch(self.source, self.cfg, self.batch_size, derive_seed(data_seed, i))
                            for i in range(n)])


def synthetic_batch(kind: str, cfg: ModelConfig, batch_size: int, seed: int) -> torch.Tensor:
    n_ctx, vocab = cfg.n_ctx, cfg.d_vocab
    if kind == "random":
        return random_tokens(batch_size, n_ctx, vocab, seed)
    if kind == "repeated":
        return repeated_random(batch_size, (n_ctx - 1) // 2, vocab, seed)
    if kind == "induction":
        return induction_batch(batch_size, n_ctx, vocab, seed, n_pairs=max(1, n_ctx // 16)).tokens
    if kind == "dyck":
        length = n_ctx if n_ctx % 2 == 1 else n_ctx - 1  # BOS + an even-length balanced word
        return dyck_batch(batch_size, length, min(4, max(1, (vocab - 2) // 2)), seed)
    raise RunError(f"unknown synthetic dataset {kind!r}")


def resolve_dataset(spec: str, series: CheckpointSeries, *, batch_size: int, seed: int,
                    cache_dir: str | Path | None = None) -> Dataset:
    """Check a dataset spec against the series (file exists, long enough, ids in the vocabulary)."""
    spec = spec.strip()
    cfg = series.config
    common = dict(cfg=cfg, batch_size=batch_size, seed=seed)
    if spec == SELF:
        return Dataset(SELF, spec, "self:v1", "sequences sampled from the model at each checkpoint", None, **common)
    if spec.startswith(TEACHER_PREFIX):
        return resolve_teacher(spec, series, batch_size=batch_size, seed=seed, cache_dir=cache_dir)
    if spec == TRAIN:
        return resolve_train(series, batch_size=batch_size, seed=seed, cache_dir=cache_dir)
    if spec in SYNTHETIC:
        kind = SYNTHETIC[spec]
        synthetic_batch(kind, cfg, 1, 0)  # fails now, not in a task, if the model cannot hold it
        return Dataset(kind, spec, f"synthetic:{kind}:{SYNTHETIC_VERSIONS[kind]}", f"synthetic {kind} batches", kind, **common)
    if spec in BUILTIN_CORPORA:
        tokens, fingerprint, what = corpus_tokens(spec, series, cache_dir)
        name = spec
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise RunError(f"{path}: dataset file not found; pass train, prose, code, random, repeated, induction, "
                           "dyck, teacher:SOURCE@BASE, self, or an existing .txt/.jsonl/.npy file or .txt directory")
        name = path.name
        if path.suffix.lower() == ".npy":
            try:
                tokens = load_token_array(path, vocab_size=cfg.d_vocab)
            except DataError as e:
                raise RunError(str(e)) from None
            fingerprint = "npy:" + hashlib.sha256(np.ascontiguousarray(tokens)).hexdigest()
            what = f"token array {path.resolve()}"
        else:
            tokens, fingerprint, what = corpus_tokens(path, series, cache_dir)
    try:
        source = TokenDataset(tokens, cfg.n_ctx, eval_fraction=0.0, name=name)
    except DataError:
        raise RunError(f"{spec}: {len(tokens)} tokens, fewer than the model's context length {cfg.n_ctx}; "
                       "use a longer file") from None
    return Dataset(name, spec, fingerprint, f"{what}, {len(tokens):,} tokens", source, **common)


def corpus_tokens(source: str | Path, series: CheckpointSeries, cache_dir: str | Path | None):
    """A corpus tokenised with the series' own tokenizer (cached on disk by content and tokenizer)."""
    from rllc.train import default_cache_dir

    if series.tokenizer_path is None:
        raise RunError(f"{series.path}: no tokenizer.json, so text dataset {str(source)!r} cannot be tokenised; "
                       "pass a .npy token array or a synthetic dataset (random, repeated, induction, dyck)")
    try:
        corpus = load_corpus(source)
    except DataError as e:
        raise RunError(str(e)) from None
    tokenizer = series.tokenizer()
    tokens = tokenize_corpus(corpus, tokenizer, cache_dir or default_cache_dir())
    h = hashlib.sha256(f"{corpus.content_hash}\0{tokenizer.to_str()}".encode()).hexdigest()
    return tokens, f"corpus:{h}", f"corpus {corpus.name} ({corpus.meta.get('source', source)})"


def resolve_teacher(spec: str, series: CheckpointSeries, *, batch_size: int, seed: int,
                    cache_dir: str | Path | None) -> Dataset:
    body = spec[len(TEACHER_PREFIX):]
    source, sep, base_spec = body.partition("@")
    if not sep or not source or not base_spec:
        raise RunError(f"dataset {spec!r}: write teacher:SOURCE@BASE, e.g. teacher:final@prose "
                       "(SOURCE: final, first, a step, or a checkpoint directory)")
    if base_spec.startswith(TEACHER_PREFIX) or base_spec == SELF:
        raise RunError(f"dataset {spec!r}: the contexts of a teacher dataset must be a plain dataset")
    base = resolve_dataset(base_spec, series, batch_size=batch_size, seed=seed, cache_dir=cache_dir)
    if source in ("final", "last", "first"):
        teacher_series, step = series, series.steps[0] if source == "first" else series.steps[-1]
    elif source.isdigit():
        if int(source) not in series:
            raise RunError(f"dataset {spec!r}: step {source} is not in {series.path}")
        teacher_series, step = series, int(source)
    else:
        teacher_series = load_checkpoints(Path(source).expanduser())
        step = teacher_series.steps[-1]
    if teacher_series.config.d_vocab != series.config.d_vocab:
        raise RunError(f"dataset {spec!r}: the teacher's vocabulary ({teacher_series.config.d_vocab}) differs "
                       f"from the series' ({series.config.d_vocab})")
    file_hash = hashlib.sha256(Path(teacher_series.files[step]).read_bytes()).hexdigest() \
        if Path(teacher_series.files[step]).is_file() else f"{teacher_series.files[step]}"
    teacher = Teacher(teacher_series.path, step, teacher_series.config)
    return Dataset(f"teacher:{source}@{base.name}", spec, f"teacher:{file_hash}:{base.fingerprint}",
                   f"teacher {teacher_series.path} step {step} on {base.description}", base.source,
                   base.cfg, batch_size, seed, teacher, data_name=base.data_name or base.name)


def train_record(series: CheckpointSeries) -> dict | None:
    """An rllc series' config.json when it records its TrainConfig (a ``train`` section), else None."""
    if series.format != "rllc":
        return None
    record = read_json(series.path / "config.json")
    return record if isinstance(record.get("train"), dict) else None


def resolve_train(series: CheckpointSeries, *, batch_size: int, seed: int,
                  cache_dir: str | Path | None = None) -> Dataset:
    """The ``train`` spec: the distribution the series was trained on, rebuilt from its config.json.

    The token source is what `rllc.train.build_datasets` makes for the recorded TrainConfig (the train
    split of the same mixed, capped corpora, tokenised with the run's own tokenizer.json, or the same
    ``.npy`` arrays); batches are drawn and injected as training draws them (`TrainingDistribution`),
    from a seed derived from `seed`. Never trains a tokenizer: a text run without tokenizer.json is an error.
    """
    from rllc.train import TrainConfig, build_datasets

    hint = ("pass --datasets (e.g. prose,code, a .txt/.jsonl/.npy file, or random, repeated, induction, dyck); "
            "estimates on them are data-refined")
    record = train_record(series)
    if record is None:
        what = (f"a {series.format} checkpoint directory" if series.format != "rllc"
                else "an rllc run without a training record")
        raise RunError(f"{series.path}: {what}: its training distribution is unknown, so dataset 'train' is not "
                       f"available; {hint}")
    try:
        tcfg = TrainConfig.from_dict(record["train"])
    except (ValueError, TypeError) as e:
        raise RunError(f"{series.path / 'config.json'}: cannot read its training config ({e}); {hint}") from None
    data_meta = record.get("data") if isinstance(record.get("data"), dict) else {}
    npy = all(str(s).lower().endswith(".npy") for s in tcfg.data)
    if not npy and series.tokenizer_path is None:
        raise RunError(f"{series.path}: no tokenizer.json, so its training text cannot be tokenised as in training; "
                       f"{hint}")
    tcfg = dataclasses.replace(tcfg, data=located_sources(tcfg.data, data_meta))
    try:
        tokenizer, train_ds, _, meta = build_datasets(tcfg, series.path, Path(cache_dir) if cache_dir else None)
    except (DataError, ValueError, OSError) as e:
        raise RunError(f"{series.path}: cannot rebuild its training data ({e}); {hint}") from None
    recorded = data_meta.get("content_hash")
    if recorded and recorded != meta.get("content_hash"):
        raise RunError(f"{series.path}: the training data rebuilt now (content hash {meta.get('content_hash')}) differ "
                       f"from those the run recorded ({recorded}): a source changed since training; {hint}")
    cfg = series.config
    if tcfg.model.get("n_ctx") != cfg.n_ctx or tcfg.vocab_size != cfg.d_vocab:
        raise RunError(f"{series.path}: config.json's training config (n_ctx {tcfg.model.get('n_ctx')}, vocab "
                       f"{tcfg.vocab_size}) disagrees with its model (n_ctx {cfg.n_ctx}, vocab {cfg.d_vocab})")
    source = TrainingDistribution(train_ds, dict(tcfg.inject), tcfg.vocab_size, tokenizer)
    try:
        source.batches(1, batch_size, 0)  # fails now, not in a task (e.g. fractions that round past batch_size)
    except DataError as e:
        raise RunError(f"dataset 'train' at batch size {batch_size}: {e}") from None
    tok_hash = hashlib.sha256(tokenizer.to_str().encode()).hexdigest() if tokenizer is not None else None
    content = meta.get("content_hash") or hashlib.sha256(np.ascontiguousarray(train_ds.tokens)).hexdigest()
    key = dict(content=content, tokenizer=tok_hash, inject=source.inject, eval_fraction=tcfg.eval_fraction,
               n_ctx=cfg.n_ctx, vocab_size=tcfg.vocab_size)
    fingerprint = f"{TRAIN}:{TRAIN_VERSION}:" + hashlib.sha256(
        json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Dataset(TRAIN, TRAIN, fingerprint, train_description(series, tcfg, train_ds), source,
                   cfg=cfg, batch_size=batch_size, seed=seed)


def located_sources(sources: list[str], data_meta: dict) -> list[str]:
    """The recorded training sources, a file that is not where it was named (a path relative to where
    training ran) replaced by the absolute path the run recorded for it, when that exists."""
    recorded: list = []
    if isinstance(data_meta.get("source"), list):  # .npy runs: one resolved path per source
        recorded = data_meta["source"]
    elif len(sources) == 1:
        recorded = [data_meta.get("source")]
    elif isinstance(data_meta.get("parts"), list):  # mixed corpora: each part's meta
        recorded = [p.get("source") if isinstance(p, dict) else None for p in data_meta["parts"]]
    out = []
    for i, s in enumerate(sources):
        alt = recorded[i] if i < len(recorded) else None
        if s not in BUILTIN_CORPORA and not Path(s).expanduser().exists() and isinstance(alt, str) \
                and Path(alt).exists():
            s = alt
        out.append(s)
    return out


def train_description(series: CheckpointSeries, tcfg, train_ds: TokenDataset) -> str:
    kinds = ", ".join(f"{k} {v:g}" for k, v in tcfg.inject.items() if v)
    inject = f"inject {kinds}" if kinds else "no injection"
    cap = f" (first {tcfg.max_chars:,} chars per source)" if tcfg.max_chars else ""
    return (f"training distribution of {series.path}: {train_ds.name}{cap}, {inject}; "
            f"train split, {len(train_ds):,} tokens")


def default_datasets(series: CheckpointSeries) -> list[str]:
    """What `rllc estimate DIR` measures on without --datasets: ``["train"]`` for an rllc series.

    ``train`` is the distribution the series was trained on (its corpora, tokenizer and injected
    structure; see `resolve_train`). (Weight-)refined LLCs are defined on that distribution; an
    estimate on any other dataset (one corpus of a mix, another corpus, a synthetic probe, a teacher)
    is data-refined (drLLC, or wdrLLC for a component) and must be read as such. Other formats record
    no training data, so they need --datasets.
    """
    if train_record(series) is not None:
        return [TRAIN]
    raise RunError(f"{series.path}: cannot tell which data to estimate on; pass --datasets "
                   "(e.g. prose,code, a .txt/.jsonl/.npy file, or random, repeated, induction, dyck)")
