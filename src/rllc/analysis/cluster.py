"""Clustering of per-head trajectories, its quality over k, the subdivision
tree and agreement between clusterings.

Algorithms (all seeded, deterministic for a given seed):

* ``kmeans``: Euclidean k-means (scikit-learn ``KMeans``, k-means++, 10 inits)
  on the concatenated curves;
* ``ward``: Ward agglomerative clustering (scikit-learn
  ``AgglomerativeClustering(linkage="ward")``) on the concatenated curves;
* ``kshape``: k-Shape (Paparrizos & Gravano 2015) with the shape-based
  distance SBD = 1 − max over shifts of the normalised cross-correlation; each
  curve is z-normalised first, as k-Shape assumes; several signals are
  channels of a multivariate series (cross-correlations summed over channels,
  as tslearn does). The default engine is `kshape_fit` below, a vectorised
  NumPy/FFT version of the paper's algorithm, because tslearn 0.10's
  ``KShape`` took 38 s to JIT-compile and 4–5 s per k on 28 curves of 40
  points on the 2-core development machine; ``kshape_engine="tslearn"`` uses
  tslearn's ``KShape`` instead;
* ``dtw``: k-means under dynamic time warping with DBA barycentres (tslearn
  ``TimeSeriesKMeans(metric="dtw")``), several signals as channels.

Quality of a clustering, for each k:

* silhouette, computed with the algorithm's own distance (Euclidean for
  kmeans/ward, SBD for kshape, DTW for dtw): higher is better;
* Calinski–Harabasz and Davies–Bouldin (scikit-learn), which are defined with
  centroids and are computed in the Euclidean space of the curves the
  algorithm saw (z-normalised for kshape): CH higher is better, DB lower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.linalg import eigh
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from rllc.analysis.trajectories import (
    AnalysisError,
    TrajectorySet,
    annotate,
    head_keys,
    head_types,
    stack_trajectories,
)

ALGORITHMS = ("kmeans", "ward", "kshape", "dtw")
CRITERIA = ("silhouette", "calinski_harabasz", "davies_bouldin", "vote")


def _as_3d(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[:, :, None] if x.ndim == 2 else x


def _znorm_3d(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)


def _flat(x3: np.ndarray) -> np.ndarray:
    n, t, d = x3.shape
    return x3.transpose(0, 2, 1).reshape(n, t * d)


def canonical_labels(labels: Sequence[int]) -> np.ndarray:
    """Relabel clusters 0, 1, ... in order of first appearance."""
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(int(v), len(seen)) for v in labels], dtype=int)


# --- k-Shape (NumPy) ------------------------------------------------------------------

def _fft_size(length: int) -> int:
    return 1 << int(np.ceil(np.log2(2 * length - 1)))


def cross_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlations NCC_c of every curve of `a` [n, T, d] with
    every curve of `b` [m, T, d] at every shift: [n, m, 2T−1], shift s = index
    − (T−1) meaning a[t + s] is compared with b[t]. Channels are summed and
    divided by the product of the curves' norms over all channels (a zero
    curve correlates 0 with everything)."""
    t = a.shape[1]
    size = _fft_size(t)
    fa = np.fft.rfft(a, size, axis=1)
    fb = np.fft.rfft(b, size, axis=1)
    cc = np.fft.irfft(np.einsum("nfd,mfd->nmf", fa, np.conj(fb)), size, axis=2)
    cc = np.concatenate([cc[:, :, size - (t - 1):], cc[:, :, :t]], axis=2)
    na = np.linalg.norm(a.reshape(len(a), -1), axis=1)
    nb = np.linalg.norm(b.reshape(len(b), -1), axis=1)
    denom = np.outer(na, nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom[:, :, None] > 0, cc / np.where(denom > 0, denom, 1.0)[:, :, None], 0.0)


