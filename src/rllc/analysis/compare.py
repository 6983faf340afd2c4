"""Geometry against behaviour: rank correlations over heads between every pair
of signals, per checkpoint and across the series; critical points of every
curve and their alignment; stage boundaries from the full-model LLC curve.

Pair signals (components ``sender->receiver``, e.g. composition scores) are
turned into two per-head signals before they are correlated:
``<signal>.in`` (for a receiver head, the max over its senders) and
``<signal>.out`` (for a sender head, the max over its receivers), each per
variant (side) and dataset (`pairs_to_heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rllc.analysis.critical import (
    Smoothing,
    align_events,
    alignment_summary,
    critical_points,
    critical_points_table,
    smooth_curve,
)
from rllc.analysis.trajectories import (
    PAIR_SEP,
    AnalysisError,
    annotate,
    head_keys,
    resolve_key,
    signal_keys,
    trajectories,
)

CORRELATION_METHODS = ("spearman", "kendall")
# Per-head signals that are labels or bookkeeping, not quantities to correlate.
NOT_CORRELATED = ("head_class",)


def pairs_to_heads(df: pd.DataFrame, how: str = "max") -> pd.DataFrame:
    """Per-head rows derived from pair rows (``sender->receiver``): signal
    ``<signal>.in`` on the receiver (aggregated over senders) and
    ``<signal>.out`` on the sender (over receivers), with `how` = "max" or
    "mean". Returns only the new rows, annotated."""
    if how not in ("max", "mean"):
        raise AnalysisError(f"pair aggregation {how!r}: 'max' or 'mean'")
    table = annotate(df)
    pairs = table[table["level"] == "pair"].dropna(subset=["value"])
    if pairs.empty:
        return table.iloc[0:0]
    ends = pairs["component"].str.split(PAIR_SEP, n=1, expand=True)
    pairs = pairs.assign(sender=ends[0].str.strip(), receiver=ends[1].str.strip())
    frames = []
    for role, suffix in (("receiver", ".in"), ("sender", ".out")):
        g = pairs.groupby(["step", "signal", "variant", "dataset", role], dropna=False)["value"].agg(how).reset_index()
        g = g.rename(columns={role: "component"})
        g["signal"] = g["signal"] + suffix
        # the whole variant goes into the first extra, so that `annotate` gives it back unchanged
        g["method"] = g["variant"].where(g["variant"] != "", np.nan)
        g["side"] = np.nan
        g["target"] = np.nan
        if "kind" in pairs.columns:
            g["kind"] = "probe"
        frames.append(g)
    out = pd.concat(frames, ignore_index=True).drop(columns=["variant"])
    return annotate(out)


def with_pair_signals(df: pd.DataFrame, how: str = "max") -> pd.DataFrame:
    """The table plus the per-head rows `pairs_to_heads` derives."""
    table = annotate(df)
    extra = pairs_to_heads(table, how)
    if extra.empty:
        return table
    both = pd.concat([table.drop(columns=["key", "variant", "level"]),
                      extra.drop(columns=["key", "variant", "level"])], ignore_index=True)
    return annotate(both)


def correlation_keys(df: pd.DataFrame) -> list[str]:
    """Every per-head numeric signal key except labels (estimates first)."""
    table = annotate(df)
    return [k for k in head_keys(table)
            if table.loc[table["key"] == k, "signal"].iloc[0] not in NOT_CORRELATED]


def head_signal_matrix(df: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """A wide table: one row per (step, head), one column per signal key."""
    table = annotate(df)
    keys = correlation_keys(table) if keys is None else [resolve_key(table, k) for k in keys]
    rows = table[(table["level"] == "head") & table["key"].isin(keys)]
    wide = rows.pivot_table(index=["step", "component"], columns="key", values="value", aggfunc="mean")
    return wide.reindex(columns=[k for k in keys if k in wide.columns])


def _corr(frame: pd.DataFrame, method: str, min_heads: int) -> pd.DataFrame:
    return frame.corr(method=method, min_periods=min_heads)


def _long(matrix: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    keys = list(matrix.columns)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            rows.append(dict(signal_a=a, signal_b=b, rho=matrix.loc[a, b], n=int(counts.loc[a, b])))
    return pd.DataFrame(rows, columns=["signal_a", "signal_b", "rho", "n"])


def rank_correlations(
    df: pd.DataFrame,
    keys: Sequence[str] | None = None,
    *,
    method: str = "spearman",
    min_heads: int = 5,
) -> pd.DataFrame:
    """Rank correlation over heads between every pair of signal keys, at every
    checkpoint. Columns: step, signal_a, signal_b, rho, n (heads with both
    values). Pairs with fewer than `min_heads` heads, or a constant signal,
    give NaN."""
    if method not in CORRELATION_METHODS:
        raise AnalysisError(f"correlation {method!r}: choose one of {', '.join(CORRELATION_METHODS)}")
    wide = head_signal_matrix(df, keys)
    frames = []
    for step, block in wide.groupby(level="step"):
        block = block.droplevel("step")
        present = block.notna().astype(int)
        long = _long(_corr(block, method, min_heads), present.T @ present)
        long.insert(0, "step", int(step))
        frames.append(long)
    if not frames:
        return pd.DataFrame(columns=["step", "signal_a", "signal_b", "rho", "n"])
    return pd.concat(frames, ignore_index=True)


def series_correlations(
    df: pd.DataFrame,
    keys: Sequence[str] | None = None,
    *,
    method: str = "spearman",
    min_heads: int = 5,
    per_step: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Across the series, per pair of signal keys: ``pooled_rho``, the rank
    correlation over all (head, checkpoint) points together (it also sees
    trends that all heads share over training); ``mean_rho`` and
    ``median_rho`` of the per-checkpoint correlations (heads ranked against
    each other only), ``n_steps`` with a per-checkpoint value, ``n_points``."""
    wide = head_signal_matrix(df, keys)
    present = wide.notna().astype(int)
    pooled = _long(_corr(wide, method, min_heads), present.T @ present).rename(columns={"rho": "pooled_rho",
                                                                                      "n": "n_points"})
    per_step = rank_correlations(df, keys, method=method, min_heads=min_heads) if per_step is None else per_step
    stats = per_step.groupby(["signal_a", "signal_b"], sort=False)["rho"].agg(
        mean_rho="mean", median_rho="median", n_steps="count").reset_index()
    return pooled.merge(stats, on=["signal_a", "signal_b"], how="left")


