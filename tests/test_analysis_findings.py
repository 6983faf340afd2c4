"""The study findings (rllc.study.findings) on constructed results tables with known answers."""

import json

import numpy as np
import pandas as pd
import pytest

from rllc.analysis.critical import Smoothing
from rllc.analysis.trajectories import below_minimum_steps
from rllc.study.findings import (
    FAIL,
    MISSING,
    PASS,
    REPORTED,
    behaviour_types,
    rank_auc,
    rise_step,
    study_findings,
)

STEPS = [0, 10, 20, 40, 60, 100, 150, 200, 300, 400, 600, 800, 1000, 1300, 1600, 2000, 2500, 3000, 4000, 5000]
HEADS = [f"{layer}:{h}" for layer in range(2) for h in range(4)]
FAST = dict(n_resamples=2000)


def x_of(steps):
    return np.log10(np.asarray(steps, dtype=float) + 10)


def sig(steps, centre, width=0.08):
    return 1 / (1 + np.exp(-(x_of(steps) - np.log10(centre + 10)) / width))


def rows(signal, component, values, dataset="d", kind="probe", **extra):
    return [dict(step=s, checkpoint=f"step_{s}", kind=kind, signal=signal, component=component, dataset=dataset,
                 value=float(v), se=np.nan, config_hash="h", diagnostics=json.dumps(extra), **extra)
            for s, v in zip(STEPS, values)]


def table(prev=0.8, ind=0.6, types=None, curves="types", icl=True, seed=0):
    """2 layers x 4 heads: 0:1 a previous-token head, 1:2 an induction head, the rest other (labels
    from `types`); llc@prose curves grouped by type ("types") or by an unrelated split ("mismatch")."""
    rng = np.random.default_rng(seed)
    types = types or {"0:1": "previous", "0:2": "previous", "1:2": "induction", "1:3": "induction"}
    out = []
    for h in HEADS:
        t = types.get(h, "unclassified")
        p = prev * sig(STEPS, 150) if t == "previous" else 0.05 + 0 * sig(STEPS, 150)
        i = ind * sig(STEPS, 1000) if t == "induction" else 0.03 + 0 * sig(STEPS, 1000)
        out += rows("previous_token", h, p + rng.normal(0, 0.005, len(STEPS)), "random_tokens")
        out += rows("induction", h, i + rng.normal(0, 0.005, len(STEPS)), "repeated_random")
        out += [dict(r, label=t) for r in rows("head_class", h, np.full(len(STEPS), 4.0), "repeated_random")]
        group = t if curves == "types" else ("a" if h in ("0:0", "0:1", "1:0", "1:2") else "b")
        shape = {"previous": 10 + 30 * sig(STEPS, 150), "induction": 10 + 40 * np.exp(-(x_of(STEPS) - 3.0) ** 2 / 0.02),
                 "unclassified": 10 + 5 * x_of(STEPS), "a": 10 + 30 * sig(STEPS, 100), "b": 40 - 30 * sig(STEPS, 2000)}[group]
        prose = shape + rng.normal(0, 0.3, len(STEPS))
        code = prose + (25 if t == "induction" else 2) + rng.normal(0, 0.3, len(STEPS))
        out += rows("llc", h, prose, "prose", kind="estimate")
        out += rows("llc", h, code, "code", kind="estimate")
    out += rows("llc", "model", 100 + 50 * sig(STEPS, 150) + 40 * sig(STEPS, 1000) + rng.normal(0, 0.3, len(STEPS)),
                "prose", kind="estimate")
    if icl:
        out += rows("icl", "", 0.1 - 0.8 * sig(STEPS, 1000) + rng.normal(0, 0.01, len(STEPS)), "repeated_random")
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def found():
    return study_findings(table(), {"latest": {"stages": {"train": {"seconds": 100.0}, "estimate": 50}}},
                          **FAST)


def test_head_formation_pass_and_fail(found):
    f = found["head_formation"]
    assert f.status == PASS
    assert f.numbers["prev_head"] in ("0:1", "0:2") and f.numbers["prev_score"] > 0.75
    assert f.numbers["induction_head"] in ("1:2", "1:3") and f.numbers["induction_score"] > 0.55
    weak = study_findings(table(prev=0.4, ind=0.6), **FAST)["head_formation"]
    assert weak.status == FAIL and "no" in weak.summary


def test_icl_drop_found_at_the_planted_step(found):
    f = found["icl_drop"]
    assert f.status == PASS
    assert abs(np.log10(f.numbers["drop_step"] + 10) - np.log10(1000 + 10)) < 0.1
    flat = table()
    noisy = np.random.default_rng(1).normal(0, 0.01, len(STEPS))
    flat.loc[flat["signal"] == "icl", "value"] = 0.1 + noisy
    assert study_findings(flat, **FAST)["icl_drop"].status == FAIL


