"""rllc.curvature against exact Hessians and Fisher matrices of models small enough to form them.

Stochastic estimates must land within three of their reported standard
errors of the exact value (seeds are fixed, so the tests are
deterministic), and the trace standard errors are checked for calibration
over 100 seeds. Lanczos eigenvalues must lie within their residual bounds.
Chebyshev ranks must lie within 3 se of the smoothed count, and within
3 se of the exact count once the eigenvalues inside the reported transition
window are allowed for (none, at thresholds in gaps of the spectrum).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev
from torch import nn
from torch.func import functional_call

from rllc.curvature import (
    CurvatureEstimate,
    DenseOperator,
    FisherContexts,
    SpectrumRangeWarning,
    chebyshev_moments,
    chebyshev_rank,
    extreme_eigenvalues,
    fim_trace,
    fisher_operator,
    hessian_eigenvalues,
    hessian_operator,
    hessian_rank,
    hessian_trace,
    hutch_plus_plus,
    hutchinson,
    jackson_coefficients,
    sample_contexts,
    sequence_log_prob,
    slq_rank,
    spectral_density,
    step_coefficients,
)
from rllc.curvature.results import ratio_se
from rllc.models import ModelConfig, Transformer
from rllc.models.components import resolve_component
from rllc.losses import next_token_loss

COMPONENTS = ["1:1", None]  # one head of layer 1 (81 coordinates) and the whole model (467)


def tiny_model(seed: int = 1) -> Transformer:
    cfg = ModelConfig(n_layers=2, d_model=6, n_ctx=5, d_head=3, n_heads=2, d_vocab=5, seed=seed)
    return Transformer(cfg).double()


def tiny_data(n_batches: int = 2) -> list[torch.Tensor]:
    return [torch.randint(0, 5, (6, 5), generator=torch.Generator().manual_seed(i)) for i in range(n_batches)]


def full_hessian(model: nn.Module, data: list) -> torch.Tensor:
    """The Hessian of the mean batch loss in all parameters (model order, row-major), by jacrev(jacrev)."""
    params = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss(theta):
        pieces = theta.split([p.numel() for p in params.values()])
        unflat = {name: t.view(p.shape) for (name, p), t in zip(params.items(), pieces)}
        return sum(next_token_loss(lambda x: functional_call(model, unflat, (x,)), b) for b in data) / len(data)

    return torch.func.jacrev(torch.func.jacrev(loss))(flat)


def block(model: nn.Module, full: torch.Tensor, component) -> torch.Tensor:
    """The component's rows and columns of the full Hessian, selected by the component's masks."""
    comp = resolve_component(model, component)
    idx = torch.cat([comp.mask(n, p).reshape(-1) for n, p in model.named_parameters()]).nonzero().squeeze(1)
    return full[idx][:, idx]


@pytest.fixture(scope="module")
def tiny():
    model, data = tiny_model(), tiny_data()
    full = full_hessian(model, data)
    exact = {spec: block(model, full, spec) for spec in COMPONENTS}
    exact["full"] = full
    return model, data, exact


def within(est: CurvatureEstimate, exact: float, k: float = 3.0) -> bool:
    return abs(est.value - exact) <= k * est.se


# --- the operator ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", COMPONENTS)
@pytest.mark.parametrize("vectorize", [True, False])
def test_operator_is_the_components_hessian_block(tiny, spec, vectorize):
    model, data, exact = tiny
    op = hessian_operator(model, data, component=spec, vectorize=vectorize)
    dense = op.matvec(torch.eye(op.n, dtype=torch.float64))
    assert op.n == exact[spec].shape[0]
    torch.testing.assert_close(dense, exact[spec], atol=1e-10, rtol=1e-8)
    assert op.n_products == op.n


def test_operator_on_a_masked_component_and_a_layer(tiny):
    model, data, exact = tiny
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[::2, 1::3] = True  # not contiguous: takes the index_put path
    for spec in ({"embed.W_E": mask, "blocks.0.attn.W_Q": (1,)}, "layer:0"):
        op = hessian_operator(model, data, component=spec)
        torch.testing.assert_close(op.matvec(torch.eye(op.n, dtype=torch.float64)),
                                   block(model, exact["full"], spec), atol=1e-10, rtol=1e-8)


def test_operator_in_float32(tiny):
    """Real models run in float32: products agree with the float64 Hessian to float32 precision."""
    model, data, exact = tiny
    single = tiny_model().float()
    single.load_state_dict(model.state_dict())
    dense = hessian_operator(single, data, component="1:1").matvec(torch.eye(81, dtype=torch.float64))
    assert (dense - exact["1:1"]).abs().max() < 1e-5 * exact["1:1"].abs().max()


def test_operator_leaves_the_model_as_it_was(tiny):
    model, data, _ = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hessian_trace(model, data, component="1:1", n_probes=6)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]) and p.requires_grad == flags[n] and p.grad is None


def test_data_refinement_averages_the_given_batches(tiny):
    model, data, _ = tiny
    v = torch.randn(81, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    both = hessian_operator(model, data, component="1:1").matvec(v)
    each = [hessian_operator(model, [b], component="1:1").matvec(v) for b in data]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)
    uncached = hessian_operator(model, data, component="1:1", cache_graphs=0, vectorize=False)
    torch.testing.assert_close(uncached.matvec(v), both)
    torch.testing.assert_close(uncached.matvec(v), both)  # rebuilt graphs give the same products
    first = hessian_operator(model, iter(data), component="1:1", n_batches=1).matvec(v)
    torch.testing.assert_close(first, each[0])
    with pytest.raises(ValueError, match="only 2 batches"):
        hessian_operator(model, data, n_batches=3)


def test_teacher_refinement_with_the_model_as_teacher_is_its_fisher(tiny):
    """Cross-entropy against one's own predictions: the Hessian at w* is the Fisher, so PSD."""
    model, data, _ = tiny
    op = hessian_operator(model, data, component="1:1", teacher=model)
    dense = op.matvec(torch.eye(op.n, dtype=torch.float64))
    assert torch.linalg.eigvalsh(dense).min() > -1e-6 * dense.abs().max()
    fisher, _ = fisher_operator(model, data, component="1:1", batch_size=6)
    torch.testing.assert_close(fisher.matvec(torch.eye(op.n, dtype=torch.float64)), dense)


