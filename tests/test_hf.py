"""Hugging Face GPT-2 / GPT-NeoX checkpoints load into our Transformer with the same forward.

Tiny models are built in-process from a config with random weights (no hub
access), saved with `save_pretrained`, read back with `read_hf_checkpoint`, and
compared with the Hugging Face forward: logits and attention patterns.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from rllc.models import ModelConfig, Transformer  # noqa: E402
from rllc.models.hf import (  # noqa: E402
    HF_ACTIVATIONS,
    SUPPORTED_MODEL_TYPES,
    HFCheckpointError,
    convert_hf_state_dict,
    hf_model_config,
    read_hf_checkpoint,
)
from rllc.models.transformer import ACTIVATION_FNS  # noqa: E402

ATOL = 1e-5

GPT2_ARGS = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
NEOX_ARGS = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=64,
    max_position_embeddings=16,
)


def randomize(model, seed: int = 0, std: float = 0.4):
    """HF's init (std 0.02) gives near-uniform attention that would hide layout mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def gpt2(seed: int = 0, **overrides):
    cfg = transformers.GPT2Config(**{**GPT2_ARGS, **overrides}, attn_implementation="eager")
    return randomize(transformers.GPT2LMHeadModel(cfg), seed)


def neox(seed: int = 0, **overrides):
    cfg = transformers.GPTNeoXConfig(**{**NEOX_ARGS, **overrides}, attn_implementation="eager")
    return randomize(transformers.GPTNeoXForCausalLM(cfg), seed)


def load_ours(directory) -> Transformer:
    cfg, state_dict = read_hf_checkpoint(directory)
    model = Transformer(cfg)
    model.load_state_dict(state_dict)  # strict: every weight present, nothing extra
    return model.eval()


def compare(hf_model, ours: Transformer, seq_len: int | None = None) -> float:
    """Max abs logit difference; also checks every layer's attention pattern."""
    seq_len = seq_len or ours.cfg.n_ctx
    tokens = torch.randint(0, ours.cfg.d_vocab, (3, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf_model(tokens, output_attentions=True)
        logits, cache = ours.run_with_cache(tokens)
    assert logits.shape == out.logits.shape
    assert out.logits.abs().max() > 1.0  # the comparison is not trivially between near-zero logits
    diff = (logits - out.logits).abs().max().item()
    assert diff < ATOL, diff
    assert out.attentions is not None and len(out.attentions) == ours.cfg.n_layers
    for layer, hf_pattern in enumerate(out.attentions):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == hf_pattern.shape  # [batch, head, query, key]
        torch.testing.assert_close(pattern, hf_pattern, atol=ATOL, rtol=0)
    assert out.attentions[0].max() > 0.5  # patterns are far from uniform: head layout is really tested
    return diff


# ------------------------------------------------------------------ forward parity


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_word_embeddings": False},
        {"reorder_and_upcast_attn": True},  # float32 upcast only: same function
        {"activation_function": "relu", "n_inner": 48},
    ],
    ids=["tied", "untied", "reorder_and_upcast", "relu_n_inner"],
)
def test_gpt2_matches_hf(tmp_path, overrides):
    model = gpt2(**overrides)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ours = load_ours(tmp_path)
    assert ours.cfg.original_architecture == "GPT2LMHeadModel"
    assert ours.cfg.positional_embedding_type == "standard"
    compare(model, ours)


@pytest.mark.parametrize(
    "overrides",
    [
        {"rotary_pct": 0.5, "use_parallel_residual": True},
        {"rotary_pct": 0.5, "use_parallel_residual": False},
        {"rotary_pct": 1.0, "rotary_emb_base": 500, "use_parallel_residual": False},
        {"attention_bias": False, "tie_word_embeddings": True, "hidden_act": "gelu_new"},
    ],
    ids=["parallel", "sequential", "full_rotary_base500", "no_attn_bias_tied"],
)
def test_neox_matches_hf(tmp_path, overrides):
    model = neox(**overrides)
    model.save_pretrained(tmp_path)
    ours = load_ours(tmp_path)
    cfg = ours.cfg
    assert cfg.original_architecture == "GPTNeoXForCausalLM"
    assert cfg.positional_embedding_type == "rotary"
    assert cfg.parallel_attn_mlp == overrides.get("use_parallel_residual", True)
    assert cfg.rotary_dim == int(cfg.d_head * overrides.get("rotary_pct", 0.25))
    compare(model, ours)