def test_clustering_matching_types_gives_ari_one(found):
    """The paper's procedure: per layer (k = types in the layer) and all heads, k-means, k-Shape and the vote."""
    f = found["clustering"]
    assert f.status == PASS
    assert f.numbers["keys"] == ["llc@prose", "llc@code"]
    assert f.numbers["layer_ari"] == {"layer 0": pytest.approx(1.0), "layer 1": pytest.approx(1.0)}
    assert f.numbers["all_heads_ari"] == pytest.approx(1.0)
    views = {(v["scope"], v["method"]): v for v in f.numbers["views"]}
    assert {m for _, m in views} == {"kmeans", "kshape", "vote"}
    assert views[("all heads", "vote")]["k"] == 3 and views[("layer 0", "vote")]["k"] == 2
    assert views[("layer 0", "vote")]["clusters"] in ("0:0 0:3 | 0:1 0:2", "0:1 0:2 | 0:0 0:3")


def test_clustering_unrelated_to_types_fails():
    f = study_findings(table(curves="mismatch"), **FAST)["clustering"]
    assert f.status == FAIL and max(f.numbers["layer_ari"].values()) < 0.6
    assert "not met" in f.summary


def test_clustering_prefers_the_training_distribution():
    t = table()
    t.loc[(t["signal"] == "llc") & (t["dataset"] == "prose"), "dataset"] = "train"
    f = study_findings(t, **FAST)
    assert f["clustering"].numbers["keys"] == ["llc@train", "llc@code"]
    assert f["data_refinement"].numbers["base"] == "train"


def test_curve_agreement_ranks_features_against_scores(found):
    f = found["curve_agreement"]
    assert f.status == REPORTED and f.numbers["key"] == "llc@prose"
    tab = f.table
    assert set(tab["scope"]) == {"all heads", "layer 0", "layer 1"}
    # layer 0: the previous-token heads' curves rise (sigmoid) and the others' grow slowly: final level ~ prev score
    row = tab[(tab["scope"] == "layer 0") & (tab["feature"] == "final") & (tab["score"] == "previous-token")].iloc[0]
    assert row["rho"] > 0.8
    assert f.numbers["n_tests"] == tab["p_value"].notna().sum()


def test_convergence_needs_rhat_and_seed_noise():
    t = table()
    ok = json.dumps({"rhat": 1.01})
    t.loc[t["signal"] == "llc", "diagnostics"] = ok
    rng = np.random.default_rng(0)
    level = {h: i * 0.1 for i, h in enumerate(HEADS)}
    noise = pd.DataFrame([dict(step=5000, component=h, seed=s, value=level[h] + rng.normal(0, 0.01))
                          for h in HEADS for s in range(4)])
    f = study_findings(t, seed_noise=noise, **FAST)["convergence"]
    assert f.status == PASS and f.numbers["share_rhat_ok"] == 1.0 and f.numbers["snr"] > 4
    noisy = noise.assign(value=noise["value"] + rng.normal(0, 0.5, len(noise)))
    assert study_findings(t, seed_noise=noisy, **FAST)["convergence"].status == FAIL
    t.loc[t.index[t["signal"] == "llc"][:40], "diagnostics"] = json.dumps({"rhat": 1.3})
    f = study_findings(t, seed_noise=noise, **FAST)["convergence"]
    assert f.status == FAIL and f.numbers["over_1_1"] == 40
    assert study_findings(table(), **FAST)["convergence"].status == FAIL  # no R-hat at all


def test_cluster_score_test_and_its_smallest_p():
    from rllc.study.findings import cluster_score_test

    labels = pd.Series([0, 0, 0, 0, 1, 1, 1, 1], index=list("abcdefgh"))
    r = cluster_score_test(labels, pd.Series([1, 2, 1.5, 1.2, 5, 6, 5.5, 6.2], index=list("abcdefgh")))
    assert r["eta2"] > 0.9 and r["p_value"] == pytest.approx(2 / 70) and r["min_p"] == pytest.approx(2 / 70)
    single = pd.Series([0, 1, 1, 1, 1, 1, 1, 1], index=list("abcdefgh"))
    r = cluster_score_test(single, pd.Series([9, 1, 2, 1.5, 1.2, 1.1, 1.3, 1.4], index=list("abcdefgh")))
    assert r["min_p"] == pytest.approx(1 / 8) and r["p_value"] == pytest.approx(1 / 8)


