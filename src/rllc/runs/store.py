"""The results store of a run directory, its writing side: SQLite (WAL) plus compressed arrays.
The layout, the columns and every reader are in `rllc.results` (no torch); this module writes.

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
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rllc.results import SCHEMA, TRACE_DIR, RunError, connect, db_path, migrate
from rllc.runs.plan import Task
from rllc.runs.tasks import TaskResult


class NonFiniteValue(RunError):
    """A task produced a NaN/Inf value: none of its rows is stored (the runner marks the task failed)."""


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
        migrate(self.conn)  # a store from an earlier version: its columns renamed to today's
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
                             "df[df.config_hash == ...] (rllc.results.load_run_config shows each)")
        return notes

    # --- writing one finished task ---------------------------------------------

    def commit(self, task: Task, result: TaskResult) -> None:
        check_finite(task, result.rows)  # before anything is written, traces included
        trace_file = self.write_traces(task, result.traces) if result.traces else None
        now = time.time()
        rows = [(task.key, task.step, task.checkpoint, task.kind, r["signal"], r["component"], r["variant"],
                 r["dataset"], float(r["value"]), nan_to_none(r["se"]), task.config_hash, r["seconds"],
                 json.dumps(r["diagnostics"], allow_nan=False)) for r in result.rows]
        with self.conn:  # one transaction: all of the task or nothing
            self.conn.executemany(
                "INSERT INTO results (task, step, checkpoint, kind, signal, component, variant, dataset, value, "
                "se, config_hash, seconds, diagnostics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
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
