"""Token arrays: cached tokenisation, user .npy arrays, TokenDataset splits and batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rllc.data import (
    EOT_ID,
    Corpus,
    DataError,
    DataFileNotFoundError,
    TokenDataset,
    load_token_array,
    token_cache_path,
    token_dtype,
    tokenize_corpus,
    train_tokenizer,
)

DOCS = [
    "And God said, Let there be light: and there was light.",
    "def f(x):\n    return x * 2\n",
    "Now is the winter of our discontent made glorious summer.",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS * 4, vocab_size=300)


@pytest.fixture()
def corpus():
    return Corpus.from_documents("tiny", DOCS, source="test")


class CountingTokenizer:
    """Wraps a tokenizer and counts encode_batch calls (the Rust class cannot be patched)."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def encode_batch(self, inputs, add_special_tokens=True):
        self.calls += 1
        return self.tok.encode_batch(inputs, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.tok, name)


# --------------------------------------------------------------------------- tokenize_corpus


def test_tokenize_corpus_joins_documents_with_eot(tok, corpus, tmp_path: Path):
    arr = tokenize_corpus(corpus, tok, tmp_path)
    assert isinstance(arr, np.memmap)
    assert arr.dtype == np.uint16 and arr.ndim == 1
    expected: list[int] = []
    for i, doc in enumerate(DOCS):
        if i:
            expected.append(EOT_ID)
        expected.extend(tok.encode(doc).ids)
    assert arr.tolist() == expected
    assert (arr == EOT_ID).sum() == len(DOCS) - 1
    assert tok.decode(arr.tolist()) == "".join(DOCS)  # decode drops the EOT specials


