"""Synthetic probe batches: structure, reproducibility, argument checks."""

from __future__ import annotations

import pytest
import torch

from rllc.data import (
    DataError,
    dyck_batch,
    induction_batch,
    key_retrieval_batch,
    random_tokens,
    repeated_random,
    train_tokenizer,
)
from rllc.data.synthetic import DEFAULT_FILLER_TEXT, DEFAULT_KEY_WORDS


def test_random_tokens_bos_range_and_reproducibility():
    x = random_tokens(16, 32, vocab_size=50, seed=0)
    assert x.dtype == torch.long and x.shape == (16, 32)
    assert (x[:, 0] == 0).all()
    assert x[:, 1:].min() >= 2 and x[:, 1:].max() < 50  # specials 0, 1 excluded
    assert torch.equal(x, random_tokens(16, 32, 50, seed=0))
    assert not torch.equal(x, random_tokens(16, 32, 50, seed=1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_tokens(4, 8, 50, g1), random_tokens(4, 8, 50, g2))
    no_bos = random_tokens(4, 8, 50, seed=0, bos_id=None)
    assert no_bos.shape == (4, 8) and no_bos.min() >= 2


def test_repeated_random_second_half_equals_first():
    x = repeated_random(8, 20, vocab_size=100, seed=0)
    assert x.shape == (8, 41)
    assert (x[:, 0] == 0).all()
    assert torch.equal(x[:, 1:21], x[:, 21:])
    assert x[:, 1:].min() >= 2
    assert torch.equal(x, repeated_random(8, 20, 100, seed=0))


def test_induction_batch_plants_correct_targets():
    b = induction_batch(32, 64, vocab_size=200, seed=0, n_pairs=3)
    t = b.tokens
    assert t.shape == (32, 64) and (t[:, 0] == 0).all() and t[:, 1:].min() >= 2
    for name in ("first_pos", "second_pos", "a_tokens", "b_tokens"):
        assert getattr(b, name).shape == (32, 3)
    assert torch.equal(t.gather(1, b.first_pos), b.a_tokens)
    assert torch.equal(t.gather(1, b.second_pos), b.a_tokens)
    assert torch.equal(t.gather(1, b.first_pos + 1), b.b_tokens)
    assert torch.equal(t.gather(1, b.second_pos + 1), b.b_tokens)
    half = 1 + (64 - 1) // 2
    assert (b.first_pos + 1 < half).all() and (b.second_pos >= half).all()
    assert (b.second_pos + 1 <= 63).all()
    for r in range(32):
        row = t[r].tolist()
        for a in b.a_tokens[r].tolist():
            assert row.count(a) == 2  # exactly the two planted occurrences
        planted = set(b.a_tokens[r].tolist()) | set(b.b_tokens[r].tolist())
        assert len(planted) == 6  # A's and B's all distinct
    assert torch.equal(t, induction_batch(32, 64, 200, seed=0, n_pairs=3).tokens)


def test_induction_batch_argument_errors():
    with pytest.raises(DataError, match="fits 1 pair"):
        induction_batch(2, 6, vocab_size=100, seed=0, n_pairs=2)
    with pytest.raises(DataError, match="vocab_size=6"):
        induction_batch(2, 64, vocab_size=6, seed=0, n_pairs=2)


@pytest.fixture(scope="module")
def key_tok():
    # a tiny tokenizer that keeps every default key word whole after a space
    text = " ".join(DEFAULT_KEY_WORDS * 20) + " The secret code is. What is the secret code?" * 20
    return train_tokenizer([text, DEFAULT_FILLER_TEXT * 5], vocab_size=700)


def test_key_retrieval_batch_structure(key_tok):
    kb = key_retrieval_batch(key_tok, 16, seed=0, filler_len=20)
    t = kb.tokens
    assert t.shape[0] == 16 and (t[:, 0] == 0).all()
    rows = torch.arange(16)
    assert torch.equal(t[rows, kb.answer_pos], kb.answer)
    assert torch.equal(t[rows, kb.key_pos], kb.answer)
    assert (kb.query_pos == kb.answer_pos - 1).all() and (kb.answer_pos == t.shape[1] - 1).all()
    assert len(set(kb.answer.tolist())) > 1
    text = key_tok.decode(t[0].tolist())
    word = key_tok.decode([int(kb.answer[0])]).strip()
    assert text.startswith(f"The secret code is {word}.")
    assert text.endswith(f" What is the secret code? {word}")
    assert key_tok.encode(text).ids == t[0, 1:].tolist()  # pieces match whole-text tokenisation
    for r in range(16):  # the key appears only at key_pos and answer_pos
        assert (t[r] == kb.answer[r]).sum() == 2
    again = key_retrieval_batch(key_tok, 16, seed=0, filler_len=20)
    assert torch.equal(again.tokens, t)


def test_key_retrieval_needs_single_token_keys():
    byte_tok = train_tokenizer(["abc"], vocab_size=258)  # no merges: every word is many tokens
    with pytest.raises(DataError, match="key words are single tokens"):
        key_retrieval_batch(byte_tok, 4, seed=0)


def _balanced(row: list[int], n_types: int, first_id: int = 2) -> tuple[bool, int]:
    stack: list[int] = []
    depth = 0
    for tok in row:
        kind, closing = divmod(tok - first_id, 2)
        if not 0 <= kind < n_types:
            return False, depth
        if closing:
            if not stack or stack.pop() != kind:
                return False, depth
        else:
            stack.append(kind)
            depth = max(depth, len(stack))
    return not stack, depth


def test_dyck_batch_is_balanced_and_respects_max_depth():
    x = dyck_batch(64, 41, n_bracket_types=3, seed=0)
    assert x.shape == (64, 41) and (x[:, 0] == 0).all()
    assert x[:, 1:].min() >= 2 and x[:, 1:].max() <= 7
    for row in x[:, 1:].tolist():
        assert _balanced(row, 3)[0]
    assert len({tuple(r) for r in x.tolist()}) > 60  # actually random
    shallow = dyck_batch(64, 41, 2, seed=1, max_depth=2)
    assert max(_balanced(r, 2)[1] for r in shallow[:, 1:].tolist()) == 2
    assert torch.equal(x, dyck_batch(64, 41, 3, seed=0))


def test_dyck_batch_argument_errors():
    with pytest.raises(DataError, match="positive even length"):
        dyck_batch(2, 40, 2, seed=0)  # 39 tokens after BOS
    with pytest.raises(DataError, match="n_bracket_types"):
        dyck_batch(2, 41, 0, seed=0)
    with pytest.raises(DataError, match="p_open"):
        dyck_batch(2, 41, 2, seed=0, p_open=1.0)


def test_common_argument_checks():
    with pytest.raises(DataError, match="batch must be a positive int"):
        random_tokens(0, 8, 50, seed=0)
    with pytest.raises(DataError, match="seed must be an int or a torch.Generator"):
        random_tokens(2, 8, 50, seed=1.5)
    with pytest.raises(DataError, match="vocab_size=2 leaves 0 ordinary tokens"):
        repeated_random(2, 4, vocab_size=2, seed=0)
    with pytest.raises(DataError, match="no room"):
        random_tokens(2, 1, 50, seed=0)


def test_repeated_random_spans_have_no_repeated_token_when_the_vocabulary_allows():
    """At vocab 32 (30 ordinary tokens) a span of 15 or 30 has distinct tokens: the induction target is unambiguous."""
    for half_len in (15, 30):
        x = repeated_random(256, half_len, vocab_size=32, seed=0)
        span = x[:, 1:1 + half_len]
        assert all(len(set(row.tolist())) == half_len for row in span)
        assert span.min() >= 2 and span.max() <= 31 and torch.equal(span, x[:, 1 + half_len:])
    assert len(torch.unique(repeated_random(256, 15, 32, seed=0)[:, 1:16])) == 30  # every ordinary token is used
    # longer than the vocabulary allows: blocks of 30 distinct tokens, so a token's repeats are 30 apart at most
    long = repeated_random(8, 45, vocab_size=32, seed=1)[:, 1:46]
    assert all(len(set(row[:30].tolist())) == 30 and len(set(row[30:].tolist())) == 15 for row in long)
