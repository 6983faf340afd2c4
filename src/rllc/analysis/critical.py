"""Critical points of curves over training (peaks, troughs, inflections) and
their alignment in time across signals.

Smoothing (stated in every output row, column ``smoothing``): a curve given at
checkpoint steps is first interpolated linearly onto ``n_grid`` points evenly
spaced in x = log10(step + offset) (offset: the smallest positive step), then
smoothed on that grid:

* ``gaussian`` (default): a Gaussian kernel of standard deviation ``width``
  decades of x (scipy ``gaussian_filter1d``, edges extended by the nearest
  value);
* ``savgol``: a Savitzky–Golay filter with a window of ``width`` decades
  (rounded to an odd number of grid points) and polynomial order ``order``;
* ``none``: no smoothing.

On the smoothed curve y(x) and its slope y'(x) = dy/dx (central differences):

* a **peak** (**trough**) is a local maximum (minimum) of y whose topographic
  prominence (scipy ``find_peaks``) is at least ``prominence`` × (max y − min y)
  and at least ``noise_factor`` × σ;
* an **inflection** is a local extremum of the slope: ``rise`` where y' has a
  local maximum with y' > 0, ``fall`` where it has a local minimum with y' < 0,
  each with prominence at least ``slope_prominence`` × max |y'|, and across
  whose slope hill (between the hill's bases) y changes by at least
  ``noise_factor`` × σ.

σ is the noise level of the curve, from the differences of consecutive
checkpoint values: 1.4826 × MAD(Δv) / √2 (`noise_level`). It keeps flat,
noisy curves from reporting the wiggles of their noise.

Points at the two ends of the grid are never reported. Steps are reported as
10**x − offset, i.e. between checkpoints where the smoothed curve says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks, savgol_filter

from rllc.analysis.trajectories import AnalysisError, annotate, default_offset, resolve_key, trajectories

SMOOTHERS = ("gaussian", "savgol", "none")
KINDS = ("peak", "trough", "rise", "fall")
POINT_COLUMNS = ["component", "key", "kind", "step", "x", "value", "prominence", "smoothing"]


@dataclass(frozen=True)
class Smoothing:
    """How curves are smoothed before critical points are read (module docstring)."""

    method: str = "gaussian"
    width: float = 0.08
    order: int = 2
    n_grid: int = 256
    offset: float | None = None

    def __post_init__(self):
        if self.method not in SMOOTHERS:
            raise AnalysisError(f"smoothing {self.method!r}: choose one of {', '.join(SMOOTHERS)}")
        if self.method != "none" and not self.width > 0:
            raise AnalysisError("smoothing width must be > 0 decades")
        if self.n_grid < 8:
            raise AnalysisError("smoothing grid needs at least 8 points")

    def describe(self, offset: float | None = None) -> str:
        off = self.offset if offset is None else offset
        axis = f"log10(step + {off:g})" if off is not None else "log10(step + offset)"
        grid = f"{self.n_grid}-point grid in {axis}"
        if self.method == "gaussian":
            return f"gaussian, sigma {self.width:g} decades, {grid}"
        if self.method == "savgol":
            return f"savitzky-golay, window {self.width:g} decades, order {self.order}, {grid}"
        return f"none, {grid}"


@dataclass
class SmoothCurve:
    steps: np.ndarray
    x: np.ndarray
    y: np.ndarray
    slope: np.ndarray
    offset: float
    description: str
    noise: float = 0.0


def noise_level(values: Sequence[float]) -> float:
    """σ of a curve's noise from differences of consecutive values:
    1.4826 × MAD(Δv) / √2 (robust to the few large steps a real rise makes)."""
    d = np.diff(np.asarray(values, dtype=float))
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def smooth_curve(steps: Sequence[float], values: Sequence[float], smoothing: Smoothing = Smoothing()) -> SmoothCurve:
    """The curve on the log-step grid, smoothed, and its slope dy/dx (x in decades)."""
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & np.isfinite(s)
    s, v = s[ok], v[ok]
    order = np.argsort(s)
    s, v = s[order], v[order]
    if len(s) < 4:
        raise AnalysisError(f"a curve needs at least 4 finite points, got {len(s)}")
    off = default_offset(s) if smoothing.offset is None else float(smoothing.offset)
    xs = np.log10(s + off)
    x = np.linspace(xs[0], xs[-1], smoothing.n_grid)
    y = np.interp(x, xs, v)
    dx = x[1] - x[0]
    if smoothing.method == "gaussian":
        y = gaussian_filter1d(y, sigma=smoothing.width / dx, mode="nearest")
    elif smoothing.method == "savgol":
        window = int(round(smoothing.width / dx)) | 1
        window = max(window, smoothing.order + 2 + (smoothing.order % 2 == 1))
        window = min(window, len(x) - (1 - len(x) % 2))
        y = savgol_filter(y, window_length=window, polyorder=smoothing.order, mode="interp")
    slope = np.gradient(y, dx)
    noise = noise_level(v)
    return SmoothCurve(10 ** x - off, x, y, slope, off, smoothing.describe(off), noise)


def critical_points(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    smoothing: Smoothing = Smoothing(),
    prominence: float = 0.1,
    slope_prominence: float = 0.2,
    noise_factor: float = 3.0,
    kinds: Sequence[str] = KINDS,
) -> pd.DataFrame:
    """Peaks, troughs and inflections (rise/fall) of one curve (module
    docstring). Columns: kind, step, x, value (smoothed), prominence
    (relative: of the curve's range for peaks/troughs, of max |slope| for
    inflections), smoothing. Sorted by step."""
    c = smooth_curve(steps, values, smoothing)
    rows = []
    span = float(np.ptp(c.y))
    max_slope = float(np.max(np.abs(c.slope)))
    floor = noise_factor * c.noise
    if span > 0 and span >= floor:
        for kind, sign in (("peak", 1.0), ("trough", -1.0)):
            if kind not in kinds:
                continue
            idx, props = find_peaks(sign * c.y, prominence=max(prominence * span, floor))
            rows += [(kind, i, props["prominences"][j] / span) for j, i in enumerate(idx)]
    if max_slope > 0 and span >= floor:
        for kind, sign in (("rise", 1.0), ("fall", -1.0)):
            if kind not in kinds:
                continue
            idx, props = find_peaks(sign * c.slope, prominence=slope_prominence * max_slope)
            for j, i in enumerate(idx):
                change = sign * (c.y[props["right_bases"][j]] - c.y[props["left_bases"][j]])
                if sign * c.slope[i] > 0 and change >= floor:
                    rows.append((kind, i, props["prominences"][j] / max_slope))
    out = pd.DataFrame(
        [dict(kind=k, step=float(c.steps[i]), x=float(c.x[i]), value=float(c.y[i]), prominence=float(p),
              smoothing=c.description) for k, i, p in rows],
        columns=["kind", "step", "x", "value", "prominence", "smoothing"],
    )
    return out.sort_values(["step", "kind"], ignore_index=True)


def critical_points_table(
    df: pd.DataFrame,
    keys: Sequence[str],
    *,
    levels: Sequence[str] = ("head", "model"),
    smoothing: Smoothing = Smoothing(),
    prominence: float = 0.1,
    slope_prominence: float = 0.2,
    noise_factor: float = 3.0,
) -> pd.DataFrame:
    """Critical points of every curve of the given signal keys (per head, and
    the full-model curve where there is one). Columns: component, key, kind,
    step, x, value, prominence, smoothing."""
    table = annotate(df)
    frames = []
    for key in keys:
        name = resolve_key(table, key)
        for level in levels:
            rows = table[(table["key"] == name) & (table["level"] == level)]
            if rows.empty:
                continue
            wide = trajectories(rows, name, level=level)
            for component, curve in wide.iterrows():
                if curve.notna().sum() < 4:
                    continue
                pts = critical_points(wide.columns, curve.to_numpy(), smoothing=smoothing,
                                      prominence=prominence, slope_prominence=slope_prominence,
                                      noise_factor=noise_factor)
                if len(pts):
                    pts.insert(0, "key", name)
                    pts.insert(0, "component", component)
                    frames.append(pts)
    if not frames:
        return pd.DataFrame(columns=POINT_COLUMNS)
    return pd.concat(frames, ignore_index=True)[POINT_COLUMNS]


def align_events(
    points: pd.DataFrame,
    reference: tuple[str, str],
    other: tuple[str, str | None],
    *,
    max_lag: float = 0.5,
) -> pd.DataFrame:
    """For each component's `reference` event (key, kind) the nearest event
    (in log-step) of `other` (key, kind or None for any kind) of the same
    component, or of the full-model curve when the other key has none for that
    component. Events farther than `max_lag` decades are not matched (NaN).

    Columns: component, ref_key, ref_kind, ref_step, other_key, other_kind,
    other_component, other_step, lag_steps (other − reference), lag_decades."""
    ref_key, ref_kind = reference
    other_key, other_kind = other
    ref = points[(points["key"] == ref_key) & (points["kind"] == ref_kind)]
    oth = points[points["key"] == other_key]
    if other_kind is not None:
        oth = oth[oth["kind"] == other_kind]
    rows = []
    for _, r in ref.iterrows():
        cand = oth[oth["component"] == r["component"]]
        if cand.empty:
            cand = oth[oth["component"].isin(["model", ""])]
        match = None
        if not cand.empty:
            gap = (cand["x"] - r["x"]).abs()
            if gap.min() <= max_lag:
                match = cand.loc[gap.idxmin()]
        rows.append(dict(
            component=r["component"], ref_key=ref_key, ref_kind=ref_kind, ref_step=r["step"],
            other_key=other_key, other_kind=None if match is None else match["kind"],
            other_component=None if match is None else match["component"],
            other_step=np.nan if match is None else match["step"],
            lag_steps=np.nan if match is None else match["step"] - r["step"],
            lag_decades=np.nan if match is None else match["x"] - r["x"],
        ))
    return pd.DataFrame(rows, columns=["component", "ref_key", "ref_kind", "ref_step", "other_key", "other_kind",
                                       "other_component", "other_step", "lag_steps", "lag_decades"])


def alignment_summary(
    points: pd.DataFrame,
    reference_keys: Sequence[str] | None = None,
    other_keys: Sequence[str] | None = None,
    *,
    max_lag: float = 0.5,
) -> pd.DataFrame:
    """Across heads, how events of one signal line up with events of another.

    For every reference key (default: every key), every event kind of it and
    every other key (default: every key but the reference), each head's
    reference event is matched to the nearest event of any kind of the other
    key for the same head (or of the other key's full-model curve when that
    key has no curve for the head), within `max_lag` decades. Columns:
    ref_key, ref_kind, other_key, n_events, n_matched, median_lag_decades
    (other − reference), median_abs_lag_decades, matched_kind (the kind most
    often matched)."""
    from rllc.analysis.trajectories import component_level

    levels = np.array([component_level(c) for c in points["component"]])
    heads = points[levels == "head"]
    model = points[levels == "model"]
    all_keys = list(dict.fromkeys(points["key"]))
    reference_keys = all_keys if reference_keys is None else list(reference_keys)
    other_keys = all_keys if other_keys is None else list(other_keys)
    rows = []
    for a in reference_keys:
        for kind in KINDS:
            ref = heads[(heads["key"] == a) & (heads["kind"] == kind)][["component", "x"]].reset_index(drop=True)
            if ref.empty:
                continue
            ref["event"] = np.arange(len(ref))
            for b in other_keys:
                if b == a:
                    continue
                own = heads[heads["key"] == b][["component", "x", "kind"]]
                pairs = ref.merge(own, on="component", suffixes=("", "_o"))
                has_own = set(own["component"])
                fallback = model[model["key"] == b][["x", "kind"]]
                if len(fallback):
                    rest = ref[~ref["component"].isin(has_own)]
                    pairs = pd.concat([pairs, rest.merge(fallback, how="cross", suffixes=("", "_o"))],
                                      ignore_index=True)
                pairs["lag"] = pairs["x_o"] - pairs["x"]
                pairs = pairs[pairs["lag"].abs() <= max_lag]
                best = pairs.loc[pairs.groupby("event")["lag"].apply(lambda s: s.abs().idxmin())] \
                    if len(pairs) else pairs
                rows.append(dict(
                    ref_key=a, ref_kind=kind, other_key=b, n_events=len(ref), n_matched=len(best),
                    median_lag_decades=float(best["lag"].median()) if len(best) else np.nan,
                    median_abs_lag_decades=float(best["lag"].abs().median()) if len(best) else np.nan,
                    matched_kind=best["kind"].mode().iloc[0] if len(best) else None,
                ))
    return pd.DataFrame(rows, columns=["ref_key", "ref_kind", "other_key", "n_events", "n_matched",
                                       "median_lag_decades", "median_abs_lag_decades", "matched_kind"])