def sbd_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Shape-based distance 1 − max_s NCC_c(s) between curves ([n, T] or [n, T, d])."""
    a3 = _as_3d(a)
    b3 = a3 if b is None else _as_3d(b)
    return 1.0 - cross_correlations(a3, b3).max(axis=2)


def _shift(x: np.ndarray, s: int) -> np.ndarray:
    """x[t + s] with zeros outside (x: [T, d])."""
    out = np.zeros_like(x)
    if s >= 0:
        out[: len(x) - s] = x[s:]
    else:
        out[-s:] = x[: len(x) + s]
    return out


def _extract_shape(members: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Paparrizos & Gravano's shape extraction: align the members to the
    current centroid by their best SBD shift, then take per channel the
    leading eigenvector of QᵀSQ (S = XᵀX, Q = I − 11ᵀ/T), signed to be closer
    to the members, z-normalised."""
    t, d = centroid.shape
    if np.any(centroid):
        lags = cross_correlations(members, centroid[None]).argmax(axis=2)[:, 0] - (t - 1)
        aligned = np.stack([_shift(x, int(s)) for x, s in zip(members, lags)])
    else:
        aligned = members
    aligned = _znorm_3d(aligned)
    q = np.eye(t) - np.ones((t, t)) / t
    new = np.empty((t, d))
    for c in range(d):
        x = aligned[:, :, c]
        m = q.T @ (x.T @ x) @ q
        v = eigh(m, subset_by_index=[t - 1, t - 1])[1][:, 0]
        if np.sum((x - v) ** 2) > np.sum((x + v) ** 2):
            v = -v
        new[:, c] = v
    return _znorm_3d(new[None])[0]


