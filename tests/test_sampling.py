"""The projected SGLD kernel and estimate_llc: projection, reproducibility, failures, losses, diagnostics."""

import copy
import math

import numpy as np
import pytest
import torch

from rllc.models import ModelConfig, Transformer
from rllc.models.components import resolve_component
from rllc.sampling import (ChainDivergedError, NonFiniteDataError, ProjectedSGLD, TeacherTargets, calibrate,
                           chain_seed, estimate_llc, next_token_loss, teacher_loss)
from rllc.sampling.toys import make_linear_regression


@pytest.fixture(scope="module")
def lm():
    """A 2-layer attention-only model trained briefly on repeated random sequences, and its data."""
    cfg = ModelConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=40, seed=0)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    half = torch.randint(0, 40, (256, 8), generator=g)
    tokens = torch.cat([half, half], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = next_token_loss(model, tokens[torch.randint(0, 256, (32,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, list(tokens.split(16))


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- projection and reproducibility ------------------------------------------------------------


def test_projection_is_exact_and_only_the_component_has_gradients(lm):
    model, batches = lm
    w_star = state_of(model)
    comp = resolve_component(model, "1:2")
    seen = []

    def loss_fn(m, batch):
        seen.append({n for n, p in m.named_parameters() if p.requires_grad})
        return next_token_loss(m, batch)

    with ProjectedSGLD(model, comp, loss_fn, epsilon=1e-3, nbeta=30, gamma=200, chain_seeds=[1, 2]) as kernel:
        for t in range(5):
            for c in range(2):
                kernel.step(c, batches[t])
        kernel.load(1)
        moved = state_of(model)
    assert seen[0] == set(comp.param_names)
    params = dict(model.named_parameters())
    for name, before in w_star.items():
        mask = comp.mask(name, params[name]) if name in params else torch.zeros_like(before, dtype=torch.bool)
        after = moved[name]
        # Outside the component: bit for bit (compare raw bits, not values).
        assert torch.equal(after[~mask].view(torch.int32), before[~mask].view(torch.int32)), name
        if mask.any():
            assert (after[mask] != before[mask]).float().mean() > 0.99, name
    # On exit: w* restored, requires_grad and .grad as before.
    for name, value in state_of(model).items():
        assert torch.equal(value, w_star[name])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_noise_contract_full_shape_draws_in_parameter_order(lm):
    """Documented for the fast path: chain c's generator draws one full-shape normal per touched parameter."""
    model, batches = lm
    eps = 1e-2
    zero_loss = lambda m, b: sum(p.sum() for p in m.parameters()) * 0.0
    for head in ("0:1", "1:1"):  # same stream for heads of different layers with equal shapes
        comp = resolve_component(model, head)
        with ProjectedSGLD(model, comp, zero_loss, epsilon=eps, nbeta=30, gamma=0.0,
                           chain_seeds=[chain_seed(7, 3)]) as kernel:
            kernel.step(0, batches[0])
            moved = [w.clone() for w in kernel.block.coordinates(0)]
            w_star = kernel.w_star
        g = torch.Generator().manual_seed(chain_seed(7, 3))
        params = dict(model.named_parameters())
        for (name, index), w, w0 in zip(comp.entries, moved, w_star):
            noise = torch.randn(params[name].shape, generator=g)[index]
            torch.testing.assert_close(w - w0, math.sqrt(eps) * noise, rtol=1e-5, atol=1e-7)


def test_same_seed_same_bits_other_seed_other_draws(lm):
    model, batches = lm
    kw = dict(component="0:3", chains=2, draws=15, paired=True)
    a = estimate_llc(model, batches, seed=3, **kw)
    b = estimate_llc(model, batches, seed=3, **kw)
    c = estimate_llc(model, batches, seed=4, **kw)
    assert np.array_equal(a.loss_trace, b.loss_trace) and np.array_equal(a.per_chain, b.per_chain)
    assert np.array_equal(a.diagnostics["distance_trace"], b.diagnostics["distance_trace"])
    assert not np.array_equal(a.loss_trace[:, 1:], c.loss_trace[:, 1:])
    # Draw 0 is w* itself (burn_in = 0), for every chain and seed.
    assert np.all(a.loss_trace[:, 0] == c.loss_trace[0, 0])
    assert chain_seed(0, 1) != chain_seed(1, 0)
    # Burn-in is the first steps of the same chains; draws are the steps after it.
    warm = estimate_llc(model, batches, seed=3, **dict(kw, draws=10, burn_in=5))
    whole = np.concatenate([warm.diagnostics["burn_in_loss_trace"], warm.loss_trace], axis=1)
    assert np.array_equal(whole, a.loss_trace)
    paired_draws = a.loss_trace[:, 5:] - a.diagnostics["loss_at_w_star_trace"][5:]
    np.testing.assert_allclose(warm.per_chain, 30.0 * paired_draws.mean(axis=1), rtol=1e-12)


def test_estimate_leaves_model_untouched_and_reports_everything(lm):
    model, batches = lm
    before = state_of(model)
    est = estimate_llc(model, batches, component=["1:0", "1:1"], chains=3, draws=20, burn_in=5, paired=True)
    for name, value in state_of(model).items():
        assert torch.equal(value, before[name])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert est.loss_trace.shape == (3, 20) and est.per_chain.shape == (3,)
    assert est.diagnostics["burn_in_loss_trace"].shape == (3, 5)
    assert est.n_coords == 2 * (4 * 32 * 8 + 3 * 8)
    # The reference loss: the mean at w* over the draws' own batches (steps 5..24 of the cycled stream).
    draw_batches = [batches[t % len(batches)] for t in range(5, 25)]
    assert est.init_loss == pytest.approx(np.mean([float(next_token_loss(model, b).detach()) for b in draw_batches]))
    row = est.to_row()
    for key in ("component", "n_coords", "value", "std", "se", "epsilon", "nbeta", "gamma", "chains",
                "draws", "burn_in", "seed", "rhat", "ess", "mala_accept", "distance_max", "init_loss",
                "standard_value", "paired_value", "standard_se", "paired_se", "seconds_per_step"):
        assert key in row, key
    assert row["component"] == "1:0+1:1" and row["estimator"] == "paired" and row["value"] == est.mean
    assert 0 < row["mala_accept"] <= 1 and row["distance_max"] > 0


# --- failures are errors, with names ---------------------------------------------------------------


def test_huge_epsilon_raises_chain_diverged(lm):
    model, batches = lm
    before = state_of(model)
    with pytest.raises(ChainDivergedError) as info:
        estimate_llc(model, batches, component="1:2", epsilon=10.0, chains=2, draws=50)
    err = info.value
    assert err.component == "1:2" and err.chain == 0 and 0 < err.step < 50
    assert "smaller epsilon" in str(err) and "larger gamma" in str(err)
    for name, value in state_of(model).items():  # restored even on failure
        assert torch.equal(value, before[name])


def test_nan_in_data_is_caught_and_named():
    problem = make_linear_regression(d=3, n=60, n_batches=3)
    x, y = problem.data[2]
    x = x.clone()
    x[4, 1] = float("nan")
    data = problem.data[:2] + [(x, y)]
    with pytest.raises(NonFiniteDataError, match=r"batch 2 of the data field \[0\] .*1 NaN.*index \(4, 1\)"):
        estimate_llc(problem.model, data, loss_fn=problem.loss_fn, chains=1, draws=5)
    broken = copy.deepcopy(problem.model)
    with torch.no_grad():
        broken.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="parameter weight .* NaN/Inf"):
        estimate_llc(broken, problem.data, loss_fn=problem.loss_fn, chains=1, draws=5)


def test_nan_teacher_is_caught_and_named(lm):
    model, batches = lm
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        teacher.unembed.b_U[3] = float("nan")
    with pytest.raises(NonFiniteDataError, match="teacher"):
        estimate_llc(model, batches, teacher=teacher, chains=1, draws=2)


# --- data refinement by a teacher ----------------------------------------------------------------


def test_teacher_loss_is_minimized_at_the_teacher(lm):
    model, batches = lm
    targets = TeacherTargets(copy.deepcopy(model))(batches[0])
    loss = teacher_loss(model, targets)
    loss.backward()
    # Cross-entropy against one's own distribution = entropy, and w* is a critical point of it.
    log_p = torch.log_softmax(model(batches[0]), -1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)
    assert max(float(p.grad.abs().max()) for p in model.parameters()) < 1e-5
    model.zero_grad(set_to_none=True)
    est = estimate_llc(model, batches, teacher=copy.deepcopy(model), component="1:1", chains=2, draws=30)
    assert est.hyperparameters["data_refinement"] == "teacher"
    assert est.init_loss == pytest.approx(entropy.item(), rel=0.2)
    assert est.mean > 0 and math.isfinite(est.std)


# --- the paired estimator ----------------------------------------------------------------------------


def test_paired_estimator_same_target_far_less_noise():
    """Minibatch SGLD on linear regression: L_B(w*) varies from batch to batch; pairing removes it."""
    problem = make_linear_regression(d=6, n=2000, n_batches=40, seed=1)
    est = estimate_llc(problem.model, problem.data, loss_fn=problem.loss_fn, epsilon=1e-4, nbeta=1000.0,
                       gamma=1.0, chains=4, draws=800, burn_in=100, paired=True)
    std, paired = est.diagnostics["standard"], est.diagnostics["paired"]
    # Per draw, the standard estimator carries nbeta * sd(L_B(w*)) ~ 1000 * 0.5 * sqrt(2/50) = 100; the
    # paired one only nbeta * (w - w*) . grad L_B(w*) ~ 10 and the posterior spread ~ sqrt(d/2).
    assert paired["draw_std"] < std["draw_std"] / 5
    assert paired["se"] < std["se"] / 4
    # Same expectation: they agree within their combined standard error (4 sigma); the standard one also
    # carries the error of L_init, a mean over only 8 of the 40 batches.
    with torch.no_grad():
        batch_losses = [float(problem.loss_fn(problem.model, b)) for b in problem.data]
    init_se = 1000.0 * np.std(batch_losses) / math.sqrt(8)
    assert abs(paired["mean"] - std["mean"]) < 4 * math.sqrt(paired["se"] ** 2 + std["se"] ** 2 + init_se ** 2)
    # The chains share the batch stream, so the chain spread does not see the batch noise at all.
    assert std["std"] == pytest.approx(paired["std"])
    assert est.mean == paired["mean"] and est.diagnostics["estimator"] == "paired"
    assert est.diagnostics["loss_at_w_star_trace"].shape == (800,)


# --- diagnostics ---------------------------------------------------------------------------------------


def test_mala_acceptance_falls_as_epsilon_grows():
    """Curvatures nbeta*h ~ 230..2030: eps = 1.5e-3 is near the stability limit 2/(eps/2 * a) and biased."""
    problem = make_linear_regression(d=4, n=400, seed=2)
    accept = [estimate_llc(problem.model, problem.data, loss_fn=problem.loss_fn, epsilon=eps, nbeta=1000.0,
                           gamma=1.0, chains=2, draws=300).diagnostics["mala_accept"]
              for eps in (1e-5, 3e-4, 1.5e-3)]
    assert accept[0] > 0.99 and 0.9 < accept[1] < 0.99 and accept[2] < 0.8


# --- calibration -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_calibrate_finds_the_plateau_and_flags_divergence(tmp_path):
    """eps 3e-5 mixes slowly, 1e-3 is biased (+50%: near the stability limit), 3e-3 diverges."""
    problem = make_linear_regression(d=4, n=400, seed=3)
    df = calibrate(problem.model, problem.data, loss_fn=problem.loss_fn, epsilons=[3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
                   nbetas=[1000.0], gammas=[1.0], chains=3, draws=2000, burn_in=100,
                   plot=tmp_path / "cal.png")
    assert len(df) == 5 and {"healthy", "plateau", "recommended", "rhat", "ess", "mala_accept"} <= set(df.columns)
    by_eps = df.set_index("epsilon")
    assert by_eps.at[3e-3, "status"] == "diverged" and "diverged" in by_eps.at[3e-3, "error"]
    assert not by_eps.at[3e-3, "healthy"] and by_eps.at[3e-3, "diverged_step"] > 0
    assert by_eps.at[1e-4, "plateau"] and by_eps.at[3e-4, "plateau"] and not by_eps.at[1e-3, "plateau"]
    rec = df.attrs["recommendation"]
    assert df["recommended"].sum() == 1 and rec["epsilon"] == 3e-4  # the largest step on the plateau
    truth = problem.expected_llc(rec["nbeta"], rec["gamma"])
    assert abs(rec["value"] - truth) < 0.15 * truth
    assert (tmp_path / "cal.png").stat().st_size > 10_000
