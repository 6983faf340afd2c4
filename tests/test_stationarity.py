"""gradient_check: mean-gradient norm against its batch-noise standard error, per component."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from rllc.models import ModelConfig, Transformer
from rllc.models.components import resolve_component
from rllc.losses import next_token_loss
from rllc.sampling.stationarity import gradient_check

K, B, D = 6, 10, 3


def mse(model, batch):
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean()


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(K * B, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.5 * rng.normal(size=K * B)
    batches = [(torch.tensor(x[i * B:(i + 1) * B]), torch.tensor(y[i * B:(i + 1) * B])) for i in range(K)]
    model = nn.Linear(D, 1).double()
    return x, y, batches, model


def set_weights(model, w, b):
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w).reshape(1, D))
        model.bias.fill_(float(b))


def per_batch_gradients(x, y, w, b):
    """Analytic gradients of each batch's mean squared error, [K, D + 1] (weight then bias)."""
    out = []
    for i in range(K):
        xi, yi = x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]
        r = xi @ w + b - yi
        out.append(np.concatenate([2 * xi.T @ r / B, [2 * r.mean()]]))
    return np.array(out)


def test_zero_mean_gradient_at_the_least_squares_solution(regression):
    x, y, batches, model = regression
    design = np.hstack([x, np.ones((len(x), 1))])
    sol = np.linalg.lstsq(design, y, rcond=None)[0]
    set_weights(model, sol[:D], sol[D])
    got = gradient_check(model, batches, ["weight", "bias", None], loss_fn=mse)
    assert set(got) == {"weight", "bias", "model"}
    for name, r in got.items():
        assert r["grad_norm"] < 1e-10, (name, r)
        assert r["noise_se"] > 0.01 and r["snr"] < 1e-8 and r["pop_grad_norm"] == 0.0
        assert r["n_batches"] == K
    assert (got["weight"]["n_coords"], got["bias"]["n_coords"], got["model"]["n_coords"]) == (D, 1, D + 1)


def test_grad_norm_and_noise_match_the_analytic_gradients(regression):
    x, y, batches, model = regression
    w, b = np.array([0.2, 0.1, -0.4]), -1.0
    set_weights(model, w, b)
    got = gradient_check(model, batches, ["weight", "bias", "model"], loss_fn=mse)
    g = per_batch_gradients(x, y, w, b)
    design = np.hstack([x, np.ones((len(x), 1))])
    full = 2 * design.T @ (design @ np.append(w, b) - y) / len(y)  # gradient of the loss over the union
    np.testing.assert_allclose(g.mean(0), full, rtol=1e-12, atol=1e-12)  # equal-size batches
    for name, cols in (("weight", slice(0, D)), ("bias", slice(D, D + 1)), ("model", slice(0, D + 1))):
        r, gi = got[name], g[:, cols]
        assert r["grad_norm"] == pytest.approx(np.linalg.norm(full[cols]), rel=1e-10)
        trace = np.trace(np.atleast_2d(np.cov(gi, rowvar=False, ddof=1)))
        assert r["noise_se"] == pytest.approx(math.sqrt(trace / K), rel=1e-10)
        assert r["batch_noise"] == pytest.approx(math.sqrt(trace), rel=1e-10)
        assert r["snr"] == pytest.approx(r["grad_norm"] / r["noise_se"], rel=1e-12)
        assert r["pop_grad_norm"] == pytest.approx(math.sqrt(max(r["grad_norm"] ** 2 - trace / K, 0)), rel=1e-10)
        assert r["mean_loss"] == pytest.approx(float(np.mean((design @ np.append(w, b) - y) ** 2)), rel=1e-12)
    assert got["model"]["snr"] > 3  # far from the solution: the mean gradient is not batch noise


def tiny_transformer():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=2, d_vocab=20)
    model = Transformer(cfg)
    batches = torch.randint(0, 20, (5, 4, 8), generator=torch.Generator().manual_seed(1))
    return model, batches


def test_head_components_match_direct_autograd():
    model, batches = tiny_transformer()
    specs = ["0:1", "0:0+0:1", "blocks.0.attn.W_Q"]
    got = gradient_check(model, batches, specs)  # a [K, batch, pos] tensor, default next-token loss
    comps = [resolve_component(model, s.split("+") if "+" in s else s) for s in specs]
    params = dict(model.named_parameters())
    rows = {s: [] for s in specs}
    for batch in batches:
        grads = dict(zip(params, torch.autograd.grad(next_token_loss(model, batch), list(params.values()))))
        for s, c in zip(specs, comps):
            rows[s].append(torch.cat([grads[n][c.mask(n, params[n])] for n in c.param_names]).double().numpy())
    for s, c in zip(specs, comps):
        g = np.array(rows[s])
        r = got[s]
        assert r["n_coords"] == c.n_coords == g.shape[1] and r["n_batches"] == len(batches)
        assert r["grad_norm"] == pytest.approx(np.linalg.norm(g.mean(0)), rel=1e-5)
        trace = np.trace(np.cov(g, rowvar=False, ddof=1))
        assert r["noise_se"] == pytest.approx(math.sqrt(trace / len(g)), rel=1e-5)
        assert r["batch_noise"] == pytest.approx(math.sqrt(trace), rel=1e-5)
    assert got["0:0+0:1"]["n_coords"] == 2 * got["0:1"]["n_coords"]
    one = gradient_check(model, batches[:1], "0:1")["0:1"]
    assert one["n_batches"] == 1 and math.isnan(one["noise_se"]) and math.isnan(one["snr"])


def test_model_state_is_left_untouched():
    model, batches = tiny_transformer()
    model.eval()
    frozen = "blocks.0.attn.W_K"
    model.get_parameter(frozen).requires_grad_(False)
    next_token_loss(model, batches[0]).backward()  # leaves .grad on every trainable parameter
    with torch.no_grad():
        model.get_parameter("blocks.0.attn.W_V").grad = None
    before = {n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
              for n, p in model.named_parameters()}

    def check():
        assert not model.training
        for n, p in model.named_parameters():
            w, flag, grad = before[n]
            assert torch.equal(p.detach(), w) and p.requires_grad == flag, n
            assert (p.grad is None) if grad is None else torch.equal(p.grad, grad), n

    with torch.no_grad():  # works under no_grad, too
        got = gradient_check(model, batches, ["0:0", "model"])
    assert got["model"]["grad_norm"] > 0 and got["0:0"]["grad_norm"] > 0
    check()

    calls = []

    def failing(model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return next_token_loss(model, batch)

    with pytest.raises(RuntimeError, match="boom"):
        gradient_check(model, batches, [None], loss_fn=failing)
    check()