def correlation_matrix(long: pd.DataFrame, column: str = "pooled_rho",
                       keys: Sequence[str] | None = None) -> pd.DataFrame:
    """A symmetric key × key matrix (diagonal 1) from a long correlation table."""
    keys = list(dict.fromkeys([*long["signal_a"], *long["signal_b"]])) if keys is None else list(keys)
    m = pd.DataFrame(np.nan, index=keys, columns=keys)
    for _, r in long.iterrows():
        if r["signal_a"] in m.index and r["signal_b"] in m.index:
            m.loc[r["signal_a"], r["signal_b"]] = m.loc[r["signal_b"], r["signal_a"]] = r[column]
    for k in keys:
        m.loc[k, k] = 1.0
    return m


# --- stages ------------------------------------------------------------------------

CURVE_FEATURES = ("final", "peak", "change_step", "change_size")


def curve_features(curves: pd.DataFrame) -> pd.DataFrame:
    """Per-head features of a heads x steps table (e.g. `trajectories(df, "llc@train")`): the final level, the
    peak, and the step and signed size of the largest change between consecutive checkpoints (the step is
    the later checkpoint of that pair)."""
    if curves.shape[1] < 2:
        raise AnalysisError(f"curve features need at least 2 steps, got {curves.shape[1]}")
    v = curves.to_numpy(dtype=float)
    steps = np.asarray(curves.columns, dtype=float)
    diffs = np.diff(v, axis=1)
    largest = np.nanargmax(np.abs(diffs), axis=1)
    rows = np.arange(len(v))
    return pd.DataFrame({"final": v[:, -1], "peak": np.nanmax(v, axis=1), "change_step": steps[largest + 1],
                         "change_size": diffs[rows, largest]}, index=curves.index)