def test_paper_claims_each_get_a_verdict(found):
    f = found["paper_claims"]
    claims = {c["claim"]: c for c in f.numbers["claims"]}
    assert len(claims) == 5
    assert claims["Head types cluster by rLLC curve"]["verdict"] == "reproduced"
    # planted: previous-token rise at 150, induction rise and the ICL drop at 1000: not one phase change
    assert claims["Previous-token and induction heads form together in one phase change"]["verdict"] == "not reproduced"
    assert claims["Induction heads' code drLLC rises above their prose (training-distribution) drLLC"][
        "verdict"] == "reproduced"
    assert claims["The full-model LLC marks the stage boundaries"]["verdict"] == "reproduced"
    # 2 vs 2 heads per cluster: the smallest attainable p is 1/3, so not testable
    assert claims["Ablation and composition agree with the clusters"]["verdict"] == "not testable at this scale"


def test_below_minimum_steps():
    curves = pd.DataFrame({0: [-0.5, -0.8, 0.1], 10: [0.2, -0.1, 0.3], 20: [0.0, 0.0, 0.0]}, index=["a", "b", "c"])
    assert below_minimum_steps(curves) == [0]


def test_a_shared_descent_at_initialization_is_left_out_of_the_clustering():
    # every head's estimate at step 0 is far below zero (the chains ran downhill), with head-to-head
    # scatter larger than the planted shapes: kept in, it would decide the z-scored clustering
    t = table()
    at0 = (t["signal"] == "llc") & (t["step"] == 0)
    t.loc[at0, "value"] = -200 - 150 * np.random.default_rng(3).random(int(at0.sum()))
    f = study_findings(t, **FAST)["clustering"]
    assert f.numbers["steps_left_out"] == [0] and "Left out" in f.summary
    assert min(f.numbers["layer_ari"].values()) == pytest.approx(1.0) and f.status == PASS


def test_data_refinement_separates_induction_heads(found):
    f = found["data_refinement"]
    assert f.status == REPORTED
    assert f.numbers["induction_heads"] == ["1:2", "1:3"]
    assert f.numbers["auc"] == 1.0 and f.numbers["separated"] and f.numbers["direction"] == "above"
    assert f.numbers["induction_mean"] == pytest.approx(25, abs=1) and f.numbers["other_mean"] == pytest.approx(2, abs=1)


def test_critical_points_and_rises(found):
    f = found["critical_points"]
    assert f.status == REPORTED
    rises = {r["head"]: r for r in f.numbers["rises"]}
    assert set(rises) == {"0:1", "0:2", "1:2", "1:3"}
    assert abs(np.log10(rises["0:1"]["rise_step"] + 10) - np.log10(160)) < 0.1
    assert abs(np.log10(rises["1:2"]["rise_step"] + 10) - np.log10(1010)) < 0.1
    kinds = {p["kind"] for p in f.numbers["llc_points"]}
    assert "rise" in kinds
    assert all(abs(r["lag_decades"]) < 0.2 for r in f.numbers["rises"])  # both rises sit on an LLC rise


def test_timings(found):
    f = found["timings"]
    assert f.status == REPORTED and f.numbers["latest"]["total"] == 150.0 and f.numbers["within_goal"]
    assert "estimate 50" in f.summary


def test_missing_inputs_are_reported_not_raised():
    llc_only = table()
    llc_only = llc_only[llc_only["signal"] == "llc"]
    f = study_findings(llc_only, **FAST)
    assert f["head_formation"].status == MISSING and f["icl_drop"].status == MISSING
    assert f["clustering"].status == MISSING and "no behavioural head types" in f["clustering"].summary
    assert f["paper_claims"].numbers["counts"] == {"not testable at this scale": 5}
    assert f["timings"].status == MISSING
    assert f["critical_points"].status == REPORTED  # the model LLC curve is there
    broken = study_findings(pd.DataFrame({"step": [0], "value": [1.0]}))
    assert [x.status for x in broken] == [MISSING] * 9
    assert json.loads(f.to_json())["clustering"]["status"] == MISSING


def test_types_fall_back_to_scores_without_labels():
    t = table()
    t = t[t["signal"] != "head_class"]
    types, source = behaviour_types(t)
    assert types["0:1"] == "previous-token" and types["1:2"] == "induction" and types["0:0"] == "other"
    assert "head scores" in source


def test_rise_step_and_rank_auc():
    assert rise_step([0, 10, 20, 30], [0, 0, 1, 1]) == pytest.approx(15)
    assert np.isnan(rise_step([0, 10, 20], [1, 0.5, 0.2]))
    assert rank_auc([3, 4], [1, 2]) == 1.0 and rank_auc([1], [1]) == 0.5 and rank_auc([0], [1, 2]) == 0.0
    assert np.isnan(rank_auc([], [1]))
