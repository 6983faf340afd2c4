"""Synthetic probe structure injected into training batches.

Natural prose and code reward induction (prefix matching) only weakly: a
2-layer attention-only model trained on them for a few thousand steps learns
bigram and skip-trigram statistics but, at demo scale, no induction heads.
`Injector` rewrites a fixed number of the rows of every training batch so that
copying from earlier in the context pays off, while the other rows (and the
untouched parts of rewritten rows) keep the natural distribution.

Kinds (``{kind: fraction}``; exactly ``round(fraction * batch_size)`` rows of
every batch get each kind, no row gets two, and the rest are left as drawn):

``repeated_spans``
    A span of the row's **own** text is copied to a later place in the row,
    overwriting what was there: the row stays natural text, but after the first
    token of the copy every token is predictable by induction.
``repeated_random``
    The same, but the source span is first overwritten with uniform random
    ordinary tokens, so the copy is predictable *only* by induction (no bigram
    statistics help). The span sits inside natural text.
``key_retrieval``
    ``The secret code is X.`` + the row's own text + `` What is the secret
    code? X`` (the spectral-probe study's key-retrieval prompt with natural
    filler); X is a one-token key word absent from the filler. Needs the run's
    tokenizer, so not available for ``.npy`` token data.

Span geometry (both repeated kinds), for a row of ``n`` positions with BOS at
0: length ``L`` uniform in ``[max(2, (n - 1) // 16), (n - 1) // 2]``; source
start ``s`` uniform in ``[1, n - 2L]``; destination ``d`` uniform in
``[s + L, n - L]``; then ``row[d : d + L] = row[s : s + L]``.

Everything is a pure function of ``(seed, step)`` and the natural batch, so a
resumed run injects exactly what an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rllc.data.errors import DataError
from rllc.data.synthetic import DEFAULT_KEY_WORDS, _single_token_ids
from rllc.data.tokenizer import N_SPECIAL

INJECT_KINDS = ("repeated_spans", "repeated_random", "key_retrieval")


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_inject(spec: Mapping[str, float] | None) -> dict[str, float]:
    """A validated copy of an injection spec ``{kind: fraction}``."""
    if not spec:
        return {}
    if not isinstance(spec, Mapping):
        raise DataError(f"inject must be a table {{kind: fraction}}, got {spec!r}")
    unknown = sorted(set(spec) - set(INJECT_KINDS))
    if unknown:
        raise DataError(f"unknown injection kinds {unknown}; use some of {list(INJECT_KINDS)}")
    out = {}
    for kind in INJECT_KINDS:  # canonical order: row assignment must not depend on dict order
        if kind in spec:
            f = spec[kind]
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 <= f <= 1.0:
                raise DataError(f"inject fraction for {kind!r} must be a number in [0, 1], got {f!r}")
            out[kind] = float(f)
    if sum(out.values()) > 1.0 + 1e-9:
        raise DataError(f"inject fractions sum to {sum(out.values()):.3f}; they must sum to at most 1")
    return out


def span_bounds(n_ctx: int) -> tuple[int, int]:
    """(shortest, longest) repeated span for rows of `n_ctx` positions (BOS at 0)."""
    body = n_ctx - 1
    lo, hi = max(2, body // 16), body // 2
    if hi < lo:
        raise DataError(f"n_ctx={n_ctx} is too short to repeat a span in; use n_ctx >= 5")
    return lo, hi


@dataclass(frozen=True)
class Injection:
    """What was done to one row (for tests and inspection)."""

    row: int
    kind: str
    src: int  # start of the original span (key_retrieval: position of the first X)
    dst: int  # start of the copy (key_retrieval: position of the second X)
    length: int  # span length (key_retrieval: 1)


class Injector:
    """Rewrites rows of training batches as `spec` says; see the module docstring."""

    def __init__(self, spec: Mapping[str, float] | None, vocab_size: int, seed: int, tokenizer=None,
                 key_words=DEFAULT_KEY_WORDS) -> None:
        self.spec = check_inject(spec)
        self.vocab_size = vocab_size
        self.seed = seed
        self._key = None
        if self.spec.get("key_retrieval"):
            if tokenizer is None:
                raise DataError("key_retrieval injection needs a tokenizer; it is not available for .npy token data")
            self._key = _KeyPrompt(tokenizer, key_words)
        if self.spec.get("repeated_random") and vocab_size - N_SPECIAL < 2:
            raise DataError(f"vocab_size={vocab_size} leaves no ordinary tokens for repeated_random")

    def __bool__(self) -> bool:
        return any(self.spec.values())

    def counts(self, batch_size: int) -> dict[str, int]:
        """Rows per kind in a batch of `batch_size` (``round(fraction * batch_size)``)."""
        counts = {k: int(round(f * batch_size)) for k, f in self.spec.items()}
        if sum(counts.values()) > batch_size:  # rounding up several kinds can overshoot by a row or two
            raise DataError(f"inject fractions {self.spec} round to more than batch_size={batch_size} rows")
        return counts

    def __call__(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        return self.apply(batch, step)[0]

    def apply(self, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, list[Injection]]:
        """A rewritten copy of `batch` (LongTensor [B, n], BOS at 0) and what was injected where."""
        if not self:
            return batch, []
        b, n = batch.shape
        out = batch.clone()
        g = torch.Generator().manual_seed(_derive_seed("inject", self.seed, step))
        rows = torch.randperm(b, generator=g).tolist()
        done: list[Injection] = []
        for kind, count in self.counts(b).items():
            for r in sorted(rows[:count]):
                done.append(self._rewrite(out, r, kind, g))
            rows = rows[count:]
        return out, done

    def _rewrite(self, out: torch.Tensor, r: int, kind: str, g: torch.Generator) -> Injection:
        n = out.shape[1]
        if kind == "key_retrieval":
            return self._key.write(out, r, g)
        lo, hi = span_bounds(n)
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        src = int(torch.randint(1, n - 2 * length + 1, (1,), generator=g))
        dst = int(torch.randint(src + length, n - length + 1, (1,), generator=g))
        if kind == "repeated_random":
            out[r, src:src + length] = torch.randint(N_SPECIAL, self.vocab_size, (length,), generator=g)
        out[r, dst:dst + length] = out[r, src:src + length]
        return Injection(r, kind, src, dst, length)


class _KeyPrompt:
    """``[BOS] The secret code is X. <row text> What is the secret code? X`` over a row."""

    def __init__(self, tokenizer, key_words) -> None:
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
        self.head = enc("The secret code is")
        self.period = enc(".")
        self.query = enc(" What is the secret code?")
        template = set(self.head) | set(self.period) | set(self.query)
        keys = {w: i for w, i in _single_token_ids(tokenizer, key_words).items() if i not in template}
        if len(keys) < 2:
            raise DataError(
                f"only {len(keys)} of {len(key_words)} key words are single tokens for this tokenizer; "
                "key_retrieval injection needs at least 2 (use a larger vocab_size)"
            )
        self.keys = torch.tensor(sorted(keys.values()), dtype=torch.long)

    def write(self, out: torch.Tensor, r: int, g: torch.Generator) -> Injection:
        n = out.shape[1]
        head = [*self.head]
        n_filler = n - 1 - len(head) - 1 - len(self.period) - len(self.query) - 1
        if n_filler < 1:
            raise DataError(f"n_ctx={n} is too short for a key-retrieval prompt")
        # the filler is the row's own text (its first n_filler tokens after BOS)
        filler = out[r, 1:1 + n_filler].clone()
        allowed = self.keys[~torch.isin(self.keys, filler)]
        if len(allowed) == 0:  # every key word occurs in the filler (rare): X is then ambiguous
            allowed = self.keys
        x = int(allowed[torch.randint(0, len(allowed), (1,), generator=g)])
        pieces = [torch.tensor(head), torch.tensor([x]), torch.tensor(self.period), filler,
                  torch.tensor(self.query), torch.tensor([x])]
        out[r, 1:] = torch.cat(pieces).to(out.dtype)
        key_pos = 1 + len(head)
        return Injection(r, "key_retrieval", key_pos, n - 1, 1)