# --- trace ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", COMPONENTS)
def test_trace_estimates_match_the_exact_trace(tiny, spec):
    model, data, exact = tiny
    h = exact[spec]
    op = hessian_operator(model, data, component=spec)
    plain, plus = hutchinson(op, 60, seed=0), hutch_plus_plus(op, 60, seed=0)
    for est in (plain, plus):
        assert est.n_hvp == 60 and est.params["n_batches"] == 2
    assert within(plus, float(h.trace())), plus.to_row()
    # Hutchinson's se against its exact standard deviation sqrt(2 (|H|_F^2 - sum H_ii^2) / probes)
    theory = math.sqrt(2 * (float((h ** 2).sum()) - float((h.diagonal() ** 2).sum())) / 60)
    assert 0.7 < plain.se / theory < 1.4
    assert plus.se < plain.se  # the point of Hutch++: outliers are taken exactly


@pytest.mark.parametrize("estimator", [hutchinson, hutch_plus_plus])
def test_trace_standard_errors_are_calibrated(tiny, estimator):
    """Over 100 seeds, z = (estimate - exact) / se behaves like a standard normal."""
    model, data, exact = tiny
    op = hessian_operator(model, data, component="1:1")
    z = np.array([(e.value - float(exact["1:1"].trace())) / e.se
                  for e in (estimator(op, 30, seed=seed) for seed in range(100))])
    assert 0.9 <= np.mean(np.abs(z) < 2) and np.mean(np.abs(z) < 3) >= 0.97
    assert 0.8 < z.std() < 1.25 and abs(z.mean()) < 0.3


