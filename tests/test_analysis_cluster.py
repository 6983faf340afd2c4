"""Clustering of per-head trajectories on planted groups.

The planted data (`rllc.analysis.synthetic.planted_results`): 4 groups of 7
heads (an early peak, a late sigmoid rise, an early fall, a late trough) with
different scales (amplitudes 15-120), critical points moved by N(0, 0.02)
decades per head, amplitudes ×U(0.75, 1.25) per head and 3% Gaussian noise,
on 40 checkpoints from 0 to 50k. Each algorithm must recover the groups
(ARI ≥ 0.9) and silhouette, Calinski–Harabasz and Davies–Bouldin must each
pick k = 4 over k = 2..7.
"""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from rllc.analysis.cluster import (
    agreement,
    best_k_per_metric,
    cluster_trajectories,
    kshape_fit,
    sbd_matrix,
    subdivision_tree,
)
from rllc.analysis.synthetic import planted_results
from rllc.analysis.trajectories import AnalysisError

KS = range(2, 8)


@pytest.fixture(scope="module")
def planted():
    return {seed: planted_results(jitter=0.02, seed=seed) for seed in (0, 1)}


@pytest.mark.parametrize("algorithm,seeds", [("kmeans", (0, 1)), ("ward", (0, 1)), ("kshape", (0, 1)),
                                             ("dtw", (0,))])
@pytest.mark.slow
def test_each_algorithm_recovers_planted_groups_and_k(planted, algorithm, seeds):
    for seed in seeds:
        df, groups, _ = planted[seed]
        [result] = cluster_trajectories(df, ["llc"], algorithms=[algorithm], ks=KS)
        ari = adjusted_rand_score(groups.loc[result.heads], result.chosen_labels(algorithm))
        picks = best_k_per_metric(result.metrics).set_index("algorithm").loc[algorithm]
        print(f"{algorithm} seed {seed}: ARI {ari:.3f}, k by metric {picks.to_dict()}")
        assert ari >= 0.9
        assert picks.to_dict() == {"silhouette": 4, "calinski_harabasz": 4, "davies_bouldin": 4, "vote": 4}
        assert result.chosen[algorithm] == 4


def test_data_refinement_separates_heads_that_look_alike():
    """Two groups identical on prose but different on code are told apart only
    when the prose and code curves are concatenated (as in the rLLC paper)."""
    rng = np.random.default_rng(0)
    steps = np.array([0, *np.geomspace(100, 50_000, 29).round().astype(int)])
    x = np.log10(steps + 100)
    rows = []
    truth = {}
    for i in range(16):
        head, g = f"{i // 8}:{i % 8}", i % 2
        truth[head] = g
        prose = 10 / (1 + np.exp(-(x - 3.0) / 0.1))
        code = 10 / (1 + np.exp(-(x - (3.0 if g == 0 else 4.0)) / 0.1))
        for ds, curve in (("prose", prose), ("code", code)):
            noisy = curve * rng.uniform(0.8, 1.2) + rng.normal(0, 0.3, len(x))
            rows += [dict(step=s, kind="estimate", signal="llc", component=head, dataset=ds, value=v)
                     for s, v in zip(steps, noisy)]
    df = pd.DataFrame(rows)
    truth = pd.Series(truth)
    [prose_only] = cluster_trajectories(df, ["llc@prose"], algorithms=["kmeans"], k=2)
    [both] = cluster_trajectories(df, ["llc@prose", "llc@code"], algorithms=["kmeans", "ward", "kshape"],
                                  ks=range(2, 6))
    assert adjusted_rand_score(truth.loc[prose_only.heads], prose_only.chosen_labels("kmeans")) < 0.3
    for algorithm in ("kmeans", "ward", "kshape"):
        assert both.chosen[algorithm] == 2
        assert adjusted_rand_score(truth.loc[both.heads], both.chosen_labels(algorithm)) == 1.0


def test_per_layer_scopes_and_agreement_with_head_types(planted):
    df, groups, _ = planted[0]
    types = pd.DataFrame([dict(step=50_000, kind="probe", signal="head_class", component=h, dataset="rr",
                               value=1.0, label=g) for h, g in groups.items()])
    full = pd.concat([df, types], ignore_index=True)
    [result] = cluster_trajectories(full, ["llc"], algorithms=["kmeans", "ward"], ks=KS)
    agree = result.agreement.set_index(["a", "b"])
    assert agree.loc[("kmeans (k=4)", "head type"), "ari"] == pytest.approx(1.0)
    assert agree.loc[("kmeans (k=4)", "ward (k=4)"), "nmi"] == pytest.approx(1.0)
    per_layer = cluster_trajectories(full, ["llc"], algorithms=["kmeans"], ks=KS, per_layer=True)
    assert [r.scope for r in per_layer] == ["layer 0", "layer 1", "layer 2", "layer 3"]
    for r in per_layer:
        assert all(h.startswith(r.scope[-1] + ":") for h in r.heads)
        assert r.metrics["k"].max() <= len(r.heads) - 1
    assign = result.assignments()
    assert set(assign.columns) == {"scope", "head", "algorithm", "k", "cluster", "chosen", "head_type"}
    assert assign.query("chosen").groupby("algorithm")["k"].unique().map(list).to_dict() == {"kmeans": [4],
                                                                                              "ward": [4]}


