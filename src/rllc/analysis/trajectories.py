"""From the long results table to per-head trajectories.

The results table (``rllc.load_results``) has one row per measurement with the
columns ``step, checkpoint, kind, signal, component, dataset, value, se,
config_hash, seconds, diagnostics``. Behaviour signals carry extras that tell
rows of one signal apart: ``method`` (ablations), ``side`` (composition, path
patching), ``target`` (selectivity) and ``label`` (head classes). They are read
from columns of those names when the table has them, otherwise from the store's
``variant`` column (``target=…,method=…,side=…``), otherwise from the keys of
the row's ``diagnostics`` JSON.

A *signal key* names one curve family::

    signal[/variant][@dataset]        e.g.  llc@code   ablation/zero   composition/k

``variant`` is the row's extras joined by ``/`` (method, side, target, in that
order); ``@dataset`` is written only when the signal (with that variant) was
measured on more than one dataset; ``#hash`` (the first 8 characters of the
config_hash) only when it was measured with more than one configuration. A key *spec* given by a user may leave out
the variant or the dataset when that leaves no ambiguity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HEAD_RE = re.compile(r"^(\d+):(\d+)$")
PAIR_SEP = "->"
EXTRAS = ("method", "side", "target", "probe")  # "probe": a susceptibility's probe set
MODEL_COMPONENTS = ("model", "")
NORMALISATIONS = ("none", "zscore", "minmax")


class AnalysisError(ValueError):
    """A request the results table cannot answer (an unknown or ambiguous signal, too few heads, ...)."""


# --- components -------------------------------------------------------------

def is_head(component: object) -> bool:
    return isinstance(component, str) and HEAD_RE.match(component) is not None


def parse_head(component: str) -> tuple[int, int]:
    m = HEAD_RE.match(component)
    if m is None:
        raise AnalysisError(f"{component!r} is not a head (write heads as 'layer:head')")
    return int(m.group(1)), int(m.group(2))


def head_sort_key(component: str) -> tuple:
    """Heads in (layer, head) order, then everything else alphabetically."""
    m = HEAD_RE.match(component) if isinstance(component, str) else None
    if m:
        return (0, int(m.group(1)), int(m.group(2)), "")
    if isinstance(component, str) and PAIR_SEP in component:
        a, _, b = component.partition(PAIR_SEP)
        return (1, *head_sort_key(a)[1:3], component)
    return (2, 0, 0, str(component))


def sort_heads(components: Iterable[str]) -> list[str]:
    return sorted(set(components), key=head_sort_key)


def layer_of(component: str) -> int:
    return parse_head(component)[0]


def component_level(component: object) -> str:
    """'head', 'pair' (sender->receiver), 'model', 'layer' (layer:l) or 'set' (anything else)."""
    if not isinstance(component, str) or component in MODEL_COMPONENTS:
        return "model"
    if HEAD_RE.match(component):
        return "head"
    if PAIR_SEP in component:
        return "pair"
    if component.startswith("layer:"):
        return "layer"
    return "set"


# --- annotating the table ----------------------------------------------------

def _diagnostics_dicts(series: pd.Series) -> list[dict]:
    out = []
    for text in series.tolist():
        if isinstance(text, dict):
            out.append(text)
            continue
        try:
            d = json.loads(text) if isinstance(text, str) and text else {}
        except (TypeError, ValueError):
            d = {}
        out.append(d if isinstance(d, dict) else {})
    return out


def annotate(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of a results table with the extras lifted into columns and three
    more columns: ``variant``, ``level`` (see `component_level`) and ``key``
    (see the module docstring). A ``variant`` column in the store's form
    (``target=…,method=…,side=…``) is read and replaced. Idempotent."""
    if "key" in df.columns and "variant" in df.columns and "level" in df.columns:
        return df
    missing = {"step", "signal", "component", "value"} - set(df.columns)
    if missing:
        raise AnalysisError(f"results table lacks columns {sorted(missing)}")
    out = df.copy()
    if "dataset" not in out.columns:
        out["dataset"] = ""
    out["dataset"] = out["dataset"].fillna("").astype(str)
    out["component"] = out["component"].fillna("").astype(str)
    if "variant" in out.columns:
        # the store's own variant column: "target=previous,method=zero,side=k"
        text = out["variant"].fillna("").astype(str)
        parsed = {v: dict(p.split("=", 1) for p in v.split(",") if "=" in p) for v in text.unique()}
        for c in EXTRAS:
            if c not in out.columns and any(c in d for d in parsed.values()):
                out[c] = text.map(lambda v, c=c: parsed[v].get(c, np.nan))
        out = out.drop(columns="variant")
    need = [c for c in (*EXTRAS, "label") if c not in out.columns]
    if need and "diagnostics" in out.columns:
        text = out["diagnostics"].astype(str)
        has = text.str.contains("|".join(f'"{c}"' for c in need), regex=True)
        lifted = {c: pd.Series(np.nan, index=out.index, dtype=object) for c in need}
        if has.any():
            dicts = _diagnostics_dicts(out.loc[has, "diagnostics"])
            for c in need:
                lifted[c].loc[has] = [d.get(c, np.nan) for d in dicts]
        for c in need:
            out[c] = lifted[c]
    for c in (*EXTRAS, "label"):
        if c not in out.columns:
            out[c] = np.nan
    parts = [out[c].where(out[c].notna(), "").astype(str) for c in EXTRAS]
    variant = parts[0]
    for p in parts[1:]:
        variant = variant.str.cat(p, sep="/")
    out["variant"] = variant.str.replace(r"/+", "/", regex=True).str.strip("/")
    out["level"] = [component_level(c) for c in out["component"]]
    base = out["signal"].astype(str).where(out["variant"] == "", out["signal"].astype(str) + "/" + out["variant"])
    n_datasets = out.groupby(base)["dataset"].transform("nunique")
    with_ds = (n_datasets > 1) & (out["dataset"] != "")
    out["key"] = base.where(~with_ds, base + "@" + out["dataset"])
    if "config_hash" in out.columns:
        # the same signal measured with different hyperparameters: keep the curves apart
        hashes = out["config_hash"].fillna("").astype(str)
        n_hashes = hashes.groupby(out["key"]).transform("nunique")
        out["key"] = out["key"].where(n_hashes <= 1, out["key"] + "#" + hashes.str[:8])
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    return out