def test_hessian_trace_front_end_and_its_row(tiny):
    model, data, exact = tiny
    est = hessian_trace(model, data, component="1:1", n_probes=30, estimator="hutchinson", seed=3)
    assert within(est, float(exact["1:1"].trace()))
    row = est.to_row()
    for key in ("quantity", "component", "n_coords", "estimator", "value", "se", "n_hvp", "seconds",
                "n_probes", "n_batches", "se_data", "se_total"):
        assert key in row
    assert row["component"] == "1:1" and row["n_coords"] == 81 and row["quantity"] == "hessian_trace"
    assert all(np.isscalar(v) or v is None for v in row.values())
    with pytest.raises(ValueError, match="unknown trace estimator"):
        hessian_trace(model, data, estimator="xtrace")


def test_ratio_se_reduces_to_the_standard_error_of_the_mean():
    x = np.array([1.0, 4.0, 2.0, 7.0])
    assert ratio_se(x, np.ones(4)) == pytest.approx(x.std(ddof=1) / 2)
    assert ratio_se(2 * x, 2 * np.ones(4)) == pytest.approx(x.std(ddof=1) / 2)


# --- extreme eigenvalues --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", COMPONENTS)
def test_lanczos_extreme_eigenvalues_within_their_bounds(tiny, spec):
    model, data, exact = tiny
    ev = torch.linalg.eigvalsh(exact[spec])
    top, bottom = hessian_eigenvalues(model, data, component=spec, steps=40)
    scale = float(ev.abs().max())
    for est, true in ((top, ev[-1]), (bottom, ev[0])):
        assert est.error_kind == "residual bound" and est.n_hvp == 40
        assert abs(est.value - float(true)) <= est.se + 1e-9 * scale
        assert est.se < 1e-3 * scale


def test_lanczos_stops_on_an_invariant_subspace():
    op = DenseOperator(np.diag([3.0, 3.0, 1.0, 1.0, -2.0]))  # three distinct eigenvalues
    top, bottom = extreme_eigenvalues(op, steps=5)
    assert top.value == pytest.approx(3.0) and bottom.value == pytest.approx(-2.0)
    assert top.diagnostics["lanczos_steps_taken"] == 3


# --- rank -----------------------------------------------------------------------------------------


def test_jackson_damped_step_approximates_the_indicator():
    degree = 200
    g = jackson_coefficients(degree)
    assert g[0] == pytest.approx(1.0) and np.all(np.diff(g) <= 1e-12) and g[-1] >= -1e-12
    psi = chebyshev.chebval(np.linspace(-1, 1, 2001), g * step_coefficients(0.2, 1.0, degree))
    x = np.linspace(-1, 1, 2001)
    assert psi.min() > -1e-9 and psi.max() < 1 + 1e-9
    assert np.abs(psi - (x > 0.2))[np.abs(x - 0.2) > 0.1].max() < 1e-2


