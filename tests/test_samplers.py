"""The samplers and their settings: declared once, one entry point, RMSProp-SGLD in both back-ends.

* SGLDSettings checks every value and is where the CLI flags, TOML keys and the hash come from; the
  hash of today's default settings is the one results were stored under before the settings existed.
* RMSProp-SGLD's MALA log ratio is the preconditioned proposal's, checked against a hand computation.
  (Its batched path against the generic one: test_fast.py; its known-lambda cases: test_llc_minibatch.py.)
* The back-ends never import the entry point (no import circle).
"""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rllc.models.components import resolve_component
from rllc.runs.options import ESTIMATE_DEFAULTS, RunError, config_hash, estimator_params, merge_options
from rllc.runs.options import validate_estimate_options
from rllc.sampling import ProjectedSGLD, SGLDSettings, estimate_llc
from rllc.sampling.toys import make_linear_regression


SAMPLING = Path(__file__).resolve().parents[1] / "src" / "rllc" / "sampling"


def test_settings_check_every_value():
    assert SGLDSettings().sampler == "sgld" and SGLDSettings().epsilon == 1e-3
    for bad, match in [(dict(epsilon=0.0), "epsilon must be positive"), (dict(sampler="adam"), "sampler must be one"),
                       (dict(chains=0), "chains must be a positive"), (dict(draws=2.5), "draws must be"),
                       (dict(gamma=-1.0), "gamma must be non-negative"), (dict(paired="yes"), "paired must be"),
                       (dict(rmsprop_alpha=1.0), r"rmsprop_alpha must be in \[0, 1\)"),
                       (dict(bounding_box=0.0), "bounding_box must be positive or none"),
                       (dict(epsilon=float("nan")), "epsilon must be finite")]:
        with pytest.raises(ValueError, match=match):
            SGLDSettings(**bad)
    with pytest.raises(TypeError, match="unknown setting"):
        estimate_llc(torch.nn.Linear(2, 2), [], epsilon_typo=1.0)


def test_hash_of_the_default_settings_is_unchanged():
    """ae3bd9bce261 is the llc config_hash of the defaults before SGLDSettings existed (commit e6c9378)."""
    opts = merge_options(ESTIMATE_DEFAULTS, {})
    assert config_hash(estimator_params("llc", opts, "abc123")) == "ae3bd9bce261"
    changed = merge_options(ESTIMATE_DEFAULTS, {"sampler": "rmsprop"})
    params = estimator_params("llc", changed, "abc123")
    assert params["sampler"] == "rmsprop" and config_hash(params) != "ae3bd9bce261"
    # a new setting enters the hash only off its default
    assert "rmsprop_alpha" not in params
    assert estimator_params("llc", merge_options(ESTIMATE_DEFAULTS, {"rmsprop_alpha": 0.9}), "x")["rmsprop_alpha"] == 0.9


def test_every_setting_is_an_option_and_a_flag():
    from rllc.cli import build_parser

    assert set(SGLDSettings.names()) <= set(ESTIMATE_DEFAULTS)
    args = build_parser().parse_args(["estimate", "ckpts", "--sampler", "rmsprop", "--rmsprop-alpha", "0.9",
                                      "--no-paired", "--bounding-box", "0.5", "--burn-in", "3"])
    assert (args.sampler, args.rmsprop_alpha, args.paired, args.bounding_box, args.burn_in) == (
        "rmsprop", 0.9, False, 0.5, 3)
    with pytest.raises(RunError, match="--rmsprop-eps must be positive"):
        validate_estimate_options(merge_options(ESTIMATE_DEFAULTS, {"rmsprop_eps": -1.0}))
    with pytest.raises(RunError, match="--epsilon must be"):
        validate_estimate_options(merge_options(ESTIMATE_DEFAULTS, {"epsilon": "fast"}))


