"""Byte-level BPE tokenizers trained on our corpora.

Special tokens, fixed by position in the trainer's list:

* ``<|bos|>``       id 0: prepended to every context (`TokenDataset`) and
  synthetic probe batch; never produced by `Tokenizer.encode`.
* ``<|endoftext|>`` id 1: separates documents in a token stream.

Byte-level (GPT-2 style) means every string encodes, with no unknown token,
and decoding inverts encoding exactly. No normaliser and no post-processor
are attached: text is kept exactly as written, and callers place BOS/EOT
themselves.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rllc.data.corpora import Corpus
from rllc.data.errors import DataError, DataFileNotFoundError

BOS_TOKEN = "<|bos|>"
EOT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOT_TOKEN)
BOS_ID = 0
EOT_ID = 1
N_SPECIAL = len(SPECIAL_TOKENS)
# 256 byte symbols + the special tokens: a smaller vocabulary cannot hold them.
MIN_VOCAB_SIZE = 256 + N_SPECIAL


def _documents(corpora_or_texts: Corpus | str | Iterable[Corpus | str]) -> list[str]:
    if isinstance(corpora_or_texts, (Corpus, str)):
        corpora_or_texts = [corpora_or_texts]
    docs: list[str] = []
    for item in corpora_or_texts:
        if isinstance(item, Corpus):
            docs.extend(item.documents)
        elif isinstance(item, str):
            docs.append(item)
        else:
            raise DataError(f"train_tokenizer takes Corpus objects or strings, got {type(item).__name__}")
    return [d for d in docs if d]


def _sample(docs: Sequence[str], max_chars: int, seed: int) -> list[str]:
    """Documents in a seeded random order up to ``max_chars`` characters (the
    last one cut), so a capped sample draws from every corpus in proportion."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out: list[str] = []
    budget = max_chars
    for i in order:
        if budget <= 0:
            break
        out.append(docs[i][:budget])
        budget -= len(out[-1])
    return out


def train_tokenizer(
    corpora_or_texts: Corpus | str | Iterable[Corpus | str],
    vocab_size: int = 5000,
    seed: int = 0,
    max_chars: int | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `SPECIAL_TOKENS` at ids 0 and 1.

    ``max_chars`` caps the training text: documents are taken in a random
    order fixed by ``seed`` until the cap is reached. Without a cap all text is
    used in its given order and ``seed`` has no effect. The same inputs give
    the same vocabulary and merges (BPE training breaks count ties by the pair
    itself, not by hash order).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size={vocab_size} is too small; byte-level BPE needs at least {MIN_VOCAB_SIZE}")
    if max_chars is not None and max_chars <= 0:
        raise DataError(f"max_chars must be positive or None, got {max_chars}")
    docs = _documents(corpora_or_texts)
    if not docs:
        raise DataError("train_tokenizer got no text to train on")
    if max_chars is not None:
        docs = _sample(docs, max_chars, seed)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    check_special_tokens(tok)
    return tok


def check_special_tokens(tok: Tokenizer, where: str = "tokenizer") -> None:
    for token, expected in ((BOS_TOKEN, BOS_ID), (EOT_TOKEN, EOT_ID)):
        got = tok.token_to_id(token)
        if got != expected:
            raise DataError(
                f"{where}: special token {token} has id {got}, expected {expected}; "
                "train tokenizers with rllc.data.train_tokenizer"
            )


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write the tokenizer JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tok.to_str(pretty=True))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer JSON written by `save_tokenizer` and check its special ids."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: no such tokenizer file; train one with rllc.data.train_tokenizer")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception on bad JSON
        raise DataError(f"{path}: not a valid tokenizers JSON file ({e})") from e
    check_special_tokens(tok, where=str(path))
    return tok
