"""Components: parsing specs into (parameter, index) sets of a TransformerLens-named model."""

import pytest
import torch
from torch import nn

from rllc.models import ModelConfig, Transformer
from rllc.models.components import Component, ComponentError, heads, resolve_component


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=3, d_vocab=11, seed=0)
    return Transformer(cfg)


def head_size(d_model=16, d_head=4):
    return 4 * d_model * d_head + 3 * d_head  # W_Q, W_K, W_V, W_O slices + b_Q, b_K, b_V slices


def test_head_is_its_slices_without_b_O(model):
    comp = resolve_component(model, "1:2")
    assert comp.name == "1:2"
    assert comp.param_names == [f"blocks.1.attn.{p}" for p in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")]
    assert all(index == (2,) for _, index in comp.entries)
    assert comp.n_coords == head_size()
    params = dict(model.named_parameters())
    mask = comp.mask("blocks.1.attn.W_Q", params["blocks.1.attn.W_Q"])
    assert mask[2].all() and not mask[[0, 1]].any()
    assert not comp.mask("blocks.1.attn.b_O", params["blocks.1.attn.b_O"]).any()


def test_head_sets_layers_and_named_groups(model):
    params = dict(model.named_parameters())
    two = resolve_component(model, ["1:0", "1:2"])
    assert two.n_coords == 2 * head_size() and two.name == "1:0+1:2"
    # Same parameter touched twice: merged into one mask, in model order.
    assert len(two.entries) == 7 and isinstance(two.entries[0][1], torch.Tensor)
    assert resolve_component(model, "0:*").n_coords == 3 * head_size()
    layer = resolve_component(model, "layer:1")
    assert set(layer.param_names) == {n for n in params if n.startswith("blocks.1.")}
    assert layer.n_coords == sum(p.numel() for n, p in params.items() if n.startswith("blocks.1."))
    assert resolve_component(model, "embed").param_names == ["embed.W_E", "pos_embed.W_pos"]
    assert resolve_component(model, "unembed").param_names == ["unembed.W_U", "unembed.b_U"]
    assert resolve_component(model, None).n_coords == sum(p.numel() for p in model.parameters())
    assert resolve_component(model, "model").n_coords == sum(p.numel() for p in model.parameters())
    assert resolve_component(model, "blocks.0.ln1").param_names == ["blocks.0.ln1.w", "blocks.0.ln1.b"]
    assert heads(model) == ["0:0", "0:1", "0:2", "1:0", "1:1", "1:2"]


def test_overlaps_are_counted_once(model):
    both = resolve_component(model, ["1:2", "1:2", "1:*"])
    assert both.n_coords == 3 * head_size()
    # A union that covers a whole parameter becomes the whole parameter.
    assert dict(both.entries)["blocks.1.attn.W_Q"] is None


def test_explicit_dict_indices(model):
    comp = resolve_component(model, {"blocks.0.attn.W_Q": 1, "unembed.b_U": [0, 3, 3], "embed.W_E": None})
    assert comp.n_coords == 16 * 4 + 2 + 11 * 16
    mask = torch.zeros(16, 11, dtype=torch.bool)
    mask[:, 0] = True
    comp = resolve_component(model, {"unembed.W_U": mask}, name="logit 0")
    assert comp.name == "logit 0" and comp.n_coords == 16
    assert resolve_component(model, comp) is comp
    # A hand-made component is put into model order (the noise contract depends on it).
    shuffled = Component("mine", (("unembed.b_U", None), ("embed.W_E", (0,))), 11 + 16)
    fixed = resolve_component(model, shuffled)
    assert fixed.param_names == ["embed.W_E", "unembed.b_U"] and fixed.n_coords == 27 and fixed.name == "mine"


@pytest.mark.parametrize("spec, message", [
    ("2:0", "layers 0..1"),
    ("1:3", "heads 0..2"),
    ("layer:5", "2 layers"),
    ("blocks.0.attn.W_X", "valid: 'model'; heads 'l:h'"),
    ({"nope": None}, "unknown parameter 'nope'"),
    ({"blocks.0.attn.W_Q": 3}, "out of range"),
    ({"blocks.0.attn.W_Q": torch.ones(2, 2, dtype=torch.bool)}, "mask for blocks.0.attn.W_Q has shape"),
    ({"blocks.0.attn.W_Q": torch.zeros(3, 16, 4, dtype=torch.bool)}, "selects no coordinates"),
    ([], "selects nothing"),
])
def test_clear_errors(model, spec, message):
    with pytest.raises(ComponentError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve_component(model, spec)


def test_generic_model_without_heads():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert resolve_component(net, "0").param_names == ["0.weight", "0.bias"]
    assert resolve_component(net, {"2.weight": (slice(None), 1)}).n_coords == 2
    with pytest.raises(ComponentError, match="no TransformerLens attention weights"):
        resolve_component(net, "0:1")
    assert heads(net) == []
    with pytest.raises(ComponentError, match="names 'x'"):
        resolve_component(net, Component("bad", (("x", None),), 1))
