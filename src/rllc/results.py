"""The results of a run directory, read without the estimation stack: the contract between estimation
and analysis.

    RUN_DIR/results.sqlite   results, finished tasks, hyperparameters per config_hash, datasets, runs, errors
    RUN_DIR/traces/*.npz     arrays behind rows: SGLD loss traces (llc), per-token susceptibilities

This module imports no torch: `rllc cluster`, `rllc compare`, `rllc report` and a researcher's notebook read
a finished run with numpy, pandas and sqlite3 alone (a test checks it). The store's guarantees are in
docs/design.md ("Contracts"). The runner writes through
`rllc.runs.store`, which takes its schema, columns and connection from here.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class RunError(ValueError):
    """A run that cannot start as asked, or a run directory that cannot be read; the message names what is
    wrong and the fix. (`rllc.runs.RunError` is this class.)"""


DB_NAME = "results.sqlite"
TRACE_DIR = "traces"
# One vocabulary for an estimate everywhere (rows, store, docs): `value` and its standard error `se`.
COLUMNS = ["step", "checkpoint", "kind", "signal", "component", "dataset", "value", "se", "config_hash",
           "seconds", "diagnostics"]
# Stores written before that named the standard error `spread`: readers read it as `se`, and the writer renames
# the column when it opens such a store (`migrate`).
OLD_SE_COLUMN = "spread"
EXTRA_COLUMNS = ["variant", "task", "finished_at"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    step INTEGER NOT NULL, checkpoint TEXT NOT NULL, kind TEXT NOT NULL, signal TEXT NOT NULL,
    component TEXT NOT NULL, variant TEXT NOT NULL DEFAULT '', dataset TEXT NOT NULL,
    value REAL, se REAL, config_hash TEXT NOT NULL, seconds REAL, diagnostics TEXT NOT NULL,
    UNIQUE (checkpoint, kind, signal, component, variant, dataset, config_hash));
CREATE TABLE IF NOT EXISTS tasks (
    task TEXT PRIMARY KEY, grp TEXT NOT NULL, kind TEXT NOT NULL, estimator TEXT NOT NULL, step INTEGER NOT NULL,
    checkpoint TEXT NOT NULL, dataset TEXT NOT NULL, config_hash TEXT NOT NULL, components TEXT NOT NULL,
    seconds REAL NOT NULL, worker TEXT, trace_file TEXT, run_id INTEGER, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS configs (
    config_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, estimator TEXT NOT NULL, params TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT NOT NULL, fingerprint TEXT NOT NULL, spec TEXT NOT NULL, description TEXT NOT NULL,
    PRIMARY KEY (name, fingerprint));
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, options TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL, planned INTEGER, skipped INTEGER, done INTEGER, failed INTEGER);
CREATE TABLE IF NOT EXISTS errors (task TEXT NOT NULL, run_id INTEGER, at REAL NOT NULL, message TEXT NOT NULL,
    detail TEXT);
"""


def db_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DB_NAME


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")  # readers (load_results) never block the writing driver
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
    return conn


