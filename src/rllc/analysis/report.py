"""One self-contained HTML page for a run: sections a study passes in first (the demo's findings:
rllc.study.report), configuration, diagnostics (any
unhealthy estimate named; how many LLC estimates fail R-hat), stages, clusters, comparison tables and per-head
curves, with every
figure embedded as a base64 PNG (the page needs no other file and no network).

The page carries a small script that, on load, sets ``document.title`` to
``rllc report: ok <loaded>/<images>`` (images that decoded / images on the
page) or ``rllc report: error ...`` when a script error happened, so that a
headless browser can check the rendering (see the tests).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from pathlib import Path

import numpy as np
import pandas as pd

from rllc.analysis.cluster import ALGORITHMS, ClusterResult
from rllc.analysis.compare import CompareResult
from rllc.analysis.outputs import Written, write_cluster, write_compare
from rllc.analysis.trajectories import AnalysisError, annotate, signal_keys

RHAT_MAX = 1.1


class Section(NamedTuple):
    """A section a study adds to the report (shown first): its anchor, its title in the page's navigation, and
    its HTML body (figures embedded, e.g. with `embed_png`)."""

    anchor: str
    title: str
    html: str


# --- diagnostics -----------------------------------------------------------------

def _number(d: Mapping, *names) -> float | None:
    for n in names:
        if n in d:
            try:
                v = float(d[n])
            except (TypeError, ValueError):
                continue
            return v
    return None


def diagnostics_table(df: pd.DataFrame, *, rhat_max: float = RHAT_MAX, ess_min: float | None = None) -> pd.DataFrame:
    """Every estimate that looks unhealthy, one row per problem: a value that
    is not finite; r_hat (``rhat`` or ``r_hat`` in the diagnostics JSON) above
    `rhat_max`; ESS (``ess``) below `ess_min` (when given); a chain whose value
    in ``per_chain`` is not finite (named by its index); any ``warnings`` or
    ``error`` entry. Columns: checkpoint, step, key, component, dataset,
    problem."""
    table = annotate(df)
    rows = table[table["kind"] == "estimate"] if "kind" in table.columns else table
    out = []
    for r in rows.itertuples(index=False):
        where = dict(checkpoint=getattr(r, "checkpoint", ""), step=r.step, key=r.key, component=r.component,
                     dataset=r.dataset)
        problems = []
        if not (isinstance(r.value, (int, float)) and math.isfinite(r.value)):
            problems.append("value is not finite")
        raw = getattr(r, "diagnostics", None)
        try:
            d = json.loads(raw) if isinstance(raw, str) and raw else (raw if isinstance(raw, dict) else {})
        except ValueError:
            d = {}
            problems.append("diagnostics are not valid JSON")
        if not isinstance(d, dict):
            d = {}
        rhat = _number(d, "rhat", "r_hat")
        if rhat is not None and (not math.isfinite(rhat) or rhat > rhat_max):
            problems.append(f"r_hat {rhat:.3g} > {rhat_max:g}")
        ess = _number(d, "ess")
        if ess_min is not None and ess is not None and ess < ess_min:
            problems.append(f"ESS {ess:.3g} < {ess_min:g}")
        per_chain = d.get("per_chain")
        if isinstance(per_chain, (list, tuple)):
            bad = []
            for i, v in enumerate(per_chain):
                try:
                    ok = math.isfinite(float(v))
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    bad.append(i)
            if bad:
                problems.append(f"chain{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} not finite")
        warnings = d.get("warnings")
        if isinstance(warnings, str) and warnings:
            warnings = [warnings]
        if isinstance(warnings, (list, tuple)):
            problems += [f"warning: {w}" for w in warnings if w]
        if d.get("error"):
            problems.append(f"error: {d['error']}")
        out += [dict(**where, problem=p) for p in problems]
    return pd.DataFrame(out, columns=["checkpoint", "step", "key", "component", "dataset", "problem"])


def diagnostics_overview(df: pd.DataFrame) -> dict:
    """Counts for the summary line: estimates, and the worst r_hat and ESS seen."""
    table = annotate(df)
    rows = table[table["kind"] == "estimate"] if "kind" in table.columns else table
    rhat, ess = [], []
    if "diagnostics" in rows.columns:
        for raw in rows["diagnostics"]:
            try:
                d = json.loads(raw) if isinstance(raw, str) and raw else {}
            except ValueError:
                continue
            if isinstance(d, dict):
                v = _number(d, "rhat", "r_hat")
                if v is not None and math.isfinite(v):
                    rhat.append(v)
                v = _number(d, "ess")
                if v is not None and math.isfinite(v):
                    ess.append(v)
    return dict(estimates=len(rows), max_rhat=max(rhat) if rhat else None, min_ess=min(ess) if ess else None,
                with_rhat=len(rhat))


def convergence_html(df: pd.DataFrame) -> str:
    """A "Convergence" paragraph: how many LLC estimates (signal "llc") have R-hat above 1.1 and 1.01
    (rllc.results.rhat_summary, the count `rllc estimate` prints), and what to change if any
    exceed 1.1; empty if the table has no LLC estimates."""
    from rllc.results import rhat_summary, rhat_summary_lines

    counts = rhat_summary(df)
    lines = rhat_summary_lines(counts)
    if not lines:
        return ""
    status = "bad" if counts["over_1_1"] else ("note" if counts["over_1_01"] or counts["unknown"] else "ok")
    advice = "".join(f'<p class="note">{_esc(line)}</p>' for line in lines[1:])
    return f'<h3>Convergence</h3><p class="{status}">{_esc(lines[0])}</p>{advice}'


# --- HTML ---------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #1d1d1f;
       background: #f6f7f9; line-height: 1.45; }
header { background: #1b3a6b; color: white; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header p { margin: 4px 0 0; opacity: 0.85; font-size: 13px; }
nav { padding: 8px 32px; background: #e8ecf3; font-size: 13px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 16px; color: #1b3a6b; text-decoration: none; font-weight: 600; }
main { padding: 8px 32px 48px; max-width: 1240px; }
section { background: white; border-radius: 8px; padding: 12px 22px 18px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,0.08); }
h2 { font-size: 18px; margin: 8px 0 10px; color: #1b3a6b; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.note { font-size: 13px; color: #555; margin: 4px 0 10px; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; margin-top: 4px; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 14px; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #b42318; font-weight: 600; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.scroll { max-height: 300px; overflow: auto; border: 1px solid #eee; }
.scroll table { margin: 0; }
td { word-break: break-word; max-width: 520px; }
code { background: #f0f2f6; padding: 0 4px; border-radius: 3px; }
.badge { display: inline-block; min-width: 64px; text-align: center; padding: 1px 8px; border-radius: 10px;
         font-size: 12px; font-weight: 700; letter-spacing: 0.02em; }
.badge.pass { background: #dafbe1; color: #1a7f37; border: 1px solid #8fd19e; }
.badge.fail { background: #ffebe9; color: #b42318; border: 1px solid #f5a8a0; }
.badge.reported { background: #e8ecf3; color: #1b3a6b; border: 1px solid #b8c4d9; }
.badge.missing { background: #fff4d6; color: #8a5a00; border: 1px solid #e8c66a; }
table.findings td { max-width: 640px; }
table.findings td.method { color: #555; font-size: 12px; max-width: 360px; }
details { margin: 4px 0 8px; font-size: 13px; }
details summary { cursor: pointer; color: #1b3a6b; }
"""