@dataclass(frozen=True)
class KeySpec:
    """A parsed signal key spec: ``signal[/variant][@dataset][#config]``."""

    signal: str
    variant: str | None = None
    dataset: str | None = None
    config: str | None = None

    @classmethod
    def parse(cls, text: str) -> "KeySpec":
        text = text.strip()
        text, _, config = text.partition("#")
        body, at, dataset = text.partition("@")
        signal, slash, variant = body.partition("/")
        if not signal:
            raise AnalysisError(f"signal spec {text!r}: expected 'signal[/variant][@dataset]'")
        return cls(signal, variant if slash else None, dataset if at else None, config or None)

    def mask(self, table: pd.DataFrame) -> pd.Series:
        m = table["signal"].astype(str) == self.signal
        if self.variant is not None:
            m &= table["variant"] == self.variant
        if self.dataset is not None:
            m &= table["dataset"] == self.dataset
        if self.config is not None and "config_hash" in table.columns:
            m &= table["config_hash"].astype(str).str.startswith(self.config)
        return m


def resolve_key(table: pd.DataFrame, spec: str) -> str:
    """The one key of `table` that `spec` names (an exact key, or a spec that
    leaves out an unambiguous variant or dataset)."""
    table = annotate(table)
    keys = set(table["key"].unique())
    if spec in keys:
        return spec
    found = sorted(table.loc[KeySpec.parse(spec).mask(table), "key"].unique())
    if len(found) == 1:
        return found[0]
    if not found:
        raise AnalysisError(f"no signal matches {spec!r}; available: {', '.join(sorted(keys))}")
    raise AnalysisError(f"{spec!r} is ambiguous, it matches {', '.join(found)}: name one of them")


def signal_keys(df: pd.DataFrame) -> pd.DataFrame:
    """One row per signal key: key, signal, variant, dataset, kind, level, and
    the numbers of components and steps it covers."""
    table = annotate(df)
    if "kind" not in table.columns:
        table = table.assign(kind="")
    grouped = table.groupby(["key", "signal", "variant", "dataset", "level"], sort=True)
    out = grouped.agg(kind=("kind", "first"), n_components=("component", "nunique"), n_steps=("step", "nunique"))
    return out.reset_index()


def head_keys(df: pd.DataFrame, kind: str | None = None) -> list[str]:
    """Keys that have per-head rows with numbers (optionally of one kind:
    "estimate" or "probe"), estimates first."""
    table = annotate(df)
    rows = table[(table["level"] == "head") & table["value"].notna()]
    if kind is not None and "kind" in rows.columns:
        rows = rows[rows["kind"] == kind]
    if "kind" in rows.columns:
        order = rows.groupby("key")["kind"].first().map(lambda k: 0 if k == "estimate" else 1)
        return sorted(order.index, key=lambda k: (order[k], k))
    return sorted(rows["key"].unique())


# --- trajectories --------------------------------------------------------------

