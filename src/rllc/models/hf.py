"""Hugging Face GPT-2 and GPT-NeoX (Pythia) checkpoints, converted to our `Transformer`.

* `hf_model_config(config_json_dict) -> ModelConfig`
* `convert_hf_state_dict(config_json_dict, hf_state_dict) -> our state dict`
* `read_hf_checkpoint(directory) -> (ModelConfig, our state dict)`

No `transformers` import is needed: configs are read as the plain `config.json`
dicts, weights from `model.safetensors` (single or sharded, with its
`model.safetensors.index.json`) or from `pytorch_model.bin` (single or
sharded), the latter only through `torch.load(..., weights_only=True)`, which
refuses to unpickle anything but tensors and plain containers.

Weight layout. GPT-2 stores its projections as `Conv1D` weights, `[in, out]`
(`x @ W`); GPT-NeoX as `nn.Linear`, `[out, in]`, with queries, keys and values
interleaved per head in `query_key_value` (`[n_heads, (q|k|v), d_head]` along
the output dimension). Both become TransformerLens-shaped tensors:
`W_Q/W_K/W_V [n_heads, d_model, d_head]`, `W_O [n_heads, d_head, d_model]`,
`W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`, `W_U [d_model, d_vocab]`.
Neither family has an output bias, so `b_U` is zero; GPT-NeoX configured
without attention biases (`attention_bias: false`) gets zero `b_Q/b_K/b_V/b_O`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rllc.models import io
from rllc.models.config import ConfigError, ModelConfig
from rllc.models.io import CheckpointError
from rllc.models.safety import torch_file_problem

SUPPORTED_MODEL_TYPES = ("gpt2", "gpt_neox")

# Hugging Face `hidden_act`/`activation_function` names -> our `act_fn`.
# The tanh variants (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`, ...) are all
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) up to float rounding.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_python_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu_accurate": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}

# Non-learned buffers that older checkpoints carry; derived, so dropped.
IGNORED_KEYS = re.compile(
    r"^(?:h\.\d+\.attn\.(?:bias|masked_bias)"
    r"|layers\.\d+\.attention\.(?:bias|masked_bias|rotary_emb\.inv_freq)"
    r"|rotary_emb\.inv_freq)$"
)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"


class HFCheckpointError(CheckpointError):
    """A Hugging Face checkpoint folder or file that cannot be read; the message names the file.

    A `CheckpointError` (so `rllc.models.checkpoints` handles it like its own) and a `ValueError`.
    """


def _unsupported(what: str) -> ConfigError:
    return ConfigError(
        f"{what} is not supported. Supported: model_type in {SUPPORTED_MODEL_TYPES} "
        "(GPT-2: pre-LN, learned positions, attention scaled by 1/sqrt(d_head), no cross-attention; "
        "GPT-NeoX/Pythia: default (unscaled) rotary embeddings, parallel or sequential residual), "
        f"activations {sorted(HF_ACTIVATIONS)}"
    )


def _require(hf_config: dict[str, Any], *names: str) -> list[Any]:
    missing = [n for n in names if hf_config.get(n) is None]
    if missing:
        raise ConfigError(f"{hf_config.get('model_type')} config lacks required field(s) {missing}")
    return [hf_config[n] for n in names]


def _act_fn(name: Any, field_name: str) -> str:
    if not isinstance(name, str) or name not in HF_ACTIVATIONS:
        raise _unsupported(f"{field_name}={name!r}")
    return HF_ACTIVATIONS[name]


def _d_head(d_model: int, n_heads: int) -> int:
    if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads <= 0 or d_model % n_heads:
        raise ConfigError(f"hidden size {d_model} is not divisible by the number of heads {n_heads}")
    return d_model // n_heads


def _model_type(hf_config: dict[str, Any]) -> str:
    if not isinstance(hf_config, dict):
        raise ConfigError(f"expected a config.json dict, got {type(hf_config).__name__}")
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        found = f"model_type {model_type!r}" if model_type is not None else "a config without model_type"
        raise ConfigError(
            f"{found} is not supported; supported Hugging Face model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return model_type


def hf_model_config(hf_config: dict[str, Any]) -> ModelConfig:
    """Our `ModelConfig` for a Hugging Face `config.json` dict (GPT-2 or GPT-NeoX).

    Raises `ConfigError` (a `ValueError`) naming the unsupported model type or
    option and listing what is supported.
    """
    model_type = _model_type(hf_config)
    if model_type == "gpt2":
        return _gpt2_config(hf_config)
    return _neox_config(hf_config)


def _init_range(hf_config: dict[str, Any]) -> float:
    value = hf_config.get("initializer_range")
    return float(value) if isinstance(value, (int, float)) and value > 0 else -1.0


def _gpt2_config(c: dict[str, Any]) -> ModelConfig:
    if c.get("scale_attn_weights", True) is not True:
        raise _unsupported("GPT-2 scale_attn_weights=False (attention scores not divided by sqrt(d_head))")
    if c.get("scale_attn_by_inverse_layer_idx", False):
        raise _unsupported("GPT-2 scale_attn_by_inverse_layer_idx=True (scores also divided by layer_idx + 1)")
    if c.get("add_cross_attention", False):
        raise _unsupported("GPT-2 add_cross_attention=True (encoder-decoder cross-attention)")
    # reorder_and_upcast_attn only upcasts the score computation to float32:
    # the same function, so it is accepted.
    n_layer, n_embd, n_head, vocab_size = _require(c, "n_layer", "n_embd", "n_head", "vocab_size")
    n_ctx = c.get("n_positions", c.get("n_ctx"))
    if n_ctx is None:
        raise ConfigError("gpt2 config lacks required field n_positions")
    d_mlp = c.get("n_inner") or 4 * n_embd
    return ModelConfig(
        n_layers=n_layer,
        d_model=n_embd,
        n_ctx=n_ctx,
        d_head=_d_head(n_embd, n_head),
        n_heads=n_head,
        d_vocab=vocab_size,
        d_mlp=d_mlp,
        act_fn=_act_fn(c.get("activation_function", "gelu_new"), "activation_function"),
        normalization_type="LN",
        positional_embedding_type="standard",
        eps=float(c.get("layer_norm_epsilon", 1e-5)),
        init_range=_init_range(c),
        original_architecture=ARCHITECTURES["gpt2"],
    )


def _neox_rotary(c: dict[str, Any]) -> tuple[float, float]:
    """(partial_rotary_factor, rope_theta), from old-style or transformers>=5 `rope_parameters` configs."""
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    if not isinstance(rope, dict) or not isinstance(scaling, dict):
        raise ConfigError("gpt_neox rope_parameters/rope_scaling must be JSON objects")
    for source in (rope, scaling):
        rope_type = source.get("rope_type", source.get("type", "default"))
        if rope_type != "default":
            raise _unsupported(f"GPT-NeoX rope_type {rope_type!r} (scaled rotary embeddings; only 'default')")
    pct = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", c.get("rotary_pct", 0.25)))
    theta = rope.get("rope_theta", c.get("rope_theta", c.get("rotary_emb_base", 10000.0)))
    if not isinstance(pct, (int, float)) or not 0 < pct <= 1:
        raise ConfigError(f"gpt_neox rotary fraction (rotary_pct/partial_rotary_factor) must be in (0, 1], got {pct!r}")
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ConfigError(f"gpt_neox rotary base (rotary_emb_base/rope_theta) must be positive, got {theta!r}")
    return float(pct), theta


def _neox_config(c: dict[str, Any]) -> ModelConfig:
    n_layers, d_model, n_heads, d_mlp, vocab_size, n_ctx = _require(
        c,
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    )
    d_head = _d_head(d_model, n_heads)
    head_dim = c.get("head_dim")
    if head_dim is not None and head_dim != d_head:
        raise _unsupported(f"GPT-NeoX head_dim={head_dim} different from hidden_size/num_attention_heads={d_head}")
    pct, theta = _neox_rotary(c)
    rotary_dim = int(d_head * pct)  # as transformers computes it
    if rotary_dim % 2:
        raise _unsupported(f"GPT-NeoX odd rotary dimension {rotary_dim} (d_head {d_head} x rotary fraction {pct})")
    return ModelConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=d_head,
        n_heads=n_heads,
        d_vocab=vocab_size,
        d_mlp=d_mlp,
        act_fn=_act_fn(c.get("hidden_act", "gelu"), "hidden_act"),
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim,
        rotary_base=int(theta) if float(theta).is_integer() else theta,
        parallel_attn_mlp=bool(c.get("use_parallel_residual", True)),
        eps=float(c.get("layer_norm_eps", 1e-5)),
        init_range=_init_range(c),
        original_architecture=ARCHITECTURES["gpt_neox"],
    )


# --------------------------------------------------------------------------- weights


def _strip_prefixes(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name in out:
            raise ConfigError(f"weight {name!r} appears both with and without the {prefix!r} prefix")
        out[name] = value
    return out


class _Weights:
    """Pops named tensors, checking shapes; reports missing and leftover keys at the end."""

    def __init__(self, state_dict: dict[str, Tensor], model_type: str):
        self.remaining = dict(state_dict)
        self.model_type = model_type
        self.missing: list[str] = []

    def pop(self, key: str, shape: tuple[int, ...]) -> Tensor | None:
        if key not in self.remaining:
            self.missing.append(key)
            return None
        t = self.remaining.pop(key)
        if not isinstance(t, Tensor):
            raise ConfigError(f"{key}: expected a tensor, found {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ConfigError(f"{key}: shape {tuple(t.shape)} does not match the config, expected {shape}")
        return t

    def finish(self) -> None:
        leftover = sorted(k for k in self.remaining if not IGNORED_KEYS.match(k))
        problems = []
        if self.missing:
            problems.append(f"missing weights {self.missing[:6]}{' ...' if len(self.missing) > 6 else ''}")
        if leftover:
            problems.append(
                f"unexpected weights {leftover[:6]}{' ...' if len(leftover) > 6 else ''} "
                f"(not part of a plain {ARCHITECTURES[self.model_type]})"
            )
        if problems:
            raise ConfigError(f"{self.model_type} state dict does not match its config: {'; '.join(problems)}")


def convert_hf_state_dict(hf_config: dict[str, Any], state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict (TransformerLens names and shapes) from a Hugging Face one.

    Accepts keys with or without the base-model prefix (`transformer.`,
    `gpt_neox.`). The output head is `lm_head.weight` (or GPT-NeoX's original
    `embed_out.weight`), or the input embedding when the config ties them
    (`tie_word_embeddings`, GPT-2's default). Buffers (`attn.bias`,
    `attn.masked_bias`, `rotary_emb.inv_freq`) are dropped; any other weight
    that has no place in our model, or a missing one, raises `ConfigError`.
    """
    cfg = hf_model_config(hf_config)
    model_type = _model_type(hf_config)
    if model_type == "gpt2":
        out, w = _convert_gpt2(cfg, hf_config, _strip_prefixes(state_dict, "transformer."))
    else:
        out, w = _convert_neox(cfg, hf_config, _strip_prefixes(state_dict, "gpt_neox."))
    w.finish()
    return {k: v.contiguous() for k, v in out.items()}


