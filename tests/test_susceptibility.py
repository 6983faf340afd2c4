"""Observables along the chains, susceptibilities and the Bayesian influence function
(rllc.sampling.observables, rllc.sampling.susceptibility): the batched head sampler against the generic
back-end on the same seeds, a known answer where the posterior is exactly Gaussian, and devinterp 2.0.1's
post-processing on the very same draws."""

import numpy as np
import pytest
import torch
from torch import nn

from rllc.models.components import resolve_component
from rllc.models.config import ModelConfig
from rllc.models.transformer import Transformer
from rllc.sampling import estimate_llcs
from rllc.sampling.observables import TokenLossObserver
from rllc.sampling.susceptibility import bif, susceptibilities

SGLD = dict(chains=2, draws=12, burn_in=2, epsilon=1e-3, nbeta=10.0, gamma=100.0)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=12, d_vocab=20)).eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 20, (4, 12), generator=g) for _ in range(5)]
    probes = {"train": torch.randint(0, 20, (3, 12), generator=g), "code": torch.randint(0, 20, (2, 12), generator=g)}
    return model, data, probes


def test_batched_heads_observe_what_the_generic_backend_observes(small):
    """Per-token probe losses at every draw, for heads of both layers, equal on the same seeds."""
    model, data, probes = small
    kept = {}
    for fast in (True, False):
        obs = TokenLossObserver(probes, sampling="train", burn_in=SGLD["burn_in"], keep_draws=True)
        estimate_llcs(model, data, ["0:1", "1:0"], fast=fast, observer=obs, **SGLD)
        kept[fast] = obs
    for head in ("0:1", "1:0"):
        for probe in probes:
            a, b = kept[True].draws(head, probe), kept[False].draws(head, probe)
            assert a.shape == (2, SGLD["draws"], probes[probe].shape[0], 11)
            np.testing.assert_allclose(a, b, rtol=0, atol=5e-6)
    # the streamed sums are the sums of the kept draws
    m = kept[True].chains("0:1")[1]
    draws = kept[True].draws("0:1", "code")[1]
    phi = kept[True].draws("0:1", "train")[1].mean(axis=(1, 2))
    np.testing.assert_allclose(m.loss["code"], draws.sum(0))
    np.testing.assert_allclose(m.phi_loss["code"], (phi[:, None, None] * draws).sum(0))
    assert m.n == SGLD["draws"] and m.phi2 == pytest.approx((phi ** 2).sum())


def test_the_first_draw_is_w_star(small):
    """With no burn-in, draw 0 is w* itself: its observed losses are the model's at w*."""
    model, data, probes = small
    obs = TokenLossObserver(probes, keep_draws=True)
    estimate_llcs(model, data, ["1:1"], observer=obs, **dict(SGLD, burn_in=0))
    with torch.no_grad():
        at_w_star = obs.token_loss_fn(model, probes["code"]).double().numpy()
    np.testing.assert_allclose(obs.draws("1:1", "code")[:, 0], np.broadcast_to(at_w_star, (2, *at_w_star.shape)),
                               atol=1e-6)


# --- a known answer: SGLD on a quadratic ------------------------------------------------

A = np.array([1.0, 2.0, 0.5, 1.5])  # curvatures of the sampling loss L(w) = 1/2 sum a_i (w_i - mu_i)^2
B = np.array([[0.5, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 1.0]])  # probe losses 1/2 sum b_ji x_i^2 + c_j . x
C = np.array([[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, 0.0, -0.5]])
MU = np.array([0.3, -0.2, 0.1, 0.4])


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(MU, dtype=torch.float64))

    def losses(self) -> torch.Tensor:  # [L, probe 1, probe 2]
        x = self.w - torch.tensor(MU, dtype=torch.float64)
        sq = x * x
        return torch.stack([0.5 * (torch.tensor(A) * sq).sum(), *(0.5 * (torch.tensor(B) * sq).sum(1)
                                                                    + torch.tensor(C) @ x)])


