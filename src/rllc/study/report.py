"""The demo study's findings as the first sections of the library's HTML report.

`rllc demo` computes its findings and passes these sections to `rllc.analysis.report.build_report`; `rllc
report RUN_DIR` does the same through `study_sections` when the run directory holds the study's files
(RUN_DIR/timings.json, RUN_DIR/seed_noise/values.csv, both written by `rllc demo`). The library's report reads
no study file and knows nothing of the findings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import pandas as pd

from rllc.analysis.report import Section, embed_png, html_table
from rllc.analysis.trajectories import AnalysisError, annotate
from rllc.study.findings import MISSING, StudyFindings, study_findings


def study_sections(table: pd.DataFrame, run_dir: str | Path, out: str | Path, *, seed: int = 0,
                   findings: StudyFindings | None = None, timings: Mapping | None = None,
                   seed_noise: pd.DataFrame | None = None) -> tuple[list[Section], list[str]]:
    """The findings section (with its figures written under `out`) and notes for the page.

    `findings` given: shown as they are. Otherwise they are computed from `table` with the study's timings
    (`timings`, else RUN_DIR/timings.json when present) and repeated-seed estimates (`seed_noise`, else
    RUN_DIR/seed_noise/values.csv when present); when every finding lacks its inputs the section is left out
    with a note. The findings are also written to `out`/findings.json."""
    out, run_dir, notes = Path(out), Path(run_dir), []
    table = annotate(table)
    out.mkdir(parents=True, exist_ok=True)
    if findings is None:
        if timings is None and (path := run_dir / "timings.json").is_file():
            try:
                timings = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                notes.append(f"{path} could not be read: {e}")
        if seed_noise is None and (path := run_dir / "seed_noise" / "values.csv").is_file():
            seed_noise = pd.read_csv(path)
        findings = study_findings(table, timings, seed_noise=seed_noise, seed=seed)
        if all(f.status == MISSING for f in findings):
            return [], notes + ["Findings left out: the run has none of their inputs."]
    findings.to_json(out / "findings.json")
    try:
        figures = findings_figures(table, findings, out)
    except AnalysisError as e:
        figures = []
        notes.append(f"Findings figures skipped: {e}")
    return [findings_section(findings, figures)], notes


def findings_figures(table: pd.DataFrame, findings: StudyFindings, out: str | Path) -> list[tuple[Path, str]]:
    """The curves the clustering finding clustered (each of its keys, the checkpoints it used), coloured by
    behavioural type, one PNG per key under `out`; [] when the finding has no curves."""
    from rllc.analysis.figures import plot_head_curves
    from rllc.analysis.trajectories import stack_trajectories

    try:
        f = findings["clustering"]
    except KeyError:
        return []
    keys, types = f.numbers.get("keys"), f.numbers.get("type_of")
    if not keys or not types:
        return []
    ts = stack_trajectories(table, keys, normalisation="none")
    clusters = {v["scope"]: v["clusters"] for v in f.numbers.get("views", []) if v["method"] == f.numbers.get(
        "verdict_method") and v["scope"] != "all heads"}
    note = "; ".join(f"{scope}: {groups}" for scope, groups in clusters.items())
    figures = []
    for key in keys:
        path = Path(out) / f"findings_curves_{key.replace('@', '_').replace('/', '_')}.png"
        plot_head_curves(ts.raw[key], pd.Series(types), title=f"{key}, the curves clustered, by behavioural type",
                         ylabel=key, legend_title="type", path=path)
        figures.append((path, f"Per-head {key} at the checkpoints the clustering used, coloured by behavioural "
                              f"type. Vote clusters: {note}."))
    return figures




def findings_section(findings: StudyFindings, figures: Sequence[tuple[str | Path, str]] = ()) -> Section:
    """The findings as a small table with PASS / FAIL / reported / missing badges; each finding's
    per-head numbers in a collapsed block below."""
    rows = []
    for f in findings:
        badge = f'<span class="badge {escape(f.status.lower())}">{escape(f.status)}</span>'
        rows.append(f"<tr><td><b>{escape(f.title)}</b></td><td>{badge}</td><td>{escape(f.summary)}</td>"
                    f'<td class="method">{escape(f.method)}</td></tr>')
    counts = {s: sum(f.status == s for f in findings) for s in ("PASS", "FAIL", "reported", "missing")}
    line = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    body = [f'<p class="note">Computed from this run\'s results by <code>rllc.study.findings</code> '
            f"({escape(line)}). PASS/FAIL against the study's thresholds; <i>reported</i>: no threshold; "
            "<i>missing</i>: the run lacks the inputs.</p>",
            '<table class="findings"><thead><tr><th>finding</th><th>status</th><th>result</th>'
            f"<th>method</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"]
    for path, caption in figures:
        body.append(embed_png(path, caption))
    for f in findings:
        if f.table is not None and len(f.table):
            opened = " open" if f.name == "paper_claims" else ""  # the claims table is the study's summary
            body.append(f"<details{opened}><summary>{escape(f.title)}: numbers</summary>"
                        f"{html_table(f.table, max_rows=64)}</details>")
    return Section("findings", "Findings", "".join(body))
