"""Synthetic structure injected into training batches (rllc.data.inject) and its use in training."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rllc.data import DataError, train_tokenizer
from rllc.data.inject import INJECT_KINDS, Injector, check_inject, span_bounds
from rllc.data.synthetic import DEFAULT_FILLER_TEXT
from rllc.train import preset, train

VOCAB = 300


def natural_batch(b=32, n=64, seed=0):
    """Stand-in for natural rows: BOS then tokens from a narrow band, so random spans stand out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 40, (b, n), generator=g)
    x[:, 0] = 0
    return x


def test_check_inject_validates_and_orders():
    assert check_inject(None) == {} and check_inject({}) == {}
    spec = check_inject({"repeated_random": 0.25, "repeated_spans": 0.5})
    assert list(spec) == ["repeated_spans", "repeated_random"]  # canonical order, not the caller's
    with pytest.raises(DataError, match="unknown injection kinds"):
        check_inject({"copy": 0.1})
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        check_inject({"repeated_spans": 1.5})
    with pytest.raises(DataError, match="sum to"):
        check_inject({"repeated_spans": 0.6, "repeated_random": 0.6})
    with pytest.raises(ValueError, match="unknown injection kinds"):
        preset("tiny", inject={"bogus": 0.1})
    assert span_bounds(128) == (7, 63) and span_bounds(32) == (2, 15)


@pytest.mark.parametrize("kind", ["repeated_spans", "repeated_random"])
def test_repeated_spans_repeat_and_leave_other_rows_alone(kind):
    inj = Injector({kind: 0.3}, VOCAB, seed=0)
    x = natural_batch()
    outside_band = total = 0
    for step in range(20):
        out, done = inj.apply(x, step)
        assert len(done) == round(0.3 * 32) == 10 and len({d.row for d in done}) == 10
        assert torch.equal(x, natural_batch())  # input untouched
        changed = {r for r in range(32) if not torch.equal(out[r], x[r])}
        assert changed <= {d.row for d in done}
        assert len(changed) >= 8  # a copy can coincide with the text it overwrites, but rarely
        lo, hi = span_bounds(64)
        for d in done:
            row, orig = out[d.row], x[d.row]
            assert d.kind == kind and lo <= d.length <= hi
            assert 1 <= d.src and d.src + d.length <= d.dst and d.dst + d.length <= 64
            assert torch.equal(row[d.dst:d.dst + d.length], row[d.src:d.src + d.length])
            keep = torch.ones(64, dtype=torch.bool)
            keep[d.dst:d.dst + d.length] = False
            if kind == "repeated_random":
                keep[d.src:d.src + d.length] = False
                span = row[d.src:d.src + d.length]
                assert span.min() >= 2 and span.max() < VOCAB
                outside_band += int((span >= 40).sum())
                total += d.length
            else:
                assert torch.equal(row[d.src:d.src + d.length], orig[d.src:d.src + d.length])  # own text
            assert torch.equal(row[keep], orig[keep]) and row[0] == 0
    if kind == "repeated_random":  # uniform over the vocab (87% above the band), not the row's text
        assert outside_band > 0.8 * total


def test_injection_is_deterministic_and_fraction_is_exact():
    spec = {"repeated_spans": 0.25, "repeated_random": 0.125}
    a, b = Injector(spec, VOCAB, seed=3), Injector(dict(reversed(spec.items())), VOCAB, seed=3)
    x = natural_batch()
    assert torch.equal(a(x, 7), b(x, 7)) and a.apply(x, 7)[1] == b.apply(x, 7)[1]
    assert not torch.equal(a(x, 7), a(x, 8))
    assert not torch.equal(a(x, 7), Injector(spec, VOCAB, seed=4)(x, 7))
    for step in range(10):
        kinds = [d.kind for d in a.apply(x, step)[1]]
        assert kinds.count("repeated_spans") == 8 and kinds.count("repeated_random") == 4
    # over many steps every row position is chosen about equally often
    hits = torch.zeros(32)
    for step in range(400):
        for d in a.apply(x, step)[1]:
            hits[d.row] += 1
    assert hits.min() > 0.6 * hits.mean() and hits.max() < 1.4 * hits.mean()
    assert torch.equal(Injector({}, VOCAB, 0)(x, 0), x) and not Injector({"repeated_spans": 0}, VOCAB, 0)


@pytest.fixture(scope="module")
def tokenizer():
    text = [DEFAULT_FILLER_TEXT * 3, "The secret code is red. What is the secret code? red. blue green gold king " * 20]
    return train_tokenizer(text, vocab_size=400)


def test_key_retrieval_rows(tokenizer):
    with pytest.raises(DataError, match="needs a tokenizer"):
        Injector({"key_retrieval": 0.5}, 400, seed=0)
    inj = Injector({"key_retrieval": 0.5}, 400, seed=0, tokenizer=tokenizer)
    filler = torch.tensor(tokenizer.encode(DEFAULT_FILLER_TEXT * 2, add_special_tokens=False).ids[:63])
    x = torch.cat([torch.zeros(8, 1, dtype=torch.long), filler.expand(8, -1)], dim=1)
    out, done = inj.apply(x, 0)
    assert len(done) == 4
    for d in done:
        row = out[d.row]
        assert row[d.src] == row[d.dst] == row[-1] and d.dst == 63
        text = tokenizer.decode(row[1:].tolist())
        word = tokenizer.decode([int(row[-1])]).strip()
        assert text.startswith(f"The secret code is {word}.") and text.endswith(f" What is the secret code? {word}")
        assert (row[1:-1] == row[-1]).sum() == 1  # X occurs once before the answer: unambiguous
    assert all(torch.equal(out[r], x[r]) for r in set(range(8)) - {d.row for d in done})


QUICK = dict(n_steps=120, max_chars=120_000, schedule="log:6,linear:4",
             inject={"repeated_spans": 0.25, "repeated_random": 0.25})


class Stop(Exception):
    pass


@pytest.mark.slow
def test_injected_training_resumes_bit_identically(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(preset("tiny", **QUICK), full, progress=False)
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["train"]["inject"] == QUICK["inject"]

    # eval stays on the natural mix: same init, same eval batches -> same step-0 eval loss as without injection
    plain = tmp_path / "plain"
    train(preset("tiny", **{**QUICK, "n_steps": 1, "schedule": ""}), plain, progress=False)
    first = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    assert first(plain)["eval_loss"] == first(full)["eval_loss"]

    # interrupt a second run mid-way (inside the injection of step 70), then resume it
    out = tmp_path / "resumed"
    real_call = Injector.__call__

    def interrupt(self, batch, step):
        if step == 70:
            raise Stop
        return real_call(self, batch, step)

    monkeypatch.setattr(Injector, "__call__", interrupt)
    with pytest.raises(Stop):
        train(preset("tiny", **QUICK), out, progress=False)
    assert (out / "resume.pt").exists() and not (out / "step_00000120.safetensors").exists()
    monkeypatch.setattr(Injector, "__call__", real_call)
    train(preset("tiny", **QUICK), out, progress=False)
    names = sorted(p.name for p in full.glob("step_*.safetensors"))
    assert names == sorted(p.name for p in out.glob("step_*.safetensors")) and len(names) >= 8
    for name in names:
        a, b = load_file(str(full / name)), load_file(str(out / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (full / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()


def test_inject_kinds_are_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    assert all(f"`{k}`" in doc for k in INJECT_KINDS)