def trajectories(
    df: pd.DataFrame,
    key: str,
    *,
    level: str = "head",
    components: Sequence[str] | None = None,
    fill: bool = True,
) -> pd.DataFrame:
    """Curves of one signal key: a DataFrame with one row per component
    (heads in layer:head order) and one column per step (ascending).

    ``level`` picks the components ("head", "pair", "model", "layer", "set");
    repeated measurements of one (component, step) are averaged. With
    ``fill=True`` gaps inside a curve are filled by linear interpolation in
    step and its ends by the nearest value; components with no value at all
    are dropped."""
    table = annotate(df)
    name = resolve_key(table, key)
    rows = table[(table["key"] == name) & (table["level"] == level)]
    if components is not None:
        rows = rows[rows["component"].isin(list(components))]
    if rows.empty:
        raise AnalysisError(f"signal {name!r} has no {level}-level rows")
    wide = rows.pivot_table(index="component", columns="step", values="value", aggfunc="mean", dropna=False)
    wide = wide.reindex(index=sort_heads(wide.index), columns=sorted(wide.columns))
    wide.columns = wide.columns.astype(int)
    if fill:
        wide = wide.dropna(how="all")
        steps = np.asarray(wide.columns, dtype=float)
        values = np.array(wide.to_numpy(dtype=float), copy=True)
        for i, row in enumerate(values):
            ok = np.isfinite(row)
            if not ok.all():
                values[i] = np.interp(steps, steps[ok], row[ok])
        wide = pd.DataFrame(values, index=wide.index, columns=wide.columns)
    wide.index.name = "component"
    wide.columns.name = "step"
    return wide


def model_curve(df: pd.DataFrame, key: str = "llc") -> pd.Series:
    """The full-model curve of a signal (component "model" or ""), indexed by step."""
    wide = trajectories(df, key, level="model")
    return wide.iloc[0] if len(wide) == 1 else wide.mean(axis=0)


def head_types(df: pd.DataFrame, step: int | None = None, threshold: float = 3.0) -> pd.Series:
    """Head-type labels (index: heads) at `step` (default: the last step that
    has them). Read from ``head_class`` rows when they carry a label; otherwise
    derived from ``selectivity`` rows as `rllc.behavior.classify_heads` does:
    the target of largest selectivity if it is at least `threshold`, else
    "unclassified". Empty when the table has neither."""
    table = annotate(df)
    cls = table[(table["signal"] == "head_class") & (table["level"] == "head") & table["label"].notna()]
    if not cls.empty:
        at = cls["step"].max() if step is None else step
        cls = cls[cls["step"] == at]
        labels = cls.groupby("component")["label"].first().astype(str)
        return labels.reindex(sort_heads(labels.index)).rename("head_type")
    sel = table[(table["signal"] == "selectivity") & (table["level"] == "head") & table["target"].notna()]
    sel = sel.dropna(subset=["value"])
    if sel.empty:
        return pd.Series(dtype=object, name="head_type")
    at = sel["step"].max() if step is None else step
    sel = sel[sel["step"] == at]
    best = sel.loc[sel.groupby("component")["value"].idxmax()]
    labels = pd.Series(np.where(best["value"] >= threshold, best["target"].astype(str), "unclassified"),
                       index=best["component"].to_numpy())
    return labels.reindex(sort_heads(labels.index)).rename("head_type")


# --- normalisation and the time axis --------------------------------------------

