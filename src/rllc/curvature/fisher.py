"""Fisher information: the expected Hessian of the loss when the data come from the model itself.

For a next-token model p_w, the per-token Fisher at context x is
F(x) = E_{y ~ p_w(.|x)} [grad log p_w(y|x) grad log p_w(y|x)^T]. The FIM of
the model is its average over positions and over contexts x sampled from
the model (autoregressively, at that checkpoint), restricted to a component.

Two ways to take the expectation over the next token y, both as
Hessian-vector products of a cross-entropy (`rllc.sampling.teacher_loss`)
against targets computed at w* and held fixed:

* ``"analytic"`` (default): the targets are the model's own next-token
  distribution p_w*(.|x). The Hessian of -sum_y p*(y) log p_w(y|x) at w* is
  J^T (diag p - p p^T) J, which *is* F(x) (the term with the second
  derivatives of the logits is weighted by p - p* = 0). No label noise, and
  every per-context term is positive semi-definite.
* ``"sampled"``: one label y ~ p_w*(.|x) per position, one-hot targets: the
  Hessian of the sampled NLL, whose expectation is F(x); noisier.

Keeping contexts across checkpoints. Sampled contexts differ from
checkpoint to checkpoint, which adds noise to a FIM-trace curve. Contexts
drawn once (from checkpoint w0) can be reused: with ``reweight=False`` (what
we recommend) the estimate is the Fisher of the conditional model under that
fixed context distribution, with the next-token expectation still taken
exactly under the current model; with ``reweight=True`` each sequence gets the
self-normalized importance weight prod_t p_w(x_t|x_<t) / p_w0(x_t|x_<t), which
targets the current model's own context distribution, at the price of weights
whose spread grows with sequence length and with distance in training; the
effective sample size is reported and a warning given when it falls below a
tenth of the sequences.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rllc.curvature.operator import HessianOperator
from rllc.curvature.results import CurvatureEstimate, combine_se
from rllc.curvature.trace import estimate_trace
from rllc.data import BOS_ID
from rllc.models.components import ComponentSpec, resolve_component
from rllc.losses import TeacherTargets, check_finite_weights, logits_of, teacher_loss, tokens_of

METHODS = ("analytic", "sampled")
MIN_ESS_FRACTION = 0.1


@dataclass
class FisherContexts:
    """Sequences sampled from a model, with their log-probability under it (for reweighting)."""

    tokens: Tensor  # [n_seqs, seq_len]
    log_q: Tensor  # [n_seqs] float64: sum of log p(x_t | x_<t) over the sampled positions
    prompt_len: int
    source: str | None = None  # which checkpoint sampled them

    def batches(self, batch_size: int) -> list[Tensor]:
        return list(self.tokens.split(batch_size))


@torch.no_grad()
def sequence_log_prob(model: nn.Module, tokens: Tensor, prompt_len: int, batch_size: int = 8) -> Tensor:
    """[n] float64: sum over positions t >= prompt_len of log p(x_t | x_<t) under `model`."""
    device = next(model.parameters()).device
    out = []
    for chunk in tokens.split(batch_size):
        log_probs = F.log_softmax(logits_of(model(chunk.to(device))).double(), dim=-1).cpu()
        picked = log_probs[:, prompt_len - 1:-1].gather(-1, chunk[:, prompt_len:, None])[..., 0]
        out.append(picked.sum(-1))
    return torch.cat(out)


@torch.no_grad()
def sample_contexts(model: nn.Module, n_seqs: int, seq_len: int | None = None, *, batch_size: int = 8,
                    seed: int = 0, prompt: Tensor | None = None, source: str | None = None) -> FisherContexts:
    """n_seqs sequences sampled autoregressively from `model` (temperature 1, no truncation).

    prompt: LongTensor [k] or [n_seqs, k] of given first tokens; default BOS.
    seq_len defaults to the model's n_ctx. Without a KV cache, a batch costs
    about seq_len / 2 full-length forward passes.
    """
    if seq_len is None:
        seq_len = model.cfg.n_ctx
    prompt = torch.tensor([BOS_ID]) if prompt is None else torch.as_tensor(prompt, dtype=torch.long)
    prompt = prompt.expand(n_seqs, -1) if prompt.ndim == 1 else prompt
    if prompt.shape[0] != n_seqs or not 1 <= prompt.shape[1] < seq_len:
        raise ValueError(f"prompt must be [k] or [{n_seqs}, k] with 1 <= k < seq_len={seq_len}, "
                         f"got {tuple(prompt.shape)}")
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same draws whatever the model's device
    device = next(model.parameters()).device
    rows, log_q = [], []
    for chunk in prompt.split(batch_size):
        x, lq = chunk.clone(), torch.zeros(chunk.shape[0], dtype=torch.float64)
        while x.shape[1] < seq_len:
            log_probs = F.log_softmax(logits_of(model(x.to(device)))[:, -1].double(), dim=-1).cpu()
            nxt = torch.multinomial(log_probs.exp(), 1, generator=gen)
            lq += log_probs.gather(-1, nxt)[:, 0]
            x = torch.cat([x, nxt], dim=1)
        rows.append(x)
        log_q.append(lq)
    return FisherContexts(torch.cat(rows), torch.cat(log_q), prompt.shape[1], source)


class _Targets:
    """prepare(b, batch) -> (inputs, target log-probs + log weight of each sequence), computed at w*."""

    def __init__(self, model: nn.Module, method: str, log_weights: list[Tensor] | None, seed: int):
        self.own = TeacherTargets(model)
        self.method, self.log_weights, self.seed = method, log_weights, seed

    def __call__(self, b: int, batch: Any) -> tuple[Tensor, Tensor]:
        inputs, log_probs = self.own(batch)
        if self.method == "sampled":
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + b)  # same labels on every rebuild
            probs = log_probs.exp().reshape(-1, log_probs.shape[-1]).cpu()
            labels = torch.multinomial(probs, 1, generator=gen).to(log_probs.device)
            one_hot = torch.full_like(log_probs, -math.inf).reshape(-1, log_probs.shape[-1])
            log_probs = one_hot.scatter_(-1, labels, 0.0).view_as(log_probs)
        if self.log_weights is not None:
            # Scaling a sequence's targets by c scales its Hessian by c.
            lw = self.log_weights[b].to(log_probs.dtype)
            log_probs = log_probs + lw.view(-1, *([1] * (log_probs.ndim - 1)))
        return inputs, log_probs


def fisher_operator(model: nn.Module, contexts: FisherContexts | Sequence[Any], *, component: ComponentSpec = None,
                    method: str = "analytic", reweight: bool = False, batch_size: int = 8, seed: int = 0,
                    cache_graphs: int = 4) -> tuple[HessianOperator, dict]:
    """The component-restricted FIM on `contexts` as an operator, and diagnostics (ESS when reweighting).

    contexts: sequences sampled from a model (FisherContexts), or any list
    of input batches whose rows are independent contexts (e.g. the inputs of
    a softmax regression); the model maps a batch to logits [rows, ..., vocab].
    """
    if method not in METHODS:
        raise ValueError(f"unknown FIM method {method!r}; use one of {METHODS}")
    check_finite_weights(model)
    comp = resolve_component(model, component)
    batches = contexts.batches(batch_size) if isinstance(contexts, FisherContexts) else list(contexts)
    diagnostics: dict = {}
    log_weights, batch_weights = None, None
    if reweight:
        if not isinstance(contexts, FisherContexts):
            raise ValueError("reweight=True needs FisherContexts (the sampling model's log-probabilities)")
        log_p = sequence_log_prob(model, contexts.tokens, contexts.prompt_len, batch_size)
        log_c = log_p - contexts.log_q
        c = torch.exp(log_c - log_c.max())
        c = c / c.mean()  # mean weight 1: the loss keeps its scale
        ess = float(c.sum() ** 2 / (c * c).sum())
        diagnostics.update(ess=ess, ess_fraction=ess / len(c))
        if ess < MIN_ESS_FRACTION * len(c):
            warnings.warn(f"FIM reweighting: effective sample size {ess:.1f} of {len(c)} sequences; the contexts "
                          f"were sampled from a model too far from this one (source {contexts.source!r})",
                          stacklevel=2)
        log_weights = list(torch.log(c).split(batch_size))
        batch_weights = [float(chunk.mean()) for chunk in c.split(batch_size)]
    prepare = _Targets(model, method, log_weights, seed)
    op = HessianOperator(model, comp, teacher_loss, batches, prepare=prepare, batch_weights=batch_weights,
                         cache_graphs=cache_graphs)
    return op, diagnostics


def fim_trace(model: nn.Module, contexts: FisherContexts | Sequence[Any] | None = None, *,
              component: ComponentSpec = None, method: str = "analytic", reweight: bool = False, n_probes: int = 50,
              estimator: str = "hutch++", n_seqs: int = 32, seq_len: int | None = None, batch_size: int = 8,
              seed: int = 0, cache_graphs: int = 4) -> CurvatureEstimate:
    """Trace of the component-restricted FIM (per token: averaged over positions, like the loss).

    contexts=None: n_seqs sequences of seq_len tokens are sampled from the
    model now (seeded by `seed`). se is the total error against the model's
    FIM: probe noise and context (and, for "sampled", label) noise together;
    both parts are in the diagnostics.
    """
    check_finite_weights(model)  # before sampling from the model, which would blame its distribution
    started = time.perf_counter()
    sampled_now = contexts is None
    if sampled_now:
        contexts = sample_contexts(model, n_seqs, seq_len, batch_size=batch_size, seed=seed)
    sampling_seconds = time.perf_counter() - started
    op, diagnostics = fisher_operator(model, contexts, component=component, method=method, reweight=reweight,
                                      batch_size=batch_size, seed=seed, cache_graphs=cache_graphs)
    est = estimate_trace(op, n_probes, estimator=estimator, seed=seed, quantity="fim_trace")
    est.se = combine_se(est.diagnostics["se_probe"], est.diagnostics["se_data"])
    if op.n_batches < 2:
        warnings.warn("fim_trace: one batch of contexts, so the context noise cannot be estimated and se holds "
                      "the probe noise only; pass the contexts in at least two batches", stacklevel=2)
    est.seconds = time.perf_counter() - started
    n_contexts = sum(len(tokens_of(batch)) for batch in op.batches)
    est.params.update(method=method, reweight=reweight, n_contexts=n_contexts,
                      contexts="sampled" if sampled_now else "given")
    est.diagnostics.update(diagnostics, sampling_seconds=sampling_seconds)
    if isinstance(contexts, FisherContexts):
        est.params.update(seq_len=int(contexts.tokens.shape[1]), contexts_source=contexts.source)
    return est