def token_losses(model: Quadratic, tokens: torch.Tensor) -> torch.Tensor:
    """Token id j at position p+1 of a row names the function whose value is that token's loss."""
    return model.losses()[tokens[:, 1:]]


def exact_chi(coords: list[int], s: np.ndarray) -> np.ndarray:
    """chi_C of the two probe functions when x ~ N(0, diag(s)) on `coords` (0 elsewhere) for C and on
    every coordinate for F, with L0 = L(w*) = 0: E_C[pt^2] - E_C[pt l] - E_C[pt] (E_F[pt] - E_F[l])."""
    def moments(idx):
        mask = np.zeros(len(A), bool)
        mask[idx] = True
        v = np.where(mask, s, 0.0)
        e_x2x2 = np.outer(v, v) + 2 * np.diag(v * v)  # E[x_i^2 x_k^2]
        e_pt = 0.5 * A @ v
        e_pt2 = 0.25 * A @ e_x2x2 @ A
        e_l = 0.5 * B @ v
        e_pt_l = 0.25 * B @ e_x2x2 @ A  # the linear terms are odd: zero against the even pt
        return e_pt, e_pt2, e_l, e_pt_l
    e_pt, e_pt2, e_l, e_pt_l = moments(coords)
    f_pt, _, f_l, _ = moments(list(range(len(A))))
    return e_pt2 - e_pt_l - e_pt * (f_pt - f_l)


@pytest.mark.slow
def test_susceptibilities_match_the_exact_gaussian_answer():
    """Full-batch SGLD on a quadratic is a Gaussian AR(1) chain: per coordinate the stationary variance is
    eps / (1 - (1 - eps kappa / 2)^2), kappa = nbeta a_i + gamma, so chi has a closed form. The estimate
    (4 chains x 6,000 draws after burn-in) agrees within 4 of its standard errors, for a component of two
    coordinates, a single coordinate and the full model (Var(pt) - Cov(pt, l))."""
    eps, nbeta, gamma = 0.05, 4.0, 2.0
    kappa = nbeta * A + gamma
    s = eps / (1 - (1 - eps * kappa / 2) ** 2)
    model = Quadratic()
    probes = {"sampling": torch.tensor([[0, 0]]), "probe": torch.tensor([[0, 1, 2]])}
    comps = {"w0+w1": {"w": (slice(0, 2),)}, "w2": {"w": (slice(2, 3),)}}
    specs = [resolve_component(model, spec, name=name) for name, spec in comps.items()]
    r = susceptibilities(model, [torch.zeros(1)], probes, sampling_probe="sampling", components=specs,
                         token_loss_fn=token_losses, loss_fn=lambda m, batch: m.losses()[0], fast=False,
                         chains=4, draws=6000, burn_in=100, epsilon=eps, nbeta=nbeta, gamma=gamma, seed=3)
    assert r.init_loss == 0.0
    for name, coords in (("w0+w1", [0, 1]), ("w2", [2]), ("model", [0, 1, 2, 3])):
        got, se = r.values[name]["probe"][0], r.se[name]["probe"][0]
        want = exact_chi(coords, s)
        assert np.all(np.abs(got - want) <= 4 * se + 1e-4), (name, got, want, se)
    table = r.table()
    assert list(table.columns) == ["component", "probe", "sequence", "position", "token", "value", "se"]
    assert len(table) == 6 and set(table["token"]) == {1, 2}
    assert set(r.summary()["component"]) == {"w0+w1", "w2", "model"}  # the reference is reported too


# --- devinterp 2.0.1's post-processing on the same draws --------------------------------

def _devinterp_tree(obs: TokenLossObserver, component: str, probes: dict, init_loss: float):
    import xarray as xr

    data = {"init_loss": (("chain",), np.full(len(obs.chains(component)), init_loss))}
    for name, tokens in probes.items():
        data[f"loss_{name}"] = (("chain", "draw", f"batch_{name}", "token_pos"), obs.draws(component, name))
        data[f"input_ids_{name}"] = ((f"batch_{name}", "token"), tokens.numpy())
    return xr.DataTree(xr.Dataset(data))


