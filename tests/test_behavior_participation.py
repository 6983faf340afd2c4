"""Participation ratio: rank-1 and k-orthogonal truths, query positions, series statistics."""

import numpy as np
import pandas as pd
import pytest
import torch

from rllc.behavior import elbow_split, participation_ratio, participation_ratios, pr_trajectory_stats
from rllc.behavior.planted import planted_induction_model


def test_rank_one_has_pr_one_and_k_orthogonal_equal_norms_have_pr_k():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g)
    coeffs = torch.randn(50, 1, generator=g)
    assert participation_ratio(coeffs * v) == pytest.approx(1.0, abs=1e-9)
    basis, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    for k in (2, 3, 7):
        z = 3.0 * basis[:, :k].T.repeat(4, 1)  # 4k examples, k orthogonal directions of equal norm
        assert participation_ratio(z) == pytest.approx(k, rel=1e-9)
    # unequal norms spread less evenly: fewer than k effective directions
    z = basis[:, :3].T * torch.tensor([[1.0], [1.0], [3.0]], dtype=torch.float64)
    assert 1 < participation_ratio(z) < 3
    # uncentred: a constant vector is PR 1, not undefined
    assert participation_ratio(v.expand(10, 16)) == pytest.approx(1.0)
    assert participation_ratio(torch.zeros(5, 4)) == 0  # no direction at all: rank 0, not NaN


def test_planted_heads_pr_through_the_model():
    model = planted_induction_model()
    df = participation_ratios(model, progress=False).set_index("head")
    # 1:1 attends to BOS in every example: its z is the same vector each time
    assert df.loc["1:1", "value"] == pytest.approx(1.0, abs=1e-6)
    # 0:1 copies the current token: with k tokens equally often at the query, PR = k
    k = 5
    tokens = torch.randint(2, 64, (40, 49), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 0
    tokens[:, -1] = 2 + torch.arange(40) % k
    pr = participation_ratios(model, tokens, progress=False).set_index("head")
    assert pr.loc["0:1", "value"] == pytest.approx(k, rel=1e-6)
    # per-example query positions (e.g. a key-retrieval batch): move the query to position 10
    tokens2 = tokens.clone()
    tokens2[:, 10] = tokens[:, -1]
    tokens2[:, -1] = 7
    pos = torch.full((40,), 10)
    pr2 = participation_ratios(model, tokens2, query_pos=pos, dataset="moved", progress=False).set_index("head")
    assert pr2.loc["0:1", "value"] == pytest.approx(k, rel=1e-6) and set(pr2["dataset"]) == {"moved"}


def test_spread_integral_and_elbow_over_a_series():
    steps = [0, 100, 300]
    traj = {"0:0": [1.0, 3.0, 3.0], "0:1": [1.0, 1.0, 1.0], "1:0": [2.0, 0.5, 2.0]}
    rows = pd.DataFrame([dict(step=s, signal="participation_ratio", head=h, dataset="d", value=v)
                         for h, vals in traj.items() for s, v in zip(steps, vals)])
    stats = pr_trajectory_stats(rows)
    spread = stats[stats.signal == "pr_spread"].set_index("head")["value"]
    integral = stats[stats.signal == "pr_integral"].set_index("head")["value"]
    assert spread.to_dict() == {"0:0": 2.0, "0:1": 0.0, "1:0": 1.5}
    # trapezoid of max(PR - 1, 0): 0:0 = 100*(0+2)/2 + 200*2 = 500; 1:0 = 100*(1+0)/2 + 200*(0+1)/2 = 150
    assert integral.to_dict() == {"0:0": 500.0, "0:1": 0.0, "1:0": 150.0}
    assert stats["step"].isna().all()


def test_elbow_split_finds_the_break_in_both_curve_shapes():
    assert elbow_split([10, 9.5, 9, 1, 0.8, 0.5, 0.2, 0]) == 3  # drop then plateau
    assert elbow_split([10, 9.9, 9.8, 9.7, 0.3, 0]) == 4  # plateau then drop
    assert elbow_split([1, 1, 1]) is None and elbow_split([2, 1]) is None
    g = np.random.default_rng(0)
    values = np.concatenate([g.uniform(40, 50, 4), g.uniform(0, 2, 12)])
    heads = [f"{i // 4}:{i % 4}" for i in range(16)]
    rows = pd.DataFrame([dict(step=s, signal="participation_ratio", head=h, dataset="d", value=1 + v * (s > 0))
                         for h, v in zip(heads, values) for s in (0, 1)])
    stats = pr_trajectory_stats(rows)
    above = stats[(stats.signal == "pr_integral") & stats.above_elbow]["head"]
    assert sorted(above) == heads[:4]