def test_chebyshev_moments_by_doubling_equal_the_plain_recurrence():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    op = DenseOperator(q @ np.diag(rng.uniform(-2, 3, 30)) @ q.T)
    lo, hi, degree = -2.5, 3.5, 9
    mu, growth = chebyshev_moments(op, lo, hi, degree, 4, seed=1)
    a = (op.matrix - (hi + lo) / 2 * torch.eye(30, dtype=torch.float64)) / ((hi - lo) / 2)
    v = torch.randint(0, 2, (30, 4), generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    plain, w_prev, w = [], v, a @ v
    plain += [(v * v).sum(0), (v * w).sum(0)]
    for _ in range(degree - 1):
        w_prev, w = w, 2 * a @ w - w_prev
        plain.append((v * w).sum(0))
    np.testing.assert_allclose(mu, torch.stack(plain).numpy(), atol=1e-9)
    assert growth < 1e-9
    assert op.n_products == math.ceil(degree / 2) * 4


def _rank_checks(estimates, ev):
    """Each threshold: within 3 se of the smoothed count sum psi(lambda_i), and within 3 se of the
    exact count once the eigenvalues inside the reported transition window are allowed for."""
    clear = 0
    for est in estimates:
        t, p = est.params["threshold"], est.params
        c, h = (p["range_hi"] + p["range_lo"]) / 2, (p["range_hi"] - p["range_lo"]) / 2
        coefs = jackson_coefficients(p["degree"]) * step_coefficients((t - c) / h, 1.0, p["degree"])
        smoothed = float(chebyshev.chebval((ev - c) / h, coefs).sum())
        exact = int((ev > t).sum())
        in_window = int(((ev > est.diagnostics["transition_lo"]) & (ev < est.diagnostics["transition_hi"])).sum())
        assert abs(est.value - smoothed) <= 3 * est.se, (t, est.value, smoothed, est.se)
        assert abs(est.value - exact) <= 3 * est.se + in_window, (t, est.value, exact, est.se, in_window)
        clear += in_window == 0
    return clear


def gap_thresholds(ev: np.ndarray, k: int = 3) -> list[float]:
    """Midpoints of the k widest gaps between consecutive eigenvalues above 5% of the largest."""
    top = ev[ev > 0.05 * ev[-1]]
    widest = np.argsort(np.diff(top))[-k:]
    return sorted(float(top[i] + top[i + 1]) / 2 for i in widest)


@pytest.mark.slow
@pytest.mark.parametrize("spec", COMPONENTS)
def test_chebyshev_rank_matches_the_exact_rank(tiny, spec):
    model, data, exact = tiny
    ev = torch.linalg.eigvalsh(exact[spec]).numpy()
    thresholds = [0.02 * ev[-1], 0.1 * ev[-1], *gap_thresholds(ev)]
    estimates = hessian_rank(model, data, thresholds, component=spec, degree=300, n_probes=20)
    assert [e.params["range_mode"] for e in estimates] == ["adaptive"] * 5
    assert estimates[0].n_hvp == 150 * 20 + 30
    assert _rank_checks(estimates, ev) >= 2  # in gaps wider than the window: within 3 se of the exact rank
    assert not any(e.diagnostics["range_exceeded"] for e in estimates)


def test_hessian_rank_by_slq(tiny):
    model, data, exact = tiny
    ev = torch.linalg.eigvalsh(exact["1:1"]).numpy()
    (est,) = hessian_rank(model, data, [0.1 * ev[-1]], component="1:1", method="slq", degree=200, n_probes=10)
    assert est.estimator == "slq" and est.params["steps"] == 100
    assert est.n_hvp <= 81 * 10  # Lanczos stops at n = 81 steps, or earlier on an invariant subspace
    assert abs(est.value - (ev > 0.1 * ev[-1]).sum()) <= 3 * est.se + 1
    with pytest.raises(ValueError, match="unknown rank method"):
        hessian_rank(model, data, [0.1], method="kpm")


def test_chebyshev_rank_two_sided_and_fixed_range(tiny):
    model, data, exact = tiny
    ev = torch.linalg.eigvalsh(exact["1:1"]).numpy()
    op = hessian_operator(model, data, component="1:1")
    width = ev[-1] - ev[0]
    fixed = (ev[0] - 0.05 * width, ev[-1] + 0.05 * width)
    t = 0.2 * ev[-1]
    (est,) = chebyshev_rank(op, [t], degree=300, n_probes=20, spectrum_range=fixed, two_sided=True)
    assert est.params["range_mode"] == "fixed" and not est.diagnostics["range_exceeded"]
    assert abs(est.value - (np.abs(ev) > t).sum()) <= 3 * est.se + 1


def test_a_range_that_misses_eigenvalues_is_warned_about(tiny):
    model, data, exact = tiny
    ev = torch.linalg.eigvalsh(exact["1:1"]).numpy()
    op = hessian_operator(model, data, component="1:1")
    narrow = (ev[0], 0.7 * ev[-1])
    with pytest.warns(SpectrumRangeWarning, match="outside the fixed"):
        chebyshev_rank(op, [0.1 * ev[-1]], degree=50, n_probes=4, spectrum_range=narrow)
    with pytest.warns(SpectrumRangeWarning, match="grew by") as record:
        (est,) = chebyshev_rank(op, [0.1 * ev[-1]], degree=50, n_probes=4, spectrum_range=narrow,
                                range_check_steps=0)
    assert est.diagnostics["range_exceeded"] and len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chebyshev_rank(op, [0.1 * ev[-1]], degree=50, n_probes=4)  # adaptive: no warning


@pytest.mark.slow
@pytest.mark.parametrize("spec", COMPONENTS)
def test_slq_rank_and_density(tiny, spec):
    model, data, exact = tiny
    ev = torch.linalg.eigvalsh(exact[spec]).numpy()
    op = hessian_operator(model, data, component=spec)
    thresholds = [f * ev[-1] for f in (0.03, 0.1, 0.3)]
    for est in slq_rank(op, thresholds, steps=100, n_probes=20):
        exact_count = (ev > est.params["threshold"]).sum()
        assert abs(est.value - exact_count) <= 3 * est.se + 1, (est.value, exact_count, est.se)
    dens = spectral_density(op, steps=30, n_probes=4)
    np.testing.assert_allclose(dens.weights.sum(1), op.n)
    grid = np.linspace(ev[0] - 1, ev[-1] + 1, 4001)
    assert np.trapezoid(dens.density(grid, 0.05), grid) == pytest.approx(op.n, rel=1e-3)


def test_rank_on_a_known_spectrum_with_outliers():
    rng = np.random.default_rng(1)
    spectrum = np.concatenate([np.zeros(300), rng.uniform(0.5, 1.0, 40), [20.0, 35.0]])
    q, _ = np.linalg.qr(rng.normal(size=(342, 342)))
    op = DenseOperator(q @ np.diag(spectrum) @ q.T)
    estimates = chebyshev_rank(op, [0.25, 2.0, 25.0], degree=400, n_probes=20)
    assert _rank_checks(estimates, spectrum) == 3  # every threshold in a gap wider than the window
    assert all(e.diagnostics["resolved"] for e in estimates)
    # At low degree the window around 0.25 reaches the 300 zero eigenvalues: flagged, and visibly biased.
    (coarse,) = chebyshev_rank(op, [0.25], degree=40, n_probes=20)
    assert not coarse.diagnostics["resolved"]
    assert coarse.value - 42 > 3 * coarse.se
    (slq,) = slq_rank(op, [0.25], steps=60, n_probes=20)
    assert abs(slq.value - 42) <= 3 * slq.se + 1


# --- Fisher information ---------------------------------------------------------------------------


def softmax_regression(zero: bool = False) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(5, 4).double()
    if zero:
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
    return model, torch.randn(512, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["analytic", "sampled"])
@pytest.mark.parametrize("estimator", ["hutchinson", "hutch++"])
def test_fim_trace_of_softmax_regression_matches_the_closed_form(method, estimator):
    """F = mean_i (diag p_i - p_i p_i^T) (x) [x_i; 1][x_i; 1]^T, so tr F = mean_i (1 - |p_i|^2)(|x_i|^2 + 1)."""
    model, x = softmax_regression()
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    purity = 1 - (p ** 2).sum(-1)
    for component, extra in ((None, 1.0), ("weight", 0.0)):
        exact = float((purity * ((x ** 2).sum(-1) + extra)).mean())
        est = fim_trace(model, list(x.split(64)), component=component, method=method, estimator=estimator,
                        n_probes=30)
        assert within(est, exact), (component, est.value, exact, est.se)
        assert est.quantity == "fim_trace" and est.params["n_contexts"] == 512


def test_fim_trace_population_value_with_context_noise():
    """W = 0: p is uniform for every x ~ N(0, I_5): tr F = (1 - 1/4) E(|x|^2 + 1) = 4.5."""
    model, x = softmax_regression(zero=True)
    est = fim_trace(model, list(x.split(32)), n_probes=30, estimator="hutchinson")
    assert est.se == pytest.approx(math.hypot(est.diagnostics["se_probe"], est.diagnostics["se_data"]))
    assert est.diagnostics["se_data"] > 0
    assert within(est, 4.5)
    with pytest.warns(UserWarning, match="one batch of contexts"):
        fim_trace(model, [x], n_probes=6)


def tiny_lm(seed: int) -> Transformer:
    cfg = ModelConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_vocab=5, seed=seed, init_range=0.5)
    return Transformer(cfg).double()


