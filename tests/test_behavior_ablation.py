"""Ablations, ICL score and path patching: agreement with hand-written hooks and
weight surgery, the reference of mean/resample, planted truths."""

import copy

import pytest
import torch

from rllc.behavior import (
    BehaviorError,
    ablation_hooks,
    ablation_scores,
    derangement,
    icl_positions,
    icl_score,
    path_patching,
)
from rllc.behavior.common import token_losses
from rllc.behavior.planted import planted_induction_model
from rllc.data import random_tokens
from rllc.models import ModelConfig, Transformer

CFG = dict(n_layers=2, d_model=32, n_ctx=17, d_head=8, n_heads=3, d_vocab=30)


@pytest.fixture(scope="module")
def model():
    return Transformer(ModelConfig(**CFG, seed=3)).eval()


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(6, 17, 30, seed=4)


def loss(model, tokens, hooks=()):
    with torch.no_grad():
        return token_losses(model.run_with_hooks(tokens, fwd_hooks=list(hooks)), tokens).mean().item()


def test_zero_ablation_agrees_with_a_hand_written_hook_and_with_weight_surgery(model, tokens):
    df = ablation_scores(model, tokens, methods=["zero"], icl=False, progress=False).set_index("head")
    clean = loss(model, tokens)
    for layer, head in [(0, 1), (1, 2)]:
        def zero_v(v, hook, head=head):  # z = pattern @ v, so v = 0 gives z = 0
            v = v.clone()
            v[:, :, head] = 0
            return v

        by_hook = loss(model, tokens, [(f"blocks.{layer}.attn.hook_v", zero_v)]) - clean
        surgery = copy.deepcopy(model)
        with torch.no_grad():
            surgery.blocks[layer].attn.W_O[head] = 0
        by_weights = loss(surgery, tokens) - clean
        ours = df.loc[f"{layer}:{head}", "value"]
        assert ours == pytest.approx(by_hook, abs=1e-6) and ours == pytest.approx(by_weights, abs=1e-6)
        assert df.loc[f"{layer}:{head}", "baseline"] == pytest.approx(clean, abs=1e-6)


def capture_z(model, tokens, hooks, layer):
    seen = {}

    def grab(z, hook):
        seen["z"] = z.clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[*hooks, (f"blocks.{layer}.attn.hook_z", grab)])
    return seen["z"]


def test_mean_ablation_uses_the_mean_over_the_stated_dataset(model, tokens):
    reference = random_tokens(40, 17, 30, seed=9)
    _, ref_cache = model.run_with_cache(reference)
    ref_mean = ref_cache["blocks.1.attn.hook_z"][:, :, 2].mean(0)  # [pos, d_head]
    _, own_cache = model.run_with_cache(tokens)
    own_mean = own_cache["blocks.1.attn.hook_z"][:, :, 2].mean(0)

    z = capture_z(model, tokens, ablation_hooks(model, "1:2", "mean", tokens, reference=reference), 1)
    torch.testing.assert_close(z[:, :, 2], ref_mean.expand(6, -1, -1))
    torch.testing.assert_close(z[:, :, :2], own_cache["blocks.1.attn.hook_z"][:, :, :2])  # other heads clean
    z_own = capture_z(model, tokens, ablation_hooks(model, "1:2", "mean", tokens), 1)
    torch.testing.assert_close(z_own[:, :, 2], own_mean.expand(6, -1, -1))
    assert not torch.allclose(ref_mean, own_mean)

    # the score is the loss under exactly those hooks
    with_ref = ablation_scores(model, tokens, heads=["1:2"], methods=["mean"], reference=reference, icl=False,
                               progress=False)
    hooks = ablation_hooks(model, "1:2", "mean", tokens, reference=reference)
    assert with_ref["value"].item() == pytest.approx(loss(model, tokens, hooks) - loss(model, tokens), abs=1e-6)


