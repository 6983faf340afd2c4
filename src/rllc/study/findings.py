"""The study's findings, computed from a run's results table: what the rLLC
demo must show (docs/demo.md), each with its numbers, its table and, where the
study sets a threshold, PASS or FAIL. This module computes; the words (each
finding's title, method and summary, the evidence of the paper's claims) are
written from those numbers by `rllc.study.prose` (`_finding` joins them).

    head_formation   at the last checkpoint, the largest previous-token score of a
                     layer-0 head (PASS at >= 0.5) and the largest induction score
                     of a head in layer >= 1 (PASS at >= 0.3)
    icl_drop         the step where the model's ICL score drops: the most prominent
                     "fall" critical point of its curve (rllc.analysis.critical);
                     PASS when there is one (it clears the noise floor)
    convergence      R-hat <= 1.1 on >= 95 % of the run's LLC estimates, and (given
                     repeated-seed estimates at the last checkpoint) between-head sd
                     >= 4x between-seed sd (PASS/FAIL)
    clustering       the rLLC paper's procedure (Appendix F.5): per layer and for all
                     heads, the per-head LLC curves on the training distribution ‖ code,
                     k-means (raw curves), k-Shape and their vote weighted towards
                     k-Shape, k = the number of behavioural types in the view; ARI/NMI
                     against the types; PASS when the vote's ARI >= 0.6 in every layer
                     with more than one type. Checkpoints not at a local minimum are
                     left out (stack_trajectories)
    curve_agreement  Spearman's rho between per-head curve features and behavioural
                     scores, per layer, with permutation p-values (reported)
    data_refinement  code-minus-training-distribution LLC of the induction heads against
                     the other heads over the late checkpoints: means, rank AUC, whether
                     the ranges separate (reported)
    critical_points  critical points of the full-model LLC curve beside the steps
                     where the previous-token and induction heads' scores rise
                     (reported)
    paper_claims     the rLLC paper's claims the demo can test, each with its evidence
                     and a verdict by a rule fixed in advance (reported)
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

from rllc.analysis.cluster import paper_clustering
from rllc.analysis.compare import curve_features, feature_agreement
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
from rllc.study import prose

PASS, FAIL, REPORTED, MISSING = "PASS", "FAIL", "reported", "missing"
STATUSES = (PASS, FAIL, REPORTED, MISSING)
PREVIOUS, INDUCTION, OTHER = "previous-token", "induction", "other"
TYPE_MAP = {"previous": PREVIOUS, "induction": INDUCTION}  # every other head_types label -> OTHER
PREV_THRESHOLD = 0.5
INDUCTION_THRESHOLD = 0.3
ARI_GOAL = 0.6
VERDICT_METHOD = "vote"  # the clustering whose per-layer ARI is judged (the paper recommends the weighted vote)
RHAT_SHARE_GOAL = 0.95
SNR_GOAL = 4.0
TIME_GOAL_S = 20 * 60.0
# Behavioural scores the curve features are ranked against (name -> signal key spec).
AGREEMENT_SCORES = {"previous-token": "previous_token", "induction": "induction", "current-token": "current_token",
                    "ablation": "ablation/mean"}
TOGETHER_DECADES = 0.1  # "one phase change": rises and the ICL drop within this many decades of log-step
FINDINGS = ("head_formation", "icl_drop", "convergence", "clustering", "curve_agreement", "data_refinement",
            "critical_points", "paper_claims", "timings")


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


def _finding(name: str, status: str, numbers: dict[str, Any], table: pd.DataFrame | None = None,
             **params) -> Finding:
    """A computed finding with its words: title, summary and method come from `rllc.study.prose`, written from
    the status, numbers and table computed here and the study's parameters (`params`)."""
    title, summary, method = prose.describe(name, status, numbers, table, **params)
    return Finding(name, title, status, summary, method, numbers, table)