def exact_lm_fisher_trace(model: Transformer, sampler: Transformer, spec) -> float:
    """E_{x ~ sampler}[mean_t tr F_t(x_<=t)] by enumerating every sequence BOS x1 x2 x3 (vocab 5)."""
    seqs = torch.tensor([[0, *rest] for rest in itertools.product(range(5), repeat=3)])
    prob = sequence_log_prob(sampler, seqs, prompt_len=1).exp()
    params = {n: p.detach() for n, p in model.named_parameters()}
    comp = resolve_component(model, spec)
    jac = torch.func.jacrev(lambda ps: functional_call(model, ps, (seqs,)))(params)  # [seq, pos, vocab, *param]
    p = torch.softmax(model(seqs), -1).detach()
    fisher = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    trace = torch.zeros(len(seqs), dtype=torch.float64)
    for name, j in jac.items():
        j = (j * comp.mask(name, params[name])).flatten(3)
        trace += torch.einsum("spkl,spkn,spln->s", fisher, j, j) / seqs.shape[1]
    return float((prob * trace).sum())


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["0:1", None])
def test_fim_trace_on_self_sampled_sequences_matches_enumeration(spec):
    model = tiny_lm(seed=3)
    est = fim_trace(model, component=spec, n_seqs=96, seq_len=4, batch_size=16, n_probes=30, seed=0)
    assert est.params["contexts"] == "sampled" and est.params["n_contexts"] == 96
    assert within(est, exact_lm_fisher_trace(model, model, spec)), est.to_row()