def _split_heads_in(w: Tensor, cfg: ModelConfig) -> Tensor:
    """[d_model, n_heads * d_head] (x @ W layout) -> [n_heads, d_model, d_head]."""
    return w.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 0, 2)


def _unembed(cfg: ModelConfig, hf_config: dict[str, Any], w: _Weights, w_e: Tensor | None, head_keys, tied_default):
    d_vocab, d_model = cfg.d_vocab, cfg.d_model
    tied = bool(hf_config.get("tie_word_embeddings", tied_default))
    present = [k for k in head_keys if k in w.remaining]
    if tied:
        for k in present:  # a saved copy of the tied embedding: HF would overwrite it with the embedding
            w.pop(k, (d_vocab, d_model))
        w_u = None if w_e is None else w_e.T
    elif present:
        head = w.pop(present[0], (d_vocab, d_model))
        for k in present[1:]:
            w.pop(k, (d_vocab, d_model))
        w_u = head.T
    else:
        w.missing.append(f"{head_keys[0]} (the output head; the config has tie_word_embeddings=false)")
        w_u = None
    return w_u


def _convert_gpt2(cfg: ModelConfig, hf_config: dict[str, Any], sd: dict[str, Tensor]):
    d, h, e, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    w = _Weights(sd, "gpt2")
    out: dict[str, Tensor | None] = {}
    out["embed.W_E"] = w.pop("wte.weight", (cfg.d_vocab, d))
    out["pos_embed.W_pos"] = w.pop("wpe.weight", (cfg.n_ctx, d))
    for layer in range(cfg.n_layers):
        src, dst = f"h.{layer}.", f"blocks.{layer}."
        out[dst + "ln1.w"] = w.pop(src + "ln_1.weight", (d,))
        out[dst + "ln1.b"] = w.pop(src + "ln_1.bias", (d,))
        qkv_w = w.pop(src + "attn.c_attn.weight", (d, 3 * d))
        qkv_b = w.pop(src + "attn.c_attn.bias", (3 * d,))
        if qkv_w is not None:
            for name, part in zip("QKV", qkv_w.split(d, dim=1)):
                out[dst + f"attn.W_{name}"] = _split_heads_in(part, cfg)
        if qkv_b is not None:
            for name, part in zip("QKV", qkv_b.split(d)):
                out[dst + f"attn.b_{name}"] = part.reshape(h, e)
        proj = w.pop(src + "attn.c_proj.weight", (d, d))
        out[dst + "attn.W_O"] = None if proj is None else proj.reshape(h, e, d)
        out[dst + "attn.b_O"] = w.pop(src + "attn.c_proj.bias", (d,))
        out[dst + "ln2.w"] = w.pop(src + "ln_2.weight", (d,))
        out[dst + "ln2.b"] = w.pop(src + "ln_2.bias", (d,))
        out[dst + "mlp.W_in"] = w.pop(src + "mlp.c_fc.weight", (d, m))
        out[dst + "mlp.b_in"] = w.pop(src + "mlp.c_fc.bias", (m,))
        out[dst + "mlp.W_out"] = w.pop(src + "mlp.c_proj.weight", (m, d))
        out[dst + "mlp.b_out"] = w.pop(src + "mlp.c_proj.bias", (d,))
    out["ln_final.w"] = w.pop("ln_f.weight", (d,))
    out["ln_final.b"] = w.pop("ln_f.bias", (d,))
    out["unembed.W_U"] = _unembed(cfg, hf_config, w, out["embed.W_E"], ("lm_head.weight",), True)
    return _finish_out(out, cfg), w


