"""The batched head sampler (rllc.sampling.fast) against the generic kernel, on identical seeds.

The noise contract (one full-shape draw per head parameter per chain and step, in model parameter order)
lets every (head, chain) of the fast path replay the generic run of that head with that seed: loss traces,
per-chain LLCs, distances and MALA ratios agree to float32 tolerance.
"""

import numpy as np
import pytest
import torch

from rllc.models import ModelConfig, Transformer
from rllc.models.components import heads
from rllc.sampling import ChainDivergedError, estimate_llc, estimate_llcs, estimates_table, next_token_loss
from rllc.sampling.fast import unsupported_reason

KW = dict(chains=2, draws=25, seed=7)


def _trained(**overrides):
    cfg = ModelConfig(**{**dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, seed=0),
                         **overrides})
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    half = torch.randint(0, 50, (256, 8), generator=g)
    tokens = torch.cat([half, half], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = next_token_loss(model, tokens[torch.randint(0, 256, (32,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    data = [tokens[i:i + 8] for i in range(0, 96, 8)]
    return model, data


@pytest.fixture(scope="module")
def setup():
    return _trained()


def _assert_same(fast, ref):
    np.testing.assert_allclose(fast.loss_trace, ref.loss_trace, rtol=0, atol=2e-5)
    np.testing.assert_allclose(fast.per_chain, ref.per_chain, rtol=0, atol=2e-4)
    np.testing.assert_allclose(fast.diagnostics["distance_trace"], ref.diagnostics["distance_trace"], rtol=1e-4,
                               atol=1e-7)
    assert fast.init_loss == ref.init_loss
    assert fast.n_coords == ref.n_coords and fast.component == ref.component
    assert fast.diagnostics["mala_accept"] == pytest.approx(ref.diagnostics["mala_accept"], abs=1e-3)


def test_every_head_matches_the_generic_path(setup):
    model, data = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sweep = estimate_llcs(model, data, **KW)
    assert list(sweep) == heads(model)
    worst = 0.0
    for head, est in sweep.items():
        assert est.diagnostics["fast_path"]
        ref = estimate_llc(model, data, component=head, fast=False, **KW)
        assert "fast_path" not in ref.diagnostics
        _assert_same(est, ref)
        worst = max(worst, float(np.abs(est.loss_trace - ref.loss_trace).max()))
    print(f"max |loss trace difference| over all heads: {worst:.2e}")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_blocked_cross_entropy_matches_the_generic_path(setup, monkeypatch):
    """The fused cross-entropy works `CE_BLOCK_ELEMENTS` logits at a time: uneven blocks change nothing."""
    import rllc.sampling.fast as fast_module

    model, data = setup
    vocab = model.cfg.d_vocab
    monkeypatch.setattr(fast_module, "CE_BLOCK_ELEMENTS", 7 * vocab)  # 120 tokens a batch: 17 blocks of 7, one of 1
    assert fast_module._token_block(vocab) == 7 and fast_module._token_block(vocab, 2) == 3
    sweep = estimate_llcs(model, data, ["0:2", "1:0"], **{**KW, "draws": 10})
    for head, est in sweep.items():
        _assert_same(est, estimate_llc(model, data, component=head, fast=False, **{**KW, "draws": 10}))


@pytest.mark.parametrize("max_t, block", [(0, 2**20), (64, 2**20), (64, 3 * 16 * 16)])
def test_causal_attention_kernels_agree(monkeypatch, max_t, block):
    """`_causal_attention` gives the fused kernel's values and gradients whichever form it takes: fused
    (max_t 0), explicit in one block, explicit in uneven blocks (no gradient) or fused (gradient)."""
    import torch.nn.functional as F

    import rllc.sampling.fast as fast_module

    monkeypatch.setattr(fast_module, "EXPLICIT_ATTENTION_MAX_T", max_t)
    monkeypatch.setattr(fast_module, "SCORE_BLOCK", block)
    q, k, v = (torch.randn(2, 5, 4, 16, 8, generator=torch.Generator().manual_seed(i), requires_grad=True)
               for i in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    with torch.no_grad():
        torch.testing.assert_close(fast_module._causal_attention(q, k, v, 0.3), want)
    got = fast_module._causal_attention(q, k, v, 0.3)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("options", [dict(paired=True), dict(weight_decay=20.0, bounding_box=0.02),
                                     dict(burn_in=3, chain_seeds=[100, 101]), dict(antithetic=True, chains=4),
                                     dict(antithetic=True, sampler="rmsprop")])
def test_options_match_the_generic_path(setup, options):
    model, data = setup
    sweep = estimate_llcs(model, data, ["0:1", "1:3"], **{**KW, "draws": 12, **options})
    for head, est in sweep.items():
        _assert_same(est, estimate_llc(model, data, component=head, fast=False, **{**KW, "draws": 12, **options}))
        if options.get("paired"):
            assert est.diagnostics["estimator"] == "paired"


@pytest.mark.parametrize("overrides", [dict(normalization_type=None, positional_embedding_type="standard"),
                                       dict(n_layers=3)])
def test_other_structures_match(overrides):
    model, data = _trained(**overrides)
    names = ["0:0", f"{model.cfg.n_layers - 1}:2"] + (["1:1"] if model.cfg.n_layers == 3 else [])
    sweep = estimate_llcs(model, data, names, **{**KW, "draws": 10})
    for head, est in sweep.items():
        _assert_same(est, estimate_llc(model, data, component=head, fast=False, **{**KW, "draws": 10}))


def test_estimate_llc_dispatch(setup):
    model, data = setup
    auto = estimate_llc(model, data, component="1:2", **{**KW, "draws": 5})
    assert auto.diagnostics.get("fast_path")
    whole = estimate_llc(model, data, **{**KW, "draws": 3})
    assert "fast_path" not in whole.diagnostics  # the whole model is not a head: generic kernel
    with pytest.raises(ValueError, match="not a single head"):
        estimate_llc(model, data, component="1:*", fast=True, **{**KW, "draws": 3})
    with pytest.raises(ValueError, match="fast must be"):
        estimate_llc(model, data, component="1:2", fast="yes", **KW)


def test_unsupported_models_fall_back():
    mlp = Transformer(ModelConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20, d_mlp=32))
    assert "MLP" in unsupported_reason(mlp, ["0:0"])
    data = [torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(0))]
    out = estimate_llcs(mlp, data, ["0:1"], chains=2, draws=3)
    assert "fast_path" not in out["0:1"].diagnostics
    with pytest.raises(ValueError, match="fast=True"):
        estimate_llcs(mlp, data, ["0:1"], chains=2, draws=3, fast=True)


def test_table_and_divergence(setup):
    model, data = setup
    table = estimates_table(estimate_llcs(model, data, ["0:0", "1:1"], **{**KW, "draws": 4}))
    assert list(table["component"]) == ["0:0", "1:1"] and {"value", "std", "rhat"} <= set(table.columns)
    with pytest.raises(ChainDivergedError):
        estimate_llcs(model, data, ["1:1"], chains=2, draws=30, epsilon=10.0,
                           max_loss_increase=1.0)
    assert all(p.requires_grad for p in model.parameters())


def test_bf16_is_validated_against_fp32(setup, monkeypatch):
    import rllc.sampling.fast as fast

    model, data = setup
    kw = {**KW, "draws": 8}
    out = estimate_llcs(model, data, ["0:0", "1:1"], compute_dtype="bf16", bf16_pilot_draws=6, **kw)
    check = out["0:0"].diagnostics["bf16_check"]
    assert check["pilot_draws"] == 6 and set(check["per_head"]) == {"0:0", "1:1"}
    assert out["0:0"].diagnostics["compute_dtype"] == ("bf16" if check["accepted"] else "fp32")
    fp32 = estimate_llcs(model, data, ["0:0", "1:1"], **kw)
    for head in out:
        # coupled chains: bf16 rounding moves the estimate by far less than its Monte Carlo error
        assert abs(out[head].mean - fp32[head].mean) < max(fp32[head].std, 1e-3)
    monkeypatch.setattr(fast, "BF16_TOLERANCE", -1.0)
    with pytest.warns(fast.Bf16Refused, match="refused"):
        refused = estimate_llcs(model, data, ["1:1"], compute_dtype="bf16", bf16_pilot_draws=3, **kw)
    assert refused["1:1"].diagnostics["compute_dtype"] == "fp32"
    np.testing.assert_array_equal(refused["1:1"].loss_trace, fp32["1:1"].loss_trace)
    with pytest.raises(ValueError, match="compute_dtype"):
        estimate_llcs(model, data, ["1:1"], compute_dtype="fp16", **kw)


def test_rmsprop_fast_path_matches_the_generic_path(setup):
    model, data = setup
    kw = dict(chains=2, draws=20, seed=7, sampler="rmsprop", rmsprop_alpha=0.9, weight_decay=1.0)
    sweep = estimate_llcs(model, data, **kw)
    assert list(sweep) == heads(model)
    for head, est in sweep.items():
        assert est.diagnostics["fast_path"] and est.hyperparameters["sampler"] == "rmsprop"
        _assert_same(est, estimate_llc(model, data, component=head, fast=False, **kw))
    plain = estimate_llcs(model, data, ["1:1"], chains=2, draws=20, seed=7)["1:1"]
    assert not np.allclose(plain.loss_trace, sweep["1:1"].loss_trace)  # the preconditioner does something


def test_one_entry_point_mixes_backends(setup):
    model, data = setup
    out = estimate_llcs(model, data, ["1:2", "layer:0", "0:1"], chains=2, draws=5)
    assert list(out) == ["1:2", "layer:0", "0:1"]
    assert out["1:2"].diagnostics.get("fast_path") and not out["layer:0"].diagnostics.get("fast_path")
    with pytest.raises(ValueError, match="does not apply to layer:0"):
        estimate_llcs(model, data, ["1:2", "layer:0"], chains=2, draws=5, fast=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("sampler", ["sgld", "rmsprop"])
def test_cuda_fast_path_matches_generic(setup, sampler):
    model, data = setup
    model = model.to("cuda")  # the batches stay on the CPU: the stream moves them to the model's device
    kw = dict(chains=2, draws=10, seed=7, sampler=sampler)
    sweep = estimate_llcs(model, data, ["0:1", "1:3"], **kw)
    for head, est in sweep.items():
        ref = estimate_llc(model, data, component=head, fast=False, **kw)
        np.testing.assert_allclose(est.loss_trace, ref.loss_trace, rtol=0, atol=1e-4)
    model.to("cpu")


def test_sweeps_side_by_side_give_the_same_estimates(setup):
    """workers=2 splits the heads into two sweeps run in threads: every head's trace is the one-sweep trace
    (the same seeds and batches), the observer's moments too, and the caller's torch thread count is back."""
    from rllc.sampling.observables import TokenLossObserver

    model, data = setup
    before = torch.get_num_threads()
    probes = {"a": data[0][:3], "b": data[1][:2, :12]}
    runs = {}
    for workers in (1, 2):
        obs = TokenLossObserver(probes, sampling="a", burn_in=0)
        runs[workers] = estimate_llcs(model, data, None, workers=workers, observer=obs, **KW), obs
        assert torch.get_num_threads() == before
    (one, obs1), (two, obs2) = runs[1], runs[2]
    assert {e.diagnostics["sweep_workers"] for e in one.values()} == {1}
    assert {e.diagnostics["sweep_workers"] for e in two.values()} == {2}
    assert list(two) == list(one) == heads(model)
    for head in one:
        _assert_same(two[head], one[head])
        for chain in range(KW["chains"]):
            m1, m2 = obs1.moments[(head, chain)], obs2.moments[(head, chain)]
            assert m1.n == m2.n == KW["draws"]
            for name in probes:
                np.testing.assert_allclose(m2.loss[name], m1.loss[name], rtol=1e-5)


def test_a_failing_sweep_stops_the_others(setup, monkeypatch):
    """An error in one sweep reaches the caller as itself; the other sweep stops at its next step."""
    import rllc.sampling.fast as fast_module

    model, data = setup
    real, calls = fast_module._pair_losses, {"0:0": 0, "0:1": 0}

    def failing(model, cache, layer, hidx, *args, **kwargs):
        head = f"{layer}:{int(hidx[0])}"
        if head in calls:
            calls[head] += 1
            if head == "0:0" and calls[head] == 2:
                raise RuntimeError("boom in the first sweep")
        return real(model, cache, layer, hidx, *args, **kwargs)

    monkeypatch.setattr(fast_module, "_pair_losses", failing)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom in the first sweep"):
        estimate_llcs(model, data, None, workers=2, **{**KW, "draws": 400})
    assert calls["0:1"] < 400  # the second sweep (heads 0:1, 0:3, ...) stopped early
    assert torch.get_num_threads() == before
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_workers_is_validated(setup):
    model, data = setup
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ValueError, match="workers"):
            estimate_llcs(model, data, ["0:0"], workers=bad, **KW)
