"""Observables along the chains, susceptibilities and the Bayesian influence function
(rllc.sampling.observables, rllc.sampling.susceptibility): the batched head sampler against the generic
back-end on the same seeds, a known answer where the posterior is exactly Gaussian, and devinterp 2.0.1's
post-processing on the very same draws, and devinterp's own sampler replayed (same seeds, batches, probes)."""

import warnings

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


# --- devinterp 2.0.1's own sampler, replayed ------------------------------------------------

@pytest.mark.slow
def test_replayed_chains_give_devinterps_susceptibilities(tmp_path, devinterp_view):
    """Under replay our chains are devinterp's, so its `sample()` + `compute_susceptibilities` / `compute_bif`
    and our `susceptibilities` / `bif` give the same per-token values to float tolerance (measured: chi within
    1e-6 of its largest value).

    Replay: our chain c seeded devinterp's init_seed + c (its global seed for chain c; the same noise stream,
    tests/test_llc_devinterp.py), its batch order (its DataLoader shuffled by a generator seeded init_seed,
    first epoch), its probe sequences (read from its output) and its L0 (`init_loss=`). devinterp records a
    draw after the step (draw d at the weights after step burn_in + d); we record at the state a step starts
    from, so our burn-in is one step longer for the same draws."""
    import datasets
    import xarray as xr
    from devinterp.slt.bif import compute_bif
    from devinterp.slt.sampling import sample
    from devinterp.slt.susceptibilities import compute_susceptibilities
    from torch.utils.data import DataLoader

    init_seed, batch, chains, burn_in, draws = 100, 4, 2, 2, 8
    hyper = dict(epsilon=1e-3, nbeta=10.0, gamma=100.0)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=12, d_vocab=20)).eval()
    g = torch.Generator().manual_seed(3)

    def hf(rows: torch.Tensor):
        return datasets.Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")

    sampling = hf(torch.randint(0, 20, (64, 12), generator=g))  # 16 batches: more than the 11 steps
    # devinterp evaluates batch_size (4) of each set's 8 sequences, picked by its own seeded sampler; its output
    # says which, and those are our probes
    probe_sets = {"train": hf(torch.randint(0, 20, (8, 12), generator=g)),
                  "code": hf(torch.randint(0, 20, (8, 12), generator=g))}
    restrictions = {"full": None, "0:1": "0:1", "1:0": "1:0"}
    params = dict(model.named_parameters())
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp's notes on its defaults
        for key, spec in restrictions.items():
            if spec is None:
                masks = {"net." + n: None for n in params}
            else:
                comp = resolve_component(model, spec)
                masks = {"net." + n: comp.mask(n, params[n]) for n in comp.param_names}
            runs[key] = sample(devinterp_view(model), sampling, {k: (v, 1) for k, v in probe_sets.items()},
                               param_masks=masks, lr=hyper["epsilon"], n_beta=hyper["nbeta"],
                               localization=hyper["gamma"], num_chains=chains, num_draws=draws, batch_size=batch,
                               num_burnin_steps=burn_in, num_init_loss_batches=4, init_seed=init_seed, device="cpu",
                               output_path=tmp_path / f"{key.replace(':', '_')}.zarr")
        theirs = compute_susceptibilities(runs, "train")["susceptibilities"].dataset
    their_l0 = float(runs["full"].dataset["init_loss"].values.mean())
    probes = {k: torch.as_tensor(runs["full"].dataset[f"input_ids_{k}"].values) for k in probe_sets}
    loader = DataLoader(sampling, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(init_seed),
                        drop_last=True)
    batches = [b["input_ids"] for b in loader]
    replay = dict(chains=chains, chain_seeds=[init_seed + c for c in range(chains)], burn_in=burn_in + 1, draws=draws,
                  **hyper)
    # the per-token probe losses devinterp recorded at every draw are the ones our chains observe
    obs = TokenLossObserver(probes, burn_in=burn_in + 1, keep_draws=True)
    estimate_llcs(model, batches, ["0:1", "1:0", "model"], observer=obs, **replay)
    for key, comp in (("0:1", "0:1"), ("1:0", "1:0"), ("full", "model")):
        for probe in probes:
            recorded = runs[key].dataset[f"loss_{probe}"].values  # [chain, draw, sequence, position]
            np.testing.assert_allclose(obs.draws(comp, probe), recorded, rtol=1e-5, atol=1e-6)
    ours = susceptibilities(model, batches, probes, sampling_probe="train", components=["0:1", "1:0"],
                            init_loss=their_l0, **replay)
    for key in ("0:1", "1:0"):
        values = theirs["sus"].sel(wr=key).values.reshape(ours.values[key]["code"].shape)
        scale = np.abs(values).max()
        np.testing.assert_allclose(ours.values[key]["code"], values, rtol=0, atol=1e-5 * scale)
        print(f"{key}: max |ours - devinterp| {np.abs(ours.values[key]['code'] - values).max():.2e} "
              f"(largest |chi| {scale:.2e})")
    # and the Bayesian influence of the train probe's tokens on the code probe's from devinterp's own draws
    # (its arrays without their coordinates: in its output both probes number their sequences from 0, so
    # compute_bif's batch ranges cannot address the second one)
    recorded = runs["1:0"].dataset
    arrays = {}
    for k in ("code", "train"):
        arrays[f"loss_{k}"] = (("chain", "draw", f"batch_{k}", "token_pos"), recorded[f"loss_{k}"].values)
        arrays[f"input_ids_{k}"] = ((f"batch_{k}", "token"), recorded[f"input_ids_{k}"].values)
    tree = xr.DataTree(xr.Dataset(arrays))
    n_code, n_train = len(probes["code"]), len(probes["train"])
    their_bif = compute_bif(tree, batch_index_range_1=range(n_code),
                            batch_index_range_2=range(n_code, n_code + n_train), device="cpu")["influences"].values
    our_bif = bif(model, batches, probes["code"], probes["train"], component="1:0", **replay)
    np.testing.assert_allclose(our_bif.values, their_bif, rtol=2e-4, atol=2e-6)