def normalise(values: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Per-row (per-curve) normalisation over time: "none"; "zscore" (subtract
    the mean, divide by the standard deviation; a flat curve becomes 0);
    "minmax" (scale to [0, 1]; a flat curve becomes 0)."""
    x = np.asarray(values, dtype=float)
    if method == "none":
        return x.copy()
    if method == "zscore":
        mu = x.mean(axis=-1, keepdims=True)
        sd = x.std(axis=-1, keepdims=True)
        return np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    if method == "minmax":
        lo = x.min(axis=-1, keepdims=True)
        span = x.max(axis=-1, keepdims=True) - lo
        return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)
    raise AnalysisError(f"normalisation {method!r}: choose one of {', '.join(NORMALISATIONS)}")


def default_offset(steps: Sequence[float]) -> float:
    """The offset of the log-time axis: the smallest positive step (1 if none),
    so that step 0 sits one offset to the left of it."""
    s = np.asarray(steps, dtype=float)
    pos = s[s > 0]
    return float(pos.min()) if pos.size else 1.0


def log_time(steps: Sequence[float], offset: float | None = None) -> np.ndarray:
    """x = log10(step + offset) (offset: `default_offset`)."""
    s = np.asarray(steps, dtype=float)
    off = default_offset(s) if offset is None else float(offset)
    return np.log10(s + off)


def log_resample(
    wide: pd.DataFrame, n_points: int | None = None, offset: float | None = None
) -> pd.DataFrame:
    """Curves resampled by linear interpolation onto `n_points` (default: as
    many as there are steps) points evenly spaced in log10(step + offset). The
    columns of the result are the (fractional) steps of those points."""
    steps = np.asarray(wide.columns, dtype=float)
    off = default_offset(steps) if offset is None else float(offset)
    x = np.log10(steps + off)
    n = len(steps) if n_points is None else int(n_points)
    grid = np.linspace(x[0], x[-1], n)
    values = np.vstack([np.interp(grid, x, row) for row in wide.to_numpy(dtype=float)])
    out = pd.DataFrame(values, index=wide.index, columns=10 ** grid - off)
    out.columns.name = "step"
    return out


@dataclass
class TrajectorySet:
    """Per-head curves of one or several signals on a common time grid.

    ``values`` is [heads, time, signals]; ``flat`` concatenates the signals
    along time ([heads, time*signals]), as the rLLC paper concatenates prose
    and code drLLC curves."""

    heads: list[str]
    keys: list[str]
    steps: np.ndarray
    values: np.ndarray
    raw: dict[str, pd.DataFrame] = field(default_factory=dict)
    normalisation: str = "zscore"
    log_time: bool = False
    left_out: list = field(default_factory=list)  # steps dropped as not at a local minimum (below_minimum_steps)

    @property
    def flat(self) -> np.ndarray:
        n, t, d = self.values.shape
        return self.values.transpose(0, 2, 1).reshape(n, t * d)

    def subset(self, heads: Sequence[str]) -> "TrajectorySet":
        idx = [self.heads.index(h) for h in heads]
        raw = {k: v.loc[list(heads)] for k, v in self.raw.items()}
        return TrajectorySet(list(heads), self.keys, self.steps, self.values[idx], raw,
                             self.normalisation, self.log_time, self.left_out)

    def by_layer(self) -> dict[int, "TrajectorySet"]:
        layers: dict[int, list[str]] = {}
        for h in self.heads:
            layers.setdefault(layer_of(h), []).append(h)
        return {layer: self.subset(hs) for layer, hs in sorted(layers.items())}


def below_minimum_steps(curves: pd.DataFrame) -> list:
    """Steps (columns of a heads x steps table of LLC estimates) whose median over heads is negative.

    At a local minimum the LLC is >= 0; a negative median means the chains ran downhill from w*
    (the initialization checkpoint, typically), so those estimates measure the descent, not the
    geometry at w*, and would dominate every z-scored curve with one shared spike."""
    med = curves.median(axis=0, skipna=True)
    return [s for s in curves.columns if np.isfinite(med[s]) and med[s] < 0]


def stack_trajectories(
    df: pd.DataFrame,
    keys: Sequence[str],
    *,
    normalisation: str = "zscore",
    log_time_axis: bool = False,
    n_points: int | None = None,
    heads: Sequence[str] | None = None,
    drop_below_minimum: bool = True,
) -> TrajectorySet:
    """Per-head curves of several signal keys on one grid, each curve
    normalised on its own (`normalise`), stacked as channels.

    Only heads present in every signal are kept. The grid is the steps all
    signals share, less (with ``drop_below_minimum``, the default) the steps
    where an LLC signal's median head estimate is negative: there w* is not a
    local minimum (`below_minimum_steps`); they are listed in ``left_out``.
    This is the one place that rule lives: `rllc cluster`, the report and the
    findings all stack curves here. With ``log_time_axis`` the curves are then
    resampled onto `n_points` points evenly spaced in log10(step + offset)."""
    if not keys:
        raise AnalysisError("no signals to cluster")
    table = annotate(df)
    names = [resolve_key(table, k) for k in keys]
    raw = {k: trajectories(table, k, components=heads) for k in names}
    common = sort_heads(set.intersection(*(set(w.index) for w in raw.values())))
    if not common:
        raise AnalysisError(f"no head has values for every one of {names}")
    steps = sorted(set.intersection(*(set(w.columns) for w in raw.values())))
    left_out: list = []
    if drop_below_minimum:
        llc_keys = [k for k in names if KeySpec.parse(k).signal == "llc"]
        left_out = sorted({s for k in llc_keys for s in below_minimum_steps(raw[k].loc[common, steps])})
        steps = [s for s in steps if s not in left_out]
    if len(steps) < 3:
        dropped = f" ({len(left_out)} left out: median head LLC < 0, not a local minimum)" if left_out else ""
        raise AnalysisError(f"signals {names} share only {len(steps)} steps{dropped}; need at least 3")
    raw = {k: w.loc[common, steps] for k, w in raw.items()}
    grids = {k: (log_resample(w, n_points) if log_time_axis else w) for k, w in raw.items()}
    grid_steps = np.asarray(next(iter(grids.values())).columns, dtype=float)
    values = np.stack([normalise(g.to_numpy(dtype=float), normalisation) for g in grids.values()], axis=-1)
    return TrajectorySet(common, names, grid_steps, values, raw, normalisation, log_time_axis, left_out)