def test_backends_never_import_the_entry_point():
    for name in ("fast.py", "generic.py", "kernel.py", "update.py", "result.py", "data.py"):
        tree = ast.parse((SAMPLING / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert "rllc.sampling.llc" not in imported, name
        assert not any(m and m.startswith("rllc.sampling") and m.endswith(".llc") for m in imported), name


@pytest.mark.parametrize("noise_level", [1.0, 0.5])
def test_rmsprop_mala_ratio_is_the_preconditioned_proposals(noise_level):
    """Full-batch quadratic loss: after two steps, the ratio of the first move w* -> w1, by hand."""
    problem = make_linear_regression(d=3, n=200, seed=1)
    model, loss_fn = problem.model, problem.loss_fn
    batch = problem.data[0]  # one full batch
    s = SGLDSettings(sampler="rmsprop", epsilon=1e-3, nbeta=50.0, gamma=2.0, rmsprop_alpha=0.9, rmsprop_eps=0.05,
                     noise_level=noise_level)
    comp = resolve_component(model, None)

    def loss_and_grad(w):
        flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        torch.nn.utils.vector_to_parameters(w, model.parameters())
        model.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()]).detach().double()
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
        model.zero_grad()
        return float(loss.detach()), g

    vec = lambda ws: torch.cat([w.flatten() for w in ws]).double()
    w_star = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    with ProjectedSGLD(model, comp, loss_fn, settings=s, chain_seeds=[3]) as kernel:
        kernel.step(0, batch)
        w1 = vec(kernel.block.coordinates(0))
        info = kernel.step(0, batch)
    l0, g0 = loss_and_grad(w_star)
    l1, g1 = loss_and_grad(w1)
    ws = w_star.double()
    v = (1 - s.rmsprop_alpha) * g0 * g0
    G = 1.0 / (v.sqrt() + s.rmsprop_eps)
    drift = lambda w, g: s.nbeta * g + s.gamma * (w - ws)
    U = lambda w, l: s.nbeta * (l - l0) + 0.5 * s.gamma * float(((w - ws) ** 2).sum())
    log_q = lambda to, frm, g: -float((((to - frm + 0.5 * s.epsilon * G * drift(frm, g)) ** 2) / G).sum()) / (
        2 * s.epsilon * noise_level ** 2)
    expected = -(U(w1, l1) - U(ws, l0)) + log_q(ws, w1, g1) - log_q(w1, ws, g0)
    assert info.log_accept == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_progress_of_a_long_estimate(capsys):
    """progress=True: SGLD steps on stderr as plain lines when stderr is not a terminal; nothing by default."""
    problem = make_linear_regression(d=3, n=200, n_batches=4, seed=1)
    kw = dict(loss_fn=problem.loss_fn, chains=2, draws=5, burn_in=2, epsilon=1e-4, nbeta=50.0, gamma=1.0)
    estimate_llc(problem.model, problem.data, **kw)
    assert capsys.readouterr().err == ""
    estimate_llc(problem.model, problem.data, progress=True, **kw)
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("SGLD: 7/7 step"), err


def test_generic_kernel_keeps_one_copy_of_w_star():
    """w* is stored once and seen by every chain (a whole-model estimate would otherwise hold `chains` copies)."""
    problem = make_linear_regression(d=3, n=50, seed=1)
    comp = resolve_component(problem.model, None)
    kernel = ProjectedSGLD(problem.model, comp, problem.loss_fn, chain_seeds=[1, 2, 3, 4])
    for w_star, w in zip(kernel.block.w_star, kernel.block.w):
        assert w_star.stride(0) == 0 and w.shape == w_star.shape and w.stride(0) != 0


def test_antithetic_pairs_mirror_each_other_on_a_quadratic():
    """Antithetic chains: the odd chain's noise is -1 times its partner's. On a quadratic loss whose minimum is
    w* (no gradient there), SGLD's drift is linear in w - w*, so the two chains of a pair stay exact mirror
    images (w1 - w* = -(w0 - w*)) and see equal losses at every step; each chain alone is plain SGLD (chain 0
    equals the plain run), and se/R-hat are taken over the pair means."""
    import numpy as np
    import torch

    from rllc.sampling import estimate_llc

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1, bias=False)
    x = torch.randn(64, 6)
    y = x @ model.weight.detach().T  # w* fits exactly: the loss has its minimum at w*

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    kw = dict(loss_fn=loss_fn, epsilon=1e-3, nbeta=50.0, gamma=10.0, chains=4, draws=40, seed=3)
    anti = estimate_llc(model, data, antithetic=True, **kw)
    plain = estimate_llc(model, data, **kw)
    trace = anti.loss_trace
    np.testing.assert_allclose(trace[1], trace[0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(trace[3], trace[2], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(trace[0], plain.loss_trace[0], rtol=0, atol=0)  # chain 0 draws its own noise
    d = anti.diagnostics["distance_trace"]
    np.testing.assert_allclose(d[1], d[0], rtol=1e-5)
    assert anti.hyperparameters["antithetic"] is True and np.isfinite(anti.se) and anti.se > 0
    with pytest.raises(ValueError, match="chains must be even"):
        estimate_llc(model, data, antithetic=True, **{**kw, "chains": 3})