def _unusable(name: str, error: str) -> tuple[str, str, str, str]:
    title, summary, method = prose.unusable(name, error)
    return title, MISSING, summary, method


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
        return labels.map(lambda v: TYPE_MAP.get(str(v), OTHER)).rename("type"), prose.types_source("classes")
    prev, _ = last_scores(table, "previous_token")
    ind, _ = last_scores(table, "induction")
    heads = sort_heads(set(prev.index) | set(ind.index))
    if not heads:
        return pd.Series(dtype=object, name="type"), prose.types_source("none")
    out = {}
    for h in heads:
        p = prev.get(h, np.nan) / prev_threshold
        i = ind.get(h, np.nan) / induction_threshold
        if np.nanmax([p, i, 0.0]) < 1.0:
            out[h] = OTHER
        else:
            out[h] = PREVIOUS if (np.nan_to_num(p, nan=-1) >= np.nan_to_num(i, nan=-1)) else INDUCTION
    return pd.Series(out, name="type").reindex(heads), prose.types_source(
        "scores", prev_threshold=prev_threshold, induction_threshold=induction_threshold)


# --- the findings ------------------------------------------------------------------------

def head_formation(table: pd.DataFrame, types: pd.Series, *, prev_threshold: float = PREV_THRESHOLD,
                   induction_threshold: float = INDUCTION_THRESHOLD) -> Finding:
    prev, prev_at = last_scores(table, "previous_token")
    ind, ind_at = last_scores(table, "induction")
    numbers: dict[str, Any] = dict(prev_threshold=prev_threshold, induction_threshold=induction_threshold)
    missing = []
    prev0 = prev[[h for h in prev.index if is_head(h) and layer_of(h) == 0]]
    ind1 = ind[[h for h in ind.index if is_head(h) and layer_of(h) >= 1]]
    ok = True
    if len(prev0):
        numbers.update(prev_head=prev0.idxmax(), prev_score=float(prev0.max()), prev_step=prev_at)
        ok &= prev0.max() >= prev_threshold
    else:
        missing.append("previous_token")
    if len(ind1):
        numbers.update(induction_head=ind1.idxmax(), induction_score=float(ind1.max()), induction_step=ind_at)
        ok &= ind1.max() >= induction_threshold
    else:
        missing.append("induction")
    heads = sort_heads(set(prev.index) | set(ind.index))
    tab = pd.DataFrame({"head": heads, "previous_token": [prev.get(h, np.nan) for h in heads],
                        "induction": [ind.get(h, np.nan) for h in heads],
                        "type": [types.get(h, "") if len(types) else "" for h in heads]})
    params = dict(prev_threshold=prev_threshold, induction_threshold=induction_threshold)
    if missing:
        numbers["missing"] = missing
        return _finding("head_formation", MISSING, numbers, tab if heads else None, **params)
    return _finding("head_formation", PASS if ok else FAIL, numbers, tab, **params)


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
    curve, ds = model_signal_curve(table, "icl")
    if len(curve) < 4:
        return _finding("icl_drop", MISSING, dict(missing="few_checkpoints", n_checkpoints=len(curve)), None,
                        smoothing=smoothing)
    steps, values = curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float)
    pts = critical_points(steps, values, smoothing=smoothing, kinds=("fall",))
    c = smooth_curve(steps, values, smoothing)
    numbers = dict(dataset=ds, first=float(values[0]), last=float(values[-1]), min=float(values.min()),
                   min_step=int(steps[np.argmin(values)]), noise=float(c.noise), n_checkpoints=len(values),
                   first_step=int(steps[0]), last_step=int(steps[-1]))
    tab = pts.drop(columns=["smoothing"]) if len(pts) else None
    if len(pts):
        best = pts.loc[pts["prominence"].idxmax()]
        i = int(np.argmin(np.abs(c.x - best["x"])))
        before = float(np.max(c.y[: i + 1]))
        after = float(np.min(c.y[i:]))
        numbers.update(drop_step=float(best["step"]), drop_size=before - after, n_falls=len(pts),
                       slope_per_decade=float(c.slope[i]))
        return _finding("icl_drop", PASS, numbers, tab, smoothing=smoothing)
    i = int(np.argmin(c.slope))
    numbers.update(drop_step=None, steepest_step=float(c.steps[i]), slope_per_decade=float(c.slope[i]))
    return _finding("icl_drop", FAIL, numbers, tab, smoothing=smoothing)


def _resolve(table: pd.DataFrame, *specs: str) -> str | None:
    for spec in specs:
        try:
            return resolve_key(table, spec)
        except AnalysisError:
            continue
    return None


def base_dataset(table: pd.DataFrame) -> str | None:
    """The dataset of the per-head wrLLC curves: the training distribution ("train") when the run has it,
    else prose (the paper's Pile stands for the training data), else the first dataset with per-head LLCs
    other than code; None if there is none."""
    rows = table[(table["signal"] == "llc") & (table["level"] == "head")]
    have = list(dict.fromkeys(rows["dataset"].astype(str)))
    for name in ("train", "prose", *[d for d in have if d != "code"]):
        if name in have:
            return name
    return None


