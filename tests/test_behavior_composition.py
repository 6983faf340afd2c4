"""Composition scores: agreement with transformer-lens's utility, planted K-composition, LN folding, baseline."""

import copy

import pytest
import torch
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import composition_scores as tl_composition_scores

from rllc.behavior import composition_scores, random_baseline
from rllc.behavior.composition import head_weights
from rllc.behavior.planted import planted_induction_model
from rllc.models import ModelConfig, Transformer


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(n_layers=3, d_model=48, n_ctx=16, d_head=12, n_heads=4, d_vocab=40, seed=5)
    return Transformer(cfg).eval()


def test_agrees_with_transformer_lens_composition_scores(model):
    df = composition_scores(model, progress=False)
    assert len(df) == 3 * 3 * 16  # 3 layer pairs x 3 sides x 16 head pairs
    ours = df.set_index(["sender", "receiver", "side"])["value"]
    blocks = [b.attn for b in model.blocks]
    for l1 in range(3):
        left = FactoredMatrix(blocks[l1].W_V.detach(), blocks[l1].W_O.detach())
        for l2 in range(l1 + 1, 3):
            a = blocks[l2]
            qk = FactoredMatrix(a.W_Q.detach(), a.W_K.detach().transpose(-2, -1))
            rights = {"q": qk, "k": qk.T, "v": FactoredMatrix(a.W_V.detach(), a.W_O.detach())}
            for side, right in rights.items():
                tl = tl_composition_scores(left, right, broadcast_dims=True)  # [h1, h2]
                for h1 in range(4):
                    for h2 in range(4):
                        assert ours[(f"{l1}:{h1}", f"{l2}:{h2}", side)] == pytest.approx(tl[h1, h2].item(), rel=1e-4)


def test_planted_previous_token_head_k_composes_with_the_induction_head():
    df = composition_scores(planted_induction_model(), progress=False)
    value = df.set_index(["sender", "receiver", "side"])["value"]
    k = value[("0:0", "1:0", "k")]
    # a perfect match through a rank-64 channel scores 1/sqrt(64)
    assert k == pytest.approx(1 / 8, rel=1e-6)
    assert k > df["baseline"].iloc[0] + 20 * df["baseline_std"].iloc[0]
    assert value[("0:0", "1:0", "q")] == 0 and value[("0:0", "1:0", "v")] == 0


def test_fold_ln_matrices_reproduce_the_layernorm_read(model):
    model = copy.deepcopy(model)
    layer = 1
    with torch.no_grad():
        model.blocks[layer].ln1.w.copy_(torch.linspace(0.5, 2.0, 48))
        model.blocks[layer].ln1.b.copy_(torch.linspace(-1, 1, 48))
    w = head_weights(model, layer, fold_ln=True)
    ln = model.blocks[layer].ln1
    x = torch.randn(5, 48, dtype=torch.float64)
    scale = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True).add(ln.eps).sqrt()
    for name in "QKV":
        W = getattr(model.blocks[layer].attn, f"W_{name}").detach().double()
        through_ln = torch.einsum("bd,hde->hbe", ln(x.float()).double() - ln.b.double(), W)
        folded = torch.einsum("bd,hde->hbe", x, w[name]) / scale
        torch.testing.assert_close(through_ln, folded, rtol=1e-4, atol=1e-5)
    assert not composition_scores(model, fold_ln=True, progress=False)["value"].equals(
        composition_scores(model, progress=False)["value"])


def test_random_weights_score_near_the_random_baseline(model):
    mean, std = random_baseline(48, 12)
    assert 0 < std < mean < 1
    df = composition_scores(model, progress=False)
    assert abs(df["value"].mean() - mean) < 3 * std
    assert (df["baseline"] == mean).all() and (df["baseline_std"] == std).all()


def test_a_zero_norm_head_composes_with_nothing(model):
    """A pruned head (W_O = 0) scores 0 with every receiver, not 0/0 = NaN; the other pairs are unchanged."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.blocks[0].attn.W_O[1].zero_()  # sender 0:1 writes nothing
        pruned.blocks[2].attn.W_Q[3].zero_()  # receiver 2:3 reads no query
    before = composition_scores(model, progress=False).set_index(["sender", "receiver", "side"])["value"]
    df = composition_scores(pruned, progress=False)
    assert df["value"].notna().all()
    after = df.set_index(["sender", "receiver", "side"])["value"]
    sent = df[df.sender == "0:1"]
    assert len(sent) == 2 * 3 * 4 and (sent["value"] == 0).all()  # to layers 1 and 2, every side
    assert (df[(df.receiver == "2:3") & (df.side == "q")]["value"] == 0).all()
    untouched = (df.sender != "0:1") & ~((df.receiver == "2:3") & (df.side.isin(["q", "k"])))
    keys = df[untouched].set_index(["sender", "receiver", "side"]).index
    torch.testing.assert_close(torch.tensor(after[keys].to_numpy()), torch.tensor(before[keys].to_numpy()))