def feature_agreement(features: pd.DataFrame, scores: pd.DataFrame, *, per_layer: bool = True,
                      n_resamples: int = 50_000, seed: int = 0) -> pd.DataFrame:
    """Spearman's rho over heads between every curve feature and every behavioural score, with a two-sided
    permutation p-value (scipy's `permutation_test`, pairings: exact when n_heads! <= `n_resamples`, as for
    one layer's 8 heads (8! = 40,320 orderings) at the default; else `n_resamples` random orderings).

    features, scores: heads x columns (e.g. `curve_features` of the wrLLC curves, and each head's
    previous-token / induction score or ablation effect over training, one summary per column). Heads
    present in both are used; per layer (scope "layer l") and for all heads together (scope "all heads").
    A continuous alternative to the ARI of a clustering, which is fragile with 8 heads and unbalanced types.
    Columns: scope, feature, score, n_heads, rho, p_value.
    """
    from scipy import stats

    from rllc.analysis.trajectories import layer_of

    common = [h for h in features.index if h in scores.index]
    scopes = {"all heads": common}
    if per_layer:
        for h in common:
            scopes.setdefault(f"layer {layer_of(h)}", []).append(h)
    rng = np.random.default_rng(seed)
    rows = []
    for scope, heads in scopes.items():
        for feature in features.columns:
            for score in scores.columns:
                pair = pd.DataFrame({"x": features.loc[heads, feature], "y": scores.loc[heads, score]}).dropna()
                n = len(pair)
                rho = p = np.nan
                if n >= 3 and pair["x"].nunique() > 1 and pair["y"].nunique() > 1:
                    x, y = stats.rankdata(pair["x"]), stats.rankdata(pair["y"])
                    rho = float(np.corrcoef(x, y)[0, 1])
                    # one sample permuted against the fixed other: n! orderings (exact when that is <= n_resamples)
                    test = stats.permutation_test(
                        (x,), lambda a, axis: _pearson_along(a, np.broadcast_to(y, a.shape), axis),
                        permutation_type="pairings", vectorized=True, n_resamples=n_resamples,
                        alternative="two-sided", random_state=rng)
                    p = float(test.pvalue)
                rows.append(dict(scope=scope, feature=feature, score=score, n_heads=n, rho=rho, p_value=p))
    return pd.DataFrame(rows, columns=["scope", "feature", "score", "n_heads", "rho", "p_value"])


