"""Token arrays on disk and the contexts cut from them.

A corpus is tokenised once into a flat ``.npy`` array (documents separated by
``<|endoftext|>``), cached under a key that changes whenever the text or the
tokenizer does, and memory-mapped afterwards. `TokenDataset` splits such an
array into a train head and an eval tail and serves contexts
``[BOS] + tokens[o : o + n_ctx - 1]``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from rllc.data.corpora import Corpus, content_hash
from rllc.data.errors import DataError, DataFileNotFoundError
from rllc.data.tokenizer import BOS_ID, EOT_TOKEN

# encode_batch releases the GIL and runs on all cores; chunking only bounds
# the memory held by Python lists of ids at once.
_ENCODE_CHUNK_CHARS = 4_000_000


class _Encoding(Protocol):
    ids: list[int]


class TokenizerLike(Protocol):
    """What `tokenize_corpus` needs from a `tokenizers.Tokenizer`."""

    def encode_batch(self, inputs: list[str], add_special_tokens: bool = ...) -> list[_Encoding]: ...
    def token_to_id(self, token: str) -> int | None: ...
    def get_vocab_size(self, with_added_tokens: bool = ...) -> int: ...
    def to_str(self, pretty: bool = ...) -> str: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab ≤ 65535), else int32: halves the cache."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


def token_cache_key(corpus: Corpus, tokenizer: TokenizerLike) -> str:
    # hash the documents now rather than trust meta: a corpus edited in place
    # must not hit the cache of its old text (costs ~20 ms for 10 MB)
    h = hashlib.sha256()
    h.update(content_hash(corpus.documents).encode())
    h.update(b"\0")
    h.update(tokenizer.to_str().encode())
    return h.hexdigest()


def token_cache_path(corpus: Corpus, tokenizer: TokenizerLike, cache_dir: str | os.PathLike[str]) -> Path:
    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in corpus.name) or "corpus"
    return Path(cache_dir).expanduser() / f"{safe_name}-{token_cache_key(corpus, tokenizer)[:20]}.npy"


def _encode(corpus: Corpus, tokenizer: TokenizerLike) -> np.ndarray:
    eot = tokenizer.token_to_id(EOT_TOKEN)
    if eot is None:
        raise DataError(f"tokenizer has no {EOT_TOKEN} token; train it with rllc.data.train_tokenizer")
    dtype = token_dtype(tokenizer.get_vocab_size())
    pieces: list[np.ndarray] = []
    sep = np.array([eot], dtype=dtype)
    chunk: list[str] = []
    chunk_chars = 0

    def flush() -> None:
        for enc in tokenizer.encode_batch(chunk, add_special_tokens=False):
            if pieces:
                pieces.append(sep)
            pieces.append(np.asarray(enc.ids, dtype=dtype))
        chunk.clear()

    for doc in corpus.documents:
        chunk.append(doc)
        chunk_chars += len(doc)
        if chunk_chars >= _ENCODE_CHUNK_CHARS:
            flush()
            chunk_chars = 0
    if chunk:
        flush()
    if not pieces:
        raise DataError(f"corpus '{corpus.name}' has no documents to tokenise")
    return np.concatenate(pieces)


def _save_atomic(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)  # readers see the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tokenize_corpus(
    corpus: Corpus, tokenizer: TokenizerLike, cache_dir: str | os.PathLike[str]
) -> np.memmap:
    """Token ids of the whole corpus, documents joined by ``<|endoftext|>``.

    The array is cached in ``cache_dir`` under a hash of the corpus content and
    the tokenizer JSON: a second call only memory-maps the file, and a change
    to either input tokenises again into a new file. No BOS is inserted here;
    `TokenDataset` prepends it to each context.
    """
    path = token_cache_path(corpus, tokenizer, cache_dir)
    if not path.is_file():
        _save_atomic(_encode(corpus, tokenizer), path)
    return np.load(path, mmap_mode="r")


def load_token_array(path: str | os.PathLike[str], vocab_size: int | None = None) -> np.memmap:
    """Memory-map a user ``.npy`` of token ids (bypasses tokenisation).

    It must be a 1-D integer array of non-negative ids, all below
    ``vocab_size`` when that is given.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: no such token array; save one with numpy.save(path, ids)")
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: token arrays must be .npy files (numpy.save); for text use load_corpus")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # else np.load would take random bytes for a pickle
        raise DataError(f"{path}: not a .npy file (no NumPy header): it is corrupt or another format; save ids "
                        "with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:  # pickled/object arrays, bad headers, truncated data
        raise DataError(f"{path}: not a plain numeric .npy array ({e}); save ids with numpy.save") from e
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: holds {type(arr).__name__}, not one array; save a single 1-D array")
    if arr.ndim != 1:
        raise DataError(f"{path}: token array must be 1-D, got shape {arr.shape}; flatten it with ids.reshape(-1)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: token array must hold integers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise DataError(f"{path}: token array is empty")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise DataError(f"{path}: token ids must be non-negative, found {lo}")
    if vocab_size is not None and hi >= vocab_size:
        raise DataError(f"{path}: token id {hi} is out of range for vocab_size {vocab_size}")
    return arr


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from e.g. (seed, step): stable across runs and platforms,
    and unrelated for neighbouring steps (unlike seed + step)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class TokenDataset:
    """Fixed-length contexts from one contiguous split of a token array.

    The last ``round(eval_fraction * len(tokens))`` tokens form the ``eval``
    split and the rest the ``train`` split, so no context of one split
    overlaps the other. A context starting at offset ``o`` of the split is
    ``[bos_id] + split[o : o + n_ctx - 1]`` (length ``n_ctx``).
    """

    def __init__(
        self,
        tokens: np.ndarray | torch.Tensor,
        n_ctx: int,
        split: Literal["train", "eval"] = "train",
        eval_fraction: float = 0.05,
        bos_id: int = BOS_ID,
        name: str | None = None,
    ) -> None:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        if tokens.ndim != 1:
            raise DataError(f"token array must be 1-D, got shape {tuple(tokens.shape)}")
        if split not in ("train", "eval"):
            raise DataError(f"split must be 'train' or 'eval', got {split!r}")
        if not 0.0 <= eval_fraction < 1.0:
            raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        if n_ctx < 2:
            raise DataError(f"n_ctx must be at least 2 (BOS + one token), got {n_ctx}")
        filename = getattr(tokens, "filename", None)
        self.name = name or (Path(filename).name if filename else "tokens")
        self.n_ctx = n_ctx
        self.split = split
        self.bos_id = bos_id
        n_eval = int(round(eval_fraction * len(tokens)))
        boundary = len(tokens) - n_eval
        self.tokens = tokens[:boundary] if split == "train" else tokens[boundary:]
        if len(self.tokens) < n_ctx:
            raise DataError(
                f"dataset '{self.name}': the {split} split has {len(self.tokens)} tokens, "
                f"fewer than n_ctx={n_ctx}; use more data, a shorter context or another eval_fraction"
            )
        # offsets o with o + n_ctx - 1 <= len(split)
        self.n_offsets = len(self.tokens) - (n_ctx - 1) + 1
        self._window = np.arange(n_ctx - 1)

    def __len__(self) -> int:
        """Number of tokens in this split."""
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenDataset({self.name!r}, split={self.split!r}, tokens={len(self)}, n_ctx={self.n_ctx})"

    def contexts_at(self, offsets: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Contexts at the given split offsets, as LongTensor [len(offsets), n_ctx]."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.size and (offsets.min() < 0 or offsets.max() >= self.n_offsets):
            raise DataError(f"dataset '{self.name}': offsets must lie in [0, {self.n_offsets})")
        body = np.asarray(self.tokens[offsets[:, None] + self._window], dtype=np.int64)
        out = torch.empty((len(offsets), self.n_ctx), dtype=torch.long)
        out[:, 0] = self.bos_id
        out[:, 1:] = torch.from_numpy(body)
        return out

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` contexts at uniform random offsets drawn from ``generator``."""
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        offsets = torch.randint(0, self.n_offsets, (batch_size,), generator=generator)
        return self.contexts_at(offsets.numpy())

    def batch_at(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """The batch for training step ``step``: a pure function of (seed, step),
        so a resumed run sees exactly the batches an uninterrupted one would."""
        g = torch.Generator().manual_seed(_derive_seed("batch_at", seed, step))
        return self.sample_batch(batch_size, g)

    def fixed_batches(self, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        """``n_batches`` reproducible batches (e.g. for loss estimates), distinct
        from the training batches `batch_at` gives for the same seed."""
        if n_batches < 1:
            raise DataError(f"n_batches must be positive, got {n_batches}")
        g = torch.Generator().manual_seed(_derive_seed("fixed_batches", seed))
        return [self.sample_batch(batch_size, g) for _ in range(n_batches)]