def test_subdivision_tree_follows_splits():
    labels = {2: [0, 0, 0, 1, 1, 1], 3: [0, 0, 2, 1, 1, 1], 4: [0, 3, 2, 1, 1, 1]}
    tree = subdivision_tree(labels)
    k3 = tree[tree["k"] == 3].set_index("child")
    assert k3.loc[2, "parent"] == 0 and k3.loc[2, "splits"] and not k3.loc[1, "splits"]
    assert (tree["share"] == 1.0).all()
    # a reshuffle (k-means is not nested): the child takes most members from one parent
    tree = subdivision_tree({2: [0, 0, 0, 1, 1, 1], 3: [0, 0, 1, 1, 2, 2]})
    child1 = tree[(tree["k"] == 3) & (tree["child"] == 1)].iloc[0]
    assert child1["share"] == 0.5


def test_agreement_is_label_permutation_invariant():
    a = [0, 0, 1, 1, 2, 2]
    table = agreement({"a": a, "b": [2, 2, 0, 0, 1, 1], "c": [0, 1, 0, 1, 0, 1]}).set_index(["a", "b"])
    assert table.loc[("a", "b"), "ari"] == 1.0 and table.loc[("a", "b"), "nmi"] == pytest.approx(1.0)
    assert table.loc[("a", "c"), "ari"] < 0


def test_sbd_matches_brute_force_and_kshape_is_shift_invariant():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 13)), rng.normal(size=(3, 13))

    def sbd(x, y):
        t = len(x)
        best = max(sum(x[i + s] * y[i] for i in range(t) if 0 <= i + s < t) for s in range(-t + 1, t))
        return 1 - best / (np.linalg.norm(x) * np.linalg.norm(y))

    assert np.allclose(sbd_matrix(a, b), [[sbd(x, y) for y in b] for x in a], atol=1e-12)
    # shifted copies of two shapes: k-Shape groups by shape, not by position
    t = np.linspace(0, 1, 60)
    bumps = [np.exp(-((t - c) / 0.05) ** 2) for c in (0.3, 0.4, 0.5)]
    steps = [np.clip((t - c) / 0.1, 0, 1) for c in (0.3, 0.4, 0.5)]
    labels, centroids, inertia = kshape_fit(np.array(bumps + steps), 2, seed=0)
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], labels) == 1.0 and centroids.shape == (2, 60, 1)


def test_too_few_heads_is_an_error(planted):
    df, _, _ = planted[0]
    small = df[df["component"].isin(["0:0", "0:1"])]
    with pytest.raises(AnalysisError):
        cluster_trajectories(small, ["llc"], algorithms=["kmeans"])


def test_consensus_vote_is_weighted_towards_k_shape():
    from rllc.analysis.cluster import consensus_labels

    kmeans = [0, 0, 0, 1, 1, 1]
    kshape = [0, 0, 1, 1, 1, 1]
    assert list(consensus_labels({"kmeans": kmeans, "kshape": kshape}, 2, {"kmeans": 1, "kshape": 2})) == kshape
    assert list(consensus_labels({"a": kmeans, "b": kmeans}, 2)) == kmeans


def test_paper_clustering_recovers_planted_types_per_layer():
    """Per layer, k = the number of types present; k-means, k-Shape and their vote each get ARI 1 on clean
    planted shapes (a rise early, a bump late, a slow decline; curves are z-scored, so every type needs a shape
    of its own: a flat curve plus noise would be z-scored to pure noise), and the all-heads view is reported."""
    from rllc.analysis.cluster import paper_clustering
    from rllc.analysis.trajectories import stack_trajectories

    rng = np.random.default_rng(0)
    steps = np.array([0, 50, 100, 200, 400, 800, 1600, 3200])
    shapes = {"previous": 1 / (1 + np.exp(-(np.log(steps + 1) - 4))),
              "induction": np.exp(-((np.log(steps + 1) - 7) ** 2)),
              "other": -0.3 * np.log(steps + 1) / np.log(steps[-1] + 1)}
    plan = {"0:0": "previous", "0:1": "previous", "0:2": "other", "0:3": "other", "0:4": "other",
            "1:0": "induction", "1:1": "induction", "1:2": "other", "1:3": "other", "1:4": "other"}
    rows = []
    for head, kind in plan.items():
        curve = 1 + 2 * shapes[kind] + rng.normal(scale=0.05, size=len(steps))
        for dataset, scale in (("train", 1.0), ("code", 1.5)):
            rows += [dict(step=int(s), checkpoint=f"step_{s}", kind="estimate", signal="llc", component=head,
                          dataset=dataset, value=float(scale * v), se=np.nan, config_hash="h",
                          seconds=0.0, diagnostics="{}") for s, v in zip(steps, curve)]
    ts = stack_trajectories(pd.DataFrame(rows), ["llc@train", "llc@code"])
    out = paper_clustering(ts, pd.Series(plan))
    per_layer = out[out.scope != "all heads"]
    assert set(per_layer.scope) == {"layer 0", "layer 1"} and set(per_layer.method) == {"kmeans", "kshape", "vote"}
    assert (per_layer.k == 2).all() and np.allclose(per_layer.ari, 1.0) and np.allclose(out.nmi, 1.0)
    assert (out[out.scope == "all heads"].k == 3).all()