def test_resample_ablation_takes_activations_of_other_examples(model, tokens):
    _, cache = model.run_with_cache(tokens)
    clean = cache["blocks.0.attn.hook_z"]
    for seed in range(3):
        z = capture_z(model, tokens, ablation_hooks(model, ["0:0", "0:1"], "resample", tokens, seed=seed), 0)
        sources = []
        for i in range(6):
            matches = [j for j in range(6) if torch.allclose(z[i, :, :2], clean[j, :, :2])]
            assert len(matches) == 1 and matches[0] != i  # another example of the batch, whole head set
            sources.append(matches[0])
        assert sorted(sources) == list(range(6))  # a permutation: each example is used once
    # with a reference set, rows come from it
    reference = random_tokens(8, 17, 30, seed=11)
    _, ref_cache = model.run_with_cache(reference)
    z = capture_z(model, tokens, ablation_hooks(model, "0:1", "resample", tokens, reference=reference), 0)
    ref = ref_cache["blocks.0.attn.hook_z"][:, :, 1]
    assert all(any(torch.allclose(z[i, :, 1], ref[j]) for j in range(8)) for i in range(6))


def test_derangement_has_no_fixed_points():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 10):
        for _ in range(20):
            p = derangement(n, g)
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()
    with pytest.raises(BehaviorError):
        derangement(1, g)


def test_planted_heads_that_help_have_positive_ablation_scores_and_silent_heads_zero():
    model = planted_induction_model()
    df = ablation_scores(model, batch_size=24, progress=False)
    abl = df[df.signal == "ablation"].pivot(index="head", columns="method", values="value")
    # 0:0 feeds the induction head, 1:0 predicts the repeated half: every method hurts the loss
    assert (abl.loc[["0:0", "1:0"]] > 0.5).all().all(), abl
    # 0:1 and 1:1 write nothing (W_O = 0): ablating them changes nothing
    assert (abl.loc[["0:1", "1:1"]] == 0).all().all()
    icl = df[df.signal == "icl"]["value"].item()
    assert icl < -2  # the late token of the repeat is predicted, the early one is not
    icl_ablated = df[(df.signal == "icl_ablated") & (df.method == "zero")].set_index("head")["value"]
    assert icl_ablated["1:0"] == pytest.approx(0.0, abs=1e-4) and icl_ablated["0:1"] == pytest.approx(icl)
    assert icl_score(model, batch_size=24, progress=False)["value"].item() == pytest.approx(icl)


def test_icl_positions_scale_with_the_context():
    assert icl_positions(1023) == (500, 50)
    assert icl_positions(254) == (253, 25)  # late becomes the last predicted position
    assert icl_positions(5) == (4, 0)
    with pytest.raises(BehaviorError):
        icl_positions(1)


def test_path_patching_planted_k_composition():
    model = planted_induction_model()
    df = path_patching(model, senders=["0:0", "0:1"], method="zero", batch_size=16, progress=False)
    value = df.set_index(["sender", "receiver", "side"])["value"]
    assert value[("0:0", "1:0", "k")] > 0.5  # the previous-token head reaches the induction head via its keys
    assert (value.drop(("0:0", "1:0", "k")) == 0).all()  # no other path carries anything


def test_path_patching_equals_patching_from_a_sender_ablated_run(model, tokens):
    """In a 2-layer model the receiver's input under sender ablation is exactly
    the layer-1 residual of a run with the senders ablated; patch it in by hand."""
    senders = ["0:0", "0:2"]
    df = path_patching(model, tokens, senders=[senders], receivers=["1:1"], method="mean", progress=False)
    hooks = ablation_hooks(model, senders, "mean", tokens)
    with torch.no_grad():
        cache = {}
        model.run_with_hooks(tokens, fwd_hooks=[*hooks, *[
            (f"blocks.1.attn.hook_{s}", lambda act, hook, s=s: cache.__setitem__(s, act.clone()))
            for s in "qkv"]])
    clean = loss(model, tokens)
    for side in "qkv":
        def patch(act, hook, side=side):
            act = act.clone()
            act[:, :, 1] = cache[side][:, :, 1]
            return act

        expected = loss(model, tokens, [(f"blocks.1.attn.hook_{side}", patch)]) - clean
        got = df[df.side == side]["value"].item()
        assert got == pytest.approx(expected, abs=1e-5), side
    assert df["value"].abs().max() > 1e-4  # the check is not vacuous
