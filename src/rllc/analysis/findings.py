"""The study's findings, computed from a run's results table: what the rLLC
demo must show (docs/demo.md), each with its numbers, its method in one
sentence and, where the study sets a threshold, PASS or FAIL.

    head_formation   at the last checkpoint, the largest previous-token score of a
                     layer-0 head (PASS at >= 0.5) and the largest induction score
                     of a head in layer >= 1 (PASS at >= 0.3)
    icl_drop         the step where the model's ICL score drops: the most prominent
                     "fall" critical point of its curve (rllc.analysis.critical);
                     PASS when there is one (it clears the noise floor)
    clustering       the best clustering of the per-head wrLLC curves (llc on prose),
                     chosen by cluster-quality metrics only, and its ARI/NMI against
                     the behavioural head types; goal ARI >= 0.6. Also its ARI/NMI
                     against the uncollapsed selectivity classes. Checkpoints whose
                     median head estimate is negative (not at a local minimum) are
                     left out
    data_refinement  code-minus-prose drLLC of the induction heads against the other
                     heads over the late checkpoints: means, rank AUC, whether the
                     ranges separate (reported)
    critical_points  critical points of the full-model LLC curve beside the steps
                     where the previous-token and induction heads' scores rise
                     (reported)
    timings          wall time per stage and in total (reported; goal 20 minutes)

Behavioural head types are the labels of `rllc.analysis.trajectories.head_types`
(the selectivity class of each head at the last checkpoint) collapsed to three:
``previous`` -> previous-token, ``induction`` -> induction, every other label
(``duplicate``, ``first``, ``self``, ``local``, ``unclassified``) -> other. A
table without class or selectivity rows falls back to the head scores at the
last checkpoint (previous-token score >= 0.5 -> previous-token, induction score
>= 0.3 -> induction, else other).

A finding whose inputs are absent has status ``missing`` and says what is
missing; nothing here raises on an incomplete table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from rllc.analysis.cluster import ALGORITHMS, cluster_set
from rllc.analysis.critical import Smoothing, critical_points, smooth_curve
from rllc.analysis.trajectories import (
    AnalysisError,
    annotate,
    default_offset,
    head_types,
    is_head,
    layer_of,
    resolve_key,
    sort_heads,
    stack_trajectories,
    trajectories,
)

PASS, FAIL, REPORTED, MISSING = "PASS", "FAIL", "reported", "missing"
STATUSES = (PASS, FAIL, REPORTED, MISSING)
PREVIOUS, INDUCTION, OTHER = "previous-token", "induction", "other"
TYPE_MAP = {"previous": PREVIOUS, "induction": INDUCTION}  # every other head_types label -> OTHER
PREV_THRESHOLD = 0.5
INDUCTION_THRESHOLD = 0.3
ARI_GOAL = 0.6
TIME_GOAL_S = 20 * 60.0
FINDINGS = ("head_formation", "icl_drop", "clustering", "data_refinement", "critical_points", "timings")


@dataclass
class Finding:
    """One finding: `status` is PASS / FAIL (against the study's threshold), reported (no threshold) or
    missing (its inputs are absent); `summary` is one line with the numbers; `numbers` holds them."""

    name: str
    title: str
    status: str
    summary: str
    method: str
    numbers: dict[str, Any] = field(default_factory=dict)
    table: pd.DataFrame | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(name=self.name, title=self.title, status=self.status, summary=self.summary, method=self.method,
                 numbers=_jsonable(self.numbers))
        if self.table is not None:
            d["table"] = _jsonable(self.table.to_dict(orient="records"))
        return d


@dataclass
class StudyFindings:
    findings: list[Finding]

    def __getitem__(self, name: str) -> Finding:
        for f in self.findings:
            if f.name == name:
                return f
        raise KeyError(name)

    def __iter__(self):
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def table(self) -> pd.DataFrame:
        """One row per finding: finding, status, summary, method."""
        return pd.DataFrame([dict(finding=f.title, status=f.status, summary=f.summary, method=f.method)
                             for f in self.findings], columns=["finding", "status", "summary", "method"])

    def to_dict(self) -> dict[str, Any]:
        return {f.name: f.to_dict() for f in self.findings}

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from pathlib import Path

            Path(path).write_text(text + "\n", encoding="utf-8")
        return text


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}"


def _step(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:,.0f}"


# --- inputs -----------------------------------------------------------------------------

def _head_rows(table: pd.DataFrame, signal: str) -> pd.DataFrame:
    rows = table[(table["signal"] == signal) & (table["level"] == "head")]
    return rows.dropna(subset=["value"])


def last_scores(table: pd.DataFrame, signal: str) -> tuple[pd.Series, int | None]:
    """Per-head values of a behaviour score at its last step (repeats averaged), and that step."""
    rows = _head_rows(table, signal)
    if rows.empty:
        return pd.Series(dtype=float), None
    at = int(rows["step"].max())
    values = rows[rows["step"] == at].groupby("component")["value"].mean()
    return values.reindex(sort_heads(values.index)), at


def behaviour_types(df: pd.DataFrame, *, prev_threshold: float = PREV_THRESHOLD,
                    induction_threshold: float = INDUCTION_THRESHOLD) -> tuple[pd.Series, str]:
    """Each head's behavioural type (previous-token / induction / other) and where it came from
    (module docstring); an empty Series when the table has no behaviour rows."""
    table = annotate(df)
    labels = head_types(table)
    if len(labels):
        return labels.map(lambda v: TYPE_MAP.get(str(v), OTHER)).rename("type"), \
            "selectivity class at the last checkpoint (head_types), previous -> previous-token, " \
            "induction -> induction, other labels -> other"
    prev, _ = last_scores(table, "previous_token")
    ind, _ = last_scores(table, "induction")
    heads = sort_heads(set(prev.index) | set(ind.index))
    if not heads:
        return pd.Series(dtype=object, name="type"), "no behaviour rows"
    out = {}
    for h in heads:
        p = prev.get(h, np.nan) / prev_threshold
        i = ind.get(h, np.nan) / induction_threshold
        if np.nanmax([p, i, 0.0]) < 1.0:
            out[h] = OTHER
        else:
            out[h] = PREVIOUS if (np.nan_to_num(p, nan=-1) >= np.nan_to_num(i, nan=-1)) else INDUCTION
    return pd.Series(out, name="type").reindex(heads), \
        f"head scores at the last checkpoint (previous-token >= {prev_threshold:g}, induction >= " \
        f"{induction_threshold:g}, else other; no class labels in the table)"


# --- the findings ------------------------------------------------------------------------

def head_formation(table: pd.DataFrame, types: pd.Series, *, prev_threshold: float = PREV_THRESHOLD,
                   induction_threshold: float = INDUCTION_THRESHOLD) -> Finding:
    title = "Head formation"
    method = (f"At the last checkpoint, the largest previous-token score (attention to the previous token on random "
              f"tokens) among layer-0 heads must be >= {prev_threshold:g}, and the largest induction score "
              f"(attention to the token after the earlier occurrence, on repeated random tokens) among heads of "
              f"layer >= 1 must be >= {induction_threshold:g}.")
    prev, prev_at = last_scores(table, "previous_token")
    ind, ind_at = last_scores(table, "induction")
    numbers: dict[str, Any] = dict(prev_threshold=prev_threshold, induction_threshold=induction_threshold)
    parts, missing = [], []
    prev0 = prev[[h for h in prev.index if is_head(h) and layer_of(h) == 0]]
    ind1 = ind[[h for h in ind.index if is_head(h) and layer_of(h) >= 1]]
    ok = True
    if len(prev0):
        best = prev0.idxmax()
        numbers.update(prev_head=best, prev_score=float(prev0.max()), prev_step=prev_at)
        ok &= prev0.max() >= prev_threshold
        parts.append(f"previous-token {_num(prev0.max())} (head {best}, layer 0; >= {prev_threshold:g}: "
                     f"{'yes' if prev0.max() >= prev_threshold else 'no'})")
    else:
        missing.append("previous_token scores of layer-0 heads")
    if len(ind1):
        best = ind1.idxmax()
        numbers.update(induction_head=best, induction_score=float(ind1.max()), induction_step=ind_at)
        ok &= ind1.max() >= induction_threshold
        parts.append(f"induction {_num(ind1.max())} (head {best}; >= {induction_threshold:g}: "
                     f"{'yes' if ind1.max() >= induction_threshold else 'no'})")
    else:
        missing.append("induction scores of heads in layer >= 1")
    heads = sort_heads(set(prev.index) | set(ind.index))
    tab = pd.DataFrame({"head": heads, "previous_token": [prev.get(h, np.nan) for h in heads],
                        "induction": [ind.get(h, np.nan) for h in heads],
                        "type": [types.get(h, "") if len(types) else "" for h in heads]})
    if missing:
        summary = "; ".join(parts + [f"missing: {', '.join(missing)}"])
        return Finding("head_formation", title, MISSING, summary, method, numbers, tab if heads else None)
    step = prev_at if prev_at == ind_at else f"{prev_at}/{ind_at}"
    summary = f"At step {step}: " + "; ".join(parts) + "."
    return Finding("head_formation", title, PASS if ok else FAIL, summary, method, numbers, tab)


def model_signal_curve(table: pd.DataFrame, signal: str, dataset: str | None = None) -> tuple[pd.Series, str]:
    """A model-level curve of `signal` (component "model" or ""), indexed by step, and its dataset; when it
    was measured on several datasets, `dataset` or else the one with the most steps."""
    rows = table[(table["signal"] == signal) & (table["level"] == "model")].dropna(subset=["value"])
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    if rows.empty:
        return pd.Series(dtype=float), ""
    counts = rows.groupby("dataset")["step"].nunique().sort_values(ascending=False, kind="stable")
    ds = counts.index[0]
    rows = rows[rows["dataset"] == ds]
    if "config_hash" in rows.columns and rows["config_hash"].nunique() > 1:
        keep = rows.groupby("config_hash")["step"].nunique().idxmax()
        rows = rows[rows["config_hash"] == keep]
    return rows.groupby("step")["value"].mean().sort_index(), ds


def icl_drop(table: pd.DataFrame, *, smoothing: Smoothing = Smoothing()) -> Finding:
    title = "ICL score drop"
    method = ("The model's ICL score (loss at a late token minus loss at an early token; more negative = more "
              "in-context learning) over training; its drop is the most prominent 'fall' critical point of the "
              f"curve ({smoothing.describe()}; slope prominence >= 0.2 of max |slope| and a change >= 3x the "
              "curve's noise), i.e. a drop that stands out of the checkpoint-to-checkpoint noise.")
    curve, ds = model_signal_curve(table, "icl")
    if len(curve) < 4:
        return Finding("icl_drop", title, MISSING, f"no model-level ICL curve with >= 4 checkpoints "
                       f"({len(curve)} found)", method)
    steps, values = curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float)
    pts = critical_points(steps, values, smoothing=smoothing, kinds=("fall",))
    c = smooth_curve(steps, values, smoothing)
    numbers = dict(dataset=ds, first=float(values[0]), last=float(values[-1]), min=float(values.min()),
                   min_step=int(steps[np.argmin(values)]), noise=float(c.noise), n_checkpoints=len(values))
    tab = pts.drop(columns=["smoothing"]) if len(pts) else None
    if len(pts):
        best = pts.loc[pts["prominence"].idxmax()]
        i = int(np.argmin(np.abs(c.x - best["x"])))
        before = float(np.max(c.y[: i + 1]))
        after = float(np.min(c.y[i:]))
        numbers.update(drop_step=float(best["step"]), drop_size=before - after, n_falls=len(pts),
                       slope_per_decade=float(c.slope[i]))
        summary = (f"The ICL score drops at step ≈ {_step(best['step'])} (smoothed slope {_num(c.slope[i])} per "
                   f"decade; smoothed drop {_num(before - after)}); {_num(values[0])} at step {int(steps[0])} → "
                   f"{_num(values[-1])} at step {int(steps[-1])}; {len(pts)} fall point(s) in all.")
        return Finding("icl_drop", title, PASS, summary, method, numbers, tab)
    i = int(np.argmin(c.slope))
    numbers.update(drop_step=None, steepest_step=float(c.steps[i]), slope_per_decade=float(c.slope[i]))
    summary = (f"No drop clears the noise floor; steepest decrease at step ≈ {_step(c.steps[i])} (slope "
               f"{_num(c.slope[i])} per decade); {_num(values[0])} → {_num(values[-1])}.")
    return Finding("icl_drop", title, FAIL, summary, method, numbers, tab)


def _resolve(table: pd.DataFrame, *specs: str) -> str | None:
    for spec in specs:
        try:
            return resolve_key(table, spec)
        except AnalysisError:
            continue
    return None


def _best_clustering(ts, truth: pd.Series | None, class_truth: pd.Series | None, algorithms, ks, criterion,
                     seed) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Each algorithm's clustering at its k chosen by `criterion`, the best of them by Euclidean
    silhouette on the curves (labels are not used to choose), and its labels; ARI/NMI against
    `truth` and `class_truth` (head -> label) where given."""
    ks = [k for k in ks if 2 <= k <= len(ts.heads) - 1]
    result = cluster_set(ts, algorithms=algorithms, ks=ks, criterion=criterion, seed=seed)
    flat, n = ts.flat, len(ts.heads)
    rows = []
    for a, k in result.chosen.items():
        lab = result.labels[(a, k)]
        n_used = len(np.unique(lab))
        sil = float(silhouette_score(flat, lab, metric="euclidean")) if 2 <= n_used <= n - 1 else float("nan")
        own = result.metrics[(result.metrics["algorithm"] == a) & (result.metrics["k"] == k)]["silhouette"]
        row = dict(algorithm=a, k=k, silhouette_euclidean=sil, silhouette_own=float(own.iloc[0]) if len(own) else float("nan"))
        for suffix, ref in (("", truth), ("_classes", class_truth)):
            if ref is None:
                row["ari" + suffix] = row["nmi" + suffix] = float("nan")
            else:
                ref = ref.reindex(ts.heads).to_numpy()
                row["ari" + suffix] = float(adjusted_rand_score(ref, lab))
                row["nmi" + suffix] = float(normalized_mutual_info_score(ref, lab))
        rows.append(row)
    tab = pd.DataFrame(rows)
    best = tab.loc[tab["silhouette_euclidean"].idxmax()] if tab["silhouette_euclidean"].notna().any() else tab.iloc[0]
    tab.insert(0, "best", tab["algorithm"] == best["algorithm"])
    return tab, best, pd.Series(result.labels[(best["algorithm"], int(best["k"]))], index=ts.heads)


def clustering(table: pd.DataFrame, types: pd.Series, types_source: str, *, key: str = "llc@prose",
               algorithms: Sequence[str] = ALGORITHMS, ks: Sequence[int] = range(2, 9),
               criterion: str = "silhouette", goal: float = ARI_GOAL, seed: int = 0) -> Finding:
    title = "Clustering vs head types"
    method = (f"Per-head wrLLC curves ({key}, z-scored per head, checkpoint axis; checkpoints whose median "
              "head estimate is negative, i.e. not at a local minimum, left out) clustered by "
              f"{', '.join(algorithms)} for k in {min(ks)}..{max(ks)}; each algorithm's k chosen by {criterion}; "
              "the best clustering is the one whose chosen clustering has the highest Euclidean silhouette on "
              "the z-scored curves (labels are not used to choose); its ARI and NMI against the behavioural types "
              f"({types_source}); goal ARI >= {goal:g}. Also reported: ARI and NMI against the uncollapsed "
              "selectivity classes (self, first, previous, induction, ...), and the same clustering done within each "
              "layer on its own (the rLLC paper clusters the heads of one layer), with each layer's ARI.")
    name = _resolve(table, key, "llc")
    if name is None:
        return Finding("clustering", title, MISSING, f"no per-head signal {key!r} in the table", method)
    try:
        ts = stack_trajectories(table, [name])  # leaves out the steps not at a local minimum
        left_out = ts.left_out
    except AnalysisError as e:
        return Finding("clustering", title, MISSING, f"cannot build the {name} curves: {e}", method)
    n = len(ts.heads)
    ks = [k for k in ks if 2 <= k <= n - 1]
    if n < 3 or not ks:
        return Finding("clustering", title, MISSING, f"{n} heads: too few to cluster", method)
    typed = len(types) and all(h in types.index for h in ts.heads)
    truth = types.reindex(ts.heads).astype(str) if typed else None
    classes = head_types(table)
    classed = len(classes) and all(h in classes.index for h in ts.heads)
    class_truth = classes.reindex(ts.heads).astype(str) if classed else None
    tab, best, labels = _best_clustering(ts, truth, class_truth, algorithms, ks, criterion, seed)
    members = {int(c): list(labels.index[labels == c]) for c in sorted(labels.unique())}
    numbers: dict[str, Any] = dict(key=name, heads=n, algorithm=best["algorithm"], k=int(best["k"]),
                                   silhouette=float(best["silhouette_euclidean"]), clusters=members,
                                   goal=goal, steps_used=len(ts.steps),
                                   steps_left_out=[int(s) for s in left_out])
    left_text = (f" Left out (median head estimate < 0): step{'s' if len(left_out) > 1 else ''} "
                 f"{', '.join(str(int(s)) for s in left_out)}." if left_out else "")
    if not typed:
        summary = (f"Best clustering: {best['algorithm']} with k={int(best['k'])} (silhouette "
                   f"{_num(best['silhouette_euclidean'])}); no behavioural head types to compare with.{left_text}")
        return Finding("clustering", title, MISSING, summary, method, numbers, tab)
    counts = truth.value_counts()
    numbers.update(ari=float(best["ari"]), nmi=float(best["nmi"]), types={t: int(c) for t, c in counts.items()},
                   type_of={h: str(t) for h, t in zip(ts.heads, truth)})
    type_text = ", ".join(f"{c} {t}" for t, c in counts.items())
    note = "" if len(counts) > 1 else " (a single type: the ARI cannot reward any clustering)"
    class_text = ""
    if classed:
        class_counts = class_truth.value_counts()
        numbers.update(ari_classes=float(best["ari_classes"]), nmi_classes=float(best["nmi_classes"]),
                       classes={t: int(c) for t, c in class_counts.items()},
                       class_of={h: str(t) for h, t in zip(ts.heads, class_truth)})
        class_text = (f" Against the selectivity classes ({', '.join(f'{c} {t}' for t, c in class_counts.items())}):"
                      f" ARI {_num(best['ari_classes'])}, NMI {_num(best['nmi_classes'])}.")
    per_layer, layer_texts = [], []
    for layer, lts in ts.by_layer().items():
        if len(lts.heads) < 3:
            continue
        _, lbest, llabels = _best_clustering(lts, truth, class_truth, algorithms, ks, criterion, seed)
        ltypes = truth.reindex(lts.heads).value_counts()
        entry = dict(layer=int(layer), heads=len(lts.heads), algorithm=lbest["algorithm"], k=int(lbest["k"]),
                     silhouette=float(lbest["silhouette_euclidean"]), ari=float(lbest["ari"]),
                     nmi=float(lbest["nmi"]), types={t: int(c) for t, c in ltypes.items()},
                     clusters={int(c): list(llabels.index[llabels == c]) for c in sorted(llabels.unique())})
        if classed:
            entry.update(ari_classes=float(lbest["ari_classes"]), nmi_classes=float(lbest["nmi_classes"]))
        per_layer.append(entry)
        one = " (one type)" if len(ltypes) < 2 else ""
        layer_texts.append(f"layer {layer}: {lbest['algorithm']} k={int(lbest['k'])}, ARI {_num(lbest['ari'])}{one}"
                           + (f", ARI vs classes {_num(lbest['ari_classes'])}" if classed else ""))
    numbers["per_layer"] = per_layer
    layer_text = (" Within each layer (as the rLLC paper clusters, reported): " + "; ".join(layer_texts) + "."
                  if layer_texts else "")
    summary = (f"Best clustering: {best['algorithm']} with k={int(best['k'])} (silhouette "
               f"{_num(best['silhouette_euclidean'])}); ARI {_num(best['ari'])}, NMI {_num(best['nmi'])} against "
               f"the head types ({type_text}){note}; goal ARI >= {goal:g}.{class_text}{layer_text}{left_text}")
    return Finding("clustering", title, PASS if best["ari"] >= goal else FAIL, summary, method, numbers, tab)


def rank_auc(a: Sequence[float], b: Sequence[float]) -> float:
    """P(x > y) + P(x = y)/2 for x from `a`, y from `b` (the Mann-Whitney AUC); NaN if either is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        return float("nan")
    diff = a[:, None] - b[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def data_refinement(table: pd.DataFrame, types: pd.Series, *, late_fraction: float = 1 / 3,
                    base: str = "prose", refined: str = "code") -> Finding:
    title = "Data refinement (code − prose drLLC)"
    method = (f"Per head, drLLC on {refined} minus drLLC on {base} at each checkpoint both share, averaged over "
              f"the last {late_fraction:.0%} of those checkpoints; the induction heads (by behavioural type) "
              "against all other heads: their means, the rank AUC P(induction > other), and whether every "
              "induction head lies beyond the other heads' range.")
    key_r, key_b = _resolve(table, f"llc@{refined}"), _resolve(table, f"llc@{base}")
    if key_r is None or key_b is None or key_r == key_b:
        absent = [d for d, k in ((refined, key_r), (base, key_b)) if k is None] or [refined]
        return Finding("data_refinement", title, MISSING, f"no per-head llc on {' and '.join(absent)}", method)
    try:
        wr, wb = trajectories(table, key_r), trajectories(table, key_b)
    except AnalysisError as e:
        return Finding("data_refinement", title, MISSING, str(e), method)
    heads = [h for h in wb.index if h in wr.index]
    steps = sorted(set(wr.columns) & set(wb.columns))
    if not heads or not steps:
        return Finding("data_refinement", title, MISSING, f"{key_r} and {key_b} share no heads and steps", method)
    n_late = max(1, int(math.ceil(late_fraction * len(steps))))
    late = steps[-n_late:]
    diff = (wr.loc[heads, late] - wb.loc[heads, late]).mean(axis=1)
    tab = pd.DataFrame({"head": heads, "code_minus_prose": diff.to_numpy(),
                        f"{refined}": wr.loc[heads, late].mean(axis=1).to_numpy(),
                        f"{base}": wb.loc[heads, late].mean(axis=1).to_numpy(),
                        "type": [types.get(h, "") if len(types) else "" for h in heads]})
    tab = tab.rename(columns={"code_minus_prose": f"{refined}_minus_{base}"})
    numbers: dict[str, Any] = dict(late_steps=[int(s) for s in late], from_step=int(late[0]))
    ind = [h for h in heads if len(types) and types.get(h) == INDUCTION]
    other = [h for h in heads if h not in ind]
    if not ind:
        summary = (f"No induction heads among the typed heads; mean {refined}−{base} drLLC over all "
                   f"{len(heads)} heads from step {late[0]}: {_num(diff.mean())}.")
        numbers.update(mean_all=float(diff.mean()))
        return Finding("data_refinement", title, REPORTED if len(types) else MISSING, summary, method, numbers, tab)
    di, do = diff[ind], diff[other]
    auc = rank_auc(di, do)
    above = bool(len(do) and di.min() > do.max())
    below = bool(len(do) and di.max() < do.min())
    separated = above or below
    numbers.update(induction_heads=ind, induction_mean=float(di.mean()), other_mean=float(do.mean())
                   if len(do) else None, other_min=float(do.min()) if len(do) else None,
                   other_max=float(do.max()) if len(do) else None, auc=auc, separated=separated,
                   direction="above" if above else "below" if below else "overlap")
    where = ("all above the others" if above else "all below the others" if below else "overlapping the others")
    summary = (f"Induction heads {', '.join(ind)}: mean {refined}−{base} drLLC {_num(di.mean())} (from step "
               f"{late[0]}, {len(late)} checkpoints) vs {_num(do.mean()) if len(do) else '–'} for the "
               f"{len(do)} other heads (range {_num(do.min()) if len(do) else '–'} … "
               f"{_num(do.max()) if len(do) else '–'}); AUC {_num(auc)}; {where}: "
               f"{'separates' if separated else 'does not separate'} them.")
    return Finding("data_refinement", title, REPORTED, summary, method, numbers, tab)


def rise_step(steps: Sequence[float], values: Sequence[float], fraction: float = 0.5) -> float:
    """The first step where a curve crosses first + `fraction` × (last − first), linearly interpolated
    between checkpoints; NaN if it does not rise (last <= first)."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    s, v = s[ok], v[ok]
    if len(v) < 2 or not v[-1] > v[0]:
        return float("nan")
    level = v[0] + fraction * (v[-1] - v[0])
    above = np.flatnonzero(v >= level)
    i = int(above[0])
    if i == 0:
        return float(s[0])
    t = (level - v[i - 1]) / (v[i] - v[i - 1])
    return float(s[i - 1] + t * (s[i] - s[i - 1]))


def critical_vs_rises(table: pd.DataFrame, types: pd.Series, *, key: str = "llc@prose",
                      smoothing: Smoothing = Smoothing()) -> Finding:
    title = "LLC critical points vs head formation"
    method = (f"Critical points (peaks, troughs, rises, falls) of the full-model LLC curve ({smoothing.describe()}); "
              "for each previous-token head of layer 0 and each induction head (by type; else the highest-scoring "
              "head), the step where its score first crosses half-way from its first to its last value; each "
              "such step beside the nearest LLC critical point in log-step (lag in decades, LLC point − rise).")
    name = None
    rows = table[(table["signal"] == "llc") & (table["level"] == "model")]
    if len(rows):
        curve, ds = model_signal_curve(table, "llc", "prose" if (rows["dataset"] == "prose").any() else None)
    else:
        curve, ds = pd.Series(dtype=float), ""
    numbers: dict[str, Any] = {}
    points = pd.DataFrame(columns=["kind", "step", "x", "value", "prominence", "smoothing"])
    if len(curve) >= 4:
        name = f"llc@{ds} (model)" if ds else "llc (model)"
        steps = curve.index.to_numpy(dtype=float)
        points = critical_points(steps, curve.to_numpy(dtype=float), smoothing=smoothing)
        offset = default_offset(steps)
        numbers.update(llc_points=[dict(kind=r.kind, step=float(r.step)) for r in points.itertuples()])
    rises = []
    for signal, wanted, layer_ok in (("previous_token", PREVIOUS, lambda h: layer_of(h) == 0),
                                     ("induction", INDUCTION, lambda h: layer_of(h) >= 1)):
        r = _head_rows(table, signal)
        if r.empty:
            continue
        wide = r.groupby(["component", "step"])["value"].mean().unstack("step").sort_index(axis=1)
        chosen = [h for h in sort_heads(wide.index) if layer_ok(h) and len(types) and types.get(h) == wanted]
        if not chosen:
            last = wide.iloc[:, -1]
            cand = [h for h in wide.index if layer_ok(h)]
            chosen = [last[cand].idxmax()] if cand else []
        for h in chosen:
            st = rise_step(wide.columns, wide.loc[h].to_numpy())
            rises.append(dict(head=h, signal=signal, rise_step=st))
    if name is None and not rises:
        return Finding("critical_points", title, MISSING, "no full-model LLC curve and no head scores", method)
    tab = pd.DataFrame(rises, columns=["head", "signal", "rise_step"])
    if len(tab) and len(points):
        near = []
        for r in tab.itertuples():
            if not math.isfinite(r.rise_step):
                near.append((None, np.nan, np.nan))
                continue
            xr = math.log10(r.rise_step + offset)
            j = int(np.argmin(np.abs(points["x"].to_numpy() - xr)))
            p = points.iloc[j]
            near.append((p["kind"], float(p["step"]), float(p["x"] - xr)))
        tab["nearest_llc_point"] = [n[0] for n in near]
        tab["llc_point_step"] = [n[1] for n in near]
        tab["lag_decades"] = [n[2] for n in near]
    numbers.update(rises=tab.to_dict(orient="records"))
    if name is None:
        pts_text = "no full-model LLC curve"
    elif len(points):
        pts_text = f"{name} critical points: " + ", ".join(f"{r.kind} {_step(r.step)}" for r in points.itertuples())
    else:
        pts_text = f"{name}: no critical point above the noise"
    if len(tab):
        def one(r) -> str:
            s = f"{r['head']} {r['signal'].replace('_token', '-token')} rises at {_step(r['rise_step'])}"
            if "nearest_llc_point" in r and r["nearest_llc_point"] is not None and math.isfinite(r["lag_decades"]):
                s += f" (nearest LLC {r['nearest_llc_point']} {_step(r['llc_point_step'])}, " \
                     f"{r['lag_decades']:+.2f} dec)"
            return s
        rise_text = "; ".join(one(r) for r in tab.to_dict(orient="records"))
    else:
        rise_text = "no head scores"
    summary = f"{pts_text}. {rise_text}."
    return Finding("critical_points", title, REPORTED, summary, method, numbers, tab if len(tab) else None)


def stage_seconds(stages) -> dict[str, float]:
    """{stage: seconds} from a timings entry ({name: seconds} or {name: {"seconds": ...}})."""
    out = {}
    for k, v in (stages or {}).items():
        if isinstance(v, Mapping):
            v = v.get("seconds")
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def timings_finding(timings: Mapping | None, *, goal_s: float = TIME_GOAL_S) -> Finding:
    title = "Wall time"
    method = ("Wall-clock seconds of each stage of the run as `rllc demo` recorded them in RUN_DIR/timings.json; "
              "'first full run' is the first run that finished every stage, 'latest' the last one (a rerun that "
              f"reuses finished work is shorter); goal {goal_s / 60:g} minutes on 2 cores.")
    if not timings:
        return Finding("timings", title, MISSING, "no timings recorded (RUN_DIR/timings.json)", method)
    runs = {}
    if "latest" in timings or "first_full" in timings:
        for label, key in (("first full run", "first_full"), ("latest", "latest")):
            entry = timings.get(key)
            if isinstance(entry, Mapping):
                runs[label] = stage_seconds(entry.get("stages"))
    else:
        runs["run"] = stage_seconds(timings)
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return Finding("timings", title, MISSING, "timings.json holds no stage times", method)
    names = list(dict.fromkeys(s for v in runs.values() for s in v))
    tab = pd.DataFrame({"stage": names + ["total"]})
    for label, st in runs.items():
        tab[f"{label} (s)"] = [st.get(s, np.nan) for s in names] + [sum(st.values())]
    numbers = {label: dict(st, total=sum(st.values())) for label, st in runs.items()}
    parts = []
    for label, st in runs.items():
        total = sum(st.values())
        parts.append(f"{label}: {total:,.0f} s = {total / 60:.1f} min (" +
                     ", ".join(f"{s} {v:,.0f}" for s, v in st.items()) + ")")
    main = runs.get("first full run") or next(iter(runs.values()))
    within = sum(main.values()) <= goal_s
    numbers["within_goal"] = within
    summary = "; ".join(parts) + f"; within the {goal_s / 60:g}-minute goal: {'yes' if within else 'no'}."
    return Finding("timings", title, REPORTED, summary, method, numbers, tab)


def study_findings(
    df: pd.DataFrame,
    timings: Mapping | None = None,
    *,
    prev_threshold: float = PREV_THRESHOLD,
    induction_threshold: float = INDUCTION_THRESHOLD,
    ari_goal: float = ARI_GOAL,
    cluster_key: str = "llc@prose",
    algorithms: Sequence[str] = ALGORITHMS,
    ks: Sequence[int] = range(2, 9),
    criterion: str = "silhouette",
    late_fraction: float = 1 / 3,
    smoothing: Smoothing = Smoothing(),
    seed: int = 0,
) -> StudyFindings:
    """Every finding of the study (module docstring) from a results table and, optionally, the stage
    timings (the content of RUN_DIR/timings.json, or {stage: seconds})."""
    try:
        table = annotate(df)
    except AnalysisError as e:
        empty = [Finding(n, n.replace("_", " ").capitalize(), MISSING, f"unusable results table: {e}", "")
                 for n in FINDINGS[:-1]]
        return StudyFindings(empty + [timings_finding(timings)])
    types, source = behaviour_types(table, prev_threshold=prev_threshold, induction_threshold=induction_threshold)
    findings = []
    for make in (
        lambda: head_formation(table, types, prev_threshold=prev_threshold, induction_threshold=induction_threshold),
        lambda: icl_drop(table, smoothing=smoothing),
        lambda: clustering(table, types, source, key=cluster_key, algorithms=algorithms, ks=ks,
                           criterion=criterion, goal=ari_goal, seed=seed),
        lambda: data_refinement(table, types, late_fraction=late_fraction),
        lambda: critical_vs_rises(table, types, key=cluster_key, smoothing=smoothing),
    ):
        findings.append(make())
    findings.append(timings_finding(timings))
    return StudyFindings(findings)


__all__ = ["ARI_GOAL", "FAIL", "Finding", "INDUCTION_THRESHOLD", "MISSING", "PASS", "PREV_THRESHOLD", "REPORTED",
           "StudyFindings", "behaviour_types", "rank_auc", "rise_step", "study_findings"]
