"""Synthetic probe batches for head scores and behavioural tests.

Every builder returns int64 tensors of shape [batch, seq] and is reproducible
from ``seed`` (an int, or a `torch.Generator` whose state it advances).
Ordinary tokens are drawn from ``[first_id, vocab_size)`` with ``first_id``
defaulting to `N_SPECIAL` (2), so BOS (0) and EOT (1) only appear where placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from rllc.data.errors import DataError
from rllc.data.tokenizer import BOS_ID, N_SPECIAL

Seed = int | torch.Generator


def _generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a positive int, got {value!r}")


def _check_vocab(vocab_size: int, first_id: int, needed: int = 1) -> None:
    _check_positive(vocab_size=vocab_size)
    if first_id < 0:
        raise DataError(f"first_id must be non-negative, got {first_id}")
    if vocab_size - first_id < needed:
        raise DataError(
            f"vocab_size={vocab_size} leaves {vocab_size - first_id} ordinary tokens above first_id={first_id}; "
            f"this batch needs at least {needed}"
        )


def _with_bos(body: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    if bos_id is None:
        return body
    bos = torch.full((body.shape[0], 1), bos_id, dtype=torch.long)
    return torch.cat([bos, body], dim=1)


def random_tokens(
    batch: int, seq_len: int, vocab_size: int, seed: Seed,
    bos_id: int | None = BOS_ID, first_id: int = N_SPECIAL,
) -> torch.Tensor:
    """[batch, seq_len]: BOS then ``seq_len - 1`` i.i.d. uniform tokens from
    ``[first_id, vocab_size)`` (``seq_len`` uniform tokens if ``bos_id`` is None)."""
    _check_positive(batch=batch, seq_len=seq_len)
    _check_vocab(vocab_size, first_id)
    n_body = seq_len - (bos_id is not None)
    if n_body < 1:
        raise DataError(f"seq_len={seq_len} leaves no room for tokens after BOS")
    body = torch.randint(first_id, vocab_size, (batch, n_body), generator=_generator(seed))
    return _with_bos(body, bos_id)


def repeated_random(
    batch: int, half_len: int, vocab_size: int, seed: Seed,
    bos_id: int | None = BOS_ID, first_id: int = N_SPECIAL,
) -> torch.Tensor:
    """[batch, 1 + 2*half_len]: BOS, a random span of ``half_len`` tokens, and
    the same span again. Position ``1 + half_len + i`` repeats position
    ``1 + i``; an induction head there attends to ``2 + i`` (the token after
    the earlier copy), a previous-token head to ``half_len + i``.

    The span is drawn without replacement (``half_len`` distinct tokens, each
    row a uniform random arrangement) when the ``vocab_size - first_id``
    ordinary tokens allow, so every token of the second copy has one earlier
    occurrence and the induction target is unambiguous. A longer span is
    consecutive blocks of distinct tokens (each block a fresh arrangement of
    the ordinary tokens), so repeats are as far apart as the vocabulary allows."""
    _check_positive(batch=batch, half_len=half_len)
    _check_vocab(vocab_size, first_id)
    g = _generator(seed)
    n_ordinary = vocab_size - first_id
    if half_len <= n_ordinary:
        span = torch.multinomial(torch.ones(batch, n_ordinary), half_len, replacement=False, generator=g)
    else:
        blocks = -(-half_len // n_ordinary)  # ceil
        order = torch.rand(batch, blocks, n_ordinary, generator=g).argsort(dim=-1)
        span = order.reshape(batch, blocks * n_ordinary)[:, :half_len]
    span = span + first_id
    return _with_bos(torch.cat([span, span], dim=1), bos_id)


@dataclass
class InductionBatch:
    """Sequences with planted ``A B … A B`` pairs.

    For pair ``j`` of row ``r``: ``tokens[r, first_pos[r, j]] == tokens[r,
    second_pos[r, j]] == a_tokens[r, j]`` and the token after each is
    ``b_tokens[r, j]``. At ``second_pos`` the correct next token is the B
    (predictable only by induction); an induction head there attends to
    ``first_pos + 1``.
    """

    tokens: torch.Tensor      # [batch, seq_len]
    first_pos: torch.Tensor   # [batch, n_pairs] position of the first A
    second_pos: torch.Tensor  # [batch, n_pairs] position of the second A (the query)
    a_tokens: torch.Tensor    # [batch, n_pairs]
    b_tokens: torch.Tensor    # [batch, n_pairs] = targets at second_pos


def _random_slots(n_slots: int, n_pairs: int, batch: int, g: torch.Generator) -> torch.Tensor:
    """``n_pairs`` distinct slot indices per row, sorted, each row uniform."""
    return torch.rand(batch, n_slots, generator=g).argsort(dim=1)[:, :n_pairs].sort(dim=1).values


def induction_batch(
    batch: int, seq_len: int, vocab_size: int, seed: Seed, n_pairs: int = 1,
    bos_id: int | None = BOS_ID, first_id: int = N_SPECIAL,
) -> InductionBatch:
    """Random filler with ``n_pairs`` planted ``A B`` bigrams, each appearing
    once in the first half and once more in the second half.

    Positions: the body after BOS is split at ``h = start + (seq_len - start)
    // 2`` (``start`` = 1 with BOS, else 0). Each half is cut into adjacent
    2-token slots and every pair takes one random slot per half, so pairs never
    overlap. Per row the A and B tokens are ``2 * n_pairs`` distinct tokens,
    and filler is drawn uniformly from the remaining ordinary tokens: every A
    occurs exactly twice and is followed by its B both times, so the target at
    the second A is unambiguous.
    """
    _check_positive(batch=batch, seq_len=seq_len, n_pairs=n_pairs)
    _check_vocab(vocab_size, first_id, needed=2 * n_pairs + 1)
    start = 0 if bos_id is None else 1
    half = (seq_len - start) // 2
    slots_per_half = half // 2
    if slots_per_half < n_pairs:
        raise DataError(
            f"seq_len={seq_len} fits {slots_per_half} pair(s) per half, fewer than n_pairs={n_pairs}; "
            f"use seq_len >= {start + 4 * n_pairs}"
        )
    g = _generator(seed)
    n_ordinary = vocab_size - first_id
    # One random permutation of the ordinary tokens per row: the first
    # 2*n_pairs are this row's A's and B's, the rest is the filler alphabet.
    perm = torch.rand(batch, n_ordinary, generator=g).argsort(dim=1) + first_id
    a_tokens, b_tokens = perm[:, :n_pairs], perm[:, n_pairs:2 * n_pairs]
    n_filler = n_ordinary - 2 * n_pairs
    filler_idx = torch.randint(0, n_filler, (batch, seq_len - start), generator=g) + 2 * n_pairs
    body = perm.gather(1, filler_idx)
    tokens = _with_bos(body, bos_id)

    first_pos = start + 2 * _random_slots(slots_per_half, n_pairs, batch, g)
    second_pos = start + half + 2 * _random_slots(slots_per_half, n_pairs, batch, g)
    # pair j goes to the j-th slot of each half, so A...A order matches
    for pos in (first_pos, second_pos):
        tokens.scatter_(1, pos, a_tokens)
        tokens.scatter_(1, pos + 1, b_tokens)
    return InductionBatch(tokens, first_pos, second_pos, a_tokens, b_tokens)


@dataclass
class KeyRetrievalBatch:
    """``[BOS] The secret code is X. <filler> What is the secret code? X``.

    ``tokens[r, answer_pos[r]] == answer[r]`` and ``query_pos = answer_pos - 1``
    is the ``?`` position whose next-token prediction should be ``answer``;
    ``key_pos`` is where X first appears.
    """

    tokens: torch.Tensor      # [batch, seq_len]
    key_pos: torch.Tensor     # [batch]
    query_pos: torch.Tensor   # [batch]
    answer_pos: torch.Tensor  # [batch]
    answer: torch.Tensor      # [batch] token id of X


DEFAULT_KEY_WORDS = (
    "red", "blue", "green", "black", "white", "gold", "silver", "stone", "fire", "water",
    "lion", "horse", "eagle", "sheep", "wolf", "bird", "fish", "tree", "rose", "king",
    "queen", "sword", "crown", "ship", "star", "moon", "sun", "rain", "wind", "snow",
    "iron", "bread", "wine", "salt", "oil", "door", "key", "book", "name", "house",
)

# Neutral filler that mentions none of the default key words.
DEFAULT_FILLER_TEXT = (
    " A traveller walked along the road in the early morning. The path went up a hill and"
    " down into a quiet valley where a small village stood. People there worked in the"
    " fields and talked about the weather, the harvest and their neighbours. In the"
    " evening they sat together and told old stories until it was late. Nobody was in a"
    " hurry, and each day passed much like the one before it. After a while the"
    " traveller thanked them and went on towards the next town."
)


def _single_token_ids(tokenizer: Tokenizer, words: Sequence[str]) -> dict[str, int]:
    """Words that encode to one token with a leading space (as they appear mid-sentence)."""
    out: dict[str, int] = {}
    for w in words:
        ids = tokenizer.encode(" " + w.strip(), add_special_tokens=False).ids
        if len(ids) == 1:
            out[w] = ids[0]
    return out


def key_retrieval_batch(
    tokenizer: Tokenizer, batch: int, seed: Seed, filler_len: int = 64,
    key_words: Sequence[str] = DEFAULT_KEY_WORDS, filler_text: str = DEFAULT_FILLER_TEXT,
    bos_id: int | None = BOS_ID,
) -> KeyRetrievalBatch:
    """Key-retrieval prompts of equal length ``len(prefix) + 1 + len(".") +
    filler_len + len(query) + 1``.

    Pieces are tokenised separately and concatenated. Each piece starts with
    a space or punctuation, where byte-level BPE splits words anyway, so the
    ids are (for ordinary filler) what tokenising the decoded text gives. X is
    drawn uniformly from the ``key_words`` that are one token after a space
    and occur nowhere else in the prompt (template or filler). The filler is
    a window of ``filler_len`` tokens of the tokenised ``filler_text``
    (cycled as needed) starting at a random word; it may end mid-sentence.
    """
    _check_positive(batch=batch, filler_len=filler_len)
    keys = _single_token_ids(tokenizer, key_words)
    filler_ids = tokenizer.encode(filler_text, add_special_tokens=False).ids
    if not filler_ids:
        raise DataError("filler_text encodes to no tokens; pass some text")
    prefix = torch.tensor(tokenizer.encode("The secret code is", add_special_tokens=False).ids)
    period = torch.tensor(tokenizer.encode(".", add_special_tokens=False).ids)
    query = torch.tensor(tokenizer.encode(" What is the secret code?", add_special_tokens=False).ids)
    # X must occur only where placed, so the answer is unambiguous
    elsewhere = set(filler_ids) | set(prefix.tolist()) | set(period.tolist()) | set(query.tolist())
    keys = {w: i for w, i in keys.items() if i not in elsewhere}
    if len(keys) < 2:
        raise DataError(
            f"only {len(keys)} of {len(key_words)} key words are single tokens (after a space) absent "
            "from the prompt and filler; pass key_words that this tokenizer keeps whole"
        )
    g = _generator(seed)
    key_ids = torch.tensor(sorted(keys.values()), dtype=torch.long)
    answer = key_ids[torch.randint(0, len(key_ids), (batch,), generator=g)]

    # windows start at a word (a token beginning with a space), so the filler
    # never opens with half a word glued to the period before it
    starts = [i for i, t in enumerate(filler_ids) if tokenizer.decode([t]).startswith(" ")] or [0]
    reps = -(-(filler_len + len(filler_ids)) // len(filler_ids))  # enough to cut any window
    stream = torch.tensor(filler_ids * reps, dtype=torch.long)
    starts_t = torch.tensor(starts, dtype=torch.long)
    offsets = starts_t[torch.randint(0, len(starts), (batch,), generator=g)]
    filler = stream[offsets[:, None] + torch.arange(filler_len)]

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.long).expand(batch, -1)

    body = torch.cat([rows(prefix), answer[:, None], rows(period), filler, rows(query), answer[:, None]], dim=1)
    tokens = _with_bos(body, bos_id)
    start = 0 if bos_id is None else 1
    seq_len = tokens.shape[1]
    full = lambda v: torch.full((batch,), v, dtype=torch.long)  # noqa: E731
    return KeyRetrievalBatch(
        tokens=tokens,
        key_pos=full(start + len(prefix)),
        query_pos=full(seq_len - 2),
        answer_pos=full(seq_len - 1),
        answer=answer,
    )


def dyck_batch(
    batch: int, seq_len: int, n_bracket_types: int, seed: Seed,
    max_depth: int | None = None, p_open: float = 0.5,
    bos_id: int | None = BOS_ID, first_id: int = N_SPECIAL,
) -> torch.Tensor:
    """Balanced bracket sequences, [batch, seq_len], BOS first.

    Id mapping: bracket type ``k`` (0 ≤ k < n_bracket_types) opens with
    ``first_id + 2k`` and closes with ``first_id + 2k + 1``; with the default
    ``first_id = 2`` the ids are ``2 3 | 4 5 | …``. The ``seq_len - 1`` tokens
    after BOS (must be even) form one balanced Dyck word, built left to right:
    at depth 0 a bracket opens; when the remaining positions equal the depth,
    or the depth equals ``max_depth``, the innermost bracket closes; otherwise
    a bracket of uniform random type opens with probability ``p_open``, else
    the innermost one closes.
    """
    _check_positive(batch=batch, seq_len=seq_len, n_bracket_types=n_bracket_types)
    if max_depth is not None:
        _check_positive(max_depth=max_depth)
    if not 0.0 < p_open < 1.0:
        raise DataError(f"p_open must be in (0, 1), got {p_open}")
    if first_id < 0:
        raise DataError(f"first_id must be non-negative, got {first_id}")
    length = seq_len - (bos_id is not None)
    if length < 2 or length % 2:
        raise DataError(
            f"a balanced bracket word needs a positive even length; seq_len={seq_len} gives {length}"
            + (" after BOS (use an odd seq_len)" if bos_id is not None else "")
        )
    cap = length // 2 if max_depth is None else min(max_depth, length // 2)
    g = _generator(seed)
    rows = torch.arange(batch)
    stack = torch.zeros(batch, cap, dtype=torch.long)  # open bracket types, innermost at depth-1
    depth = torch.zeros(batch, dtype=torch.long)
    body = torch.empty(batch, length, dtype=torch.long)
    for t in range(length):
        remaining = length - t
        coin = torch.rand(batch, generator=g) < p_open
        kind = torch.randint(0, n_bracket_types, (batch,), generator=g)
        must_close = (depth >= remaining) | (depth >= cap)
        opening = (depth == 0) | (coin & ~must_close)
        top = stack[rows, (depth - 1).clamp(min=0)]
        body[:, t] = torch.where(opening, first_id + 2 * kind, first_id + 2 * top + 1)
        stack[rows[opening], depth[opening]] = kind[opening]
        depth = depth + torch.where(opening, 1, -1)
    return _with_bos(body, bos_id)