SCRIPT = """
window.addEventListener('error', function (e) {
  window.__rllcErrors = (window.__rllcErrors || 0) + 1;
  document.title = 'rllc report: error ' + (e.message || 'resource');
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  if (!window.__rllcErrors) { document.title = 'rllc report: ok ' + loaded + '/' + imgs.length; }
  document.body.setAttribute('data-images', loaded + '/' + imgs.length);
});
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v)}"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.1f}"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(v)


def html_table(frame: pd.DataFrame, *, max_rows: int | None = None, scroll: bool = False) -> str:
    """A DataFrame as an HTML table (numbers right-aligned, 3 significant decimals)."""
    if frame is None or len(frame) == 0:
        return '<p class="note">(none)</p>'
    shown = frame if max_rows is None else frame.head(max_rows)
    head = "".join(f"<th>{_esc(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            cells.append(f'<td class="num">{_esc(_fmt(v))}</td>' if num else f"<td>{_esc(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if max_rows is not None and len(frame) > max_rows:
        more = f'<p class="note">showing {max_rows} of {len(frame)} rows; all are in the CSV.</p>'
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return (f'<div class="scroll">{table}</div>' if scroll else table) + more


def embed_png(path: str | Path, caption: str = "", alt: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_esc(alt or caption)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _flatten(config: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, name + ".")
        else:
            rows.append((name, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)))
    return rows


def section(anchor: str, title: str, body: str) -> str:
    """One titled <section> of the page (its anchor is the navigation target)."""
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


def calibration_section(folder: Path) -> str:
    """The verdict and loss-trace figure `rllc calibrate` wrote into `folder` (RUN_DIR/calibration)."""
    body = []
    verdict = folder / "verdict.txt"
    if verdict.exists():
        body.append(f"<p>{_esc(verdict.read_text().strip())}</p>")
    toml = folder / "calibration.toml"
    if toml.exists():
        body.append(f"<pre>{_esc(toml.read_text())}</pre>")
    if (folder / "calibration.png").exists():
        body.append(embed_png(folder / "calibration.png", "Pooled loss traces per setting at the calibration "
                                                          "checkpoints; the chosen one bold, its burn-in dotted."))
    return section("calibration", "Calibration", "".join(body))


def susceptibility_section(token_view: Mapping[str, Any], out: str | Path) -> str:
    """The token-level view of a run's susceptibilities at one checkpoint: per probe set, each component's
    susceptibility at each target position (mean over the probe's sequences). token_view: {"step": int,
    "arrays": {probe: {component: [n_seq, T-1]}}} (`rllc report` reads them from the store)."""
    from rllc.analysis.figures import plot_token_susceptibility

    body = [f'<p class="note">Per-token susceptibilities at step {token_view["step"]:,} (rllc.susceptibilities): '
            "how each component's posterior loss responds to shifting the data towards each probe token; rows "
            "scaled to their own largest magnitude (printed at the right), red positive, blue negative. On the "
            "repeated-token probe the second half repeats the first: induction heads act there.</p>"]
    for probe, arrays in token_view["arrays"].items():
        path = Path(out) / f"susceptibility_tokens_{probe}.png"
        plot_token_susceptibility(arrays, title=f"{probe} probe, step {token_view['step']:,}", path=path)
        body.append(embed_png(path, f"Susceptibility per target position on the {probe} probe set."))
    return section("susceptibility", "Susceptibilities by token", "".join(body))


def render_report(
    df: pd.DataFrame,
    config: Mapping | None,
    *,
    title: str = "rllc report",
    cluster: tuple[list[ClusterResult], Written] | None = None,
    comparison: tuple[CompareResult, Written] | None = None,
    rhat_max: float = RHAT_MAX,
    ess_min: float | None = None,
    notes: Sequence[str] = (),
    primary_algorithm: str | None = None,
    sections: Sequence[Section] = (),
    calibration: str | Path | None = None,
    token_view: str = "",
) -> str:
    """The HTML text of the report (figures read from the writers' files and embedded); `sections` (a
    study's, e.g. the demo's findings) come first, in the order given."""
    table = annotate(df)
    parts = [section(s.anchor, s.title, s.html) for s in sections]
    n_steps = table["step"].nunique()
    keys = signal_keys(table)
    heads = sorted(table.loc[table["level"] == "head", "component"].unique())

    # run
    body = []
    for n in notes:
        body.append(f'<p class="note">{_esc(n)}</p>')
    if config:
        conf = "<h3>Configuration</h3>" + html_table(pd.DataFrame(_flatten(config), columns=["setting", "value"]),
                                                     scroll=True)
    else:
        conf = '<h3>Configuration</h3><p class="note">No run configuration was found.</p>'
    steps = sorted(table["step"].unique())
    summary = "<h3>Results</h3>" + html_table(pd.DataFrame([
        ("rows", len(table)), ("checkpoints", n_steps),
        ("steps", f"{steps[0]} … {steps[-1]}" if steps else "–"), ("heads", len(heads)),
        ("signals", len(keys)),
    ], columns=["", "value"]))
    body.append(f'<div class="grid"><div>{conf}</div><div>{summary}</div></div>')
    body.append("<h3>Signals</h3>" + html_table(
        keys[["key", "kind", "level", "dataset", "n_components", "n_steps"]], scroll=True))
    parts.append(section("run", "Run", "".join(body)))

    # diagnostics
    problems = diagnostics_table(table, rhat_max=rhat_max, ess_min=ess_min)
    overview = diagnostics_overview(table)
    line = (f"{overview['estimates']} estimates checked; "
            f"worst r_hat {_fmt(overview['max_rhat'])}, lowest ESS {_fmt(overview['min_ess'])}. "
            f"Unhealthy: r_hat &gt; {rhat_max:g}"
            + (f", ESS &lt; {ess_min:g}" if ess_min is not None else "")
            + ", a non-finite value or chain, or any warning or error.")
    if len(problems):
        status = (f'<p class="bad">{problems[["step", "key", "component"]].drop_duplicates().shape[0]} '
                  f"unhealthy estimates:</p>")
        names = problems.groupby(["checkpoint", "step", "key", "component", "dataset"], sort=False)["problem"] \
            .agg("; ".join).reset_index()
        body = status + f'<p class="note">{line}</p>' + html_table(names, max_rows=200, scroll=True)
    else:
        body = f'<p class="ok">All estimates healthy.</p><p class="note">{line}</p>'
    parts.append(section("diagnostics", "Diagnostics", body + convergence_html(table)))
    if calibration is not None:
        parts.append(calibration_section(Path(calibration)))

    # stages
    if comparison is not None:
        result, w = comparison
        if "stages" in w.figures:
            body = [embed_png(w.figures["stages"], "Full-model LLC: checkpoints, smoothed curve; stages shaded, "
                              "boundaries (critical points of the smoothed curve in log-step) dashed."),
                    html_table(result.stages)]
        else:
            body = ['<p class="note">The run has no full-model LLC curve, so no stages.</p>']
        parts.append(section("stages", "Stages", "".join(body)))

    # clusters
    if cluster is not None:
        results, w = cluster
        body = []
        for r in results:
            ts = r.trajectories
            body.append(f"<h3>{_esc(r.scope)}</h3><p class='note'>Signals {_esc(' ‖ '.join(ts.keys))}; "
                        f"normalisation {_esc(ts.normalisation)}; time axis "
                        f"{'log-step, resampled' if ts.log_time else 'checkpoints'}; {len(ts.heads)} heads; "
                        f"k chosen by {_esc(r.criterion)}.</p>")
            body.append(embed_png(w.figures[f"metrics:{r.scope}"], "Cluster quality against k; rings: chosen k."))
            choice = pd.read_csv(w.tables["cluster_choice"])
            body.append(html_table(choice[choice["scope"] == r.scope].drop(columns="scope")))
            algorithms = [a for a in ([primary_algorithm] if primary_algorithm else []) + list(ALGORITHMS)
                          if a in r.chosen]
            if algorithms:
                a = algorithms[0]
                for key in ts.keys:
                    body.append(embed_png(w.figures[f"clusters:{a}:{key}:{r.scope}"],
                                          f"{key} coloured by {a} cluster at k={r.chosen[a]}."))
                membership = pd.DataFrame({a2: r.chosen_labels(a2) for a2 in r.chosen})
                if len(r.head_types):
                    membership.insert(0, "head type", r.head_types.reindex(membership.index).fillna(""))
                membership.insert(0, "head", membership.index)
                body.append("<h3>Membership at the chosen k</h3>" + html_table(membership, scroll=True))
            body.append("<h3>Agreement (ARI, NMI)</h3>" + html_table(r.agreement.drop(columns="scope")))
            body.append('<div class="grid">' + embed_png(w.figures[f"dendrogram:{r.scope}"],
                                                         "Ward dendrogram; leaf labels coloured by head type.")
                        + (embed_png(w.figures[f"tree:{algorithms[0]}:{r.scope}"],
                                     f"Subdivision tree of {algorithms[0]}: which cluster splits as k grows.")
                           if algorithms else "") + "</div>")
        parts.append(section("clusters", "Clusters", "".join(body)))

    # comparison
    if comparison is not None:
        result, w = comparison
        body = [f'<p class="note">{_esc(result.method.title())} rank correlation over heads. Pair signals '
                "(composition) enter as <code>.in</code> (max over senders, per receiver) and <code>.out</code> "
                "(max over receivers, per sender). Critical points: "
                f"{_esc(result.smoothing.describe())}.</p>"]
        grid = [embed_png(w.figures["correlation_matrix"], "Pooled over all (head, checkpoint) points.")]
        if "correlation_matrix_last" in w.figures:
            grid.append(embed_png(w.figures["correlation_matrix_last"], "At the last checkpoint."))
        body += grid  # full width: the matrices need it to stay readable
        for name, path in w.figures.items():
            if name.startswith("correlation_over_time:"):
                body.append(embed_png(path, "Per-checkpoint rank correlation over heads."))
        top = result.series.dropna(subset=["pooled_rho"]).copy()
        top["|ρ|"] = top["pooled_rho"].abs()
        top = top.sort_values("|ρ|", ascending=False).drop(columns="|ρ|")
        body.append("<h3>Strongest correlations across the series</h3>" + html_table(top, max_rows=25, scroll=True))
        for name, path in w.figures.items():
            if name.startswith("critical_points:"):
                body.append(embed_png(path, "Critical points per head: ▲ peak, ▼ trough, ● rise, ■ fall "
                                      "(extrema of the slope)."))
        al = result.alignment.dropna(subset=["median_lag_decades"])
        al = al[al["ref_kind"].isin(["peak", "rise"])].sort_values("median_abs_lag_decades")
        body.append("<h3>Alignment of critical points</h3><p class='note'>For each head's event of the reference "
                    "signal, the nearest event of the other signal (same head, or the full-model curve) within "
                    "the lag window; lag in decades of log-step, other minus reference.</p>"
                    + html_table(al, max_rows=40, scroll=True))
        if "composition" in w.figures:
            body.append(embed_png(w.figures["composition"], "Composition scores over training (the pairs with "
                                  "the highest scores), one panel per side."))
        parts.append(section("compare", "Geometry and behaviour", "".join(body)))

    if token_view:
        parts.append(token_view)

    # curves: estimates first, then behaviour
    if comparison is not None:
        result, w = comparison
        kinds = dict(zip(keys["key"], keys["kind"])) if "kind" in keys.columns else {}
        curve_figs = [(name.split(":", 1)[1], path) for name, path in w.figures.items() if name.startswith("curves:")]
        curve_figs.sort(key=lambda kp: 0 if kinds.get(kp[0]) == "estimate" else 1)
        body = ['<p class="note">Each signal per head, one panel per layer, coloured by head type (the '
                "selectivity class at the last checkpoint), stages shaded; log-step axis.</p>"]
        body += [embed_png(path, f"{key} per head.") for key, path in curve_figs]
        parts.append(section("curves", "Curves", "".join(body)))

    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in tuple((s.anchor, s.title) for s in sections)
                                                         + (("run", "Run"), ("diagnostics", "Diagnostics"),
                                                            ("stages", "Stages"), ("clusters", "Clusters"),
                                                            ("compare", "Comparison"))
                  + ((("susceptibility", "Tokens"),) if token_view else ()) + (("curves", "Curves"),))
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body><header><h1>{_esc(title)}</h1>"
            f"<p>generated {when} by rllc report · {len(heads)} heads · {n_steps} checkpoints</p></header>"
            f"<nav>{nav}</nav><main>{''.join(parts)}</main></body></html>")


def build_report(
    df: pd.DataFrame,
    config: Mapping | None,
    out: str | Path,
    *,
    title: str = "rllc report",
    cluster_keys: Sequence[str] | None = None,
    cluster_options: Mapping | None = None,
    compare_keys: Sequence[str] | None = None,
    compare_options: Mapping | None = None,
    rhat_max: float = RHAT_MAX,
    ess_min: float | None = None,
    notes: Sequence[str] = (),
    sections: Sequence[Section] = (),
    cluster: tuple[list[ClusterResult], Written] | None = None,
    comparison: tuple[CompareResult, Written] | None = None,
    precomputed: bool = False,
    calibration: str | Path | None = None,
    token_view: Mapping[str, Any] | None = None,
) -> Path:
    """Run the clustering and the comparison on a results table, write their
    tables and figures under `out`/cluster and `out`/compare, and the page
    `out`/report.html; returns the page's path. A part that cannot run (too
    few heads, no per-head signals) is left out with a note.

    `sections`: a study's own sections, shown first (the demo's findings:
    `rllc.study.report.study_sections`); the report reads no study file. With ``precomputed=True`` the given `cluster` / `comparison` (the
    writers' results, None for a part that was skipped) are used instead of
    running them again. `calibration`: the folder `rllc calibrate` wrote (its verdict, settings and
    loss-trace figure become a section). `token_view`: per-token susceptibilities at one checkpoint
    (`susceptibility_section`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = annotate(df)
    notes = list(notes)
    if not precomputed:
        comparison = None
        try:
            comparison = write_compare(table, out / "compare", compare_keys, **dict(compare_options or {}))
        except AnalysisError as e:
            notes.append(f"Comparison skipped: {e}")
        stages = comparison[0].stages if comparison is not None and len(comparison[0].stages) else None
        cluster = None
        try:
            cluster = write_cluster(table, out / "cluster", cluster_keys, stages=stages,
                                    **dict(cluster_options or {}))
        except AnalysisError as e:
            notes.append(f"Clustering skipped: {e}")
    page = render_report(table, config, title=title, cluster=cluster, comparison=comparison, rhat_max=rhat_max,
                         ess_min=ess_min, notes=notes, sections=sections, calibration=calibration,
                         token_view=susceptibility_section(token_view, out) if token_view else "")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["RHAT_MAX", "Section", "build_report", "convergence_html", "diagnostics_overview", "diagnostics_table",
           "embed_png", "html_table", "render_report", "section", "susceptibility_section"]
