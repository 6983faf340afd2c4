"""Rank correlations over heads between signals, per checkpoint and across the series; pair signals per head."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr

from rllc.analysis.critical import align_events
from rllc.analysis.compare import (
    compare,
    correlation_matrix,
    pairs_to_heads,
    rank_correlations,
    series_correlations,
)
from rllc.analysis.synthetic import demo_results, log_schedule

HEADS = [f"{layer}:{h}" for layer in range(2) for h in range(6)]
STEPS = [0, 100, 1000, 10000]


def constructed(seed=0):
    """a: random; mono: a monotone function of a; anti: a decreasing one; free: independent of a."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in STEPS:
        a = rng.normal(size=len(HEADS)) + s / 1000
        signals = {"a": a, "mono": np.exp(a) + 3, "anti": -(a ** 3), "free": rng.normal(size=len(HEADS))}
        for name, values in signals.items():
            rows += [dict(step=s, kind="probe", signal=name, component=h, dataset="d", value=v,
                          diagnostics=json.dumps({})) for h, v in zip(HEADS, values)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("method,oracle", [("spearman", spearmanr), ("kendall", kendalltau)])
def test_rank_correlations_per_checkpoint(method, oracle):
    df = constructed()
    per = rank_correlations(df, ["a", "mono", "anti", "free"], method=method)
    assert len(per) == len(STEPS) * 6 and set(per["n"]) == {len(HEADS)}
    pair = per.set_index(["step", "signal_a", "signal_b"])["rho"]
    for s in STEPS:
        assert pair[(s, "a", "mono")] == pytest.approx(1.0)
        assert pair[(s, "a", "anti")] == pytest.approx(-1.0)
        block = df[df["step"] == s].pivot(index="component", columns="signal", values="value")
        expected = oracle(block["a"], block["free"])[0]
        assert pair[(s, "a", "free")] == pytest.approx(expected)


def test_series_correlations_pool_and_average():
    df = constructed()
    series = series_correlations(df, ["a", "mono", "anti", "free"]).set_index(["signal_a", "signal_b"])
    assert series.loc[("a", "mono"), "pooled_rho"] == pytest.approx(1.0)
    assert series.loc[("a", "anti"), "mean_rho"] == pytest.approx(-1.0)
    assert series.loc[("a", "mono"), "n_points"] == len(HEADS) * len(STEPS)
    assert series.loc[("a", "mono"), "n_steps"] == len(STEPS)
    pooled = df.pivot_table(index=["step", "component"], columns="signal", values="value")
    assert series.loc[("a", "free"), "pooled_rho"] == pytest.approx(spearmanr(pooled["a"], pooled["free"])[0])
    m = correlation_matrix(series.reset_index(), "pooled_rho")
    assert m.loc["mono", "a"] == m.loc["a", "mono"] == pytest.approx(1.0) and m.loc["free", "free"] == 1.0


def test_too_few_heads_or_constant_signal_gives_nan():
    df = constructed()
    few = df[df["component"].isin(HEADS[:3])]
    assert rank_correlations(few, ["a", "mono"], min_heads=5)["rho"].isna().all()
    flat = df.copy()
    flat.loc[flat["signal"] == "free", "value"] = 1.0
    assert rank_correlations(flat, ["a", "free"])["rho"].isna().all()


def test_pair_signals_become_per_head_in_and_out():
    rows = [dict(step=0, kind="probe", signal="composition", component=f"{s}->{r}", dataset="weights", value=v,
                 diagnostics=json.dumps({"side": side}))
            for side, table in (("k", {("0:0", "1:0"): 0.5, ("0:1", "1:0"): 0.1, ("0:0", "1:1"): 0.2,
                                       ("0:1", "1:1"): 0.3}),
                                ("q", {("0:0", "1:0"): 0.05, ("0:1", "1:0"): 0.06, ("0:0", "1:1"): 0.07,
                                       ("0:1", "1:1"): 0.08}))
            for (s, r), v in table.items()]
    heads = pairs_to_heads(pd.DataFrame(rows)).set_index(["key", "component"])["value"]
    assert heads[("composition.in/k", "1:0")] == 0.5 and heads[("composition.in/k", "1:1")] == 0.3
    assert heads[("composition.out/k", "0:0")] == 0.5 and heads[("composition.out/k", "0:1")] == 0.3
    assert heads[("composition.in/q", "1:1")] == 0.08
    mean = pairs_to_heads(pd.DataFrame(rows), "mean").set_index(["key", "component"])["value"]
    assert mean[("composition.in/k", "1:0")] == pytest.approx(0.3)


def test_compare_on_the_demo_run():
    df = demo_results(steps=log_schedule(30))
    result = compare(df)
    assert "llc@prose" in result.keys and "composition.in/k" in result.keys and "head_class" not in result.keys
    series = result.series.set_index(["signal_a", "signal_b"])
    # planted: drLLC and the Hessian trace of the same heads rise together; PR falls where they rise
    assert series.loc[("hessian-trace", "llc@prose"), "pooled_rho"] > 0.9
    assert series.loc[("llc@prose", "participation_ratio"), "pooled_rho"] < -0.5
    # planted: the induction heads' code drLLC rises at ~6.8k with their induction score (~7k) and peaks at ~7.8k
    ind = result.points[(result.points["component"] == "1:6") & (result.points["key"] == "llc@code")]
    peak = ind[ind["kind"] == "peak"]["step"]
    assert len(peak) == 1 and 6000 < peak.iloc[0] < 11000
    al = align_events(result.points, ("llc@code", "rise"), ("induction", "rise")).set_index("component")
    for head in ("1:6", "1:7"):
        assert 0 < al.loc[head, "lag_decades"] < 0.1  # the score rises 0.01-0.1 decades after the drLLC
    summary = result.alignment.set_index(["ref_key", "ref_kind", "other_key"])
    assert summary.loc[("llc@code", "rise", "induction"), "n_matched"] >= 2
    assert list(result.stages["boundary"].iloc[:-1]) and (result.stages["end"].diff().dropna() > 0).all()


def test_curve_features_and_their_agreement_with_behaviour():
    """Final level, peak, step and size of the largest change; Spearman rho per layer with an exact
    permutation p-value for 8 heads (a perfect ranking: p = 2 / 8!)."""
    from math import factorial

    from rllc.analysis import curve_features, feature_agreement

    heads = [f"{layer}:{h}" for layer in range(2) for h in range(8)]
    steps = [0, 100, 200, 400]
    curves = pd.DataFrame([[0, 1, 1 + i, 1 + i] for i in range(16)], index=heads, columns=steps, dtype=float)
    curves.loc["1:7"] = [0, 5, 2, 2]  # a peak, then the largest change is a fall
    f = curve_features(curves)
    assert f.loc["0:3", "final"] == 4 and f.loc["0:3", "change_step"] == 200 and f.loc["0:3", "change_size"] == 3
    assert f.loc["1:7", "peak"] == 5 and f.loc["1:7", "change_step"] == 100 and f.loc["1:7", "change_size"] == 5
    scores = pd.DataFrame({"induction": np.arange(16.0), "flat": [1.0] * 16}, index=heads)
    agree = feature_agreement(f[["final"]], scores)
    layer0 = agree[(agree.scope == "layer 0") & (agree.score == "induction")].iloc[0]
    assert layer0.n_heads == 8 and layer0.rho == pytest.approx(1.0)
    assert layer0.p_value == pytest.approx(2 / factorial(8), rel=1e-6)
    assert agree[agree.score == "flat"]["rho"].isna().all()  # a constant score has no ranking
    assert set(agree.scope) == {"all heads", "layer 0", "layer 1"}
