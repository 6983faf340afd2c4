"""The results store of a run directory: SQLite (WAL) plus compressed loss traces.

    RUN_DIR/results.sqlite   results, finished tasks, hyperparameters per config_hash, datasets, runs, errors
    RUN_DIR/traces/*.npz     one compressed file of loss traces per finished LLC task
    RUN_DIR/run.log          one line per task (written by the runner)

Only the driver writes. A finished task is one transaction (its rows plus
its `tasks` entry), committed after its trace file has been renamed into
place, so a run killed at any instant leaves either the whole task or no
trace of it in the tables; a rerun recomputes exactly the missing tasks.
Rows are keyed by (checkpoint, kind, signal, component, variant, dataset,
config_hash): a changed hyperparameter is a new key, never an overwrite.
Every stored value is finite: `commit` refuses a task with a NaN/Inf value
(`NonFiniteValue`, which the runner records as a failed task), so no path can
add a silent NaN row.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rllc.runs.options import RunError
from rllc.runs.plan import Task
from rllc.runs.tasks import TaskResult

DB_NAME = "results.sqlite"
TRACE_DIR = "traces"
COLUMNS = ["step", "checkpoint", "kind", "signal", "component", "dataset", "value", "spread", "config_hash",
           "seconds", "diagnostics"]
EXTRA_COLUMNS = ["variant", "task", "finished_at"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    step INTEGER NOT NULL, checkpoint TEXT NOT NULL, kind TEXT NOT NULL, signal TEXT NOT NULL,
    component TEXT NOT NULL, variant TEXT NOT NULL DEFAULT '', dataset TEXT NOT NULL,
    value REAL, spread REAL, config_hash TEXT NOT NULL, seconds REAL, diagnostics TEXT NOT NULL,
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


class NonFiniteValue(RunError):
    """A task produced a NaN/Inf value: none of its rows is stored (the runner marks the task failed)."""


def db_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DB_NAME


class Store:
    """The driver's handle on RUN_DIR (single writer)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"{self.run_dir}: exists and is not a directory; pass another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / TRACE_DIR).mkdir(exist_ok=True)
        self.conn = connect(db_path(self.run_dir))
        self.conn.executescript(SCHEMA)
        self.run_id: int | None = None

    def close(self) -> None:
        self.conn.close()

    # --- identity of the run directory ---------------------------------------

    def bind(self, checkpoint_dir: Path, architecture: dict[str, Any]) -> None:
        """Tie RUN_DIR to one checkpoint directory and architecture: results of two series never mix."""
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        here = dict(checkpoint_dir=str(checkpoint_dir.resolve()), architecture=json.dumps(architecture, sort_keys=True))
        if not meta:
            with self.conn:
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", list(here.items()))
            return
        if meta["checkpoint_dir"] != here["checkpoint_dir"] or meta["architecture"] != here["architecture"]:
            raise RunError(f"{self.run_dir}: holds results for checkpoints in {meta['checkpoint_dir']}, not "
                           f"{here['checkpoint_dir']}; pass another --out for this series")

    def start_run(self, kind: str, options: dict[str, Any]) -> int:
        with self.conn:
            cur = self.conn.execute("INSERT INTO runs (kind, options, started_at) VALUES (?, ?, ?)",
                                    (kind, json.dumps(options, sort_keys=True, default=str), time.time()))
        self.run_id = cur.lastrowid
        return self.run_id

    def finish_run(self, planned: int, skipped: int, done: int, failed: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished_at=?, planned=?, skipped=?, done=?, failed=? WHERE id=?",
                              (time.time(), planned, skipped, done, failed, self.run_id))

    def record_config(self, task: Task) -> None:
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO configs VALUES (?, ?, ?, ?)",
                              (task.config_hash, task.kind, task.estimator, json.dumps(task.params, sort_keys=True)))

    def record_dataset(self, name: str, fingerprint: str, spec: str, description: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO datasets VALUES (?, ?, ?, ?)", (name, fingerprint, spec, description))

    # --- what is finished -------------------------------------------------------

    def missing(self, task: Task) -> Task | None:
        """The part of `task` not yet in the store (None if it is finished).

        Estimates count per component, so asking for more components later
        computes only the new ones; a probe task is finished or not."""
        if task.kind == "probe":
            done = self.conn.execute("SELECT 1 FROM tasks WHERE grp=?", (task.group,)).fetchone()
            return None if done else task
        have = {r[0] for r in self.conn.execute(
            "SELECT DISTINCT component FROM results WHERE checkpoint=? AND kind=? AND signal=? AND dataset=? "
            "AND config_hash=?", (task.checkpoint, task.kind, task.estimator, task.dataset, task.config_hash))}
        todo = [c for c in task.components if c not in have]
        if not todo:
            return None
        return task if len(todo) == len(task.components) else replace(task, components=todo)

    def mixed_configs(self, tasks: list[Task]) -> list[str]:
        """Notes for each (signal, dataset) that will hold results under more than one hyperparameter set."""
        ours: dict[tuple[str, str], set[str]] = {}
        for t in tasks:
            ours.setdefault((t.estimator if t.kind == "estimate" else "probe", t.dataset), set()).add(t.config_hash)
        notes = []
        for (signal, dataset), hashes in sorted(ours.items()):
            if signal == "probe":
                rows = self.conn.execute("SELECT DISTINCT config_hash FROM tasks WHERE kind='probe' AND dataset=?",
                                         (dataset,))
            else:
                rows = self.conn.execute("SELECT DISTINCT config_hash FROM results WHERE kind='estimate' AND "
                                         "signal=? AND dataset=?", (signal, dataset))
            every = hashes | {r[0] for r in rows}
            if len(every) > 1:
                notes.append(f"note: {self.run_dir} holds {signal} results on {dataset} under {len(every)} "
                             f"hyperparameter sets (config_hash {', '.join(sorted(every))}); select one with "
                             "df[df.config_hash == ...] (rllc.runs.load_run_config shows each)")
        return notes

    # --- writing one finished task ---------------------------------------------

    def commit(self, task: Task, result: TaskResult) -> None:
        check_finite(task, result.rows)  # before anything is written, traces included
        trace_file = self.write_traces(task, result.traces) if result.traces else None
        now = time.time()
        rows = [(task.key, task.step, task.checkpoint, task.kind, r["signal"], r["component"], r["variant"],
                 r["dataset"], float(r["value"]), nan_to_none(r["spread"]), task.config_hash, r["seconds"],
                 json.dumps(r["diagnostics"], allow_nan=False)) for r in result.rows]
        with self.conn:  # one transaction: all of the task or nothing
            self.conn.executemany(
                "INSERT INTO results (task, step, checkpoint, kind, signal, component, variant, dataset, value, "
                "spread, config_hash, seconds, diagnostics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (task.key, task.group, task.kind, task.estimator, task.step, task.checkpoint,
                               task.dataset, task.config_hash, json.dumps(task.components), result.seconds,
                               result.worker, trace_file, self.run_id, now))

    def write_traces(self, task: Task, traces: dict[str, np.ndarray]) -> str:
        """Atomically (temp file + rename) before the rows commit: a committed row always has its trace."""
        name = trace_name(task)
        path = self.run_dir / TRACE_DIR / name
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **traces)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return name

    def record_error(self, task: Task, message: str, detail: str | None) -> None:
        with self.conn:
            self.conn.execute("INSERT INTO errors VALUES (?, ?, ?, ?, ?)",
                              (task.key, self.run_id, time.time(), message, detail))

    def llc_results(self, tasks: list[Task]) -> pd.DataFrame:
        """The stored llc rows that the LLC tasks in `tasks` ask for, finished now or in an earlier run
        (columns checkpoint, dataset, config_hash, component, signal, diagnostics)."""
        columns = ["checkpoint", "dataset", "config_hash", "component", "signal", "diagnostics"]
        wanted = {(t.checkpoint, t.dataset, t.config_hash, c)
                  for t in tasks if t.kind == "estimate" and t.estimator == "llc" for c in t.components}
        if not wanted:
            return pd.DataFrame(columns=columns)
        hashes = sorted({w[2] for w in wanted})
        rows = self.conn.execute(
            f"SELECT {', '.join(columns)} FROM results WHERE kind='estimate' AND signal='llc' AND config_hash IN "
            f"({', '.join('?' * len(hashes))})", hashes).fetchall()
        return pd.DataFrame([r for r in rows if r[:4] in wanted], columns=columns)


