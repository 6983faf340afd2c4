"""The study's findings, computed from a run's results table: what the rLLC
demo must show (docs/demo.md), each with its numbers, its method in one
sentence and, where the study sets a threshold, PASS or FAIL.

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
    title = "Clustering vs head types"
    method = ("The rLLC paper's procedure (its Appendix F.5), fixed before the demo's result was looked at: the "
              "per-head LLC curves on the training distribution ‖ on code (checkpoint axis; checkpoints whose "
              "median head estimate is negative, i.e. not at a local minimum, left out by stack_trajectories), "
              "clustered within each layer and for all heads together by Euclidean k-means on the raw curves "
              "(levels count) and by k-Shape (shape-based distance on z-normalised curves), plus their majority "
              "vote weighted 2:1 towards k-Shape (co-association, average linkage); k = the number of behavioural "
              f"types among the view's heads ({types_source}); the labels set k and are never used to choose "
              f"among clusterings. ARI and NMI against the types for every view and method. Verdict on the "
              f"{verdict_method}: PASS when its ARI is >= {goal:g} in every layer that has more than one type.")
    keys = cluster_keys(table)
    if not keys:
        return Finding("clustering", title, MISSING, "no per-head LLC curves in the table", method)
    try:
        ts = stack_trajectories(table, keys, normalisation="none")  # leaves out the steps not at a local minimum
    except AnalysisError as e:
        return Finding("clustering", title, MISSING, f"cannot build the {' ‖ '.join(keys)} curves: {e}", method)
    left_out = [int(s) for s in ts.left_out]
    numbers: dict[str, Any] = dict(keys=keys, heads=len(ts.heads), steps_used=len(ts.steps), steps_left_out=left_out,
                                   goal=goal, verdict_method=verdict_method)
    left_text = (f" Left out (median head estimate < 0): step{'s' if len(left_out) > 1 else ''} "
                 f"{', '.join(map(str, left_out))}." if left_out else "")
    if not len(types) or not all(h in types.index for h in ts.heads):
        return Finding("clustering", title, MISSING, f"no behavioural head types to compare with.{left_text}",
                       method, numbers)
    truth = types.reindex(ts.heads).astype(str)
    numbers["type_of"] = {h: t for h, t in truth.items()}
    tab = paper_clustering(ts, truth, seed=seed)
    numbers["views"] = tab.to_dict(orient="records")
    layers = tab[(tab["scope"] != "all heads") & (tab["method"] == verdict_method)]
    if layers.empty:
        return Finding("clustering", title, MISSING, "no layer has more than one behavioural type: nothing for a "
                       f"clustering to recover.{left_text}", method, numbers, tab)

    def view_text(scope: str) -> str:
        rows = tab[tab["scope"] == scope].set_index("method")
        counts = truth.reindex([h for h in ts.heads if scope == "all heads" or f"layer {layer_of(h)}" == scope])
        kinds = ", ".join(f"{c} {t}" for t, c in counts.value_counts().items())
        main = rows.loc[verdict_method]
        others = ", ".join(f"{m} {_num(rows.loc[m, 'ari'])}" for m in rows.index if m != verdict_method)
        return (f"{scope} (k={int(main['k'])}: {kinds}): {verdict_method} ARI {_num(main['ari'])}, NMI "
                f"{_num(main['nmi'])} [{main['clusters']}]; ARI of {others}")

    numbers["layer_ari"] = {r.scope: float(r.ari) for r in layers.itertuples()}
    all_rows = tab[(tab["scope"] == "all heads") & (tab["method"] == verdict_method)]
    if len(all_rows):
        numbers["all_heads_ari"] = float(all_rows["ari"].iloc[0])
    ok = bool((layers["ari"] >= goal).all())
    summary = ("; ".join(view_text(s) for s in dict.fromkeys(tab["scope"])) +
               f". Goal: {verdict_method} ARI >= {goal:g} in every layer with more than one type: "
               f"{'met' if ok else 'not met'}.{left_text}")
    return Finding("clustering", title, PASS if ok else FAIL, summary, method, numbers, tab)


def curve_agreement(table: pd.DataFrame, *, n_resamples: int = 50_000, seed: int = 0) -> Finding:
    title = "Curve features vs behaviour"
    base = base_dataset(table)
    key = _resolve(table, f"llc@{base}") if base else None
    method = ("Per head, features of its LLC curve on the training distribution (final level, peak, step and signed "
              "size of the largest change between checkpoints; checkpoints not at a local minimum left out) "
              "against its behavioural scores at the last checkpoint (previous-token, induction, current-token, "
              "mean-ablation loss increase): Spearman's rho over the heads of each layer and of all heads, with a "
              "two-sided permutation p-value (exact over the 8! orderings of a layer). A continuous agreement "
              "beside the ARI, which is fragile with 8 heads and unbalanced types. Many pairs are tested: read "
              "single p-values below 0.05 with that in mind (the count is in the summary).")
    if key is None:
        return Finding("curve_agreement", title, MISSING, "no per-head LLC curve", method)
    try:
        ts = stack_trajectories(table, [key], normalisation="none")
    except AnalysisError as e:
        return Finding("curve_agreement", title, MISSING, f"cannot build the {key} curves: {e}", method)
    features = curve_features(ts.raw[key])
    scores = {}
    for name, spec in AGREEMENT_SCORES.items():
        k = _resolve(table, spec)
        if k is not None:
            values, _ = last_scores(table[table["key"] == k], k.split("/")[0].split("@")[0])
            if len(values):
                scores[name] = values
    if not scores:
        return Finding("curve_agreement", title, MISSING, "no behavioural scores in the table", method)
    tab = feature_agreement(features, pd.DataFrame(scores), n_resamples=n_resamples, seed=seed)
    tested = tab.dropna(subset=["p_value"])
    numbers: dict[str, Any] = dict(key=key, n_tests=len(tested), n_below_005=int((tested["p_value"] < 0.05).sum()),
                                   scores=list(scores))
    parts = []
    for scope, g in tested.groupby("scope", sort=False):
        best = g.loc[g["rho"].abs().idxmax()]
        numbers[f"strongest {scope}"] = dict(feature=best["feature"], score=best["score"], rho=float(best["rho"]),
                                            p_value=float(best["p_value"]))
        parts.append(f"{scope}: strongest {best['feature']} ~ {best['score']} rho {_num(best['rho'], 2)} "
                     f"(p {_num(best['p_value'], 2)}); {int((g['p_value'] < 0.05).sum())} of {len(g)} pairs p < 0.05")
    summary = (f"{key} curve features vs {', '.join(scores)}: " + "; ".join(parts) +
               f". Under no association about {0.05 * len(tested):.1f} of the {len(tested)} tests would fall "
               "below 0.05 by chance.")
    return Finding("curve_agreement", title, REPORTED, summary, method, numbers, tab)


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
    title = "Convergence and precision"
    method = (f"R-hat (rank-normalised split R-hat, arviz-stats) of every LLC estimate of the run: PASS needs R-hat "
              f"<= {rhat_max:g} on >= {share_goal:.0%} of them; and at the last checkpoint the per-head wrLLC on the "
              f"training distribution re-estimated with further seeds (other sampler noise and batches): the sd "
              f"between the heads' seed means over the mean between-seed sd must be >= {snr_goal:g} (the SNR check "
              "of rllc calibrate, re-checked on this run).")
    from rllc.results import rhat_summary

    counts = rhat_summary(table)
    numbers: dict[str, Any] = dict(rhat_max=rhat_max, share_goal=share_goal, snr_goal=snr_goal, **counts)
    if not counts["n"]:
        return Finding("convergence", title, MISSING, "no LLC estimates in the table", method, numbers)
    share = 1 - (counts["over_1_1"] + counts["unknown"]) / counts["n"]
    numbers["share_rhat_ok"] = share
    ok = share >= share_goal
    parts = [f"R-hat <= {rhat_max:g} on {share:.1%} of {counts['n']} LLC estimates ({counts['over_1_1']} above, "
             f"{counts['unknown']} without one; goal >= {share_goal:.0%})"]
    tab = None
    if seed_noise is not None and len(seed_noise):
        wide = seed_noise.pivot_table(index="component", columns="seed", values="value", aggfunc="mean")
        wide = wide.reindex(sort_heads(wide.index))
        r = seed_noise_ratio(wide)
        numbers.update(r, step=int(seed_noise["step"].iloc[0]))
        ok &= r["snr"] >= snr_goal
        parts.append(f"at step {int(seed_noise['step'].iloc[0]):,}: between-head sd {_num(r['head_sd'])} / between-"
                     f"seed sd {_num(r['seed_sd'])} = {_num(r['snr'])} over {r['seeds']} seeds (goal >= {snr_goal:g})")
        tab = wide.reset_index().rename(columns={"component": "head"})
        tab.columns = [c if isinstance(c, str) else f"seed {c}" for c in tab.columns]
        status = PASS if ok else FAIL
    else:
        parts.append("no repeated-seed estimates (rllc demo makes them): the between-seed sd is not measured")
        status = REPORTED if ok else FAIL
    return Finding("convergence", title, status, "; ".join(parts) + ".", method, numbers, tab)


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
    title = f"Data refinement ({refined} − {base} LLC)"
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


def critical_vs_rises(table: pd.DataFrame, types: pd.Series, *, smoothing: Smoothing = Smoothing()) -> Finding:
    title = "LLC critical points vs head formation"
    method = (f"Critical points (peaks, troughs, rises, falls) of the full-model LLC curve ({smoothing.describe()}); "
              "for each previous-token head of layer 0 and each induction head (by type; else the highest-scoring "
              "head), the step where its score first crosses half-way from its first to its last value; each "
              "such step beside the nearest LLC critical point in log-step (lag in decades, LLC point − rise).")
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


def _claim(claim: str, verdict: str, evidence: str) -> dict[str, str]:
    return dict(claim=claim, verdict=verdict, evidence=evidence)


def _log_span(steps: Sequence[float]) -> float:
    x = np.log10(np.asarray([s for s in steps if s is not None and math.isfinite(s) and s > 0], dtype=float))
    return float(x.max() - x.min()) if len(x) > 1 else float("nan")


def paper_claims(table: pd.DataFrame, found: Mapping[str, Finding], *, alpha: float = 0.05,
                 n_resamples: int = 50_000, seed: int = 0) -> Finding:
    """The rLLC paper's qualitative claims that the demo can test, one row each with its evidence and a verdict
    (reproduced / not reproduced / not testable at this scale), from the other findings (`found`, by name)."""
    title = "The paper's claims"
    method = (f"Each claim judged by a rule fixed in advance: (1) the clustering finding passes; (2) the half-way "
              f"rise steps of the strongest previous-token and induction heads and the ICL drop lie within "
              f"{TOGETHER_DECADES:g} decades of log-step; (3) every induction head's code LLC exceeds its "
              f"training-distribution LLC over the late checkpoints, more than the other heads' do (AUC > 0.5); "
              f"(4) a critical point of the full-model LLC lies within {TOGETHER_DECADES:g} decades of the ICL drop; "
              f"(5) within each layer the vote clusters explain the mean-ablation effect and the K-composition score "
              f"(eta², permutation p < {alpha:g}); a layer whose cluster sizes cannot reach p < {alpha:g} is not "
              "testable.")
    rows = []
    f = found.get("clustering")
    if f is None or f.status == MISSING:
        rows.append(_claim("Head types cluster by rLLC curve", NOT_TESTABLE, f.summary if f else "no clustering"))
    else:
        layer = ", ".join(f"{k} {_num(v)}" for k, v in f.numbers.get("layer_ari", {}).items())
        rows.append(_claim("Head types cluster by rLLC curve", REPRODUCED if f.status == PASS else NOT_REPRODUCED,
                           f"{f.numbers.get('verdict_method')} ARI per layer: {layer}; all heads "
                           f"{_num(f.numbers.get('all_heads_ari'))} (goal {_num(f.numbers.get('goal'))} per layer)"))
    hf, icl, cp = found.get("head_formation"), found.get("icl_drop"), found.get("critical_points")
    rises = {(r["head"], r["signal"]): r["rise_step"] for r in (cp.numbers.get("rises", []) if cp else [])}
    drop = icl.numbers.get("drop_step") if icl else None
    prev = rises.get((hf.numbers.get("prev_head"), "previous_token")) if hf else None
    ind = rises.get((hf.numbers.get("induction_head"), "induction")) if hf else None
    claim = "Previous-token and induction heads form together in one phase change"
    if prev is None or ind is None or not (math.isfinite(prev) and math.isfinite(ind)):
        rows.append(_claim(claim, NOT_TESTABLE, "no rise step of a previous-token and an induction head"))
    else:
        span = _log_span([prev, ind] + ([drop] if drop else []))
        all_rises = "; ".join(f"{h} {sig.replace('_token', '-token')} {_step(v)}" for (h, sig), v in rises.items())
        rows.append(_claim(claim, REPRODUCED if span <= TOGETHER_DECADES else NOT_REPRODUCED,
                           f"half-way rises: {hf.numbers['prev_head']} {_step(prev)}, {hf.numbers['induction_head']} "
                           f"{_step(ind)}; ICL drop {_step(drop) if drop else 'none'}; span {_num(span, 2)} decades "
                           f"(all rises: {all_rises})"))
    dr = found.get("data_refinement")
    claim = "Induction heads' code drLLC rises above their prose (training-distribution) drLLC"
    ind_heads = dr.numbers.get("induction_heads", []) if dr else []
    if not ind_heads:
        rows.append(_claim(claim, NOT_TESTABLE, dr.summary if dr else "no data-refinement finding"))
    else:
        diff = dr.numbers["difference"]
        above = all(diff[h] > 0 for h in ind_heads)
        auc = dr.numbers.get("auc", float("nan"))
        rows.append(_claim(claim, REPRODUCED if above and auc > 0.5 else NOT_REPRODUCED,
                           f"{dr.numbers['refined']} − {dr.numbers['base']} over the late checkpoints (from step "
                           f"{dr.numbers['from_step']:,}): " + ", ".join(f"{h} {_num(diff[h])}" for h in ind_heads) +
                           f"; other heads' mean {_num(dr.numbers.get('other_mean'))}; AUC {_num(auc)}"))
    claim = "The full-model LLC marks the stage boundaries"
    points = cp.numbers.get("llc_points") if cp else None
    if points is None or not drop:
        rows.append(_claim(claim, NOT_TESTABLE, "no full-model LLC curve or no ICL drop to mark"))
    else:
        near = [p for p in points if p["step"] > 0 and abs(math.log10(p["step"]) - math.log10(drop)) <= TOGETHER_DECADES]
        listed = ", ".join(f"{p['kind']} {_step(p['step'])}" for p in points) or "none"
        rows.append(_claim(claim, REPRODUCED if near else NOT_REPRODUCED,
                           f"LLC critical points: {listed}; ICL drop (the behavioural stage boundary) at "
                           f"{_step(drop)}; within {TOGETHER_DECADES:g} decades: "
                           f"{', '.join(p['kind'] + ' ' + _step(p['step']) for p in near) or 'none'}"))
    claim = "Ablation and composition agree with the clusters"
    tests = _cluster_behaviour_tests(table, f, n_resamples=n_resamples, seed=seed) if f and f.status != MISSING else []
    testable = [t for t in tests if t["min_p"] < alpha]
    if not testable:
        why = "; ".join(f"{t['scope']} {t['score']}: smallest attainable p {_num(t['min_p'], 2)}" for t in tests)
        rows.append(_claim(claim, NOT_TESTABLE, why or "no vote clusters or no ablation/composition scores"))
    else:
        ok = all(t["p_value"] < alpha for t in testable)
        rows.append(_claim(claim, REPRODUCED if ok else NOT_REPRODUCED, "; ".join(
            f"{t['scope']} {t['score']}: eta² {_num(t['eta2'], 2)}, p {_num(t['p_value'], 2)} (smallest attainable "
            f"{_num(t['min_p'], 2)})" for t in tests)))
    tab = pd.DataFrame(rows, columns=["claim", "verdict", "evidence"])
    counts = tab["verdict"].value_counts()
    summary = "; ".join(f"{r.claim}: {r.verdict}" for r in tab.itertuples()) + "."
    return Finding("paper_claims", title, REPORTED, summary, method,
                   dict(claims=rows, counts={k: int(v) for k, v in counts.items()}), tab)


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
        empty = [Finding(n, n.replace("_", " ").capitalize(), MISSING, f"unusable results table: {e}", "")
                 for n in FINDINGS[:-1]]
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
