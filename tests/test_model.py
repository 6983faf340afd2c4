import pytest
import torch

from rllc.models import ConfigError, ModelConfig, Transformer


def tiny(**kw):
    base = dict(n_layers=2, d_model=32, n_ctx=12, d_head=8, n_heads=4, d_vocab=40, seed=0)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("pos", ["shortformer", "standard", "rotary"])
@pytest.mark.parametrize("d_mlp", [None, 64])
def test_shapes_and_causality(pos, d_mlp):
    model = Transformer(tiny(positional_embedding_type=pos, d_mlp=d_mlp))
    tokens = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 12, 40)
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 40
    # A causal model's logits at positions < 7 do not see the changed tokens.
    assert torch.equal(model(changed)[:, :7], logits[:, :7])
    assert not torch.allclose(model(changed)[:, 7:], logits[:, 7:])


def test_transformerlens_names_and_hooks():
    model = Transformer(tiny(use_attn_result=True))
    names = dict(model.named_parameters())
    assert names["blocks.1.attn.W_Q"].shape == (4, 32, 8)
    assert names["blocks.1.attn.W_O"].shape == (4, 8, 32)
    assert names["blocks.0.attn.b_Q"].shape == (4, 8)
    assert {"embed.W_E", "pos_embed.W_pos", "blocks.0.ln1.w", "ln_final.b", "unembed.W_U", "unembed.b_U"} <= set(names)
    tokens = torch.randint(0, 40, (2, 12))
    _, cache = model.run_with_cache(tokens)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 12, 12)
    assert cache["blocks.0.attn.hook_z"].shape == (2, 12, 4, 8)
    assert cache["blocks.1.attn.hook_result"].shape == (2, 12, 4, 32)
    pattern = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 12))
    assert torch.all(pattern.triu(1) == 0)
    # hook_result sums (with b_O) to the attention output
    attn_out = cache["blocks.1.hook_attn_out"]
    torch.testing.assert_close(cache["blocks.1.attn.hook_result"].sum(-2) + model.blocks[1].attn.b_O, attn_out)


def test_zero_ablating_a_head_through_hooks_matches_zeroing_its_output_weights():
    model = Transformer(tiny())
    tokens = torch.randint(0, 40, (2, 12))

    def ablate(z, hook):
        z[:, :, 2] = 0.0
        return z

    hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    with torch.no_grad():
        model.blocks[1].attn.W_O[2] = 0.0
    torch.testing.assert_close(hooked, model(tokens))


def test_seeded_init_is_reproducible_and_tl_scaled():
    a, b = Transformer(tiny()), Transformer(tiny())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    std = a.blocks[0].attn.W_Q.std().item()
    assert abs(std - 0.8 / 32**0.5) < 0.02


def test_double_backward_through_attention():
    model = Transformer(tiny())
    tokens = torch.randint(0, 40, (2, 12))
    w = model.blocks[1].attn.W_K
    loss = torch.nn.functional.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    v = torch.randn_like(w)
    (hv,) = torch.autograd.grad((g * v).sum(), w)
    assert hv.shape == w.shape and torch.isfinite(hv).all() and hv.abs().sum() > 0


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="positional_embedding_type"):
        tiny(positional_embedding_type="alibi")
    with pytest.raises(ConfigError, match="lacks required"):
        ModelConfig.from_dict({"n_layers": 2})
    with pytest.raises(ConfigError, match="n_heads"):
        tiny(n_heads=0)


def test_config_from_transformerlens_dict_ignores_foreign_fields():
    cfg = ModelConfig.from_dict(dict(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=10,
                                     attn_only=True, d_mlp=64, model_name="custom", initializer_range=0.1))
    assert cfg.attn_only and cfg.init_range == 0.1 and cfg.extra["model_name"] == "custom"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="n_ctx"):
        Transformer(tiny())(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize("pos", ["shortformer", "rotary"])
def test_fused_attention_matches_the_explicit_path(pos):
    model = Transformer(tiny(positional_embedding_type=pos))
    tokens = torch.randint(0, 40, (3, 12))
    explicit = model(tokens)
    torch.testing.assert_close(model.fused_attention()(tokens), explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.fused_attention(False)(tokens), explicit, rtol=0, atol=0)


def test_return_types_as_hooked_transformer():
    model = Transformer(tiny())
    tokens = torch.randint(0, 40, (2, 12))
    logits, loss = model(tokens, return_type="both")
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(model(tokens, return_type="loss"), expected)
    assert model(tokens, return_type=None) is None
    assert model.to("cpu", print_details=False) is model
    with pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="probs")