def cluster_keys(table: pd.DataFrame) -> list[str]:
    """The curves the paper clusters: the per-head LLC on the training distribution ‖ on code."""
    base = base_dataset(table)
    names = [_resolve(table, f"llc@{d}") for d in (base, "code") if d is not None]
    return list(dict.fromkeys(n for n in names if n))


def clustering(table: pd.DataFrame, types: pd.Series, types_source: str, *, goal: float = ARI_GOAL,
               verdict_method: str = VERDICT_METHOD, seed: int = 0) -> Finding:
    params = dict(goal=goal, verdict_method=verdict_method, types_source=types_source)
    keys = cluster_keys(table)
    if not keys:
        return _finding("clustering", MISSING, dict(missing="no_curves"), None, **params)
    try:
        ts = stack_trajectories(table, keys, normalisation="none")  # leaves out the steps not at a local minimum
    except AnalysisError as e:
        return _finding("clustering", MISSING, dict(missing="curves_unusable", keys=keys, error=str(e)), None,
                        **params)
    numbers: dict[str, Any] = dict(keys=keys, heads=len(ts.heads), steps_used=len(ts.steps),
                                   steps_left_out=[int(s) for s in ts.left_out], goal=goal,
                                   verdict_method=verdict_method)
    if not len(types) or not all(h in types.index for h in ts.heads):
        return _finding("clustering", MISSING, dict(numbers, missing="no_types"), None, **params)
    truth = types.reindex(ts.heads).astype(str)
    numbers["type_of"] = {h: t for h, t in truth.items()}
    tab = paper_clustering(ts, truth, seed=seed)
    numbers["views"] = tab.to_dict(orient="records")
    layers = tab[(tab["scope"] != "all heads") & (tab["method"] == verdict_method)]
    if layers.empty:
        return _finding("clustering", MISSING, dict(numbers, missing="one_type"), tab, **params)
    numbers["layer_ari"] = {r.scope: float(r.ari) for r in layers.itertuples()}
    all_rows = tab[(tab["scope"] == "all heads") & (tab["method"] == verdict_method)]
    if len(all_rows):
        numbers["all_heads_ari"] = float(all_rows["ari"].iloc[0])
    ok = bool((layers["ari"] >= goal).all())
    return _finding("clustering", PASS if ok else FAIL, numbers, tab, **params)


def curve_agreement(table: pd.DataFrame, *, n_resamples: int = 50_000, seed: int = 0) -> Finding:
    base = base_dataset(table)
    key = _resolve(table, f"llc@{base}") if base else None
    if key is None:
        return _finding("curve_agreement", MISSING, dict(missing="no_curve"))
    try:
        ts = stack_trajectories(table, [key], normalisation="none")
    except AnalysisError as e:
        return _finding("curve_agreement", MISSING, dict(missing="curves_unusable", key=key, error=str(e)))
    features = curve_features(ts.raw[key])
    scores = {}
    for name, spec in AGREEMENT_SCORES.items():
        k = _resolve(table, spec)
        if k is not None:
            values, _ = last_scores(table[table["key"] == k], k.split("/")[0].split("@")[0])
            if len(values):
                scores[name] = values
    if not scores:
        return _finding("curve_agreement", MISSING, dict(missing="no_scores"))
    tab = feature_agreement(features, pd.DataFrame(scores), n_resamples=n_resamples, seed=seed)
    tested = tab.dropna(subset=["p_value"])
    numbers: dict[str, Any] = dict(key=key, n_tests=len(tested), n_below_005=int((tested["p_value"] < 0.05).sum()),
                                   scores=list(scores), by_scope=[])
    for scope, g in tested.groupby("scope", sort=False):
        best = g.loc[g["rho"].abs().idxmax()]
        strongest = dict(feature=best["feature"], score=best["score"], rho=float(best["rho"]),
                         p_value=float(best["p_value"]))
        numbers[f"strongest {scope}"] = strongest
        numbers["by_scope"].append(dict(scope=scope, **strongest, n_below_005=int((g["p_value"] < 0.05).sum()),
                                        n_tests=len(g)))
    return _finding("curve_agreement", REPORTED, numbers, tab)


