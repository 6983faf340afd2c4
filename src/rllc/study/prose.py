"""The words of the study's findings: each finding's title, its method in a sentence or two, and its one-line
summary, written from the numbers `rllc.study.findings` computed (and from the study's parameters: thresholds,
goals, smoothing). Nothing here computes a result; nothing in `findings` writes a sentence.

`describe(name, status, numbers, table, **params) -> (title, summary, method)` for a finding; `claim(key)` and
`evidence(key, facts)` for the rows of the paper's claims.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from rllc.analysis.trajectories import layer_of

Text = tuple[str, str, str]  # title, summary, method


def num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}"


def step(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:,.0f}"


def types_source(kind: str, *, prev_threshold: float = 0.0, induction_threshold: float = 0.0) -> str:
    """Where the behavioural head types came from: the selectivity classes, the head scores, or nowhere."""
    if kind == "classes":
        return ("selectivity class at the last checkpoint (head_types), previous -> previous-token, "
                "induction -> induction, other labels -> other")
    if kind == "scores":
        return (f"head scores at the last checkpoint (previous-token >= {prev_threshold:g}, induction >= "
                f"{induction_threshold:g}, else other; no class labels in the table)")
    return "no behaviour rows"


def _why_missing(n: Mapping[str, Any], texts: Mapping[str, Callable[[Mapping[str, Any]], str]]) -> str | None:
    """The summary of a finding that lacks its inputs (`n["missing"]` names why), or None when it has them."""
    reason = n.get("missing")
    return texts[reason](n) if reason in texts else None


def _left_out(n: Mapping[str, Any]) -> str:
    left_out = n.get("steps_left_out") or []
    return (f" Left out (median head estimate < 0): step{'s' if len(left_out) > 1 else ''} "
            f"{', '.join(map(str, left_out))}." if left_out else "")


def head_formation(status: str, n: Mapping[str, Any], table, *, prev_threshold: float,
                   induction_threshold: float) -> Text:
    method = (f"At the last checkpoint, the largest previous-token score (attention to the previous token on random "
              f"tokens) among layer-0 heads must be >= {prev_threshold:g}, and the largest induction score "
              f"(attention to the token after the earlier occurrence, on repeated random tokens) among heads of "
              f"layer >= 1 must be >= {induction_threshold:g}.")
    parts = []
    if "prev_head" in n:
        parts.append(f"previous-token {num(n['prev_score'])} (head {n['prev_head']}, layer 0; >= {prev_threshold:g}: "
                     f"{'yes' if n['prev_score'] >= prev_threshold else 'no'})")
    if "induction_head" in n:
        parts.append(f"induction {num(n['induction_score'])} (head {n['induction_head']}; >= "
                     f"{induction_threshold:g}: {'yes' if n['induction_score'] >= induction_threshold else 'no'})")
    if n.get("missing"):
        what = {"previous_token": "previous_token scores of layer-0 heads",
                "induction": "induction scores of heads in layer >= 1"}
        summary = "; ".join(parts + [f"missing: {', '.join(what[m] for m in n['missing'])}"])
    else:
        at = n["prev_step"] if n["prev_step"] == n["induction_step"] else f"{n['prev_step']}/{n['induction_step']}"
        summary = f"At step {at}: " + "; ".join(parts) + "."
    return "Head formation", summary, method


def icl_drop(status: str, n: Mapping[str, Any], table, *, smoothing) -> Text:
    method = ("The model's ICL score (loss at a late token minus loss at an early token; more negative = more "
              "in-context learning) over training; its drop is the most prominent 'fall' critical point of the "
              f"curve ({smoothing.describe()}; slope prominence >= 0.2 of max |slope| and a change >= 3x the "
              "curve's noise), i.e. a drop that stands out of the checkpoint-to-checkpoint noise.")
    if n.get("missing"):
        summary = f"no model-level ICL curve with >= 4 checkpoints ({n['n_checkpoints']} found)"
    elif n.get("drop_step") is not None:
        summary = (f"The ICL score drops at step ≈ {step(n['drop_step'])} (smoothed slope {num(n['slope_per_decade'])} "
                   f"per decade; smoothed drop {num(n['drop_size'])}); {num(n['first'])} at step {n['first_step']} → "
                   f"{num(n['last'])} at step {n['last_step']}; {n['n_falls']} fall point(s) in all.")
    else:
        summary = (f"No drop clears the noise floor; steepest decrease at step ≈ {step(n['steepest_step'])} (slope "
                   f"{num(n['slope_per_decade'])} per decade); {num(n['first'])} → {num(n['last'])}.")
    return "ICL score drop", summary, method


def clustering(status: str, n: Mapping[str, Any], table, *, goal: float, verdict_method: str,
               types_source: str) -> Text:
    method = ("The rLLC paper's procedure (its Appendix F.5), fixed before the demo's result was looked at: the "
              "per-head LLC curves on the training distribution ‖ on code (checkpoint axis; checkpoints whose "
              "median head estimate is negative, i.e. not at a local minimum, left out by stack_trajectories), "
              "clustered within each layer and for all heads together by Euclidean k-means on the raw curves "
              "(levels count) and by k-Shape (shape-based distance on z-normalised curves), plus their majority "
              "vote weighted 2:1 towards k-Shape (co-association, average linkage); k = the number of behavioural "
              f"types among the view's heads ({types_source}); the labels set k and are never used to choose "
              f"among clusterings. ARI and NMI against the types for every view and method. Verdict on the "
              f"{verdict_method}: PASS when its ARI is >= {goal:g} in every layer that has more than one type.")
    summary = _why_missing(n, {
        "no_curves": lambda n: "no per-head LLC curves in the table",
        "curves_unusable": lambda n: f"cannot build the {' ‖ '.join(n['keys'])} curves: {n['error']}",
        "no_types": lambda n: f"no behavioural head types to compare with.{_left_out(n)}",
        "one_type": lambda n: "no layer has more than one behavioural type: nothing for a clustering to recover."
                              + _left_out(n)})
    if summary is None:
        truth = pd.Series(n["type_of"])

        def view_text(scope: str) -> str:
            rows = table[table["scope"] == scope].set_index("method")
            counts = truth.reindex([h for h in truth.index if scope == "all heads" or f"layer {layer_of(h)}" == scope])
            kinds = ", ".join(f"{c} {t}" for t, c in counts.value_counts().items())
            main = rows.loc[verdict_method]
            others = ", ".join(f"{m} {num(rows.loc[m, 'ari'])}" for m in rows.index if m != verdict_method)
            return (f"{scope} (k={int(main['k'])}: {kinds}): {verdict_method} ARI {num(main['ari'])}, NMI "
                    f"{num(main['nmi'])} [{main['clusters']}]; ARI of {others}")

        summary = ("; ".join(view_text(s) for s in dict.fromkeys(table["scope"])) +
                   f". Goal: {verdict_method} ARI >= {goal:g} in every layer with more than one type: "
                   f"{'met' if status == 'PASS' else 'not met'}.{_left_out(n)}")
    return "Clustering vs head types", summary, method


def curve_agreement(status: str, n: Mapping[str, Any], table) -> Text:
    method = ("Per head, features of its LLC curve on the training distribution (final level, peak, step and signed "
              "size of the largest change between checkpoints; checkpoints not at a local minimum left out) "
              "against its behavioural scores at the last checkpoint (previous-token, induction, current-token, "
              "mean-ablation loss increase): Spearman's rho over the heads of each layer and of all heads, with a "
              "two-sided permutation p-value (exact over the 8! orderings of a layer). A continuous agreement "
              "beside the ARI, which is fragile with 8 heads and unbalanced types. Many pairs are tested: read "
              "single p-values below 0.05 with that in mind (the count is in the summary).")
    summary = _why_missing(n, {"no_curve": lambda n: "no per-head LLC curve",
                               "curves_unusable": lambda n: f"cannot build the {n['key']} curves: {n['error']}",
                               "no_scores": lambda n: "no behavioural scores in the table"})
    if summary is None:
        parts = [f"{s['scope']}: strongest {s['feature']} ~ {s['score']} rho {num(s['rho'], 2)} "
                 f"(p {num(s['p_value'], 2)}); {s['n_below_005']} of {s['n_tests']} pairs p < 0.05"
                 for s in n["by_scope"]]
        summary = (f"{n['key']} curve features vs {', '.join(n['scores'])}: " + "; ".join(parts) +
                   f". Under no association about {0.05 * n['n_tests']:.1f} of the {n['n_tests']} tests would "
                   "fall below 0.05 by chance.")
    return "Curve features vs behaviour", summary, method


def convergence(status: str, n: Mapping[str, Any], table, *, rhat_max: float, share_goal: float,
                snr_goal: float) -> Text:
    method = (f"R-hat (rank-normalised split R-hat, arviz-stats) of every LLC estimate of the run: PASS needs R-hat "
              f"<= {rhat_max:g} on >= {share_goal:.0%} of them; and at the last checkpoint the per-head wrLLC on the "
              f"training distribution re-estimated with further seeds (other sampler noise and batches): the sd "
              f"between the heads' seed means over the mean between-seed sd must be >= {snr_goal:g} (the SNR check "
              "of rllc calibrate, re-checked on this run).")
    if not n["n"]:
        return "Convergence and precision", "no LLC estimates in the table", method
    parts = [f"R-hat <= {rhat_max:g} on {n['share_rhat_ok']:.1%} of {n['n']} LLC estimates ({n['over_1_1']} above, "
             f"{n['unknown']} without one; goal >= {share_goal:.0%})"]
    if "snr" in n:
        parts.append(f"at step {n['step']:,}: between-head sd {num(n['head_sd'])} / between-seed sd "
                     f"{num(n['seed_sd'])} = {num(n['snr'])} over {n['seeds']} seeds (goal >= {snr_goal:g})")
    else:
        parts.append("no repeated-seed estimates (rllc demo makes them): the between-seed sd is not measured")
    return "Convergence and precision", "; ".join(parts) + ".", method


def data_refinement(status: str, n: Mapping[str, Any], table, *, base: str, refined: str,
                    late_fraction: float) -> Text:
    title = f"Data refinement ({refined} − {base} LLC)"
    method = (f"Per head, drLLC on {refined} minus drLLC on {base} at each checkpoint both share, averaged over "
              f"the last {late_fraction:.0%} of those checkpoints; the induction heads (by behavioural type) "
              "against all other heads: their means, the rank AUC P(induction > other), and whether every "
              "induction head lies beyond the other heads' range.")
    summary = _why_missing(n, {"no_llc": lambda n: f"no per-head llc on {' and '.join(n['absent'])}",
                               "curves_unusable": lambda n: n["error"],
                               "nothing_shared": lambda n: f"{n['keys'][0]} and {n['keys'][1]} share no heads and steps"})
    if summary is None and not n.get("induction_heads"):
        summary = (f"No induction heads among the typed heads; mean {refined}−{base} drLLC over all "
                   f"{len(n['difference'])} heads from step {n['from_step']}: {num(n['mean_all'])}.")
    elif summary is None:
        n_other = len(n["difference"]) - len(n["induction_heads"])
        where = {"above": "all above the others", "below": "all below the others"}.get(n["direction"],
                                                                                      "overlapping the others")
        summary = (f"Induction heads {', '.join(n['induction_heads'])}: mean {refined}−{base} drLLC "
                   f"{num(n['induction_mean'])} (from step {n['from_step']}, {len(n['late_steps'])} checkpoints) vs "
                   f"{num(n['other_mean']) if n_other else '–'} for the {n_other} other heads (range "
                   f"{num(n['other_min']) if n_other else '–'} … {num(n['other_max']) if n_other else '–'}); AUC "
                   f"{num(n['auc'])}; {where}: {'separates' if n['separated'] else 'does not separate'} them.")
    return title, summary, method


def critical_points(status: str, n: Mapping[str, Any], table, *, smoothing) -> Text:
    method = (f"Critical points (peaks, troughs, rises, falls) of the full-model LLC curve ({smoothing.describe()}); "
              "for each previous-token head of layer 0 and each induction head (by type; else the highest-scoring "
              "head), the step where its score first crosses half-way from its first to its last value; each "
              "such step beside the nearest LLC critical point in log-step (lag in decades, LLC point − rise).")
    title = "LLC critical points vs head formation"
    if n.get("missing"):
        return title, "no full-model LLC curve and no head scores", method
    name = n.get("curve")
    if name is None:
        pts_text = "no full-model LLC curve"
    elif n["llc_points"]:
        pts_text = f"{name} critical points: " + ", ".join(f"{p['kind']} {step(p['step'])}" for p in n["llc_points"])
    else:
        pts_text = f"{name}: no critical point above the noise"

    def one(r) -> str:
        s = f"{r['head']} {r['signal'].replace('_token', '-token')} rises at {step(r['rise_step'])}"
        if "nearest_llc_point" in r and r["nearest_llc_point"] is not None and math.isfinite(r["lag_decades"]):
            s += f" (nearest LLC {r['nearest_llc_point']} {step(r['llc_point_step'])}, {r['lag_decades']:+.2f} dec)"
        return s

    rise_text = "; ".join(one(r) for r in n["rises"]) if n["rises"] else "no head scores"
    return title, f"{pts_text}. {rise_text}.", method


def timings(status: str, n: Mapping[str, Any], table, *, goal_s: float) -> Text:
    method = ("Wall-clock seconds of each stage of the run as `rllc demo` recorded them in RUN_DIR/timings.json; "
              "'first full run' is the first run that finished every stage, 'latest' the last one (a rerun that "
              f"reuses finished work is shorter); goal {goal_s / 60:g} minutes on 2 cores.")
    summary = _why_missing(n, {"none": lambda n: "no timings recorded (RUN_DIR/timings.json)",
                               "no_stage_times": lambda n: "timings.json holds no stage times"})
    if summary is not None:
        return "Wall time", summary, method
    parts = []
    for label, st in n["runs"].items():
        total = sum(st.values())
        parts.append(f"{label}: {total:,.0f} s = {total / 60:.1f} min (" +
                     ", ".join(f"{s} {v:,.0f}" for s, v in st.items()) + ")")
    summary = "; ".join(parts) + f"; within the {goal_s / 60:g}-minute goal: {'yes' if n['within_goal'] else 'no'}."
    return "Wall time", summary, method


def paper_claims(status: str, n: Mapping[str, Any], table, *, together_decades: float, alpha: float) -> Text:
    method = (f"Each claim judged by a rule fixed in advance: (1) the clustering finding passes; (2) the half-way "
              f"rise steps of the strongest previous-token and induction heads and the ICL drop lie within "
              f"{together_decades:g} decades of log-step; (3) every induction head's code LLC exceeds its "
              f"training-distribution LLC over the late checkpoints, more than the other heads' do (AUC > 0.5); "
              f"(4) a critical point of the full-model LLC lies within {together_decades:g} decades of the ICL drop; "
              f"(5) within each layer the vote clusters explain the mean-ablation effect and the K-composition score "
              f"(eta², permutation p < {alpha:g}); a layer whose cluster sizes cannot reach p < {alpha:g} is not "
              "testable.")
    summary = "; ".join(f"{r['claim']}: {r['verdict']}" for r in n["claims"]) + "."
    return "The paper's claims", summary, method


CLAIMS = {
    "clusters": "Head types cluster by rLLC curve",
    "together": "Previous-token and induction heads form together in one phase change",
    "refinement": "Induction heads' code drLLC rises above their prose (training-distribution) drLLC",
    "stages": "The full-model LLC marks the stage boundaries",
    "behaviour": "Ablation and composition agree with the clusters",
}


def claim(key: str) -> str:
    return CLAIMS[key]


def evidence(key: str, f: Mapping[str, Any], *, together_decades: float) -> str:
    """The evidence column of one of the paper's claims, from the facts its rule used."""
    if f.get("summary") is not None or f.get("absent") is not None:  # untestable: another finding says why
        return f.get("summary") or f["absent"]
    if key == "clusters":
        layer = ", ".join(f"{k} {num(v)}" for k, v in f["layer_ari"].items())
        return (f"{f['verdict_method']} ARI per layer: {layer}; all heads {num(f['all_heads_ari'])} (goal "
                f"{num(f['goal'])} per layer)")
    if key == "together":
        all_rises = "; ".join(f"{h} {sig.replace('_token', '-token')} {step(v)}" for h, sig, v in f["rises"])
        drop = f["drop"]
        return (f"half-way rises: {f['prev_head']} {step(f['prev'])}, {f['induction_head']} {step(f['ind'])}; ICL drop "
                f"{step(drop) if drop else 'none'}; span {num(f['span'], 2)} decades (all rises: {all_rises})")
    if key == "refinement":
        diff = f["difference"]
        return (f"{f['refined']} − {f['base']} over the late checkpoints (from step {f['from_step']:,}): " +
                ", ".join(f"{h} {num(diff[h])}" for h in f["induction_heads"]) +
                f"; other heads' mean {num(f['other_mean'])}; AUC {num(f['auc'])}")
    if key == "stages":
        listed = ", ".join(f"{p['kind']} {step(p['step'])}" for p in f["points"]) or "none"
        return (f"LLC critical points: {listed}; ICL drop (the behavioural stage boundary) at {step(f['drop'])}; "
                f"within {together_decades:g} decades: "
                f"{', '.join(p['kind'] + ' ' + step(p['step']) for p in f['near']) or 'none'}")
    if key == "behaviour":
        if not f["testable"]:
            return "; ".join(f"{t['scope']} {t['score']}: smallest attainable p {num(t['min_p'], 2)}"
                             for t in f["tests"]) or "no vote clusters or no ablation/composition scores"
        return "; ".join(f"{t['scope']} {t['score']}: eta² {num(t['eta2'], 2)}, p {num(t['p_value'], 2)} (smallest "
                         f"attainable {num(t['min_p'], 2)})" for t in f["tests"])
    raise KeyError(key)


UNTESTABLE = {
    "together": "no rise step of a previous-token and an induction head",
    "stages": "no full-model LLC curve or no ICL drop to mark",
    "clusters": "no clustering",
    "refinement": "no data-refinement finding",
}

TEXTS: dict[str, Callable[..., Text]] = {
    "head_formation": head_formation, "icl_drop": icl_drop, "convergence": convergence, "clustering": clustering,
    "curve_agreement": curve_agreement, "data_refinement": data_refinement, "critical_points": critical_points,
    "paper_claims": paper_claims, "timings": timings,
}


def describe(name: str, status: str, numbers: Mapping[str, Any], table: pd.DataFrame | None, **params) -> Text:
    """(title, summary, method) of the finding `name` from its status, numbers, table and the study's
    parameters it was computed with."""
    return TEXTS[name](status, numbers, table, **params)


def unusable(name: str, error: str) -> Text:
    """The text of a finding whose results table could not be read at all."""
    return name.replace("_", " ").capitalize(), f"unusable results table: {error}", ""