def _convert_neox(cfg: ModelConfig, hf_config: dict[str, Any], sd: dict[str, Tensor]):
    d, h, e, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    bias = bool(hf_config.get("attention_bias", True))
    w = _Weights(sd, "gpt_neox")
    out: dict[str, Tensor | None] = {}
    out["embed.W_E"] = w.pop("embed_in.weight", (cfg.d_vocab, d))
    for layer in range(cfg.n_layers):
        src, dst = f"layers.{layer}.", f"blocks.{layer}."
        out[dst + "ln1.w"] = w.pop(src + "input_layernorm.weight", (d,))
        out[dst + "ln1.b"] = w.pop(src + "input_layernorm.bias", (d,))
        out[dst + "ln2.w"] = w.pop(src + "post_attention_layernorm.weight", (d,))
        out[dst + "ln2.b"] = w.pop(src + "post_attention_layernorm.bias", (d,))
        # nn.Linear [out, in]; the output splits as [head, (q|k|v), d_head].
        qkv_w = w.pop(src + "attention.query_key_value.weight", (3 * d, d))
        if qkv_w is not None:
            qkv_w = qkv_w.reshape(h, 3, e, d)
            for i, name in enumerate("QKV"):
                out[dst + f"attn.W_{name}"] = qkv_w[:, i].transpose(1, 2)  # [h, d_model, d_head]
        dense = w.pop(src + "attention.dense.weight", (d, d))
        out[dst + "attn.W_O"] = None if dense is None else dense.T.reshape(h, e, d)
        if bias:
            qkv_b = w.pop(src + "attention.query_key_value.bias", (3 * d,))
            if qkv_b is not None:
                qkv_b = qkv_b.reshape(h, 3, e)
                for i, name in enumerate("QKV"):
                    out[dst + f"attn.b_{name}"] = qkv_b[:, i]
            out[dst + "attn.b_O"] = w.pop(src + "attention.dense.bias", (d,))
        else:
            like = out[dst + "attn.W_Q"]
            dtype = like.dtype if like is not None else torch.float32
            for name in "QKV":
                out[dst + f"attn.b_{name}"] = torch.zeros(h, e, dtype=dtype)
            out[dst + "attn.b_O"] = torch.zeros(d, dtype=dtype)
        w_in = w.pop(src + "mlp.dense_h_to_4h.weight", (m, d))
        out[dst + "mlp.W_in"] = None if w_in is None else w_in.T
        out[dst + "mlp.b_in"] = w.pop(src + "mlp.dense_h_to_4h.bias", (m,))
        w_out = w.pop(src + "mlp.dense_4h_to_h.weight", (d, m))
        out[dst + "mlp.W_out"] = None if w_out is None else w_out.T
        out[dst + "mlp.b_out"] = w.pop(src + "mlp.dense_4h_to_h.bias", (d,))
    out["ln_final.w"] = w.pop("final_layer_norm.weight", (d,))
    out["ln_final.b"] = w.pop("final_layer_norm.bias", (d,))
    # transformers 5 names the head `lm_head`; Pythia's files (and transformers 5's
    # save_pretrained, which maps names back) call it `embed_out`.
    out["unembed.W_U"] = _unembed(cfg, hf_config, w, out["embed.W_E"], ("embed_out.weight", "lm_head.weight"), False)
    return _finish_out(out, cfg), w