def _pearson_along(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Pearson correlation along `axis` (of rank vectors: Spearman's rho), for scipy's vectorized test."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))


def stage_boundaries(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    smoothing: Smoothing = Smoothing(),
    flat: float = 0.1,
    prominence: float = 0.05,
    min_separation: float = 0.1,
) -> pd.DataFrame:
    """Stage boundaries of a full-model LLC curve, as in Hoogland et al.
    (2024): points where the LLC, as a function of log-step, is critical
    (its slope dλ/dlog t vanishes): local maxima and minima, and plateaus.

    On the smoothed curve (`Smoothing`; slope in units per decade) a boundary is
    a local minimum of |slope| that is at most `flat` × max |slope| and whose
    prominence (as a dip of |slope|) is at least `prominence` × max |slope|;
    boundaries closer than `min_separation` decades keep the flatter one. Each
    is labelled by the slope one smoothing width before and after it:
    ``peak`` (+ → −), ``trough`` (− → +), else ``plateau``, where a slope
    smaller in size than `flat`/2 × max |slope| counts as neither + nor −.

    Returns the stages: columns stage ("S1", ...), start, end (steps; the
    first starts at the first step, the last ends at the last), boundary (the
    kind of the critical point that ends it, "" for the last), value (smoothed
    LLC at the end), smoothing."""
    from scipy.signal import find_peaks

    c = smooth_curve(steps, values, smoothing)
    mag = np.abs(c.slope)
    top = float(mag.max())
    points = []
    if top > 0:
        idx, props = find_peaks(-mag, prominence=prominence * top)
        for i in idx:
            if mag[i] <= flat * top:
                points.append(int(i))
    kept: list[int] = []
    for i in sorted(points, key=lambda i: mag[i]):
        if all(abs(c.x[i] - c.x[j]) >= min_separation for j in kept):
            kept.append(i)
    kept.sort()
    rows = []
    start = float(c.steps[0])
    reach = max(2, int(round(smoothing.width / (c.x[1] - c.x[0])))) if smoothing.method != "none" else 2
    for n, i in enumerate(kept, start=1):
        lo, hi = max(i - reach, 0), min(i + reach, len(c.slope) - 1)
        before, after = c.slope[lo], c.slope[hi]
        eps = 0.5 * flat * top  # slopes smaller than this count as flat
        kind = "peak" if before > eps and after < -eps else "trough" if before < -eps and after > eps else "plateau"
        rows.append(dict(stage=f"S{n}", start=start, end=float(c.steps[i]), boundary=kind, value=float(c.y[i]),
                         smoothing=c.description))
        start = float(c.steps[i])
    rows.append(dict(stage=f"S{len(kept) + 1}", start=start, end=float(c.steps[-1]), boundary="",
                     value=float(c.y[-1]), smoothing=c.description))
    return pd.DataFrame(rows, columns=["stage", "start", "end", "boundary", "value", "smoothing"])


def model_llc_key(df: pd.DataFrame, key: str | None = None) -> str | None:
    """The key of the full-model LLC curve: `key` if given, else the model-level
    "llc" key with the most steps (None if the table has none)."""
    table = annotate(df)
    if key is not None:
        return resolve_key(table, key)
    keys = signal_keys(table)
    keys = keys[(keys["signal"] == "llc") & (keys["level"] == "model")]
    if keys.empty:
        return None
    return str(keys.sort_values(["n_steps", "key"], ascending=[False, True]).iloc[0]["key"])


def stages_of(df: pd.DataFrame, key: str | None = None, *, smoothing: Smoothing = Smoothing(),
              **kwargs) -> pd.DataFrame:
    """`stage_boundaries` of the full-model LLC curve of a results table
    (`model_llc_key`); an empty frame when there is none."""
    name = model_llc_key(df, key)
    if name is None:
        return pd.DataFrame(columns=["stage", "start", "end", "boundary", "value", "smoothing"])
    curve = trajectories(df, name, level="model").iloc[0]
    out = stage_boundaries(curve.index.to_numpy(), curve.to_numpy(), smoothing=smoothing, **kwargs)
    out.insert(0, "key", name)
    return out


def default_reference_keys(df: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys whose events the others are aligned to by default: the per-head
    LLC keys (wrLLC/drLLC per dataset), else every estimate, else the first key."""
    table = annotate(df)
    llc = set(table.loc[(table["signal"] == "llc") & (table["level"] == "head"), "key"])
    est = set(head_keys(table, "estimate")) if "kind" in table.columns else set()
    return [k for k in keys if k in llc] or [k for k in keys if k in est] or list(keys[:1])


# --- everything at once --------------------------------------------------------------

@dataclass
class CompareResult:
    keys: list[str]
    per_step: pd.DataFrame
    series: pd.DataFrame
    points: pd.DataFrame
    alignment: pd.DataFrame
    stages: pd.DataFrame
    smoothing: Smoothing
    method: str

    def matrix(self, column: str = "pooled_rho") -> pd.DataFrame:
        return correlation_matrix(self.series, column, self.keys)


def compare(
    df: pd.DataFrame,
    keys: Sequence[str] | None = None,
    *,
    method: str = "spearman",
    min_heads: int = 5,
    pairs: str | None = "max",
    smoothing: Smoothing = Smoothing(),
    prominence: float = 0.1,
    slope_prominence: float = 0.2,
    noise_factor: float = 3.0,
    max_lag: float = 0.5,
    reference_keys: Sequence[str] | None = None,
    stage_key: str | None = None,
) -> CompareResult:
    """Rank correlations (per checkpoint and across the series), critical
    points of every per-head and full-model curve, their alignment (events of
    the `reference_keys`, default: the estimates, against every other key)
    and the stages of the full-model LLC curve. `pairs` ("max", "mean" or
    None) turns pair signals into per-head ones (`pairs_to_heads`)."""
    table = with_pair_signals(df, pairs) if pairs else annotate(df)
    keys = correlation_keys(table) if keys is None else [resolve_key(table, k) for k in keys]
    if len(keys) < 2:
        raise AnalysisError(f"need at least 2 per-head signals to compare, have {keys}")
    per_step = rank_correlations(table, keys, method=method, min_heads=min_heads)
    series = series_correlations(table, keys, method=method, min_heads=min_heads, per_step=per_step)
    curve_keys = list(keys)
    model_keys = sorted(table.loc[table["level"] == "model", "key"].unique())
    points = critical_points_table(table, list(dict.fromkeys([*curve_keys, *model_keys])), smoothing=smoothing,
                                   prominence=prominence, slope_prominence=slope_prominence,
                                   noise_factor=noise_factor)
    if reference_keys is None:
        reference_keys = default_reference_keys(table, keys)
    else:
        reference_keys = [resolve_key(table, k) for k in reference_keys]
    alignment = alignment_summary(points, reference_keys, None, max_lag=max_lag)
    stages = stages_of(table, stage_key, smoothing=smoothing)
    return CompareResult(keys, per_step, series, points, alignment, stages, smoothing, method)


__all__ = [
    "CORRELATION_METHODS",
    "CompareResult",
    "align_events",
    "alignment_summary",
    "compare",
    "correlation_keys",
    "correlation_matrix",
    "critical_points",
    "default_reference_keys",
    "critical_points_table",
    "head_signal_matrix",
    "model_llc_key",
    "pairs_to_heads",
    "rank_correlations",
    "series_correlations",
    "stage_boundaries",
    "stages_of",
    "with_pair_signals",
]