@pytest.mark.slow
def test_fim_with_contexts_kept_from_another_checkpoint():
    old, new = tiny_lm(seed=3), tiny_lm(seed=3)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.15 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                      dtype=p.dtype))
    contexts = sample_contexts(old, 128, 4, batch_size=16, seed=5, source="old")
    kept = fim_trace(new, contexts, n_probes=30)  # conditional Fisher under the old contexts
    assert within(kept, exact_lm_fisher_trace(new, old, None))
    reweighted = fim_trace(new, contexts, n_probes=30, reweight=True)  # the new model's own contexts
    assert 0.3 < reweighted.diagnostics["ess_fraction"] < 1.0
    assert within(reweighted, exact_lm_fisher_trace(new, new, None))
    assert reweighted.params["contexts_source"] == "old"


def test_sampled_contexts_are_reproducible_and_carry_their_log_probability():
    model = tiny_lm(seed=3)
    a = sample_contexts(model, 10, 4, batch_size=4, seed=2)
    b = sample_contexts(model, 10, 4, batch_size=4, seed=2)
    assert isinstance(a, FisherContexts) and a.tokens.shape == (10, 4) and torch.equal(a.tokens, b.tokens)
    assert (a.tokens[:, 0] == 0).all()
    torch.testing.assert_close(a.log_q, sequence_log_prob(model, a.tokens, 1))
    with pytest.raises(ValueError, match="reweight=True needs FisherContexts"):
        fim_trace(model, [a.tokens], reweight=True)