def check_finite(task: Task, rows: list[dict[str, Any]]) -> None:
    """Raise NonFiniteValue naming the first row whose value is not a finite number."""
    for r in rows:
        value = r["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            variant = f" ({r['variant']})" if r.get("variant") else ""
            raise NonFiniteValue(
                f"{r['signal']} of {r['component']}{variant} on {r['dataset']} is {value!r}, not a finite number; "
                f"the store keeps finite values only, so none of the task's {len(rows)} rows was stored "
                "(an undefined signal or a diverged estimate: see the task's inputs and settings)")


def trace_name(task: Task) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task.dataset)
    return f"{task.estimator}-{Path(task.checkpoint).stem}-{safe}-{task.config_hash}-{task.key.rsplit('|', 1)[1]}.npz"


def nan_to_none(x: float) -> float | None:
    return None if x != x else x


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")  # readers (load_results) never block the writing driver
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
    return conn


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
        df = pd.read_sql_query(
            f"SELECT r.{', r.'.join(COLUMNS)}, r.variant, r.task, t.finished_at FROM results r "
            "LEFT JOIN tasks t ON t.task = r.task "
            "ORDER BY r.kind, r.signal, r.dataset, r.config_hash, r.component, r.variant, r.step", conn)
    finally:
        conn.close()
    df = df.astype({"step": "int64", "value": "float64", "spread": "float64", "seconds": "float64"})
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
