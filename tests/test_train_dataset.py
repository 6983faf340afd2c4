"""The `train` dataset spec: batches drawn like `rllc train`'s training batches, on the run's own data."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rllc.data import Injector
from rllc.data.inject import span_bounds
from rllc.models import ModelConfig, Transformer
from rllc.models.checkpoints import load_checkpoints, read_json
from rllc.runs.datasets import default_datasets, resolve_dataset
from rllc.runs.options import RunError, derive_seed
from rllc.train import TrainConfig, build_datasets, preset, train

INJECT = {"repeated_spans": 0.25, "repeated_random": 0.75}
SEED = 0  # the dataset (estimator) seed
DATA_SEED = derive_seed("data", SEED, "train")  # what Dataset.batches draws `train` batches from
BATCH = 8
STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny prose run trained with seed DATA_SEED, and the batches its training loop fed the model."""
    out = tmp_path_factory.mktemp("train_ds") / "run"
    cfg = preset("tiny", n_steps=STEPS, max_chars=20_000, batch_size=BATCH, inject=INJECT, seed=DATA_SEED,
                 schedule="0")
    seen = []
    forward = Transformer.forward

    def spy(self, tokens, *args, **kwargs):
        if self.training and kwargs.get("return_type") == "loss":
            seen.append(tokens.clone())
        return forward(self, tokens, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(Transformer, "forward", spy)
    try:
        train(cfg, out, progress=False)
    finally:
        mp.undo()
    assert len(seen) == STEPS
    return out, torch.stack(seen)


def training_pieces(path, n, batch_size, seed):
    """Batches built by the training code's own pieces: build_datasets' train split, batch_at and Injector."""
    tcfg = TrainConfig.from_dict(read_json(path / "config.json")["train"])
    tokenizer, train_ds, _, _ = build_datasets(tcfg, path)
    inject = Injector(tcfg.inject, tcfg.vocab_size, seed, tokenizer)
    natural = [train_ds.batch_at(i, batch_size, seed=seed) for i in range(n)]
    return natural, [inject(b, i) for i, b in enumerate(natural)], inject


def copy_run(src, dst, **train_changes):
    shutil.copytree(src, dst)
    record = read_json(dst / "config.json")
    record["train"].update(train_changes)
    (dst / "config.json").write_text(json.dumps(record))
    return dst


def test_train_batches_are_the_training_loops_batches(run):
    path, seen = run
    ds = resolve_dataset("train", load_checkpoints(path), batch_size=BATCH, seed=SEED)
    assert ds.name == "train" and ds.fingerprint.startswith("train:v1:")
    assert "training distribution of" in ds.description and "prose" in ds.description
    assert "inject repeated_spans 0.25, repeated_random 0.75" in ds.description
    # a run trained with seed DATA_SEED saw exactly these batches at steps 0, 1, 2
    assert torch.equal(ds.batches(STEPS), seen)


def test_other_batch_size_matches_the_training_pieces_and_injects_spans(run):
    path, _ = run
    series = load_checkpoints(path)
    ds = resolve_dataset("train", series, batch_size=4, seed=SEED)
    got = ds.batches(5)
    natural, expected, inject = training_pieces(path, 5, 4, DATA_SEED)
    assert got.shape == (5, 4, series.config.n_ctx) and torch.equal(got, torch.stack(expected))
    lo, _ = span_bounds(series.config.n_ctx)
    for i, batch in enumerate(got):
        _, done = inject.apply(natural[i], i)
        assert sorted(d.kind for d in done) == ["repeated_random"] * 3 + ["repeated_spans"]  # round(f * 4)
        for d in done:  # each row repeats a span of at least the shortest length
            row = batch[d.row]
            assert d.length >= lo and torch.equal(row[d.dst:d.dst + d.length], row[d.src:d.src + d.length])
            assert not torch.equal(row, natural[i][d.row])


def test_deterministic_and_prefix_stable(run):
    path, _ = run
    series = load_checkpoints(path)
    a = resolve_dataset("train", series, batch_size=BATCH, seed=SEED)
    b = resolve_dataset("train", load_checkpoints(path), batch_size=BATCH, seed=SEED)
    assert a.fingerprint == b.fingerprint
    five = a.batches(5)
    assert torch.equal(five, b.batches(5))
    assert torch.equal(a.batches(2), five[:2]) and torch.equal(a.batches(1), five[:1])
    other = resolve_dataset("train", series, batch_size=BATCH, seed=SEED + 1)
    assert other.fingerprint == a.fingerprint and not torch.equal(other.batches(2), five[:2])
    teacher = resolve_dataset("teacher:final@train", series, batch_size=BATCH, seed=SEED)
    assert torch.equal(teacher.batches(3), five[:3])  # a teacher on `train` reads the same contexts


def test_fingerprint_covers_the_inject_spec_and_the_corpus(run, tmp_path):
    path, _ = run
    base = resolve_dataset("train", load_checkpoints(path), batch_size=BATCH, seed=SEED)
    changed = copy_run(path, tmp_path / "spans", inject={"repeated_spans": 0.5})
    ds = resolve_dataset("train", load_checkpoints(changed), batch_size=BATCH, seed=SEED)
    assert ds.fingerprint.startswith("train:v1:") and ds.fingerprint != base.fingerprint
    assert "inject repeated_spans 0.5;" in ds.description
    plain = copy_run(path, tmp_path / "plain", inject={})
    ds = resolve_dataset("train", load_checkpoints(plain), batch_size=BATCH, seed=SEED)
    assert ds.fingerprint != base.fingerprint and "no injection" in ds.description
    natural, _, _ = training_pieces(plain, 2, BATCH, DATA_SEED)
    assert torch.equal(ds.batches(2), torch.stack(natural))

    # the corpus rebuilt now must be the one the run recorded
    stale = copy_run(path, tmp_path / "stale")
    record = read_json(stale / "config.json")
    record["data"]["content_hash"] = "0" * 64
    (stale / "config.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="changed since training"):
        resolve_dataset("train", load_checkpoints(stale), batch_size=BATCH, seed=SEED)
    # a text run without its tokenizer: never train a new one
    notok = copy_run(path, tmp_path / "notok")
    (notok / "tokenizer.json").unlink()
    with pytest.raises(RunError, match="no tokenizer.json"):
        resolve_dataset("train", load_checkpoints(notok), batch_size=BATCH, seed=SEED)
    assert not (notok / "tokenizer.json").exists()


def test_default_datasets_is_train_for_an_rllc_run(run):
    assert default_datasets(load_checkpoints(run[0])) == ["train"]


def test_npy_run_uses_its_arrays(tmp_path, monkeypatch):
    ids = np.tile(np.arange(2, 50, dtype=np.uint16), 40)
    np.save(tmp_path / "ids.npy", ids)
    monkeypatch.chdir(tmp_path)  # trained on a relative path ...
    cfg = preset("tiny", data=["ids.npy"], vocab_size=64, n_steps=2, schedule="0", inject={"repeated_random": 0.5})
    train(cfg, tmp_path / "run", progress=False)
    monkeypatch.chdir(tmp_path.parent)  # ... estimated from elsewhere: the recorded absolute path is used
    series = load_checkpoints(tmp_path / "run")
    ds = resolve_dataset("train", series, batch_size=4, seed=SEED)
    assert ds.fingerprint.startswith("train:v1:") and "ids" in ds.description
    monkeypatch.chdir(tmp_path)
    natural, expected, _ = training_pieces(tmp_path / "run", 3, 4, DATA_SEED)
    assert torch.equal(ds.batches(3), torch.stack(expected))
    assert int(ds.batches(3).max()) < 64 and default_datasets(series) == ["train"]


def test_not_an_rllc_run(tmp_path):
    cfg = ModelConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=2, d_vocab=20)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file(Transformer(cfg).state_dict(), str(tmp_path / "model_1.safetensors"))
    series = load_checkpoints(tmp_path)
    assert series.format != "rllc"
    with pytest.raises(RunError, match="--datasets") as err:
        resolve_dataset("train", series, batch_size=4, seed=0)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(RunError, match="--datasets"):
        default_datasets(series)