def result_columns(conn: sqlite3.Connection) -> list[str]:
    return [row[1] for row in conn.execute("PRAGMA table_info(results)")]


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version to the current schema (the writer calls this on open):
    the standard-error column `spread` is renamed `se`."""
    if OLD_SE_COLUMN in result_columns(conn):
        conn.execute(f"ALTER TABLE results RENAME COLUMN {OLD_SE_COLUMN} TO se")
        conn.commit()


def open_existing(run_dir: str | Path) -> sqlite3.Connection:
    path = db_path(run_dir)
    if not path.is_file():
        where = "no such directory" if not Path(run_dir).exists() else DB_NAME
        raise RunError(f"{run_dir}: no results store ({where}); create one with "
                       f"`rllc estimate CKPT_DIR --out {run_dir}` or `rllc probe CKPT_DIR --out {run_dir}`")
    return connect(path)


def no_results_message(run_dir: str | Path) -> str:
    """One line for a store without results: which run directory, why (empty, or every task failed), and the
    command that would produce them."""
    conn = open_existing(run_dir)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        kinds = [k for (k,) in conn.execute("SELECT DISTINCT kind FROM runs ORDER BY id")]
        failed = conn.execute("SELECT COUNT(DISTINCT task) FROM errors").fetchone()[0]
        first = conn.execute("SELECT message FROM errors ORDER BY at DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    ckpt = meta.get("checkpoint_dir", "CKPT_DIR")
    commands = " or ".join(f"`rllc {k} {ckpt} --out {run_dir}`" for k in (kinds or ["estimate", "probe"]))
    if failed:
        last = first[0].splitlines()[0] if first and first[0] else ""
        last = last if len(last) <= 160 else last[:157] + "..."
        return (f"{run_dir}: no results: its {failed} task(s) failed (last error: {last}; all in {run_dir}/run.log); "
                f"fix the cause and rerun {commands}")
    return f"{run_dir}: no results yet (the store is empty); compute them with {commands}"


# --- reading ------------------------------------------------------------------


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """All results of a run directory, one row per result, long format (see docs/cli.md)."""
    conn = open_existing(run_dir)
    try:
        old = OLD_SE_COLUMN in result_columns(conn)  # a store from before `se` (read as it is, never rewritten)
        columns = ", ".join(f"r.{OLD_SE_COLUMN} AS se" if old and c == "se" else f"r.{c}" for c in COLUMNS)
        df = pd.read_sql_query(
            f"SELECT {columns}, r.variant, r.task, t.finished_at FROM results r "
            "LEFT JOIN tasks t ON t.task = r.task "
            "ORDER BY r.kind, r.signal, r.dataset, r.config_hash, r.component, r.variant, r.step", conn)
    finally:
        conn.close()
    df = df.astype({"step": "int64", "value": "float64", "se": "float64", "seconds": "float64"})
    for col in ("checkpoint", "kind", "signal", "component", "dataset", "config_hash", "diagnostics", "variant"):
        df[col] = df[col].astype(str)
    return df[COLUMNS + EXTRA_COLUMNS].reset_index(drop=True)


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's checkpoint directory, architecture, hyperparameters per config_hash, datasets and runs."""
    conn = open_existing(run_dir)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        configs = {h: {"kind": k, **json.loads(p)}
                   for h, k, p in conn.execute("SELECT config_hash, kind, params FROM configs")}
        datasets = {}
        for name, fingerprint, spec, desc in conn.execute("SELECT * FROM datasets ORDER BY name"):
            datasets.setdefault(name, []).append(dict(fingerprint=fingerprint, spec=spec, description=desc))
        runs = [dict(id=i, kind=k, options=json.loads(o), started_at=s, finished_at=f, planned=p, skipped=sk,
                     done=d, failed=fa)
                for i, k, o, s, f, p, sk, d, fa in conn.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        conn.close()
    return dict(checkpoint_dir=meta.get("checkpoint_dir"),
                architecture=json.loads(meta["architecture"]) if "architecture" in meta else None,
                configs=configs, datasets=datasets, runs=runs)


def _trace_file(run_dir: str | Path, checkpoint: str, component: str, dataset: str, config_hash: str,
                signal: str) -> Path:
    """The file beside the store that holds the arrays behind one row of `signal`."""
    conn = open_existing(run_dir)
    try:
        hit = conn.execute(
            "SELECT t.trace_file FROM results r JOIN tasks t ON t.task = r.task WHERE r.checkpoint=? AND "
            "r.component=? AND r.dataset=? AND r.config_hash=? AND r.signal=?",
            (checkpoint, component, dataset, config_hash, signal)).fetchone()
    finally:
        conn.close()
    if not hit or not hit[0]:
        raise RunError(f"{run_dir}: no {signal} arrays for {checkpoint} {component} {dataset} {config_hash}")
    return Path(run_dir) / TRACE_DIR / hit[0]


def load_trace(run_dir: str | Path, checkpoint: str, component: str, dataset: str, config_hash: str) -> np.ndarray:
    """The SGLD loss trace [chains, draws] behind one llc row."""
    with np.load(_trace_file(run_dir, checkpoint, component, dataset, config_hash, "llc")) as f:
        return f[component]


def load_susceptibility(run_dir: str | Path, checkpoint: str, component: str, probe: str, dataset: str,
                        config_hash: str) -> tuple[np.ndarray, np.ndarray]:
    """The per-token susceptibilities [n_seq, T-1] behind one susceptibility row (its variant is the probe
    set) and the probe tokens [n_seq, T] (position p of the values predicts token p + 1)."""
    with np.load(_trace_file(run_dir, checkpoint, component, dataset, config_hash, "susceptibility")) as f:
        return f[f"{component}|{probe}"], f[f"tokens|{probe}"]


# --- convergence -----------------------------------------------------------------

RHAT_WARN = 1.01  # Vehtari et al. (2021): R-hat above 1.01 is not yet converged
RHAT_FAIL = 1.1  # the older, looser threshold; rllc report marks an estimate above it unhealthy


def rhat_summary(df: pd.DataFrame) -> dict[str, int]:
    """R-hat counts over the LLC estimates (rows with signal "llc") of a results table.

    Returns ``n`` (LLC rows), ``over_1_01`` and ``over_1_1`` (rows whose R-hat, ``rhat`` in the
    row's diagnostics JSON, exceeds 1.01 / 1.1; the second are among the first) and ``unknown``
    (rows without a finite R-hat: the key missing or null, as the store writes NaN and Inf, or the
    diagnostics unreadable), and ``not_critical`` (rows flagged because the gradient at w* on their
    data is larger than minibatch noise explains: ``critical_point`` false, see
    rllc.sampling.stationarity). ``diagnostics`` may hold JSON text (as stored) or dicts."""
    llc = df[df["signal"] == "llc"] if "signal" in df.columns else df.iloc[:0]
    counts = dict(n=len(llc), over_1_01=0, over_1_1=0, unknown=0, not_critical=0)
    for raw in llc["diagnostics"] if "diagnostics" in llc.columns else [None] * len(llc):
        try:
            d = json.loads(raw) if isinstance(raw, str) else raw
            counts["not_critical"] += int(d.get("critical_point") is False)
            value = float(d["rhat"])
        except (ValueError, TypeError, KeyError, AttributeError):
            value = float("nan")
        if not np.isfinite(value):
            counts["unknown"] += 1
        elif value > RHAT_WARN:
            counts["over_1_01"] += 1
            counts["over_1_1"] += int(value > RHAT_FAIL)
    return counts


def rhat_summary_lines(counts: dict[str, int]) -> list[str]:
    """`rhat_summary` in words: one sentence (none if there are no LLC estimates), and one on what to
    change when any R-hat exceeds 1.1."""
    if not counts["n"]:
        return []
    line = (f"{counts['over_1_1']} of {counts['n']} LLC estimates have R-hat > {RHAT_FAIL:g} "
            f"({counts['over_1_01']} > {RHAT_WARN:g})")
    if counts["unknown"]:
        line += f"; {counts['unknown']} have no R-hat (e.g. too few draws, or a constant trace)"
    lines = [line + "."]
    if counts["over_1_1"]:
        lines.append("Their chains have not converged: try more draws or burn-in (--draws, --burn-in), or settings "
                     "from `rllc calibrate CKPT_DIR` (docs/llc.md, Calibration).")
    if counts.get("not_critical"):
        lines.append(f"{counts['not_critical']} of {counts['n']} LLC estimates are at a w* that is not a critical "
                     "point of their data's loss (gradient norm > 3x its minibatch noise): data-refined values, or "
                     "a checkpoint mid-descent; they can be biased low or negative (docs/llc.md, 'Critical points').")
    return lines


def export_results(run_dir: str | Path, fmt: str = "csv", out: str | Path | None = None) -> Path:
    """Write load_results(run_dir) to CSV or Parquet (default RUN_DIR/results.csv|parquet)."""
    if fmt not in ("csv", "parquet"):
        raise RunError(f"--format must be csv or parquet, got {fmt!r}")
    df = load_results(run_dir)
    path = Path(out) if out else Path(run_dir) / f"results.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        try:
            df.to_parquet(path, index=False)
        except ImportError as e:
            raise RunError(f"parquet export needs pyarrow ({e}); `pip install pyarrow` or use --format csv") from None
    return path