def kshape_fit(values: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 100,
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """k-Shape on z-normalised curves ([n, T] or [n, T, d]): `n_init` runs from
    k distinct random curves as initial centroids, alternating shape
    extraction and SBD assignment until the assignment stops changing; an
    emptied cluster is restarted at the curve farthest from its centroid.
    Returns (labels, centroids [k, T, d], inertia = Σ SBD to own centroid) of the
    run with the lowest inertia."""
    from threadpoolctl import threadpool_limits

    # small matrices: BLAS threads only contend (eigh took 56 ms instead of 1 ms on 2 busy cores)
    with threadpool_limits(limits=1, user_api="blas"):
        return _kshape_runs(_znorm_3d(_as_3d(values)), k, seed, n_init, max_iter)


def _kshape_runs(x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int):
    n = len(x)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        centroids = x[rng.choice(n, size=k, replace=False)].copy()
        labels = sbd_matrix(x, centroids).argmin(axis=1)
        for _ in range(max_iter):
            for c in range(k):
                members = x[labels == c]
                if len(members) == 0:
                    dist = sbd_matrix(x, centroids)[np.arange(n), labels]
                    far = int(dist.argmax())
                    centroids[c] = x[far]
                    labels[far] = c
                    continue
                centroids[c] = _extract_shape(members, centroids[c])
            new = sbd_matrix(x, centroids).argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
        inertia = float(sbd_matrix(x, centroids)[np.arange(n), labels].sum())
        if best is None or inertia < best[2] - 1e-12:
            best = (labels.copy(), centroids.copy(), inertia)
    return best


def _quiet_tslearn() -> None:
    """Import tslearn without its warning that h5py (for its HDF5 file I/O, unused here) is missing."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="h5py not installed")
        import tslearn.clustering  # noqa: F401
        import tslearn.metrics  # noqa: F401


class _Space:
    """One algorithm's view of the data: the array it fits and its distance matrix (cached)."""

    def __init__(self, values: np.ndarray, algorithm: str, dtw_radius: float | None,
                 kshape_engine: str = "numpy"):
        if algorithm not in ALGORITHMS:
            raise AnalysisError(f"algorithm {algorithm!r}: choose from {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        x3 = _as_3d(values)
        self.x3 = _znorm_3d(x3) if algorithm == "kshape" else x3
        self.flat = _flat(self.x3)
        self.dtw_radius = dtw_radius
        if kshape_engine not in ("numpy", "tslearn"):
            raise AnalysisError(f"kshape engine {kshape_engine!r}: 'numpy' or 'tslearn'")
        self.kshape_engine = kshape_engine
        self._dist: np.ndarray | None = None

    @property
    def metric_params(self) -> dict | None:
        if self.algorithm != "dtw" or self.dtw_radius is None:
            return None
        radius = max(1, int(round(self.dtw_radius * self.x3.shape[1])))
        return {"global_constraint": "sakoe_chiba", "sakoe_chiba_radius": radius}

    def distances(self) -> np.ndarray:
        if self._dist is None:
            if self.algorithm in ("kmeans", "ward"):
                from sklearn.metrics import pairwise_distances

                d = pairwise_distances(self.flat)
            elif self.algorithm == "kshape":
                d = sbd_matrix(self.x3)
            else:
                _quiet_tslearn()
                from tslearn.metrics import cdist_dtw

                d = cdist_dtw(self.x3, **(self.metric_params or {}))
            d = np.maximum(d, 0.0)
            np.fill_diagonal(d, 0.0)
            self._dist = (d + d.T) / 2
        return self._dist

    def fit(self, k: int, seed: int) -> np.ndarray:
        n = self.x3.shape[0]
        if not 1 <= k <= n:
            raise AnalysisError(f"k={k} with {n} curves")
        if self.algorithm == "kmeans":
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(self.flat)
        elif self.algorithm == "ward":
            if k == 1:
                labels = np.zeros(n, dtype=int)
            else:
                labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(self.flat)
        elif self.algorithm == "kshape" and self.kshape_engine == "numpy":
            labels = kshape_fit(self.x3, k, seed=seed)[0]
        elif self.algorithm == "kshape":
            _quiet_tslearn()
            from tslearn.clustering import KShape

            labels = KShape(n_clusters=k, n_init=4, max_iter=100, random_state=seed).fit_predict(self.x3)
        else:
            _quiet_tslearn()
            from tslearn.clustering import TimeSeriesKMeans

            model = TimeSeriesKMeans(n_clusters=k, metric="dtw", n_init=2, max_iter=20,
                                     max_iter_barycenter=10, metric_params=self.metric_params,
                                     random_state=seed)
            labels = model.fit_predict(self.x3)
        return canonical_labels(labels)

    def scores(self, labels: np.ndarray) -> dict[str, float]:
        n_labels = len(np.unique(labels))
        if not 2 <= n_labels <= len(labels) - 1:
            return dict(silhouette=np.nan, calinski_harabasz=np.nan, davies_bouldin=np.nan)
        return dict(
            silhouette=float(silhouette_score(self.distances(), labels, metric="precomputed")),
            calinski_harabasz=float(calinski_harabasz_score(self.flat, labels)),
            davies_bouldin=float(davies_bouldin_score(self.flat, labels)),
        )


def fit_labels(values: np.ndarray, k: int, algorithm: str = "kmeans", *, seed: int = 0,
               dtw_radius: float | None = None, kshape_engine: str = "numpy") -> np.ndarray:
    """Cluster labels (0..k−1, in order of first appearance) of curves
    ``values`` ([n, time] or [n, time, signals]) by one algorithm."""
    return _Space(values, algorithm, dtw_radius, kshape_engine).fit(k, seed)


def metrics_over_k(
    values: np.ndarray,
    ks: Sequence[int] = range(2, 9),
    algorithms: Sequence[str] = ALGORITHMS,
    *,
    seed: int = 0,
    dtw_radius: float | None = None,
    kshape_engine: str = "numpy",
) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """For every algorithm and k: the labels and the quality metrics.

    Returns (metrics, labels): metrics has columns algorithm, k, silhouette,
    calinski_harabasz, davies_bouldin, n_clusters (clusters actually used);
    labels maps (algorithm, k) to the label array. k outside [2, n−1] is left out."""
    x3 = _as_3d(values)
    n = x3.shape[0]
    ks = [int(k) for k in ks if 2 <= int(k) <= n - 1]
    if not ks:
        raise AnalysisError(f"no k in range fits {n} curves (need 2 ≤ k ≤ n−1)")
    rows, labels = [], {}
    for algorithm in algorithms:
        space = _Space(x3, algorithm, dtw_radius, kshape_engine)
        for k in ks:
            lab = space.fit(k, seed)
            labels[(algorithm, k)] = lab
            rows.append(dict(algorithm=algorithm, k=k, **space.scores(lab), n_clusters=len(np.unique(lab))))
    return pd.DataFrame(rows), labels


def choose_k(metrics: pd.DataFrame, criterion: str = "silhouette") -> dict[str, int]:
    """Per algorithm, the k that the criterion picks: max silhouette, max
    Calinski–Harabasz, min Davies–Bouldin, or "vote" (the k most of the three
    pick; ties go to the silhouette's k)."""
    if criterion not in CRITERIA:
        raise AnalysisError(f"criterion {criterion!r}: choose from {', '.join(CRITERIA)}")
    out = {}
    for algorithm, g in metrics.groupby("algorithm", sort=False):
        g = g.dropna(subset=["silhouette", "calinski_harabasz", "davies_bouldin"])
        if g.empty:
            continue
        picks = {
            "silhouette": int(g.loc[g["silhouette"].idxmax(), "k"]),
            "calinski_harabasz": int(g.loc[g["calinski_harabasz"].idxmax(), "k"]),
            "davies_bouldin": int(g.loc[g["davies_bouldin"].idxmin(), "k"]),
        }
        if criterion == "vote":
            votes = pd.Series(list(picks.values())).value_counts()
            top = votes[votes == votes.max()].index
            out[algorithm] = picks["silhouette"] if picks["silhouette"] in top or len(top) > 1 else int(top[0])
        else:
            out[algorithm] = picks[criterion]
    return out


def best_k_per_metric(metrics: pd.DataFrame) -> pd.DataFrame:
    """The k each metric picks, per algorithm: columns algorithm, silhouette,
    calinski_harabasz, davies_bouldin, vote."""
    rows = []
    for crit in CRITERIA:
        for algorithm, k in choose_k(metrics, crit).items():
            rows.append(dict(algorithm=algorithm, criterion=crit, k=k))
    if not rows:
        return pd.DataFrame(columns=["algorithm", *CRITERIA])
    wide = pd.DataFrame(rows).pivot(index="algorithm", columns="criterion", values="k")
    order = [a for a in dict.fromkeys(metrics["algorithm"])]
    return wide.reindex(index=order, columns=list(CRITERIA)).reset_index()


def subdivision_tree(labels_by_k: Mapping[int, Sequence[int]]) -> pd.DataFrame:
    """How clusters split as k grows.

    For consecutive k in the mapping, each cluster at the larger k (``child``)
    gets as ``parent`` the cluster at the smaller k that holds most of its
    members; ``share`` is that fraction (1.0 for nested clusterings such as
    Ward's; below 1 where k-means reshuffles members). ``splits`` is True for
    children whose parent has more than one child. The first k gets rows with
    parent −1. Columns: k, child, size, parent, share, splits, members."""
    ks = sorted(labels_by_k)
    rows = []
    prev = None
    for k in ks:
        lab = np.asarray(labels_by_k[k])
        entries = []
        for c in np.unique(lab):
            members = np.flatnonzero(lab == c)
            if prev is None:
                parent, share = -1, 1.0
            else:
                counts = np.bincount(prev[members])
                parent, share = int(counts.argmax()), float(counts.max() / len(members))
            entries.append(dict(k=k, child=int(c), size=len(members), parent=parent, share=share,
                                members=members.tolist()))
        n_children = pd.Series([e["parent"] for e in entries]).value_counts()
        for e in entries:
            e["splits"] = bool(e["parent"] >= 0 and n_children[e["parent"]] > 1)
        rows.extend(entries)
        prev = lab
    return pd.DataFrame(rows, columns=["k", "child", "size", "parent", "share", "splits", "members"])


def agreement(labelings: Mapping[str, Sequence]) -> pd.DataFrame:
    """Adjusted Rand index and normalised mutual information between every
    pair of labelings (same items, same order). Columns: a, b, ari, nmi."""
    names = list(labelings)
    rows = []
    for a, b in combinations(names, 2):
        la, lb = np.asarray(labelings[a]), np.asarray(labelings[b])
        if len(la) != len(lb):
            raise AnalysisError(f"labelings {a!r} and {b!r} have different lengths")
        rows.append(dict(a=a, b=b, ari=float(adjusted_rand_score(la, lb)),
                         nmi=float(normalized_mutual_info_score(la, lb))))
    return pd.DataFrame(rows, columns=["a", "b", "ari", "nmi"])


@dataclass
class ClusterResult:
    """Everything one clustering run produced, for one scope (all heads, or one layer)."""

    scope: str
    trajectories: TrajectorySet
    metrics: pd.DataFrame
    labels: dict[tuple[str, int], np.ndarray]
    chosen: dict[str, int]
    trees: dict[str, pd.DataFrame]
    agreement: pd.DataFrame
    head_types: pd.Series = field(default_factory=lambda: pd.Series(dtype=object))
    criterion: str = "silhouette"

    @property
    def heads(self) -> list[str]:
        return self.trajectories.heads

    def chosen_labels(self, algorithm: str) -> pd.Series:
        """Cluster of each head at the chosen k of `algorithm`."""
        return pd.Series(self.labels[(algorithm, self.chosen[algorithm])], index=self.heads, name=algorithm)

    def assignments(self) -> pd.DataFrame:
        """Long table: scope, head, algorithm, k, cluster, chosen, head_type."""
        rows = []
        for (algorithm, k), lab in self.labels.items():
            for head, c in zip(self.heads, lab):
                rows.append(dict(scope=self.scope, head=head, algorithm=algorithm, k=k, cluster=int(c),
                                 chosen=self.chosen.get(algorithm) == k,
                                 head_type=self.head_types.get(head, "") if len(self.head_types) else ""))
        return pd.DataFrame(rows)


def cluster_set(
    ts: TrajectorySet,
    *,
    algorithms: Sequence[str] = ALGORITHMS,
    ks: Sequence[int] = range(2, 9),
    k: int | None = None,
    criterion: str = "silhouette",
    types: pd.Series | None = None,
    scope: str = "all heads",
    seed: int = 0,
    dtw_radius: float | None = None,
    kshape_engine: str = "numpy",
) -> ClusterResult:
    """Cluster a `TrajectorySet` with each algorithm for each k in `ks`; pick
    k per algorithm by `criterion` (or use `k` for all); build each
    algorithm's subdivision tree over `ks`; compare the chosen clusterings
    with each other and with head types (when given) by ARI and NMI."""
    all_ks = sorted(set(ks) | ({k} if k is not None else set()))
    metrics, labels = metrics_over_k(ts.values, all_ks, algorithms, seed=seed, dtw_radius=dtw_radius,
                                     kshape_engine=kshape_engine)
    metrics.insert(0, "scope", scope)
    chosen = {a: k for a in algorithms} if k is not None else choose_k(metrics, criterion)
    chosen = {a: kk for a, kk in chosen.items() if (a, kk) in labels}
    trees = {a: subdivision_tree({kk: labels[(a, kk)] for kk in all_ks if (a, kk) in labels}) for a in algorithms}
    labelings: dict[str, Sequence] = {f"{a} (k={kk})": labels[(a, kk)] for a, kk in chosen.items()}
    types = pd.Series(dtype=object) if types is None else types
    if len(types) and all(h in types.index for h in ts.heads):
        labelings["head type"] = types.loc[ts.heads].astype(str).to_numpy()
    agree = agreement(labelings)
    agree.insert(0, "scope", scope)
    return ClusterResult(scope, ts, metrics, labels, chosen, trees, agree,
                         types.reindex(ts.heads) if len(types) else types, criterion)


def default_cluster_keys(df: pd.DataFrame) -> list[str]:
    """The rLLC paper's choice: the head LLC curves of every dataset
    (e.g. prose drLLC ‖ code drLLC), else every per-head estimate, else every
    per-head signal."""
    table = annotate(df)
    llc = sorted(table.loc[(table["signal"] == "llc") & (table["level"] == "head"), "key"].unique())
    if llc:
        return llc
    keys = head_keys(table, "estimate") if "kind" in table.columns else []
    return keys or head_keys(table)


def cluster_trajectories(
    df: pd.DataFrame,
    keys: Sequence[str] | None = None,
    *,
    algorithms: Sequence[str] = ALGORITHMS,
    ks: Sequence[int] = range(2, 9),
    k: int | None = None,
    normalisation: str = "zscore",
    log_time: bool = False,
    n_points: int | None = None,
    per_layer: bool = False,
    criterion: str = "silhouette",
    types_step: int | None = None,
    seed: int = 0,
    dtw_radius: float | None = None,
    kshape_engine: str = "numpy",
) -> list[ClusterResult]:
    """Cluster per-head trajectories of a results table.

    `keys` are signal keys (see `rllc.analysis.trajectories`); several are
    normalised one by one and concatenated (default: `default_cluster_keys`).
    With ``per_layer`` each layer is clustered on its own (k capped at the
    number of its heads − 1), else all heads together. Head types for the
    agreement come from `head_types(df, types_step)`. Returns one
    `ClusterResult` per scope."""
    table = annotate(df)
    keys = list(keys) if keys else default_cluster_keys(table)
    ts = stack_trajectories(table, keys, normalisation=normalisation, log_time_axis=log_time, n_points=n_points)
    types = head_types(table, types_step)
    sets = {f"layer {layer}": s for layer, s in ts.by_layer().items()} if per_layer else {"all heads": ts}
    results = []
    for scope, s in sets.items():
        if len(s.heads) < 3:
            continue
        results.append(cluster_set(s, algorithms=algorithms, ks=ks, k=k, criterion=criterion, types=types,
                                   scope=scope, seed=seed, dtw_radius=dtw_radius, kshape_engine=kshape_engine))
    if not results:
        raise AnalysisError("every scope has fewer than 3 heads; nothing to cluster")
    return results


# The rLLC paper's weighting of its majority vote (Appendix F.5: "weighted towards shape-based clustering").
PAPER_VOTE_WEIGHTS = {"kmeans": 1.0, "kshape": 2.0}


def consensus_labels(labelings: Mapping[str, Sequence[int]], k: int,
                     weights: Mapping[str, float] | None = None) -> np.ndarray:
    """A weighted majority vote of several clusterings of the same heads: heads i and j are together in a
    share of the (weighted) votes; the consensus is the average-linkage clustering of 1 - that share
    into k groups (a co-association consensus)."""
    weights = dict(weights or {})
    names = list(labelings)
    n = len(next(iter(labelings.values())))
    together = np.zeros((n, n))
    total = 0.0
    for name in names:
        w = float(weights.get(name, 1.0))
        lab = np.asarray(labelings[name])
        together += w * (lab[:, None] == lab[None, :])
        total += w
    if k == 1 or n < 2:
        return np.zeros(n, dtype=int)
    labels = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(
        1.0 - together / total)
    return canonical_labels(labels)


def paper_clustering(ts: TrajectorySet, types: pd.Series, *, seed: int = 0,
                     weights: Mapping[str, float] = PAPER_VOTE_WEIGHTS) -> pd.DataFrame:
    """The rLLC paper's procedure (Appendix F.5), fixed before looking at any result: per layer, the heads'
    curves (several keys concatenated, e.g. train ‖ code) clustered by Euclidean k-means and by k-Shape,
    plus their majority vote weighted towards k-Shape (`consensus_labels`); the same for all heads together.
    k is the number of behavioural types present among the heads of the view (the types are used to pick
    k, never to pick among clusterings); a view with one type is skipped.

    Returns one row per view and method: scope, method, k, n_heads, ari, nmi (against `types`) and the
    clusters as "head head | head ..." text."""
    rows = []
    views = {"all heads": ts, **{f"layer {layer}": s for layer, s in ts.by_layer().items()}}
    for scope, view in views.items():
        truth = types.reindex(view.heads).astype(str)
        k = int(truth.nunique())
        if k < 2 or len(view.heads) < 3:
            continue
        labelings = {m: fit_labels(view.values, k, m, seed=seed) for m in ("kmeans", "kshape")}
        labelings["vote"] = consensus_labels({m: labelings[m] for m in ("kmeans", "kshape")}, k, weights)
        for method, labels in labelings.items():
            groups = " | ".join(" ".join(h for h, c in zip(view.heads, labels) if c == g)
                                for g in sorted(set(labels)))
            rows.append(dict(scope=scope, method=method, k=k, n_heads=len(view.heads),
                             ari=float(adjusted_rand_score(truth, labels)),
                             nmi=float(normalized_mutual_info_score(truth, labels)), clusters=groups))
    return pd.DataFrame(rows, columns=["scope", "method", "k", "n_heads", "ari", "nmi", "clusters"])