def test_cache_hit_and_miss(tok, corpus, tmp_path: Path):
    counting = CountingTokenizer(tok)
    first = tokenize_corpus(corpus, counting, tmp_path)
    assert counting.calls == 1
    path = Path(first.filename)
    mtime = path.stat().st_mtime_ns

    second = tokenize_corpus(corpus, counting, tmp_path)
    assert counting.calls == 1  # cache hit: nothing encoded
    assert Path(second.filename) == path and path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first, second)

    changed = Corpus.from_documents("tiny", DOCS[:2] + ["A different last document."], source="test")
    third = tokenize_corpus(changed, counting, tmp_path)
    assert counting.calls == 2 and Path(third.filename) != path  # new content, new file

    other_tok = train_tokenizer(DOCS * 4, vocab_size=290)
    assert token_cache_path(corpus, other_tok, tmp_path) != path  # new tokenizer, new key
    tokenize_corpus(corpus, other_tok, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic writes leave no debris


def test_token_dtype():
    assert token_dtype(5000) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.int32


# --------------------------------------------------------------------------- load_token_array


def test_load_token_array_valid(tmp_path: Path):
    f = tmp_path / "ids.npy"
    np.save(f, np.arange(100, dtype=np.int64) % 50)
    arr = load_token_array(f, vocab_size=50)
    assert isinstance(arr, np.memmap) and arr.shape == (100,)


@pytest.mark.parametrize(
    "array, vocab_size, message",
    [
        (np.zeros((4, 5), dtype=np.int64), None, r"must be 1-D, got shape \(4, 5\)"),
        (np.zeros(5, dtype=np.float32), None, "must hold integers, got dtype float32"),
        (np.array([1, 2, 300]), 256, "token id 300 is out of range for vocab_size 256"),
        (np.array([1, -2, 3]), None, "must be non-negative, found -2"),
        (np.array([], dtype=np.int64), None, "token array is empty"),
    ],
)
def test_load_token_array_errors_name_the_file(tmp_path: Path, array, vocab_size, message):
    f = tmp_path / "user_tokens.npy"
    np.save(f, array)
    with pytest.raises(DataError, match=r"user_tokens\.npy: .*" + message):
        load_token_array(f, vocab_size=vocab_size)


def test_load_token_array_missing_and_pickled(tmp_path: Path):
    with pytest.raises(DataFileNotFoundError, match="absent.npy"):
        load_token_array(tmp_path / "absent.npy")
    f = tmp_path / "objects.npy"
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy: not a plain numeric"):
        load_token_array(f)


# --------------------------------------------------------------------------- TokenDataset


N_TOKENS = 1000


@pytest.fixture()
def ramp():
    # token value == position, so a context tells where it was cut from
    return np.arange(2, N_TOKENS + 2, dtype=np.int64)


def test_splits_are_disjoint_contiguous_and_start_with_bos(ramp):
    train = TokenDataset(ramp, n_ctx=16, split="train", eval_fraction=0.1)
    evals = TokenDataset(ramp, n_ctx=16, split="eval", eval_fraction=0.1)
    assert len(train) == 900 and len(evals) == 100
    boundary = ramp[900]
    g = torch.Generator().manual_seed(0)
    tb, eb = train.sample_batch(256, g), evals.sample_batch(256, g)
    for batch in (tb, eb):
        assert batch.dtype == torch.long and batch.shape == (256, 16)
        assert (batch[:, 0] == 0).all()
        assert (batch[:, 2:] - batch[:, 1:-1] == 1).all()  # consecutive tokens after BOS
    assert (tb[:, 1:] < boundary).all()
    assert (eb[:, 1:] >= boundary).all()


def test_offsets_reach_both_ends_of_the_split(ramp):
    ds = TokenDataset(ramp, n_ctx=8, split="eval", eval_fraction=0.1)
    assert ds.n_offsets == 100 - 7 + 1
    first, last = ds.contexts_at(np.array([0, ds.n_offsets - 1]))
    assert first[1:].tolist() == list(ramp[900:907])
    assert last[-1] == ramp[-1]
    with pytest.raises(DataError, match="offsets must lie in"):
        ds.contexts_at(np.array([ds.n_offsets]))


def test_sample_batch_is_reproducible_from_the_generator(ramp):
    ds = TokenDataset(ramp, n_ctx=16)
    a = ds.sample_batch(8, torch.Generator().manual_seed(3))
    b = ds.sample_batch(8, torch.Generator().manual_seed(3))
    c = ds.sample_batch(8, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_at_is_a_function_of_seed_and_step(ramp):
    ds = TokenDataset(ramp, n_ctx=16)
    run = [ds.batch_at(step, 4, seed=7) for step in range(10)]
    # a run interrupted after step 5 and resumed in a fresh dataset sees the same batches
    resumed = TokenDataset(ramp.copy(), n_ctx=16)
    assert all(torch.equal(run[s], resumed.batch_at(s, 4, seed=7)) for s in range(5, 10))
    assert not torch.equal(run[0], run[1])
    assert not torch.equal(run[0], ds.batch_at(0, 4, seed=8))


def test_fixed_batches_are_reproducible(ramp):
    ds = TokenDataset(ramp, n_ctx=16, split="eval", eval_fraction=0.2)
    a = ds.fixed_batches(3, 5, seed=0)
    b = ds.fixed_batches(3, 5, seed=0)
    assert len(a) == 3 and all(x.shape == (5, 16) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], ds.fixed_batches(1, 5, seed=1)[0])


def test_memmap_and_tensor_inputs(tok, corpus, tmp_path: Path):
    arr = tokenize_corpus(corpus, tok, tmp_path)
    ds = TokenDataset(arr, n_ctx=8, eval_fraction=0.0)
    assert ds.name.endswith(".npy")
    batch = ds.batch_at(0, 2, seed=0)
    assert batch.dtype == torch.long and batch.shape == (2, 8)
    tds = TokenDataset(torch.from_numpy(np.asarray(arr, dtype=np.int64)), n_ctx=8, eval_fraction=0.0)
    assert torch.equal(tds.batch_at(0, 2, seed=0), batch)


def test_split_shorter_than_context_names_dataset_and_lengths(ramp):
    with pytest.raises(DataError, match=r"dataset 'ramp': the eval split has 50 tokens, fewer than n_ctx=64"):
        TokenDataset(ramp, n_ctx=64, split="eval", name="ramp")
    with pytest.raises(DataError, match="the eval split has 0 tokens"):
        TokenDataset(ramp, n_ctx=8, split="eval", eval_fraction=0.0)


def test_dataset_argument_errors(ramp):
    with pytest.raises(DataError, match="split must be"):
        TokenDataset(ramp, n_ctx=8, split="test")
    with pytest.raises(DataError, match="eval_fraction"):
        TokenDataset(ramp, n_ctx=8, eval_fraction=1.0)
    with pytest.raises(DataError, match="n_ctx"):
        TokenDataset(ramp, n_ctx=1)
    with pytest.raises(DataError, match="1-D"):
        TokenDataset(ramp.reshape(10, 100), n_ctx=8)
    with pytest.raises(DataError, match="batch_size"):
        TokenDataset(ramp, n_ctx=8).sample_batch(0, torch.Generator())
