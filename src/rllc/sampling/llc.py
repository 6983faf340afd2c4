"""Local learning coefficient estimation, the one entry point: weight- and data-refined, any torch model.

    llc_hat = nbeta * ( mean_t L_{B_t}(w_t) - L_init )                 (standard)
    llc_hat = nbeta *   mean_t ( L_{B_t}(w_t) - L_{B_t}(w*) )          (paired)

w_t are SGLD draws from the localized tempered posterior restricted to a
component (see kernel.py), B_t the minibatch of step t (shared by all
chains). The loss of draw t is the one computed for the gradient of step t,
at the weights before that step, so draw 0 is w* itself when burn_in = 0.

The reference loss. ``L_init = mean_t L_{B_t}(w*)`` over exactly the draws'
batches (t = burn_in .. burn_in + draws - 1, each batch weighted by how often
the cycling stream hands it to a draw). Any other reference biases the
standard estimator by ``nbeta * (mean loss at w* over the draws' batches -
the reference)``: with ~n/log n for nbeta that is several units (a singular
regression with lambda = 6 gave -4.8 with a reference over the first 16 of
20 batches; see docs/llc.md). With this reference both estimators have the
same mean; they differ in their per-draw values, and so in their standard
error and R-hat. The paired one (the default) removes the batch-to-batch
variation of the loss at w*, which cancels exactly in the mean, so its
standard error is the honest one; the standard one's overstates the error.
Each distinct batch's loss at w* is computed once (one forward pass), so
both cost the same.

Back-ends. :func:`estimate_llcs` sends single attention heads of a supported
attention-only Transformer with the next-token loss to the batched head
sampler (``rllc.sampling.fast``: every head x chain at once) and every other
component to the generic back-end (``rllc.sampling.generic``: any model, any
loss). Both use one update (``rllc.sampling.update``) and follow one
reproducibility contract (``rllc.sampling.kernel``), so they agree to float
tolerance on the same seeds. Neither calls back up into this module.

Settings are :class:`rllc.sampling.settings.SGLDSettings`, given as an object
(``settings=``) and/or as keyword arguments named like its fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from rllc.models.components import Component, ComponentSpec, heads, resolve_component
from rllc.progress import progress_bar
from rllc.sampling import fast as heads_backend
from rllc.sampling import generic
from rllc.losses import BatchStream, LossFn, TeacherTargets, check_finite_weights, next_token_loss, teacher_loss
from rllc.sampling.kernel import chain_seed
from rllc.sampling.observables import TokenLossObserver
from rllc.sampling.result import LLCEstimate
from rllc.sampling.settings import SGLDSettings, split_settings

COMPUTE_DTYPES = ("fp32", "bf16")
AUTO_WORKERS = 2  # head-sampler sweeps side by side with workers="auto" (measured on 2 cores only; see docs/llc.md)


def estimate_llc(model: nn.Module, data: Iterable, *, component: ComponentSpec = None, **kwargs: Any) -> LLCEstimate:
    """Estimate the (refined) LLC of one component of `model` at its current weights w*.

    Arguments as :func:`estimate_llcs`, with one `component` (None: the whole model).
    """
    (estimate,) = estimate_llcs(model, data, [component], **kwargs).values()
    return estimate


def estimate_llcs(
    model: nn.Module,
    data: Iterable,
    components: Sequence[ComponentSpec] | None = None,
    *,
    settings: SGLDSettings | None = None,
    seed: int = 0,
    chain_seeds: Sequence[int] | None = None,
    loss_fn: LossFn | None = None,
    teacher: nn.Module | None = None,
    fast: bool | str = "auto",
    pair_chunk: int = 8,
    compute_dtype: str = "fp32",
    bf16_pilot_draws: int = 10,
    workers: int | str = "auto",
    progress: bool = False,
    observer: TokenLossObserver | None = None,
    **setting_values: Any,
) -> dict[str, LLCEstimate]:
    """The (refined) LLC of several components at w*: {name: LLCEstimate}, in the order given.

    data: iterable of batches, cycled (batch t at step t for every chain); read once.
    components: specs of rllc.models.components ("1:6", "layer 0", "model", a Component...);
        None: every attention head.
    settings / setting_values: :class:`SGLDSettings`, or its fields as keywords (epsilon=, nbeta=,
        gamma=, chains=, draws=, burn_in=, paired=, sampler=, ...), keywords overriding the object.
        `paired` reports nbeta * mean_t(L_{B_t}(w_t) - L_{B_t}(w*)) (default) rather than the standard
        estimator; both have the same mean and both are in .diagnostics.
    seed: chain c's generator is seeded chain_seed(seed, c); every component gets the same seeds
        (common random numbers across components). chain_seeds: explicit per-chain seeds instead.
    loss_fn(model, batch) -> scalar mean loss; None: next-token cross-entropy on token batches, or
        with `teacher`, cross-entropy against the teacher's next-token distribution (a custom loss_fn
        with a teacher receives (tokens, teacher_log_probs) batches).
    fast: "auto" (default) sends single heads "l:h" of a supported attention-only Transformer with
        the default loss to the batched head sampler (rllc.sampling.fast) and the rest to the generic
        back-end; True requires every component to take the batched path (error otherwise); False
        never uses it. The back-ends agree to float tolerance on the same seeds.
    pair_chunk: (head, chain) pairs per batched forward/backward of the head sampler.
    compute_dtype: "bf16" runs the head sampler's unembedding matmuls in bfloat16 after a coupled
        pilot of `bf16_pilot_draws` draws shows every head within half its Monte Carlo error of fp32
        (else it warns Bf16Refused and runs fp32); other components always run fp32.
    workers: the head sampler's heads split into this many sweeps run side by side in threads, torch's
        threads shared out among them (CPU only; the estimates do not depend on it, to float rounding).
        "auto": 2 when torch has at least 2 threads, else 1 (on 2 cores, two one-thread sweeps took 0.75x
        the time of one two-thread sweep on the demo model; docs/llc.md).
    progress: show SGLD steps on stderr (a bar on a terminal, a line every few seconds in a log).
    observer: a :class:`rllc.sampling.observables.TokenLossObserver`: both back-ends record its probe sets'
        per-token losses at every (component, chain) draw it wants (susceptibilities, Bayesian influence).

    The model is used in its current train/eval mode and left exactly as it was (weights bit for
    bit, requires_grad, .grad), also after an error.
    """
    s = split_settings(setting_values, settings)
    if fast not in (True, False, "auto"):
        raise ValueError(f"fast must be True, False or 'auto', got {fast!r}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be 'fp32' or 'bf16', got {compute_dtype!r}")
    if pair_chunk < 1:
        raise ValueError(f"pair_chunk must be positive, got {pair_chunk}")
    if workers == "auto":
        workers = AUTO_WORKERS if torch.get_num_threads() >= AUTO_WORKERS else 1
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer or 'auto', got {workers!r}")
    # Specs other than strings become Components once (their name is their key); strings stay (heads, "layer:0"...).
    specs = [c if isinstance(c, (str, Component)) else resolve_component(model, c)
             for c in (heads(model) if components is None else components)]
    keys = [c.strip() if isinstance(c, str) else c.name for c in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"components are repeated: {keys}")
    seeds = list(chain_seeds) if chain_seeds is not None else [chain_seed(seed, c) for c in range(s.chains)]
    if len(seeds) != s.chains:
        raise ValueError(f"chain_seeds has {len(seeds)} seeds for {s.chains} chains")
    check_finite_weights(model)

    batched, reasons = [], {}
    # The model-level conditions once, then each component's own.
    model_reason = "fast=False" if fast is False else heads_backend.unsupported_reason(
        model, None, loss_fn=loss_fn, teacher=teacher)
    for key, spec in zip(keys, specs):
        reason = model_reason or heads_backend.head_reason(model, spec)
        if reason is None:
            batched.append(key)
        else:
            reasons[key] = reason
    if fast is True and reasons:
        key = next(iter(reasons))
        raise ValueError(f"fast=True, but the fast path does not apply to {key}: {reasons[key]}")

    device = next((p.device for p in model.parameters()), None)
    stream = BatchStream(data, TeacherTargets(teacher) if teacher is not None else None, device=device)
    hyper = dict(seed=seed, reference="draws", data_refinement="teacher" if teacher is not None else "data")
    out: dict[str, LLCEstimate] = {}
    runs = int(bool(batched)) + len(reasons)  # one sweep for the batched heads, one run per other component
    with progress_bar(total=runs * (s.burn_in + s.draws), desc="SGLD", unit="step", disable=not progress) as bar:
        def step_done(t: int) -> None:
            bar.update(1)

        if batched:
            out.update(heads_backend.run_heads(model, stream, batched, s, seeds, hyper, pair_chunk=pair_chunk,
                                               compute_dtype=compute_dtype, bf16_pilot_draws=bf16_pilot_draws,
                                               workers=workers, on_step=step_done, observer=observer))
        if reasons:
            loss = loss_fn if loss_fn is not None else teacher_loss if teacher is not None else next_token_loss
            for key, spec in zip(keys, specs):
                if key in reasons:
                    comp = resolve_component(model, spec)
                    out[key] = generic.run(model, stream, loss, comp, s, seeds, hyper, on_step=step_done,
                                           observer=observer)
    return {key: out[key] for key in keys}
