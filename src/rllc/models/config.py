"""Model configuration, in TransformerLens's `HookedTransformerConfig` vocabulary.

Field names match TransformerLens so that a config saved next to a
HookedTransformer state dict loads without translation; fields we do not use
are ignored (and listed by `ModelConfig.from_dict(..., strict=True)`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

POSITIONAL_TYPES = ("standard", "shortformer", "rotary")
NORMALIZATION_TYPES = ("LN", None)
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")


class ConfigError(ValueError):
    """A model configuration that cannot be built."""


@dataclass
class ModelConfig:
    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    n_heads: int
    d_vocab: int
    d_vocab_out: int = -1  # -1: same as d_vocab (TransformerLens convention)
    d_mlp: int | None = None  # None: attention-only
    act_fn: str = "gelu_new"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "shortformer"
    rotary_dim: int | None = None
    rotary_base: int = 10000
    parallel_attn_mlp: bool = False
    eps: float = 1e-5
    use_attn_result: bool = False
    init_range: float = -1.0  # -1: 0.8 / sqrt(d_model), as TransformerLens
    seed: int | None = None
    original_architecture: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.init_range < 0:
            self.init_range = 0.8 / math.sqrt(self.d_model)
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        self.validate()

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    def validate(self) -> None:
        for name in ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.positional_embedding_type not in POSITIONAL_TYPES:
            raise ConfigError(
                f"positional_embedding_type {self.positional_embedding_type!r} is not supported; "
                f"use one of {POSITIONAL_TYPES}"
            )
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ConfigError(
                f"normalization_type {self.normalization_type!r} is not supported; use 'LN' or None"
            )
        if self.d_mlp is not None and self.act_fn not in ACTIVATIONS:
            raise ConfigError(f"act_fn {self.act_fn!r} is not supported; use one of {ACTIVATIONS}")
        if self.parallel_attn_mlp and self.d_mlp is None:
            raise ConfigError("parallel_attn_mlp needs MLPs (d_mlp is None)")
        if self.rotary_dim is not None and (self.rotary_dim > self.d_head or self.rotary_dim % 2):
            raise ConfigError(f"rotary_dim {self.rotary_dim} must be even and at most d_head {self.d_head}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")  # foreign fields are kept for inspection, not written back
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> "ModelConfig":
        """Build from our own dict or a TransformerLens `cfg.to_dict()`."""
        d = dict(d)
        if d.get("attn_only") and d.get("d_mlp") is not None:
            d["d_mlp"] = None  # TransformerLens keeps a d_mlp even for attn-only models
        if "initializer_range" in d and "init_range" not in d:
            d["init_range"] = d["initializer_range"]
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [n for n in ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab") if n not in d]
        if missing:
            raise ConfigError(f"config lacks required field(s) {missing}")
        known = {k: v for k, v in d.items() if k in names}
        unknown = {k: v for k, v in d.items() if k not in names and k != "attn_only"}
        if strict and unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        return cls(**known, extra=unknown)
