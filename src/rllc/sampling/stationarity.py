"""Is w* a critical point of the loss being sampled? A per-component gradient check.

The (refined) LLC is a property of a local minimum: the SGLD estimator samples
``exp(-n*beta*L(w) - gamma/2 |w - w*|^2)`` around w* and reads off how fast the
loss rises. If the gradient of L at w* is not zero in the moving coordinates,
the chains drift downhill along it and ``E_w[L] - L(w*)`` mixes the geometry
with that drift (the estimate can even go negative). Checkpoints taken during
training, and data-refined losses (another distribution than the training
one), are not guaranteed to be critical points, so it is worth measuring.

`gradient_check` takes K token batches and, per component, the gradients
``g_i`` of each batch's mean loss at w*, restricted to the component's
coordinates. With ``gbar`` their mean and ``Sigma`` the covariance of one
batch's gradient,

    E |gbar|^2 = |grad L(w*)|^2 + tr(Sigma) / K .

So the numbers reported are

``grad_norm``   ``|gbar|``: the norm of the mean gradient over the K batches;
``noise_se``    ``sqrt(tr(S) / K)`` with S the sample covariance of the g_i
                (denominator K - 1): the standard error of ``gbar``, i.e. the
                norm ``gbar`` has from batch noise alone;
``batch_noise`` ``sqrt(tr(S))``: the noise of a single batch's gradient (what
                one SGLD step sees);
``snr``         ``grad_norm / noise_se``;
``pop_grad_norm`` ``sqrt(max(grad_norm^2 - noise_se^2, 0))``: the (debiased)
                estimate of the population gradient norm ``|grad L(w*)|``;
``mean_loss``   the mean of the batch losses;
``n_batches``   K; ``n_coords``: the component's coordinate count.

At a critical point of the population loss ``grad_norm^2 ≈ noise_se^2`` in
expectation (snr ≈ 1; with many coordinates the ratio concentrates, with few it
scatters like a chi-square over its degrees of freedom). ``snr >> 1`` (say
above 3) means w* is not a critical point of the sampled loss in these
coordinates: the mean gradient is larger than batch noise can explain. Note that
the K batches define the sampled loss: if they are *the* data (e.g. a fixed
finite set whose union the model was fitted to), ``grad_norm`` itself is the
exact gradient of that loss.

With K = 1 there is no covariance: noise_se, batch_noise and snr are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rllc.models.components import Component, ComponentSpec, resolve_component
from rllc.losses import LossFn, next_token_loss


def gradient_check(model: nn.Module, batches: Iterable[Any], components: ComponentSpec | Iterable[ComponentSpec],
                   loss_fn: LossFn | None = None) -> dict[str, dict[str, Any]]:
    """Mean-gradient norm against its batch-noise standard error, per component (module docstring).

    model: used at its current weights and in its current train/eval mode, and left exactly as it was
        (weights, requires_grad, .grad, mode).
    batches: the K batches (a list, or a tensor [K, batch, pos] read along its first dimension); they
        are passed to ``loss_fn`` as they are (put them on the model's device).
    components: one spec or a list of specs, each one component (see rllc.models.components; "l:h",
        "model", None for every parameter, ...; "a+b" is the union of a and b, as in series runs).
    loss_fn(model, batch) -> scalar mean loss; default the next-token cross-entropy.

    One backward per batch serves every component: the gradient of each touched parameter is
    accumulated (mean and sum of squared deviations, Welford, in float64) and sliced per component
    at the end. Returns {component name: {grad_norm, noise_se, batch_noise, snr, pop_grad_norm,
    mean_loss, n_batches, n_coords}}.
    """
    loss_fn = next_token_loss if loss_fn is None else loss_fn
    comps = [_resolve(model, spec) for spec in _specs(components)]
    params = dict(model.named_parameters())
    touched = {name for c in comps for name in c.param_names}
    names = [n for n in params if n in touched]  # model order
    mean = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    m2 = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    flags = {n: p.requires_grad for n, p in params.items()}
    k, loss_sum = 0, 0.0
    try:
        for n, p in params.items():  # gradients only where a component needs them
            p.requires_grad_(n in touched)
        with torch.enable_grad():
            for batch in batches:
                loss = loss_fn(model, batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ValueError(f"the loss at w* on batch {k} is {value}; check the weights, data and loss_fn")
                grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
                k += 1
                loss_sum += value
                for n, g in zip(names, grads):
                    if g is None:  # the loss does not depend on this parameter: gradient zero
                        g = torch.zeros_like(mean[n])
                    g = g.detach().to(torch.float64)
                    delta = g - mean[n]
                    mean[n] += delta / k
                    m2[n] += delta * (g - mean[n])
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if k == 0:
        raise ValueError("gradient_check got no batches")

    out: dict[str, dict[str, Any]] = {}
    for c in comps:
        sq_norm = trace = 0.0
        for n, index in c.entries:
            mu, dev = (mean[n], m2[n]) if index is None else (mean[n][index], m2[n][index])
            sq_norm += float((mu * mu).sum())
            trace += float(dev.sum())
        grad_norm = math.sqrt(sq_norm)
        if k > 1:
            cov_trace = max(trace, 0.0) / (k - 1)
            noise_se = math.sqrt(cov_trace / k)
            batch_noise = math.sqrt(cov_trace)
            snr = grad_norm / noise_se if noise_se > 0 else (math.inf if grad_norm > 0 else math.nan)
            pop = math.sqrt(max(sq_norm - noise_se ** 2, 0.0))
        else:
            noise_se = batch_noise = snr = pop = math.nan
        out[c.name] = dict(grad_norm=grad_norm, noise_se=noise_se, batch_noise=batch_noise, snr=snr,
                           pop_grad_norm=pop, mean_loss=loss_sum / k, n_batches=k, n_coords=c.n_coords)
    return out


def _specs(components: Any) -> list:
    if components is None or isinstance(components, (str, Mapping, Component)):
        return [components]
    specs = list(components)
    if not specs:
        raise ValueError("gradient_check needs at least one component")
    return specs


def _resolve(model: nn.Module, spec: Any) -> Component:
    if isinstance(spec, str) and "+" in spec:
        return resolve_component(model, spec.split("+"), name=spec.strip())
    return resolve_component(model, spec)