def seed_noise_ratio(values: pd.DataFrame) -> dict[str, float]:
    """Between-head sd over between-seed sd of per-head estimates (heads x seeds): the sd over heads of each
    head's mean over seeds, and the mean over heads of each head's sd over seeds (as rllc calibrate judges
    its SNR check)."""
    v = values.dropna(axis=1, how="all").dropna(axis=0)
    seed_sd = float(v.std(axis=1, ddof=1).mean())
    head_sd = float(v.mean(axis=1).std(ddof=1))
    return dict(seed_sd=seed_sd, head_sd=head_sd, snr=head_sd / seed_sd if seed_sd > 0 else math.inf,
                seeds=int(v.shape[1]), heads=int(v.shape[0]))


def convergence(table: pd.DataFrame, seed_noise: pd.DataFrame | None = None, *, rhat_max: float = 1.1,
                share_goal: float = RHAT_SHARE_GOAL, snr_goal: float = SNR_GOAL) -> Finding:
    from rllc.results import rhat_summary

    params = dict(rhat_max=rhat_max, share_goal=share_goal, snr_goal=snr_goal)
    counts = rhat_summary(table)
    numbers: dict[str, Any] = dict(rhat_max=rhat_max, share_goal=share_goal, snr_goal=snr_goal, **counts)
    if not counts["n"]:
        return _finding("convergence", MISSING, numbers, None, **params)
    share = 1 - (counts["over_1_1"] + counts["unknown"]) / counts["n"]
    numbers["share_rhat_ok"] = share
    ok = share >= share_goal
    tab = None
    if seed_noise is not None and len(seed_noise):
        wide = seed_noise.pivot_table(index="component", columns="seed", values="value", aggfunc="mean")
        wide = wide.reindex(sort_heads(wide.index))
        r = seed_noise_ratio(wide)
        numbers.update(r, step=int(seed_noise["step"].iloc[0]))
        ok &= r["snr"] >= snr_goal
        tab = wide.reset_index().rename(columns={"component": "head"})
        tab.columns = [c if isinstance(c, str) else f"seed {c}" for c in tab.columns]
        status = PASS if ok else FAIL
    else:
        status = REPORTED if ok else FAIL
    return _finding("convergence", status, numbers, tab, **params)


