"""Fast path: every requested head of an attention-only Transformer, all chains, one batched sampler.

Same estimator and same reproducibility contract as the generic kernel
(``rllc.sampling.kernel``), so with the same seeds the chains agree with
``estimate_llc(..., fast=False)`` to float tolerance:

* all (component, chain) pairs advance in lockstep on one minibatch stream;
* chain c owns one generator seeded ``chain_seed(seed, c)`` (or
  ``chain_seeds[c]``); at each step it draws one full-shape standard normal of
  W_Q, W_K, W_V, W_O, b_Q, b_K, b_V (model parameter order). The generic run
  of head l:h with chain c takes coordinates ``[h]`` of exactly these draws
  (every layer has the same shapes), so one draw per chain serves all heads;
* the update is the kernel's float arithmetic, elementwise on stacked tensors.

What makes it fast:

* per minibatch, the forward pass at w* is run once, without gradients, and
  cached: each layer's input residual, its LayerNorm output, and every head's
  z and output at w*;
* a head of layer l moves only its own output: the residual after layer l is
  ``resid*_{l+1} - out*_h + out_k``; earlier layers are never recomputed,
  later layers are (with frozen weights: gradients only flow to the input);
* for a head of the last layer, the logits are computed in the head's
  d_head-dimensional subspace: with LN(x) = xc / s * w + b,
  ``logits = ((Rc_h * w) @ W_U + z_k @ ((W_O,k - mean) * w) @ W_U) / s + b @ W_U + b_U``
  where the first product is shared by the chains of the head (computed once
  per minibatch) and the second costs d_head instead of d_model per position;
* (component, chain) pairs are stacked into [K, ...] weight tensors and run
  as batched einsums, in chunks of `pair_chunk` pairs to bound memory;
  gradients are taken only w.r.t. the stacked head weights;
* attention (the moving head's, and every head of the later layers) needs first
  derivatives only, so it takes the fastest kernel for its shape
  (`_causal_attention`): on CPU at contexts up to `EXPLICIT_ATTENTION_MAX_T`, one
  batched matmul with the causal mask as its additive term, a softmax and a
  second matmul; otherwise the fused `scaled_dot_product_attention`;
* the vocabulary-sized work (logits, softmax, cross-entropy and its gradient)
  is one hand-written pass over blocks of `CE_BLOCK_ELEMENTS` logits that stay in cache
  (`_LinearCrossEntropy`); the unembedding matmuls are then most of the cost.

Where the time goes (reference model, one thread, per head-chain-step): a
layer-0 head still needs a full d_model x vocab unembedding forward and
backward per pair (2 x 2.6 GMAC), which no batching removes; a last-layer
head needs d_head x vocab. bf16 matmuls are not faster than fp32 on this
project's CPU (oneDNN's avx512_core_bf16 kernel: ~75 GFLOP/s vs MKL fp32
~105 GFLOP/s, measured), so `compute_dtype="bf16"` is for hardware where they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rllc.models.components import HEAD_PARAMS, _HEAD
from rllc.models.transformer import LayerNorm
from rllc.losses import BatchStream, next_token_loss, tokens_of
from rllc.sampling.data import reference_losses
from rllc.sampling.observables import TokenLossObserver
from rllc.sampling.result import LLCEstimate, assemble
from rllc.sampling.settings import SGLDSettings
from rllc.sampling.update import ChainBlock, accumulator, noise_streams

# Logits per block of the fused cross-entropy (see _LinearCrossEntropy): [128 tokens, 5,000 vocab] fp32 = 2.6 MB stays
# in cache, measured on the reference model (vocab 5,000); a smaller vocabulary takes more tokens per block (the demo
# model's 512: one block of a batch's 504 tokens, 10 % faster per step than 128-token blocks in an interleaved A/B).
CE_BLOCK_ELEMENTS = 128 * 5000
# Longest context at which `_causal_attention` uses explicit batched matmuls on CPU. Measured on this project's
# CPU (2 threads, d_head 16, fp32, forward + backward of 4,096 query rows x 8 heads): at T = 64 explicit 11.0 ms vs
# the fused kernel 14.1 ms (forward alone 4.4 vs 5.9); at T = 128 21.4 vs 21.8 (forward 9.0 vs 5.7); beyond, the
# fused kernel wins by 2-3x. The fused CPU kernel is written for long sequences; at short ones its tiling costs.
EXPLICIT_ATTENTION_MAX_T = 64
SCORE_BLOCK = 2**20  # score entries per block of the explicit attention (4 MB in fp32)
BF16_TOLERANCE = 0.5  # bf16 is accepted if |bf16 - fp32| <= this many fp32 Monte Carlo errors, for every head

__all__ = ["Bf16Refused", "head_reason", "run_heads", "unsupported_reason"]


def _is_head(spec: Any) -> bool:
    return isinstance(spec, str) and bool(_HEAD.match(spec.strip())) and not spec.strip().endswith("*")


def unsupported_reason(model: nn.Module, components: Sequence[Any] | None, *, loss_fn=None,
                       teacher=None) -> str | None:
    """None if the fast path applies to `model` and `components`; else why not (one line)."""
    from rllc.models.transformer import Transformer

    if not isinstance(model, Transformer):
        return f"the model is a {type(model).__name__}, not an rllc.models.Transformer"
    cfg = model.cfg
    if not cfg.attn_only:
        return "the model has MLPs (the fast path is for attention-only models)"
    if cfg.positional_embedding_type not in ("shortformer", "standard"):
        return f"positional embedding {cfg.positional_embedding_type!r} is not supported"
    if any(block.attn.fused for block in model.blocks):
        return "fused attention is on (estimators use the explicit attention path)"
    if loss_fn is not None and loss_fn is not next_token_loss:
        return "a custom loss_fn is given (the fast path computes the next-token loss itself)"
    if teacher is not None:
        return "data refinement by a teacher is not in the fast path"
    if model.training and any(isinstance(m, nn.Dropout) for m in model.modules()):
        return "the model has dropout in training mode"
    for spec in components or ():
        reason = head_reason(model, spec)
        if reason is not None:
            return reason
    params = [name for name, _ in model.named_parameters()]
    order = [n.rsplit(".", 1)[1] for n in params if n.startswith("blocks.0.attn.") and n.rsplit(".", 1)[1] in HEAD_PARAMS]
    if order != list(HEAD_PARAMS):
        return f"attention parameters are in an unexpected order {order}"
    return None


def head_reason(model: nn.Module, spec: Any) -> str | None:
    """None if `spec` names one existing head "l:h" of `model` (a model `unsupported_reason` accepts); else why not."""
    if not _is_head(spec):
        return f"component {getattr(spec, 'name', spec)!r} is not a single head 'l:h'"
    layer, head = (int(x) for x in spec.strip().split(":"))
    if layer >= model.cfg.n_layers or head >= model.cfg.n_heads:
        return f"head {spec!r} does not exist in this model"
    return None


class _Workspace:
    """Large buffers reused from step to step: a fresh tensor of hundreds of MB costs more than the
    arithmetic done in it (the kernel zero-fills its new pages: ~0.1 s per 300 MB on this project's CPU,
    against ~0.03 s for an in-place pass over the same memory)."""

    def __init__(self):
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffers[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def _causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale, causally masked) v over the last two dims of [..., T, e] (any leading dims), with
    the faster kernel for the shape (see `EXPLICIT_ATTENTION_MAX_T`); the two agree to float rounding.

    The explicit form runs in blocks of `SCORE_BLOCK` score entries (a few MB, kept in cache; one large
    scores tensor costs more in fresh pages than it saves). With gradients it is used only when one block
    holds everything (autograd would keep every block's scores alive anyway)."""
    *lead, t, e = q.shape
    n = q.numel() // (t * e)
    rows = max(1, SCORE_BLOCK // (t * t))
    if q.device.type != "cpu" or t > EXPLICIT_ATTENTION_MAX_T or (torch.is_grad_enabled() and n > rows):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    q, k, v = (x.reshape(n, t, e) for x in (q, k, v))
    if n <= rows:
        scores = torch.baddbmm(mask.expand(n, t, t), q, k.transpose(1, 2), alpha=scale)
        return torch.bmm(scores.softmax(-1), v).view(*lead, t, e)
    out = torch.empty_like(q)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        scores = torch.baddbmm(mask.expand(hi - lo, t, t), q[lo:hi], k[lo:hi].transpose(1, 2), alpha=scale)
        torch.bmm(scores.softmax(-1), v[lo:hi], out=out[lo:hi])
    return out.view(*lead, t, e)


class _Cache:
    """The forward pass at w* on one minibatch (no gradients)."""

    def __init__(self, model: nn.Module, tokens: Tensor, need_head_logits: Sequence[int], workspace: _Workspace):
        cfg = model.cfg
        self.tokens = tokens
        resid = model.embed(tokens)
        self.pos = None
        if cfg.positional_embedding_type == "standard":
            resid = resid + model.pos_embed(tokens)
        else:
            self.pos = model.pos_embed(tokens)
        self.resid = [resid]  # resid[l]: input of layer l; resid[n_layers]: final residual
        self.x, self.qk, self.z, self.without = [], [], [], []
        for block in model.blocks:
            attn = block.attn
            x = block.ln1(resid)
            qk = x if self.pos is None else x + self.pos
            q = torch.einsum("bpd,hde->bphe", qk, attn.W_Q) + attn.b_Q
            k = torch.einsum("bpd,hde->bphe", qk, attn.W_K) + attn.b_K
            v = torch.einsum("bpd,hde->bphe", x, attn.W_V) + attn.b_V
            n = q.shape[1]
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / attn.attn_scale
            scores = scores.masked_fill(~attn.mask[:n, :n], float("-inf"))
            z = torch.einsum("bhqk,bkhe->bqhe", torch.softmax(scores, dim=-1), v)
            head_out = torch.einsum("bqhe,hed->hbqd", z, attn.W_O)  # [H, B, T, d]
            resid = resid + head_out.sum(0) + attn.b_O
            self.x.append(x)
            self.qk.append(qk)
            self.z.append(z.permute(2, 0, 1, 3))  # [H, B, T, dh]
            self.resid.append(resid)
            self.without.append(resid - head_out)  # [H, B, T, d]: the residual after the layer without head h
        # Last layer: per-head shared logits term A_h = (Rc_h * w) @ W_U, Rc_h the centred residual without head h,
        # stacked [heads, B * (T-1), V] in a reused buffer (so a chunk of consecutive heads is a view, not a copy).
        self.head_row = {h: i for i, h in enumerate(need_head_logits)}
        self.head_logits: Tensor | None = None
        if need_head_logits:
            last = cfg.n_layers - 1
            W_U = model.unembed.W_U
            lnw = model.ln_final.w if cfg.normalization_type == "LN" else None
            final = resid[:, :-1]
            if lnw is not None:
                final = (final - final.mean(-1, keepdim=True)) * lnw
            a_full = (final @ W_U).flatten(0, 1)  # [B * (T-1), V]
            w_o = model.blocks[last].attn.W_O
            self.head_logits = workspace.get("head_logits", (len(need_head_logits), *a_full.shape), a_full)
            for h, out in zip(need_head_logits, self.head_logits):
                z_h = self.z[last][h][:, :-1].flatten(0, 1)
                torch.addmm(a_full, z_h, _head_unembed(w_o[h], lnw, W_U), alpha=-1, out=out)

    def shared_logits(self, heads: Tensor) -> Tensor:
        rows = [self.head_row[int(h)] for h in heads]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return self.head_logits[rows[0]:rows[0] + len(rows)]
        return self.head_logits[rows]


def _head_unembed(w_o: Tensor, lnw: Tensor | None, W_U: Tensor) -> Tensor:
    """((W_O - mean_d W_O) * ln_final.w) @ W_U for a head (or a stack of heads); W_O @ W_U without LN."""
    if lnw is None:
        return w_o @ W_U
    return ((w_o - w_o.mean(-1, keepdim=True)) * lnw) @ W_U


class _LayerGroup:
    """The stacked chains of the requested heads of one layer: pair k = (heads[k // chains], chain k % chains)."""

    def __init__(self, model: nn.Module, layer: int, heads: list[int], settings: SGLDSettings):
        attn = model.blocks[layer].attn
        chains = settings.chains
        self.layer, self.heads, self.chains = layer, heads, chains
        self.head_of_pair = torch.tensor([h for h in heads for _ in range(chains)], dtype=torch.long)
        self.chain_of_pair = [c for _ in heads for c in range(chains)]
        with torch.no_grad():
            w_star = [getattr(attn, p).detach()[self.head_of_pair] for p in HEAD_PARAMS]
        self.block = ChainBlock(w_star, settings, [(f"{layer}:{h}", c) for h in heads for c in range(chains)])

    @property
    def n_pairs(self) -> int:
        return len(self.head_of_pair)


def _ce_inputs(model: nn.Module, cache: _Cache, layer: int, hidx: Tensor, ws: list[Tensor], group: int):
    """The inputs of the cross-entropy of each pair [k] whose head hidx[k] of `layer` has weights ws[.][k]:
    (x, m, inv_scale, shared, bias, targets) with logits = inv_scale * (x @ m + shared) + bias
    (see `_LinearCrossEntropy`). Pairs come in runs of `group` with the same head (its chains)."""
    cfg = model.cfg
    W_Q, W_K, W_V, W_O, b_Q, b_K, b_V = ws
    attn = model.blocks[layer].attn
    x, qk = cache.x[layer], cache.qk[layer]
    q = torch.einsum("btd,kde->kbte", qk, W_Q) + b_Q[:, None, None, :]
    k = torch.einsum("btd,kde->kbte", qk, W_K) + b_K[:, None, None, :]
    v = torch.einsum("btd,kde->kbte", x, W_V) + b_V[:, None, None, :]
    z = _causal_attention(q, k, v, 1.0 / attn.attn_scale)  # [k, B, T, dh]
    targets = cache.tokens[:, 1:].flatten()
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    if layer == cfg.n_layers - 1:
        # Logits in the head's subspace (see the module docstring); the last position predicts nothing.
        z = z[:, :, :-1]
        lnw = model.ln_final.w if cfg.normalization_type == "LN" else None
        heads = hidx.view(-1, group)[:, 0]
        shared = cache.shared_logits(heads)  # [n_heads, B*(T-1), V]
        inv_scale, bias = None, b_U
        if lnw is not None:
            resid = _moved(cache, layer, hidx, z, W_O)
            centred = resid - resid.mean(-1, keepdim=True)
            inv_scale = (centred.pow(2).mean(-1, keepdim=True) + model.ln_final.eps).rsqrt().flatten(1, 2)
            bias = model.ln_final.b @ W_U + b_U
        return z.flatten(1, 2), _head_unembed(W_O, lnw, W_U), inv_scale, shared, bias, targets
    resid = _moved(cache, layer, hidx, z, W_O)  # [k, B, T, d]
    for block in model.blocks[layer + 1:]:
        resid = _frozen_block(block, resid, cache.pos)
    resid = resid[:, :, :-1]  # the last position predicts nothing
    m, bias = W_U, b_U
    if cfg.normalization_type == "LN":
        # ln_final's affine part folded into the unembedding (frozen): one [.., d] pass less per pair.
        ln = model.ln_final
        resid = F.layer_norm(resid, resid.shape[-1:], eps=ln.eps)
        m, bias = ln.w[:, None] * W_U, ln.b @ W_U + b_U
    return resid.flatten(1, 2), m, None, None, bias, targets


def _moved(cache: _Cache, layer: int, hidx: Tensor, z: Tensor, W_O: Tensor) -> Tensor:
    """The residual after `layer` of each pair [k, B, T', d] (the first T' positions, those of z [k, B, T', e]):
    resid* without head hidx[k], plus the head's output z_k W_O,k at the pair's weights."""
    without = cache.without[layer].index_select(0, hidx)[:, :, :z.shape[2]]
    return without + torch.einsum("kbqe,ked->kbqd", z, W_O)


def _pair_losses(model: nn.Module, cache: _Cache, layer: int, hidx: Tensor, ws: list[Tensor], group: int,
                 low: torch.dtype | None) -> Tensor:
    """Mean next-token loss of each pair [k] (`_ce_inputs`), fused with its gradient (`_LinearCrossEntropy`).
    `low`: dtype of the unembedding matmuls (None: the model's dtype); logits, softmax and losses stay in
    the model's dtype."""
    x, m, inv_scale, shared, bias, targets = _ce_inputs(model, cache, layer, hidx, ws, group)
    return _LinearCrossEntropy.apply(x, m, inv_scale, shared, bias, targets, group, low,
                                     _token_block(m.shape[-1]))


def _token_block(vocab: int, rows: int = 1) -> int:
    """Tokens per block of a vocabulary-sized pass over `rows` stacked pairs: CE_BLOCK_ELEMENTS logits."""
    return max(1, CE_BLOCK_ELEMENTS // (rows * vocab))


@torch.no_grad()
def _pair_token_losses(model: nn.Module, cache: _Cache, layer: int, hidx: Tensor, ws: list[Tensor],
                       group: int) -> Tensor:
    """Per-token next-token loss of each pair [k, B * (T-1)] (observables; no gradient): all pairs at once,
    in blocks of tokens so that no vocabulary-sized tensor holds more than CE_BLOCK_ELEMENTS logits."""
    x, m, inv_scale, shared, bias, targets = _ce_inputs(model, cache, layer, hidx, ws, group)
    k, n = x.shape[:2]
    owner = torch.arange(k, device=x.device) // group  # the shared logit term of each pair
    out = torch.empty((k, n), dtype=x.dtype, device=x.device)
    block = _token_block(m.shape[-1], k)
    for t0 in range(0, n, block):
        t1 = min(n, t0 + block)
        u = torch.matmul(x[:, t0:t1], m)  # [k, b, V]
        if shared is not None:
            u += shared[owner, t0:t1]
        if inv_scale is not None:
            u *= inv_scale[:, t0:t1]
        u += bias
        target = targets[t0:t1].expand(k, -1)[..., None]
        out[:, t0:t1] = torch.logsumexp(u, -1) - u.gather(-1, target)[..., 0]
    return out


def _frozen_block(block: nn.Module, resid: Tensor, pos: Tensor | None) -> Tensor:
    """An attention-only block with frozen weights on [k, B, T, d] (k stacked pairs): the model's block
    arithmetic with fused kernels (LayerNorm, each projection with its bias, the residual add with the output
    projection), positions broadcast over pairs instead of copied."""
    attn, ln = block.attn, block.ln1
    n_heads, d_model, d_head = attn.W_Q.shape
    x = F.layer_norm(resid, (d_model,), ln.w, ln.b, ln.eps) if isinstance(ln, LayerNorm) else resid
    qk = x if pos is None else x + pos

    def project(inp: Tensor, w: Tensor, b: Tensor) -> Tensor:  # -> [k * B, H, T, e]
        flat = F.linear(inp.flatten(0, 1), w.permute(0, 2, 1).reshape(n_heads * d_head, d_model), b.flatten())
        return flat.unflatten(-1, (n_heads, d_head)).transpose(1, 2)

    z = _causal_attention(project(qk, attn.W_Q, attn.b_Q), project(qk, attn.W_K, attn.b_K),
                          project(x, attn.W_V, attn.b_V), 1.0 / attn.attn_scale)
    z = z.transpose(1, 2).flatten(-2)  # [k * B, T, H * e]
    out = torch.addmm(resid.reshape(-1, d_model), z.reshape(-1, n_heads * d_head),
                      attn.W_O.reshape(n_heads * d_head, d_model))
    return (out + attn.b_O).view_as(resid)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-pair mean next-token cross-entropy of logits = inv_scale * (x @ m + shared) + bias, fused.

    x [k, N, e]; m [k, e, V] or [e, V]; inv_scale [k, N, 1] or None (1); shared [k // group, N, V] or None,
    broadcast over the `group` consecutive pairs that share it (frozen); bias [V] (frozen); targets [N].
    Returns [k].

    Written by hand because this is where the sampler spends its time: the logits are vocabulary-sized
    ([k, N, V]: 326 MB for 8 pairs of the reference model) and autograd's log_softmax graph would read
    and write them a dozen times, each fresh tensor paying the kernel's page zeroing. Here they are made
    `block` tokens of one pair at a time (a few MB, resident in cache), and the gradients are formed in
    the same sweep as the loss (softmax - onehot, in place), so nothing vocabulary-sized outlives a block.
    Backward only scales the stored per-pair gradients by d(output)/d(loss).
    """

    @staticmethod
    def forward(ctx, x, m, inv_scale, shared, bias, targets, group, low, block):
        k, n = x.shape[0], x.shape[1]
        want_x, want_m = x.requires_grad, m.requires_grad
        want_inv = inv_scale is not None and inv_scale.requires_grad
        grad_x = torch.empty_like(x) if want_x else None
        grad_m = torch.zeros((k, *m.shape[-2:]), dtype=m.dtype, device=m.device) if want_m else None
        grad_inv = torch.empty_like(inv_scale) if want_inv else None
        loss = torch.zeros(k, dtype=accumulator(x.device), device=x.device)
        lo_x, lo_m = (x, m) if low is None else (x.to(low), m.to(low))
        for i in range(k):
            m_i = lo_m[i] if m.dim() == 3 else lo_m
            shared_i = None if shared is None else shared[i // group]
            for t0 in range(0, n, block):
                t1 = min(n, t0 + block)
                x_b, target = lo_x[i, t0:t1], targets[t0:t1, None]
                if shared_i is None and inv_scale is None and low is None:
                    logits = torch.addmm(bias, x_b, m_i)
                    u = None
                else:
                    u = torch.matmul(x_b, m_i).to(x.dtype)
                    if shared_i is not None:
                        u.add_(shared_i[t0:t1])
                    if inv_scale is not None:
                        u.mul_(inv_scale[i, t0:t1])
                    logits = u + bias
                target_logit = logits.gather(1, target)
                top = logits.amax(1, keepdim=True)
                p = logits.sub_(top).exp_()
                total = p.sum(1, keepdim=True)
                loss[i] += (top + total.log() - target_logit).sum(dtype=loss.dtype)
                if not (want_x or want_m or want_inv):
                    continue
                # d loss / d logits = (softmax - onehot) / N; through the scale, times inv_scale.
                row = torch.full_like(top, 1.0 / n) if inv_scale is None else inv_scale[i, t0:t1] / n
                if want_inv:
                    # sum_v (softmax_v - onehot_v) * (x @ m + shared)_v / N; u holds that times inv_scale.
                    pu = torch.mul(p, u).sum(1, keepdim=True) / total - u.gather(1, target)
                    grad_inv[i, t0:t1] = pu / (inv_scale[i, t0:t1] * n)
                g = p.mul_(row / total)
                g.scatter_add_(1, target, -row)
                if low is not None:
                    g = g.to(low)
                if want_x:
                    grad_x[i, t0:t1] = torch.matmul(g, m_i.T)
                if want_m:
                    grad_m[i].add_(torch.matmul(x_b.T, g))
        ctx.save_for_backward(grad_x, grad_m, grad_inv)
        return (loss / n).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_m, grad_inv = ctx.saved_tensors
        scale = grad_loss[:, None, None]
        return (None if grad_x is None else grad_x * scale, None if grad_m is None else grad_m * scale,
                None if grad_inv is None else grad_inv * scale, None, None, None, None, None, None)


def run_heads(model: nn.Module, stream: BatchStream, heads: Sequence[str], settings: SGLDSettings,
              seeds: Sequence[int], hyper: dict[str, Any], *, pair_chunk: int = 8, compute_dtype: str = "fp32",
              bf16_pilot_draws: int = 10, workers: int = 1, on_step: Callable[[int], None] | None = None,
              observer: TokenLossObserver | None = None) -> dict[str, LLCEstimate]:
    """{head: LLCEstimate} for single heads "l:h" of a model :func:`unsupported_reason` accepts.

    Called by the entry point (``rllc.estimate_llcs``), which validates the arguments; every head gets
    the same chain seeds, so each estimate equals (to float tolerance) the generic back-end's.

    compute_dtype="bf16" runs the unembedding matmuls (the bulk of the work) in bfloat16 with float32
    logits, softmax and loss sums. It is validated first: a pilot of `bf16_pilot_draws` draws runs in
    both modes on the same seeds (coupled chains, so the difference is the rounding error alone); if
    any head's bf16 estimate differs from fp32 by more than half the fp32 Monte Carlo error (chain
    std / sqrt(chains)), bf16 is refused for this model with a warning (Bf16Refused) and the sweep
    runs in fp32. The outcome is in each estimate's diagnostics["compute_dtype"] / ["bf16_check"].

    workers > 1 (CPU only) splits the heads into that many sweeps run side by side in threads, torch's
    threads shared out among them (see `_sweep`); the estimates are the same, to float rounding.
    """
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)  # frozen: autograd never builds gradients for them
        run_kw = dict(settings=settings, seeds=list(seeds), hyper=hyper, pair_chunk=pair_chunk, workers=workers)
        low, check = None, None
        if compute_dtype == "bf16":
            check = _check_bf16(model, stream, list(heads), min(settings.draws, bf16_pilot_draws), run_kw)
            low = torch.bfloat16 if check["accepted"] else None
        out = _sweep(model, stream, list(heads), low=low, on_step=on_step, observer=observer, **run_kw)
        for est in out.values():
            est.diagnostics["compute_dtype"] = "bf16" if low is not None else "fp32"
            est.diagnostics["bf16_check"] = check
        return out
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _observe(model: nn.Module, probes: list[tuple[list[str], list[int], _Cache]], group: _LayerGroup, chunk: int,
             observer: TokenLossObserver) -> None:
    """Every probe set's per-token losses at each pair's current state w_t, recorded per (head, chain); the
    probe sets of one length go through one batched pass."""
    values: dict[str, Tensor] = {}
    for names, sizes, cache in probes:
        per_pair = [_pair_token_losses(model, cache, group.layer, group.head_of_pair[lo:hi],
                                       [w[lo:hi] for w in group.block.w], group.chains)
                    for lo in range(0, group.n_pairs, chunk) for hi in [min(lo + chunk, group.n_pairs)]]
        losses = torch.cat(per_pair).view(group.n_pairs, sum(sizes), -1).double().cpu()
        for name, part in zip(names, losses.split(sizes, dim=1)):
            values[name] = part
    for k, (head, chain) in enumerate(zip(group.head_of_pair.tolist(), group.chain_of_pair)):
        observer.record(f"{group.layer}:{head}", chain, {name: v[k].numpy() for name, v in values.items()})


class Bf16Refused(UserWarning):
    """bf16 compute was requested but its estimates disagree with fp32: the sweep ran in fp32."""


def _check_bf16(model, stream, comps, pilot_draws, run_kw) -> dict[str, Any]:
    """Coupled pilot runs in fp32 and bf16: accept bf16 if every head agrees within half its MC error."""
    import warnings

    pilot = dict(run_kw, settings=run_kw["settings"].replace(draws=pilot_draws))
    ref = _sweep(model, stream, comps, low=None, **pilot)
    low = _sweep(model, stream, comps, low=torch.bfloat16, **pilot)
    chains = len(run_kw["seeds"])
    worst_name, worst_ratio, rows = comps[0], 0.0, {}
    for name in comps:
        se = ref[name].std / math.sqrt(chains) if chains > 1 else abs(ref[name].mean) * 0.05
        diff = abs(low[name].mean - ref[name].mean)
        ratio = diff / se if se > 0 else math.inf
        rows[name] = dict(fp32=ref[name].mean, bf16=low[name].mean, mc_error=se, ratio=ratio)
        if not ratio <= worst_ratio:
            worst_name, worst_ratio = name, ratio
    accepted = worst_ratio <= BF16_TOLERANCE
    check = dict(accepted=accepted, pilot_draws=pilot_draws, worst_head=worst_name, worst_ratio=worst_ratio,
                 per_head=rows, seconds=ref[comps[0]].diagnostics["sweep_seconds"]
                 + low[comps[0]].diagnostics["sweep_seconds"])
    if not accepted:
        r = rows[worst_name]
        warnings.warn(f"bf16 compute refused for this model: in a {pilot_draws}-draw pilot on the same seeds, head "
                      f"{worst_name} gave {r['bf16']:.4g} in bf16 vs {r['fp32']:.4g} in fp32, a difference of "
                      f"{worst_ratio:.2f} Monte Carlo errors (limit {BF16_TOLERANCE}); running in fp32", Bf16Refused,
                      stacklevel=3)
    return check


class _Stopped(Exception):
    """Another sweep of the same call failed (or was interrupted): this one stops at its next step."""


def _sweep(model, stream: BatchStream, comps: list[str], *, workers: int, hyper: dict[str, Any], on_step=None,
           **run_kw: Any) -> dict[str, LLCEstimate]:
    """`_run` over `comps`, split into `workers` sweeps run side by side in threads on CPU; the estimates.

    Why threads: at the sizes these studies use, a sweep's ops are small (a [504, 128] x [128, 512] product,
    attention over 64 tokens), and torch's intra-op threads share them out poorly: the demo model's sweep ran
    only ~1.2x faster on 2 threads than on 1. Two sweeps of half the heads each, one thread each, overlap each
    other's serial parts: 1.34x faster per step than one sweep on 2 threads on the demo model, 1.08-1.15x on
    the reference model (benchmarks/sweep_ab.py; docs/llc.md). Each thread sets its own torch thread count
    (thread-local under OpenMP); the caller's is restored after.

    The heads of each layer are dealt round-robin, so every sweep gets the same mix of layers (a head's cost
    depends on its layer). The reference losses are computed once, here, which also reads every batch
    the sweeps need, so that they only read the stream. Each sweep seeds its chains alike, so a head's
    estimate does not depend on the split. If one sweep raises, the others stop at their next step.
    Every estimate's time is the wall time of the whole call, shared out over the components."""
    s = run_kw["settings"]
    start = time.perf_counter()
    ref = reference_losses(model, next_token_loss, stream, s.burn_in + s.draws)  # L_{B_t}(w*), see sampling.llc
    by_layer: dict[str, list[str]] = {}
    for c in comps:
        by_layer.setdefault(c.split(":")[0], []).append(c)
    parts = [[c for heads in by_layer.values() for c in heads[i::workers]] for i in range(workers)]
    parts = [p for p in parts if p]
    if model.unembed.W_U.device.type != "cpu" or len(parts) < 2:
        results = [_run(model, stream, comps, ref=ref, on_step=on_step, **run_kw)]
    else:
        results = _threaded(parts, lambda i, part, stop: _run(model, stream, part, ref=ref, stop=stop,
                                                             on_step=on_step if i == 0 else None, **run_kw))
    seconds = time.perf_counter() - start
    records = {c: r for result in results for c, r in result.items()}
    n_coords = sum(int(np.prod(getattr(model.blocks[0].attn, p).shape[1:])) for p in HEAD_PARAMS)
    out: dict[str, LLCEstimate] = {}
    for c in comps:
        est = assemble(**records[c], ref=ref, init_loss=float(ref[s.burn_in:].mean()), settings=s,
                       n_distinct=stream.n_distinct, seconds=seconds / len(comps), component=c, n_coords=n_coords,
                       hyper=hyper)
        est.diagnostics.update(fast_path=True, sweep_seconds=seconds, sweep_components=len(comps),
                               sweep_workers=len(results))
        out[c] = est
    return out


def _threaded(parts: list[list[str]], run: Callable) -> list[dict[str, LLCEstimate]]:
    """[run(i, part, stop) for each part], side by side in threads with torch's threads shared out (`_sweep`)."""
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    outer = torch.get_num_threads()
    threads = max(1, outer // len(parts))
    stop = threading.Event()

    def work(i: int, part: list[str]) -> dict[str, LLCEstimate]:
        torch.set_num_threads(threads)
        return run(i, part, stop)

    try:
        with ThreadPoolExecutor(len(parts), thread_name_prefix="rllc-sweep") as pool:
            futures = [pool.submit(work, i, part) for i, part in enumerate(parts)]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # interrupted: the sweeps stop at their next step, then this re-raises
                stop.set()
                raise
            failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if failed:
                stop.set()
                raise failed[0]
            return [f.result() for f in futures]
    finally:
        torch.set_num_threads(outer)


def _run(model, stream: BatchStream, comps: list[str], *, settings: SGLDSettings, seeds: list[int],
         pair_chunk: int, ref: np.ndarray, low=None, on_step=None, observer: TokenLossObserver | None = None,
         stop=None) -> dict[str, dict[str, np.ndarray]]:
    """One sweep of the heads `comps`, all chains in lockstep; `ref`: L_{B_t}(w*) of every step's batch.
    Returns each head's per-step records [chains, steps] (losses, sq_dist, log_accept) for `assemble`."""
    s = settings
    cfg = model.cfg
    chains = s.chains
    steps = s.burn_in + s.draws
    init_loss = float(ref[s.burn_in:].mean())
    max_loss = s.max_loss(init_loss)

    by_layer: dict[int, list[int]] = {}
    for c in comps:
        layer, head = (int(x) for x in c.split(":"))
        by_layer.setdefault(layer, []).append(head)
    groups = [_LayerGroup(model, layer, heads, s) for layer, heads in sorted(by_layer.items())]
    last = cfg.n_layers - 1
    last_heads = next((g.heads for g in groups if g.layer == last), [])
    noise_seeds, negate = noise_streams(seeds, s.antithetic)
    generators = [torch.Generator(device=model.unembed.W_U.device).manual_seed(seed) for seed in noise_seeds]
    shapes = [getattr(model.blocks[0].attn, p).shape for p in HEAD_PARAMS]
    dtype = model.unembed.W_U.dtype

    workspace = _Workspace()
    losses = {g.layer: np.empty((g.n_pairs, steps)) for g in groups}
    sq_dist = {g.layer: np.empty((g.n_pairs, steps)) for g in groups}
    log_accept = {g.layer: np.full((g.n_pairs, steps), np.nan) for g in groups}

    chunk = max(1, pair_chunk // chains) * chains  # whole heads per chunk: their chains share one logit term
    probes = []  # the forward pass at w* of the fixed probe sets, once: sets of one length share a cache
    if observer is not None:
        with torch.no_grad():
            for names, tokens in observer.stacked:
                sizes = [observer.probes[n].shape[0] for n in names]
                probes.append((names, sizes, _Cache(model, tokens.to(model.unembed.W_U.device), last_heads,
                                                    _Workspace())))
    for t in range(steps):
        if stop is not None and stop.is_set():
            raise _Stopped(f"stopped at step {t}: another sweep of this call failed")
        batch = stream.raw(t)  # no prepare step in this back-end; raw() only reads once `ref` has read the batches
        tokens = tokens_of(batch)
        with torch.no_grad():
            cache = _Cache(model, tokens, last_heads, workspace)
            # One full-shape draw per parameter per chain, in model parameter order (the kernel's contract).
            noise = [[torch.randn(shape, generator=g, dtype=dtype, device=g.device) for shape in shapes]
                     for g in generators]
            noise = [[x.neg_() for x in draws] if flip else draws for draws, flip in zip(noise, negate)]
        for group in groups:
            layer, block = group.layer, group.block
            if observer is not None and observer.wants(t):
                _observe(model, probes, group, chunk, observer)
            step_loss = np.empty(group.n_pairs)
            grads = [torch.empty_like(w) for w in block.w]
            for lo in range(0, group.n_pairs, chunk):
                hi = min(lo + chunk, group.n_pairs)
                ws = [w[lo:hi].detach().requires_grad_(True) for w in block.w]
                with torch.enable_grad():
                    pair_loss = _pair_losses(model, cache, layer, group.head_of_pair[lo:hi], ws, chains, low)
                    chunk_grads = torch.autograd.grad(pair_loss.sum(), ws)
                step_loss[lo:hi] = pair_loss.detach().cpu().double().numpy()
                for g_all, g in zip(grads, chunk_grads):
                    g_all[lo:hi] = g
            everything = slice(0, group.n_pairs)
            block.check_losses(everything, step_loss, t, max_loss)
            with torch.no_grad():
                pair_noise = [torch.stack([noise[c][i][h] for h, c in zip(group.head_of_pair.tolist(),
                                                                          group.chain_of_pair)])
                              for i in range(len(shapes))]
            sq_dist[layer][:, t], log_accept[layer][:, t] = block.step(everything, grads, pair_noise, step_loss,
                                                                       ref[t], t)
            losses[layer][:, t] = step_loss
        if on_step is not None:
            on_step(t)
    records: dict[str, dict[str, np.ndarray]] = {}
    for c in comps:
        layer, head = (int(x) for x in c.split(":"))
        group = next(g for g in groups if g.layer == layer)
        rows = slice(group.heads.index(head) * chains, (group.heads.index(head) + 1) * chains)
        records[c] = dict(losses=losses[layer][rows], sq_dist=sq_dist[layer][rows], log_accept=log_accept[layer][rows])
    return records
