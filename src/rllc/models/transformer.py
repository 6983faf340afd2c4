"""A small transformer with TransformerLens weight names, shapes and hooks.

transformer-lens 4.x no longer ships `HookedTransformer`, and its bridge has no
shortformer embeddings, so this module re-implements the forward pass of the
models these studies use (attention-only, optionally with MLPs; shortformer,
standard or rotary positions; LayerNorm or none) on transformer-lens's
`HookedRootModule`/`HookPoint`. State dicts of HookedTransformer load as they
are, and hooks carry the same names (`blocks.0.attn.hook_z`, ...), so
`run_with_hooks`/`run_with_cache` work as researchers expect.

Attention is written out with einsum + softmax rather than
`scaled_dot_product_attention`: its fused kernels have no double backward, and
Hessian-vector products and `torch.func` transforms must pass through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from rllc.models.config import ModelConfig

# Buffers that HookedTransformer keeps in its state dict; they are derived from
# the config here, so loading drops them.
DERIVED_BUFFER_SUFFIXES = ("attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos")


def gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATION_FNS = {"gelu": F.gelu, "gelu_new": gelu_new, "relu": F.relu, "silu": F.silu}


class LayerNorm(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, dh))
        self.W_K = nn.Parameter(torch.empty(h, d, dh))
        self.W_V = nn.Parameter(torch.empty(h, d, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d))
        self.b_Q = nn.Parameter(torch.zeros(h, dh))
        self.b_K = nn.Parameter(torch.zeros(h, dh))
        self.b_V = nn.Parameter(torch.zeros(h, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.register_buffer("mask", torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool)), persistent=False)
        self.fused = False  # see Transformer.fused_attention
        self.attn_scale = math.sqrt(dh)
        if cfg.positional_embedding_type == "rotary":
            sin, cos = rotary_tables(cfg.rotary_dim, cfg.n_ctx, cfg.rotary_base)
            self.register_buffer("rotary_sin", sin, persistent=False)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], masked
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], when cfg.use_attn_result

    def forward(self, query_input: Tensor, key_input: Tensor, value_input: Tensor) -> Tensor:
        q = self.hook_q(torch.einsum("bpd,hde->bphe", query_input, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hde->bphe", key_input, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hde->bphe", value_input, self.W_V) + self.b_V)
        if self.cfg.positional_embedding_type == "rotary":
            q = self.hook_rot_q(self._rotate(q))
            k = self.hook_rot_k(self._rotate(k))
        if self.fused:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, scale=1.0 / self.attn_scale)
            z = self.hook_z(z.transpose(1, 2))
        else:
            n = q.shape[1]
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.attn_scale
            scores = self.hook_attn_scores(scores.masked_fill(~self.mask[:n, :n], float("-inf")))
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(-2) + self.b_O
        return torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O

    def _rotate(self, x: Tensor) -> Tensor:
        r = self.cfg.rotary_dim
        n = x.shape[1]
        x_rot, x_pass = x[..., :r], x[..., r:]
        half = r // 2
        flipped = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        sin = self.rotary_sin[:n, None, :].to(x.dtype)
        cos = self.rotary_cos[:n, None, :].to(x.dtype)
        return torch.cat([x_rot * cos + flipped * sin, x_pass], dim=-1)


def rotary_tables(rotary_dim: int, n_ctx: int, base: int) -> tuple[Tensor, Tensor]:
    """GPT-NeoX-style rotary tables: the first and second half of the rotated dims pair up."""
    half = rotary_dim // 2
    freq = base ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(n_ctx, dtype=torch.float64)[:, None] / freq.repeat(2)[None, :]
    return torch.sin(angles).float(), torch.cos(angles).float()


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = ACTIVATION_FNS[cfg.act_fn]
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        post = self.hook_post(self.act(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        norm = LayerNorm if cfg.normalization_type == "LN" else lambda cfg: nn.Identity()
        self.ln1 = norm(cfg)
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()
            self.hook_resid_mid = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid_pre: Tensor, shortformer_pos: Tensor | None = None) -> Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)
        x = self.ln1(resid_pre)
        # Shortformer: positions enter the queries and keys only, after the norm.
        qk_input = x if shortformer_pos is None else x + shortformer_pos
        attn_out = self.hook_attn_out(self.attn(qk_input, qk_input, x))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if self.cfg.parallel_attn_mlp:
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_pre)))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_pos[: tokens.shape[-1]].expand(tokens.shape[0], -1, -1)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.W_U + self.b_U


class Transformer(HookedRootModule):
    """`Transformer(cfg)(tokens[batch, pos]) -> logits[batch, pos, d_vocab_out]`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        if cfg.positional_embedding_type != "rotary":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        if cfg.normalization_type == "LN":
            self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        self.init_weights(cfg.seed)
        self.setup()  # HookedRootModule: names every HookPoint for run_with_hooks/cache

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2 style: every W_* ~ N(0, init_range), biases 0, norm weights 1."""
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                p.copy_(torch.randn(p.shape, generator=gen) * self.cfg.init_range)

    def fused_attention(self, on: bool = True) -> "Transformer":
        """Use the fused `scaled_dot_product_attention` kernel (training only).

        Several times faster on CPU at long contexts, but `hook_attn_scores`
        and `hook_pattern` do not fire and there is no double backward, so
        estimators and probes keep the explicit path (the default).
        """
        for block in self.blocks:
            block.attn.fused = on
        return self

    def to(self, *args, print_details: bool = False, **kwargs):
        # HookedTransformer.to takes print_details; tools written for it (devinterp) pass it.
        return super().to(*args, **kwargs)

    def forward(self, tokens: Tensor, return_type: str | None = "logits") -> Tensor | None:
        """`return_type` as in HookedTransformer: "logits", "loss" (mean next-token
        cross-entropy), "both" (a (logits, loss) tuple) or None."""
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {tokens.shape[-1]} exceeds the model's n_ctx {self.cfg.n_ctx}")
        resid = self.hook_embed(self.embed(tokens))
        shortformer_pos = None
        if self.cfg.positional_embedding_type == "standard":
            resid = resid + self.hook_pos_embed(self.pos_embed(tokens))
        elif self.cfg.positional_embedding_type == "shortformer":
            shortformer_pos = self.hook_pos_embed(self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid, shortformer_pos)
        if self.cfg.normalization_type == "LN":
            resid = self.ln_final(resid)
        if return_type is None:
            return None
        logits = self.unembed(resid)
        if return_type == "logits":
            return logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts HookedTransformer state dicts: derived buffers are dropped."""
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith(DERIVED_BUFFER_SUFFIXES)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
