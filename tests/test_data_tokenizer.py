"""Byte-level BPE tokenizer: special ids, determinism, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rllc.data import (
    BOS_ID,
    BOS_TOKEN,
    EOT_ID,
    EOT_TOKEN,
    Corpus,
    DataError,
    DataFileNotFoundError,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "In the beginning God created the heaven and the earth. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n" * 3,
    "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 3,
    "The quick brown fox jumps over the lazy dog; the dog sleeps. " * 3,
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def test_special_token_ids(tok):
    assert tok.token_to_id(BOS_TOKEN) == BOS_ID == 0
    assert tok.token_to_id(EOT_TOKEN) == EOT_ID == 1
    # specials are not produced from ordinary text, and are never split
    ids = tok.encode("hello <|endoftext|> world").ids
    assert ids.count(EOT_ID) == 1 and BOS_ID not in ids
    assert BOS_ID not in tok.encode(TEXTS[0]).ids


def test_vocab_size_and_merges_learned(tok):
    assert 258 < tok.get_vocab_size() <= 300
    assert len(tok.encode(TEXTS[0]).ids) < 0.6 * len(TEXTS[0].encode())


def test_byte_level_roundtrip_is_exact(tok):
    for s in ["    indented\n\ttabs\r\n", "naïve café — 東京 🙂", "x = {'a': [1, 2]}  # c"]:
        assert tok.decode(tok.encode(s).ids) == s


def test_training_is_deterministic(tok):
    again = train_tokenizer(TEXTS, vocab_size=300)
    assert again.get_vocab() == tok.get_vocab()
    assert again.to_str() == tok.to_str()  # merges too


def test_training_is_deterministic_across_processes(tok, tmp_path: Path):
    # Rust hash maps are seeded per process: a fresh interpreter must agree too.
    out = tmp_path / "other.json"
    script = textwrap.dedent(
        f"""
        import json, sys
        from rllc.data.tokenizer import train_tokenizer
        tok = train_tokenizer(json.loads(sys.argv[1]), vocab_size=300)
        open(sys.argv[2], "w").write(tok.to_str())
        """
    )
    subprocess.run([sys.executable, "-c", script, json.dumps(TEXTS), str(out)], check=True)
    assert out.read_text() == tok.to_str()


def test_accepts_corpora_and_max_chars_sample_is_seeded():
    corpus = Corpus.from_documents("c", TEXTS, source="test")
    a = train_tokenizer([corpus], vocab_size=280, max_chars=300, seed=1)
    b = train_tokenizer(corpus, vocab_size=280, max_chars=300, seed=1)
    assert a.to_str() == b.to_str()
    c = train_tokenizer(corpus, vocab_size=280, max_chars=300, seed=2)
    assert c.get_vocab() != a.get_vocab()  # another seed samples other documents


def test_argument_errors():
    with pytest.raises(DataError, match="vocab_size=100 is too small"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(DataError, match="no text"):
        train_tokenizer([], vocab_size=300)
    with pytest.raises(DataError, match="max_chars"):
        train_tokenizer(TEXTS, vocab_size=300, max_chars=0)
    with pytest.raises(DataError, match="Corpus objects or strings"):
        train_tokenizer([1, 2], vocab_size=300)


def test_save_load_roundtrip(tok, tmp_path: Path):
    path = save_tokenizer(tok, tmp_path / "sub" / "tok.json")
    assert path.is_file()
    assert list(path.parent.glob(".*tmp")) == []
    loaded = load_tokenizer(path)
    assert loaded.to_str() == tok.to_str()
    assert loaded.encode(TEXTS[1]).ids == tok.encode(TEXTS[1]).ids


def test_load_errors_name_the_file(tok, tmp_path: Path):
    with pytest.raises(DataFileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not a tokenizer", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json: not a valid tokenizers JSON"):
        load_tokenizer(bad)

    # a tokenizer whose specials sit elsewhere is refused
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(
        TEXTS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>", EOT_TOKEN, BOS_TOKEN], show_progress=False)
    )
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(DataError, match=r"other\.json: special token <\|bos\|> has id 2, expected 0"):
        load_tokenizer(tmp_path / "other.json")