def test_susceptibilities_equal_devinterps_on_the_same_draws(small):
    """devinterp's compute_susceptibilities on the per-token losses our chains observed gives our values."""
    from devinterp.slt.susceptibilities import compute_susceptibilities

    model, data, probes = small
    obs = TokenLossObserver(probes, sampling="train", burn_in=SGLD["burn_in"], keep_draws=True)
    estimate_llcs(model, data, ["0:0", "1:1", "model"], observer=obs, **SGLD)
    from rllc.sampling.susceptibility import _pooled, chi_from_moments

    init_loss = 3.1
    trees = {"full": _devinterp_tree(obs, "model", probes, init_loss),
             "0:0": _devinterp_tree(obs, "0:0", probes, init_loss), "1:1": _devinterp_tree(obs, "1:1", probes, init_loss)}
    theirs = compute_susceptibilities(trees, "train")["susceptibilities"].dataset
    full = _pooled(obs.chains("model"))
    for wr in ("0:0", "1:1"):
        ours = chi_from_moments(_pooled(obs.chains(wr)), full, "code", init_loss)
        values = theirs["sus"].sel(wr=wr).values.reshape(ours.shape)  # one probe: code (train left out)
        np.testing.assert_allclose(ours, values, rtol=1e-9, atol=1e-12)


def test_bif_equals_devinterps_on_the_same_draws(small):
    """devinterp's compute_bif (token-wise, chains stacked) on our chains' draws gives our BIF."""
    from devinterp.slt.bif import compute_bif

    model, data, probes = small
    query, train = probes["code"], probes["train"]
    for correlation in (True, False):
        ours = bif(model, data, query, train, component="1:0", correlation=correlation, **SGLD)
        obs = TokenLossObserver({"query": query, "train": train}, burn_in=SGLD["burn_in"], keep_draws=True)
        estimate_llcs(model, data, ["1:0"], observer=obs, **SGLD)
        tree = _devinterp_tree(obs, "1:0", {"query": query, "train": train}, 0.0)
        theirs = compute_bif(tree, compute_covariance=not correlation, batch_index_range_1=range(2),
                             batch_index_range_2=range(2, 5), device="cpu")
        np.testing.assert_allclose(ours.values, theirs["influences"].values, rtol=2e-4, atol=2e-6)
        assert ours.se.shape == ours.values.shape and np.all(np.isfinite(ours.se))


def test_antithetic_pairs_take_their_standard_errors_over_pair_means(small):
    """With antithetic chain pairs the two chains of a pair are not independent: the susceptibilities' and the
    BIF's standard errors are the spread of the pair means (as the LLC's are), not of the chains."""
    from rllc.sampling.susceptibility import FULL, _chain_values

    model, data, probes = small
    kw = dict(SGLD, chains=4, antithetic=True)
    res = susceptibilities(model, data, probes, sampling_probe="train", components=["0:1"], seed=0, **kw)
    obs = TokenLossObserver(probes, sampling="train", burn_in=SGLD["burn_in"])
    estimate_llcs(model, data, ["0:1", FULL], observer=obs, seed=0, **kw)  # the same chains again
    per_chain = _chain_values(obs, "0:1", "code", res.init_loss)
    pairs = (per_chain[0::2] + per_chain[1::2]) / 2
    np.testing.assert_allclose(res.se["0:1"]["code"], pairs.std(axis=0, ddof=1) / np.sqrt(2), rtol=1e-10)
    means = pairs.mean(axis=(1, 2))
    assert res.mean_se["0:1"]["code"] == pytest.approx(means.std(ddof=1) / np.sqrt(2), rel=1e-10)
    influence = bif(model, data, probes["code"], probes["train"], component="1:0", **kw)
    assert np.all(np.isfinite(influence.se))
    with pytest.raises(ValueError, match="chains must be even"):
        susceptibilities(model, data, probes, sampling_probe="train", components=["0:1"], **dict(kw, chains=3))