def rank_auc(a: Sequence[float], b: Sequence[float]) -> float:
    """P(x > y) + P(x = y)/2 for x from `a`, y from `b` (the Mann-Whitney AUC); NaN if either is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        return float("nan")
    diff = a[:, None] - b[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def data_refinement(table: pd.DataFrame, types: pd.Series, *, late_fraction: float = 1 / 3,
                    base: str | None = None, refined: str = "code") -> Finding:
    base = base or base_dataset(table) or "prose"
    params = dict(base=base, refined=refined, late_fraction=late_fraction)
    key_r, key_b = _resolve(table, f"llc@{refined}"), _resolve(table, f"llc@{base}")
    if key_r is None or key_b is None or key_r == key_b:
        absent = [d for d, k in ((refined, key_r), (base, key_b)) if k is None] or [refined]
        return _finding("data_refinement", MISSING, dict(missing="no_llc", absent=absent), None, **params)
    try:
        wr, wb = trajectories(table, key_r), trajectories(table, key_b)
    except AnalysisError as e:
        return _finding("data_refinement", MISSING, dict(missing="curves_unusable", error=str(e)), None, **params)
    heads = [h for h in wb.index if h in wr.index]
    steps = sorted(set(wr.columns) & set(wb.columns))
    if not heads or not steps:
        return _finding("data_refinement", MISSING, dict(missing="nothing_shared", keys=[key_r, key_b]), None,
                        **params)
    n_late = max(1, int(math.ceil(late_fraction * len(steps))))
    late = steps[-n_late:]
    diff = (wr.loc[heads, late] - wb.loc[heads, late]).mean(axis=1)
    tab = pd.DataFrame({"head": heads, "refined_minus_base": diff.to_numpy(),
                        f"{refined}": wr.loc[heads, late].mean(axis=1).to_numpy(),
                        f"{base}": wb.loc[heads, late].mean(axis=1).to_numpy(),
                        "type": [types.get(h, "") if len(types) else "" for h in heads]})
    tab = tab.rename(columns={"refined_minus_base": f"{refined}_minus_{base}"})
    numbers: dict[str, Any] = dict(late_steps=[int(s) for s in late], from_step=int(late[0]), base=base,
                                   refined=refined, difference={h: float(v) for h, v in diff.items()})
    ind = [h for h in heads if len(types) and types.get(h) == INDUCTION]
    other = [h for h in heads if h not in ind]
    if not ind:
        numbers.update(mean_all=float(diff.mean()))
        return _finding("data_refinement", REPORTED if len(types) else MISSING, numbers, tab, **params)
    di, do = diff[ind], diff[other]
    auc = rank_auc(di, do)
    above = bool(len(do) and di.min() > do.max())
    below = bool(len(do) and di.max() < do.min())
    numbers.update(induction_heads=ind, induction_mean=float(di.mean()), other_mean=float(do.mean())
                   if len(do) else None, other_min=float(do.min()) if len(do) else None,
                   other_max=float(do.max()) if len(do) else None, auc=auc, separated=above or below,
                   direction="above" if above else "below" if below else "overlap")
    return _finding("data_refinement", REPORTED, numbers, tab, **params)


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


def critical_vs_rises(table: pd.DataFrame, types: pd.Series, *, smoothing: Smoothing = Smoothing()) -> Finding:
    name = None
    rows = table[(table["signal"] == "llc") & (table["level"] == "model")]
    if len(rows):
        preferred = [d for d in ("train", "prose") if (rows["dataset"] == d).any()]
        curve, ds = model_signal_curve(table, "llc", preferred[0] if preferred else None)
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
        return _finding("critical_points", MISSING, dict(missing=True), None, smoothing=smoothing)
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
    numbers.update(rises=tab.to_dict(orient="records"), curve=name)
    return _finding("critical_points", REPORTED, numbers, tab if len(tab) else None, smoothing=smoothing)


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
    if not timings:
        return _finding("timings", MISSING, dict(missing="none"), None, goal_s=goal_s)
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
        return _finding("timings", MISSING, dict(missing="no_stage_times"), None, goal_s=goal_s)
    names = list(dict.fromkeys(s for v in runs.values() for s in v))
    tab = pd.DataFrame({"stage": names + ["total"]})
    for label, st in runs.items():
        tab[f"{label} (s)"] = [st.get(s, np.nan) for s in names] + [sum(st.values())]
    numbers: dict[str, Any] = {label: dict(st, total=sum(st.values())) for label, st in runs.items()}
    main = runs.get("first full run") or next(iter(runs.values()))
    numbers["within_goal"] = sum(main.values()) <= goal_s
    numbers["runs"] = runs
    return _finding("timings", REPORTED, numbers, tab, goal_s=goal_s)


def cluster_score_test(labels: pd.Series, scores: pd.Series, *, n_resamples: int = 50_000,
                       seed: int = 0) -> dict[str, float]:
    """How much of a per-head score the clusters explain: eta² (between-cluster over total sum of squares), its
    permutation p-value (heads shuffled between clusters of the same sizes; exact when the distinct
    assignments are at most `n_resamples`), and the smallest p-value these cluster sizes allow (a singleton
    against 7 heads cannot go below 1/8)."""
    from scipy import stats

    both = pd.DataFrame({"label": labels, "score": scores}).dropna()
    codes = pd.factorize(both["label"])[0]
    sizes = np.bincount(codes).tolist()
    out = dict(eta2=float("nan"), p_value=float("nan"), min_p=float("nan"), n_heads=len(both),
               n_clusters=len(sizes))
    if len(sizes) < 2 or len(both) < 3 or both["score"].nunique() < 2:
        return out
    onehot = (codes[:, None] == np.arange(len(sizes))[None, :]).astype(float)  # heads x clusters

    def eta2(x, axis=-1):  # scores reordered over heads against fixed clusters (scipy's "pairings" of one sample)
        x = np.moveaxis(x, axis, -1)
        centred = x - x.mean(axis=-1, keepdims=True)
        between = ((centred @ onehot) ** 2 / onehot.sum(axis=0)).sum(axis=-1)
        return between / (centred ** 2).sum(axis=-1)

    test = stats.permutation_test((both["score"].to_numpy(dtype=float),), eta2, permutation_type="pairings",
                                  vectorized=True, n_resamples=n_resamples, alternative="greater",
                                  random_state=seed)
    assignments = math.factorial(sum(sizes)) / math.prod(math.factorial(n) for n in sizes)
    swaps = math.prod(math.factorial(c) for c in pd.Series(sizes).value_counts())  # equal-sized clusters swap
    out.update(eta2=float(test.statistic), p_value=float(test.pvalue), min_p=float(swaps / assignments))
    return out


REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable at this scale"


def _log_span(steps: Sequence[float]) -> float:
    x = np.log10(np.asarray([s for s in steps if s is not None and math.isfinite(s) and s > 0], dtype=float))
    return float(x.max() - x.min()) if len(x) > 1 else float("nan")


def paper_claims(table: pd.DataFrame, found: Mapping[str, Finding], *, alpha: float = 0.05,
                 n_resamples: int = 50_000, seed: int = 0) -> Finding:
    """The rLLC paper's qualitative claims that the demo can test, one row each with its evidence and a verdict
    (reproduced / not reproduced / not testable at this scale), from the other findings (`found`, by name):
    the rules here, their words in `rllc.study.prose`."""
    facts: list[tuple[str, str, dict[str, Any]]] = []  # (claim, verdict, what its rule used)
    f = found.get("clustering")
    if f is None or f.status == MISSING:
        facts.append(("clusters", NOT_TESTABLE, dict(summary=f.summary if f else None, absent=prose.UNTESTABLE[
            "clusters"])))
    else:
        facts.append(("clusters", REPRODUCED if f.status == PASS else NOT_REPRODUCED,
                      dict(verdict_method=f.numbers.get("verdict_method"), layer_ari=f.numbers.get("layer_ari", {}),
                           all_heads_ari=f.numbers.get("all_heads_ari"), goal=f.numbers.get("goal"))))
    hf, icl, cp = found.get("head_formation"), found.get("icl_drop"), found.get("critical_points")
    rises = {(r["head"], r["signal"]): r["rise_step"] for r in (cp.numbers.get("rises", []) if cp else [])}
    drop = icl.numbers.get("drop_step") if icl else None
    prev = rises.get((hf.numbers.get("prev_head"), "previous_token")) if hf else None
    ind = rises.get((hf.numbers.get("induction_head"), "induction")) if hf else None
    if prev is None or ind is None or not (math.isfinite(prev) and math.isfinite(ind)):
        facts.append(("together", NOT_TESTABLE, dict(absent=prose.UNTESTABLE["together"])))
    else:
        span = _log_span([prev, ind] + ([drop] if drop else []))
        facts.append(("together", REPRODUCED if span <= TOGETHER_DECADES else NOT_REPRODUCED,
                      dict(prev_head=hf.numbers["prev_head"], prev=prev, induction_head=hf.numbers["induction_head"],
                           ind=ind, drop=drop, span=span, rises=[(h, sig, v) for (h, sig), v in rises.items()])))
    dr = found.get("data_refinement")
    ind_heads = dr.numbers.get("induction_heads", []) if dr else []
    if not ind_heads:
        facts.append(("refinement", NOT_TESTABLE, dict(summary=dr.summary if dr else None,
                                                       absent=prose.UNTESTABLE["refinement"])))
    else:
        diff = dr.numbers["difference"]
        above = all(diff[h] > 0 for h in ind_heads)
        auc = dr.numbers.get("auc", float("nan"))
        facts.append(("refinement", REPRODUCED if above and auc > 0.5 else NOT_REPRODUCED,
                      dict(refined=dr.numbers["refined"], base=dr.numbers["base"], from_step=dr.numbers["from_step"],
                           induction_heads=ind_heads, difference=diff, other_mean=dr.numbers.get("other_mean"),
                           auc=auc)))
    points = cp.numbers.get("llc_points") if cp else None
    if points is None or not drop:
        facts.append(("stages", NOT_TESTABLE, dict(absent=prose.UNTESTABLE["stages"])))
    else:
        near = [p for p in points if p["step"] > 0 and abs(math.log10(p["step"]) - math.log10(drop)) <= TOGETHER_DECADES]
        facts.append(("stages", REPRODUCED if near else NOT_REPRODUCED, dict(points=points, drop=drop, near=near)))
    tests = _cluster_behaviour_tests(table, f, n_resamples=n_resamples, seed=seed) if f and f.status != MISSING else []
    testable = [t for t in tests if t["min_p"] < alpha]
    verdict = NOT_TESTABLE if not testable else (
        REPRODUCED if all(t["p_value"] < alpha for t in testable) else NOT_REPRODUCED)
    facts.append(("behaviour", verdict, dict(tests=tests, testable=bool(testable))))
    rows = [dict(claim=prose.claim(key), verdict=verdict, evidence=prose.evidence(
        key, used, together_decades=TOGETHER_DECADES)) for key, verdict, used in facts]
    tab = pd.DataFrame(rows, columns=["claim", "verdict", "evidence"])
    counts = tab["verdict"].value_counts()
    return _finding("paper_claims", REPORTED, dict(claims=rows, counts={k: int(v) for k, v in counts.items()}), tab,
                    together_decades=TOGETHER_DECADES, alpha=alpha)


def _cluster_behaviour_tests(table: pd.DataFrame, clustering_finding: Finding, **kwargs) -> list[dict[str, Any]]:
    """Per layer, `cluster_score_test` of the vote clusters against the mean-ablation effect and the K-composition
    score at the last checkpoint (layer 0: the strongest composition as sender, later layers: as receiver)."""
    from rllc.analysis.compare import pairs_to_heads

    method = clustering_finding.numbers.get("verdict_method")
    views = [v for v in clustering_finding.numbers.get("views", []) if v["method"] == method and v["scope"] != "all heads"]
    scores: dict[str, pd.Series] = {}
    k = _resolve(table, "ablation/mean")
    if k is not None:
        scores["ablation"] = last_scores(table[table["key"] == k], "ablation")[0]
    pairs = pairs_to_heads(table[table["signal"] == "composition"], "max")
    for suffix in ("in", "out"):
        key = f"composition.{suffix}/k"
        if len(pairs) and (pairs["key"] == key).any():
            scores[f"K-composition ({suffix})"] = last_scores(pairs[pairs["key"] == key], f"composition.{suffix}")[0]
    out = []
    for view in views:
        labels = pd.Series({h: i for i, group in enumerate(view["clusters"].split(" | ")) for h in group.split()})
        layer = layer_of(labels.index[0])
        for name, values in scores.items():
            if name.startswith("K-composition") and name != f"K-composition ({'out' if layer == 0 else 'in'})":
                continue
            result = cluster_score_test(labels, values.reindex(labels.index), **kwargs)
            out.append(dict(scope=view["scope"], score=name, **result))
    return out


def study_findings(
    df: pd.DataFrame,
    timings: Mapping | None = None,
    *,
    seed_noise: pd.DataFrame | None = None,
    prev_threshold: float = PREV_THRESHOLD,
    induction_threshold: float = INDUCTION_THRESHOLD,
    ari_goal: float = ARI_GOAL,
    late_fraction: float = 1 / 3,
    smoothing: Smoothing = Smoothing(),
    n_resamples: int = 50_000,
    seed: int = 0,
) -> StudyFindings:
    """Every finding of the study (module docstring) from a results table and, optionally, the stage
    timings (the content of RUN_DIR/timings.json, or {stage: seconds}) and repeated-seed estimates at the
    last checkpoint (`seed_noise`: rows step, component, seed, value) for the precision check."""
    try:
        table = annotate(df)
    except AnalysisError as e:
        empty = [Finding(n, *_unusable(n, str(e))) for n in FINDINGS[:-1]]
        return StudyFindings(empty + [timings_finding(timings)])
    types, source = behaviour_types(table, prev_threshold=prev_threshold, induction_threshold=induction_threshold)
    found: dict[str, Finding] = {}
    for make in (
        lambda: head_formation(table, types, prev_threshold=prev_threshold, induction_threshold=induction_threshold),
        lambda: icl_drop(table, smoothing=smoothing),
        lambda: convergence(table, seed_noise),
        lambda: clustering(table, types, source, goal=ari_goal, seed=seed),
        lambda: curve_agreement(table, n_resamples=n_resamples, seed=seed),
        lambda: data_refinement(table, types, late_fraction=late_fraction),
        lambda: critical_vs_rises(table, types, smoothing=smoothing),
        lambda: paper_claims(table, found, n_resamples=n_resamples, seed=seed),
        lambda: timings_finding(timings),
    ):
        finding = make()
        found[finding.name] = finding
    return StudyFindings(list(found.values()))


__all__ = ["ARI_GOAL", "FAIL", "Finding", "INDUCTION_THRESHOLD", "MISSING", "PASS", "PREV_THRESHOLD", "REPORTED",
           "StudyFindings", "behaviour_types", "cluster_score_test", "paper_claims", "rank_auc", "rise_step",
           "seed_noise_ratio", "study_findings"]