def _finish_out(out: dict[str, Tensor | None], cfg: ModelConfig) -> dict[str, Tensor]:
    w_u = out.get("unembed.W_U")
    dtype = w_u.dtype if w_u is not None else torch.float32
    out["unembed.b_U"] = torch.zeros(cfg.d_vocab_out, dtype=dtype)  # neither family has an output bias
    return {k: v for k, v in out.items() if v is not None}  # missing ones are reported by _Weights.finish


# --------------------------------------------------------------------------- files


def _read_json(path: Path) -> Any:
    return io.read_json(path, HFCheckpointError, fix="the file is corrupt or truncated")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    return io.read_safetensors(path, HFCheckpointError)


def _load_torch(path: Path) -> dict[str, Tensor]:
    obj = io.read_torch_file(path, HFCheckpointError)
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise HFCheckpointError(f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}")
    return obj


def _load_sharded(index_path: Path, loader) -> dict[str, Tensor]:
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise HFCheckpointError(f"{index_path}: no 'weight_map' in the shard index; the file is corrupt")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise HFCheckpointError(
            f"{index_path}: shard file(s) {missing} listed in the index are missing from {index_path.parent}"
        )
    state_dict: dict[str, Tensor] = {}
    for shard in shards:
        state_dict.update(loader(index_path.parent / shard))
    absent = sorted(k for k in weight_map if k not in state_dict)
    if absent:
        raise HFCheckpointError(f"{index_path}: tensors {absent[:5]} listed in the index are in none of the shards")
    return state_dict