def test_neox_long_context_rotary(tmp_path):
    """Rotary tables far from position 0 (where float32 angle rounding would show)."""
    model = neox(rotary_pct=0.5, max_position_embeddings=256)
    model.save_pretrained(tmp_path)
    compare(model, load_ours(tmp_path), seq_len=256)


def test_pytorch_model_bin(tmp_path):
    # transformers 5 ignores save_pretrained(safe_serialization=False) and always
    # writes safetensors, so the legacy file is written the way transformers 4 did.
    model = neox(rotary_pct=0.5)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert not (tmp_path / "model.safetensors").exists()
    compare(model, load_ours(tmp_path))


def test_sharded_safetensors(tmp_path):
    model = gpt2(tie_word_embeddings=False)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    compare(model, load_ours(tmp_path))


def test_sharded_pytorch_bin(tmp_path):
    model = gpt2()
    model.config.save_pretrained(tmp_path)
    sd = model.state_dict()
    keys = sorted(sd)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    weight_map = {}
    for name, part in halves.items():
        torch.save({k: sd[k] for k in part}, tmp_path / name)
        weight_map.update({k: name for k in part})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    compare(model, load_ours(tmp_path))


def test_hub_style_keys_and_buffers():
    """openai-community/gpt2 and Pythia files: unprefixed GPT-2 keys, mask/rotary buffers, `embed_out`."""
    model = gpt2()
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for layer in range(2):
        sd[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        sd[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    cfg_dict = model.config.to_dict()
    ours = Transformer(hf_model_config(cfg_dict))
    ours.load_state_dict(convert_hf_state_dict(cfg_dict, sd))
    compare(model, ours.eval())

    model = neox(rotary_pct=0.5)
    sd = dict(model.state_dict())
    sd["embed_out.weight"] = sd.pop("lm_head.weight")
    for layer in range(2):
        p = f"gpt_neox.layers.{layer}.attention."
        sd[p + "bias"] = torch.tril(torch.ones(1, 1, 16, 16, dtype=torch.bool))
        sd[p + "masked_bias"] = torch.tensor(-1e9)
        sd[p + "rotary_emb.inv_freq"] = torch.ones(2)
    cfg_dict = model.config.to_dict()
    ours = Transformer(hf_model_config(cfg_dict))
    ours.load_state_dict(convert_hf_state_dict(cfg_dict, sd))
    compare(model, ours.eval())


def test_activation_names_map_to_the_same_function():
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    for hf_name, ours in HF_ACTIVATIONS.items():
        torch.testing.assert_close(ACTIVATION_FNS[ours](x), ACT2FN[hf_name](x), atol=1e-6, rtol=0, msg=hf_name)


# ------------------------------------------------------------------ configs


def test_old_style_neox_config():
    """Pythia's config.json (transformers 4 names) and the transformers 5 `rope_parameters` form."""
    base = {"model_type": "gpt_neox", **NEOX_ARGS, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    cfg = hf_model_config({**base, "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True})
    assert (cfg.rotary_dim, cfg.rotary_base, cfg.parallel_attn_mlp, cfg.act_fn) == (2, 10000, True, "gelu")
    cfg = hf_model_config({**base, "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.5}})
    assert (cfg.rotary_dim, cfg.rotary_base) == (4, 500)
    cfg = hf_model_config({**base, "partial_rotary_factor": 1.0, "rope_theta": 1234.5})
    assert (cfg.rotary_dim, cfg.rotary_base) == (8, 1234.5)
    assert hf_model_config(base).rotary_dim == 2  # transformers' default rotary_pct is 0.25
    assert isinstance(cfg, ModelConfig) and cfg.n_ctx == 16 and cfg.d_mlp == 64


def test_gpt2_config_fields():
    cfg = hf_model_config({"model_type": "gpt2", **GPT2_ARGS, "layer_norm_epsilon": 1e-6})
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, 32, 4, 8, 128)
    assert (cfg.n_ctx, cfg.d_vocab, cfg.eps, cfg.act_fn) == (16, 64, 1e-6, "gelu_new")


def test_unsupported_model_type_is_named():
    with pytest.raises(ValueError) as e:
        hf_model_config({"model_type": "llama", "hidden_size": 32})
    message = str(e.value)
    assert "'llama'" in message
    for supported in SUPPORTED_MODEL_TYPES:
        assert supported in message
    with pytest.raises(ValueError, match="without model_type"):
        hf_model_config({"hidden_size": 32})


@pytest.mark.parametrize(
    "config, option",
    [
        (
            {"model_type": "gpt2", **GPT2_ARGS, "scale_attn_by_inverse_layer_idx": True},
            "scale_attn_by_inverse_layer_idx",
        ),
        ({"model_type": "gpt2", **GPT2_ARGS, "scale_attn_weights": False}, "scale_attn_weights"),
        ({"model_type": "gpt2", **GPT2_ARGS, "add_cross_attention": True}, "add_cross_attention"),
        ({"model_type": "gpt2", **GPT2_ARGS, "activation_function": "quick_gelu"}, "quick_gelu"),
        ({"model_type": "gpt_neox", **NEOX_ARGS, "rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        (
            {"model_type": "gpt_neox", **NEOX_ARGS, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
            "dynamic",
        ),
        ({"model_type": "gpt_neox", **NEOX_ARGS, "hidden_act": "tanh"}, "tanh"),
    ],
)
def test_unsupported_options_are_named(config, option):
    with pytest.raises(ValueError, match="not supported") as e:
        hf_model_config(config)
    assert option in str(e.value)
    assert "gpt2" in str(e.value) and "gpt_neox" in str(e.value)


# ------------------------------------------------------------------ files and errors


def test_unsupported_model_type_in_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(HFCheckpointError, match="config.json.*'llama'"):
        read_hf_checkpoint(tmp_path)


def test_missing_config(tmp_path):
    gpt2().save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(HFCheckpointError, match="config.json: missing"):
        read_hf_checkpoint(tmp_path)
    with pytest.raises(HFCheckpointError, match="no such directory"):
        read_hf_checkpoint(tmp_path / "nope")


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", ')
    with pytest.raises(HFCheckpointError, match="config.json: not valid JSON"):
        read_hf_checkpoint(tmp_path)


def test_missing_weights(tmp_path):
    gpt2().config.save_pretrained(tmp_path)
    with pytest.raises(HFCheckpointError, match="no weights found.*model.safetensors.*pytorch_model.bin"):
        read_hf_checkpoint(tmp_path)


def test_corrupt_safetensors(tmp_path):
    gpt2().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HFCheckpointError, match="model.safetensors: unreadable safetensors"):
        read_hf_checkpoint(tmp_path)


def test_corrupt_and_pickled_bin(tmp_path):
    model = gpt2()
    model.config.save_pretrained(tmp_path)
    path = tmp_path / "pytorch_model.bin"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(HFCheckpointError, match="pytorch_model.bin: unreadable torch file"):
        read_hf_checkpoint(tmp_path)
    # Arbitrary pickled objects are refused, never executed.
    with open(path, "wb") as f:
        pickle.dump({"weights": model.state_dict(), "hook": print}, f, protocol=2)
    with pytest.raises(HFCheckpointError, match="pytorch_model.bin: refused to load"):
        read_hf_checkpoint(tmp_path)


def test_missing_shard(tmp_path):
    gpt2().save_pretrained(tmp_path, max_shard_size="20KB")
    next(tmp_path.glob("model-*-of-*.safetensors")).unlink()
    with pytest.raises(HFCheckpointError, match="index.json: shard file"):
        read_hf_checkpoint(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    model = gpt2(tie_word_embeddings=False)
    model.config.save_pretrained(tmp_path)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    del sd["transformer.h.1.mlp.c_fc.bias"], sd["lm_head.weight"]
    sd["transformer.h.0.attn.extra.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(HFCheckpointError) as e:
        read_hf_checkpoint(tmp_path)
    message = str(e.value)
    assert "model.safetensors" in message and "h.1.mlp.c_fc.bias" in message and "lm_head.weight" in message
    assert "h.0.attn.extra.weight" in message


def test_wrong_shape_is_named():
    model = neox(rotary_pct=0.5)
    sd = dict(model.state_dict())
    sd["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"] = torch.zeros(32, 32)
    with pytest.raises(ValueError, match=r"layers.0.mlp.dense_h_to_4h.weight: shape \(32, 32\)"):
        convert_hf_state_dict(model.config.to_dict(), sd)
