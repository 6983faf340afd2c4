"""A hand-set 2-layer attention-only model with known heads, for checking signals.

Residual stream (no LayerNorm, shortformer positions), in disjoint blocks:
T = token one-hot [0, V), P = previous token [V, 2V), I = induction output
[2V, 3V), and the position one-hot [3V, 3V + n_ctx) that enters only queries
and keys.

* 0:0 previous-token head: QK on positions scores k = q - 1; OV copies the
  key's token from T into P.
* 0:1 current-token head: QK on positions scores k = q; OV reads T, writes nothing.
* 1:0 induction head, by K-composition with 0:0: the query's token (T) matches
  keys whose previous token (P) is the same; otherwise it rests on position 0.
  OV copies the attended ordinary token from T into I, which the unembedding
  reads (so resting on BOS predicts nothing).
* 1:1 first-token head: a constant query (b_Q) matches position 0's key; OV
  reads T, writes nothing.

`sharpness` is the attention logit of a match, so attention is exact up to
about exp(-sharpness).
"""

from __future__ import annotations

import math

import torch

from rllc.data import N_SPECIAL
from rllc.models.config import ModelConfig
from rllc.models.transformer import Transformer


def planted_induction_model(vocab: int = 64, n_ctx: int = 49, sharpness: float = 20.0, logit_scale: float = 10.0):
    d_head = max(vocab + 1, n_ctx)  # head dim `vocab` of 1:0 holds its pull to position 0
    T, P, I, POS = 0, vocab, 2 * vocab, 3 * vocab
    cfg = ModelConfig(
        n_layers=2, d_model=3 * vocab + n_ctx, n_ctx=n_ctx, d_head=d_head, n_heads=2, d_vocab=vocab,
        normalization_type=None, positional_embedding_type="shortformer", seed=0,
    )
    model = Transformer(cfg)
    a = math.sqrt(sharpness * math.sqrt(d_head))  # q.k / sqrt(d_head) = sharpness for a match
    tok, pos = torch.arange(vocab), torch.arange(n_ctx)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[tok, T + tok] = 1.0
        model.pos_embed.W_pos[pos, POS + pos] = 1.0
        l0, l1 = model.blocks[0].attn, model.blocks[1].attn

        # 0:0 previous token: query at i is e_i, key at j is e_{j+1}
        l0.W_Q[0, POS + pos, pos] = a
        l0.W_K[0, POS + pos[:-1], pos[:-1] + 1] = a
        l0.W_V[0, T + tok, tok] = 1.0
        l0.W_O[0, tok, P + tok] = 1.0
        # 0:1 current token
        l0.W_Q[1, POS + pos, pos] = a
        l0.W_K[1, POS + pos, pos] = a
        l0.W_V[1, T + tok, tok] = 1.0

        # 1:0 induction: query token t matches keys whose previous token is t;
        # a weaker constant pull to position 0 where nothing matches
        l1.W_Q[0, T + tok, tok] = a
        l1.W_K[0, P + tok, tok] = a
        l1.b_Q[0, vocab] = a / 2
        l1.W_K[0, POS + 0, vocab] = a
        ordinary = tok[N_SPECIAL:]  # BOS/EOT are never copied, so resting on position 0 predicts nothing
        l1.W_V[0, T + ordinary, ordinary] = 1.0
        l1.W_O[0, ordinary, I + ordinary] = 1.0
        # 1:1 first token
        l1.b_Q[1, 0] = a
        l1.W_K[1, POS + 0, 0] = a
        l1.W_V[1, T + tok, tok] = 1.0

        model.unembed.W_U[I + tok, tok] = logit_scale
    return model.eval()