def read_hf_weights(directory: str | Path) -> tuple[Path, dict[str, Tensor]]:
    """(file read, Hugging Face state dict) of a checkpoint folder; safetensors preferred."""
    directory = Path(directory)
    candidates = [
        (SAFETENSORS_NAME, _load_safetensors),
        (SAFETENSORS_INDEX_NAME, lambda p: _load_sharded(p, _load_safetensors)),
        (TORCH_NAME, _load_torch),
        (TORCH_INDEX_NAME, lambda p: _load_sharded(p, _load_torch)),
    ]
    for name, loader in candidates:
        path = directory / name
        if path.is_file():
            return path, loader(path)
    present = ", ".join(sorted(p.name for p in directory.iterdir())[:10]) or "nothing"
    raise HFCheckpointError(
        f"{directory}: no weights found: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} with its "
        f"model-0000x-of-0000y.safetensors shards, {TORCH_NAME} or {TORCH_INDEX_NAME} (found: {present})"
    )


def hf_weights_problems(directory: str | Path) -> list[str]:
    """Problems of a checkpoint folder's weight files found without reading tensors: none present, unreadable
    safetensors headers, missing shards, corrupt or code-running torch files (each message names the file)."""
    directory = Path(directory)
    for name in (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, TORCH_NAME, TORCH_INDEX_NAME):
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".index.json"):
                index = _read_json(path)
                weight_map = index.get("weight_map") if isinstance(index, dict) else None
                if not isinstance(weight_map, dict) or not weight_map:
                    return [f"{path}: no 'weight_map' in the shard index; the file is corrupt"]
                files = [directory / s for s in sorted(set(weight_map.values()))]
            else:
                files = [path]
            problems = []
            for f in files:
                if not f.is_file():
                    problems.append(f"{path}: shard file {f.name} listed in the index is missing from {directory}")
                elif f.suffix == ".safetensors":
                    io.safetensors_metadata(f)
                elif problem := torch_file_problem(f):
                    problems.append(problem)
            return problems
        except CheckpointError as e:
            return [str(e)]
    present = ", ".join(sorted(p.name for p in directory.iterdir())[:10]) or "nothing"
    return [f"{directory}: no weights found: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, {TORCH_NAME} "
            f"or {TORCH_INDEX_NAME} (found: {present})"]


def read_hf_checkpoint(directory: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Read a `save_pretrained` folder of a GPT-2 or GPT-NeoX causal LM.

    Returns our `ModelConfig` and a state dict that `Transformer(cfg).load_state_dict` accepts.
    Errors are `HFCheckpointError` (a `ValueError`, and a `CheckpointError`) naming the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "no such directory" if not directory.exists() else "not a directory"
        raise HFCheckpointError(f"{directory}: {what}; pass a Hugging Face model folder (with config.json)")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise HFCheckpointError(f"{config_path}: missing; a Hugging Face model folder needs its config.json")
    hf_config = _read_json(config_path)
    if not isinstance(hf_config, dict):
        raise HFCheckpointError(f"{config_path}: expected a JSON object, found {type(hf_config).__name__}")
    try:
        cfg = hf_model_config(hf_config)
    except ValueError as e:
        raise HFCheckpointError(f"{config_path}: {e}") from e
    weights_path, hf_state_dict = read_hf_weights(directory)
    try:
        state_dict = convert_hf_state_dict(hf_config, hf_state_dict)
    except ValueError as e:
        raise HFCheckpointError(f"{weights_path}: wrong architecture: its weights do not fit {config_path.name} "
                                f"({e})") from e
    return cfg, state_dict


__all__ = [
    "HF_ACTIVATIONS",
    "HFCheckpointError",
    "SUPPORTED_MODEL_TYPES",
    "convert_hf_state_dict",
    "hf_model_config",
    "hf_weights_problems",
    "read_hf_checkpoint",
    "read_hf_weights",
]
