"""The driver of a series run: plan, skip what is finished, dispatch, write each result as it returns.

All checks that can fail (checkpoints, datasets, components, options) run
before the first task, so a mistake costs seconds, not a night. The driver is
the only writer of the store; workers only compute.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rllc.models.checkpoints import CheckpointError, CheckpointSeries, load_checkpoints
from rllc.progress import progress_bar
from rllc.runs import backends
from rllc.runs.datasets import Dataset, default_datasets, resolve_dataset
from rllc.runs.options import (
    ESTIMATE_DEFAULTS,
    PROBE_DEFAULTS,
    RunError,
    merge_options,
    validate_estimate_options,
    validate_execution_options,
)
from rllc.runs.plan import Task, expand_components, plan_estimates, plan_probes, select_steps
from rllc.results import rhat_summary, rhat_summary_lines
from rllc.runs.store import NonFiniteValue, Store
from rllc.runs.tasks import Payload

LOG_NAME = "run.log"


@dataclass
class RunSummary:
    run_dir: Path
    planned: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    # rllc.results.rhat_summary over the LLC estimates the run's tasks ask for (None: no LLC tasks)
    rhat: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def convergence_lines(self) -> list[str]:
        """How many of the run's LLC estimates fail R-hat, and what to change if any exceed 1.1."""
        return rhat_summary_lines(self.rhat) if self.rhat else []


class RunLog:
    """RUN_DIR/run.log: one timestamped line per event, flushed at once (it survives a kill)."""

    def __init__(self, run_dir: Path, quiet: bool):
        self.file = open(run_dir / LOG_NAME, "a", buffering=1)
        self.quiet = quiet

    def __call__(self, message: str, echo: bool = False) -> None:
        self.file.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")
        if echo and not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        self.file.close()


def run_estimate(checkpoint_dir: str | Path, out: str | Path, **options: Any) -> RunSummary:
    """Estimate (r)LLCs and curvature over a checkpoint series into the store in `out` (see docs/cli.md)."""
    opts = merge_options(ESTIMATE_DEFAULTS, options)
    validate_estimate_options(opts)
    series = open_series(checkpoint_dir)
    steps = select_steps(series, opts["steps"], opts["every"])
    components = expand_components(opts["components"], series.config)
    specs = opts["datasets"] if opts["datasets"] else default_datasets(series)
    datasets = [resolve_dataset(s, series, batch_size=opts["batch_size"], seed=opts["seed"]) for s in specs]
    tasks, notes = plan_estimates(series, steps, datasets, opts, components)
    if not tasks:
        raise RunError("nothing to compute: " + "; ".join(notes))
    probes = probe_sets(series, datasets, opts) if any(t.estimator == "susceptibility" for t in tasks) else {}
    return execute_plan("estimate", series, out, tasks, datasets, opts, notes, probes)


def probe_sets(series: CheckpointSeries, datasets: list[Dataset], opts: dict[str, Any]) -> dict[str, dict]:
    """The susceptibility probe sets of each sampling dataset: {dataset: {"sampling": its own fixed sequences,
    probe: fixed sequences of each --probe-datasets entry}}, `probe_sequences` sequences each, drawn with
    seed + 1 (never the batches the chains sample on)."""
    from rllc.runs.tasks import SAMPLING_PROBE

    common = dict(batch_size=opts["probe_sequences"], seed=opts["seed"] + 1)
    fixed = {}
    for spec in opts["probe_datasets"]:
        ds = resolve_dataset(spec, series, **common)
        if ds.teacher is not None or ds.is_self:
            raise RunError(f"probe dataset {spec!r} has no fixed tokens; use a corpus, file or synthetic set")
        fixed[ds.name] = ds.batches(1)[0]
    out = {}
    for ds in datasets:
        if ds.teacher is None and not ds.is_self:
            own = resolve_dataset(ds.spec, series, **common).batches(1)[0]
            out[ds.name] = {SAMPLING_PROBE: own, **fixed}
    return out


def run_probe(checkpoint_dir: str | Path, out: str | Path, **options: Any) -> RunSummary:
    """Behaviour signals (rllc.behavior.all_signals) over a checkpoint series into the store in `out`."""
    opts = merge_options(PROBE_DEFAULTS, options)
    validate_execution_options(opts)
    series = open_series(checkpoint_dir)
    steps = select_steps(series, opts["steps"], opts["every"])
    datasets = [resolve_dataset(s, series, batch_size=opts["batch_size"], seed=opts["seed"])
                for s in opts["datasets"]]
    for ds in datasets:
        if ds.teacher is not None or ds.is_self:
            raise RunError(f"dataset {ds.spec!r} has no fixed tokens for probes; use a corpus, file or synthetic set")
    tasks = plan_probes(series, steps, datasets or [None], opts)
    return execute_plan("probe", series, out, tasks, datasets, opts, [])


def open_series(checkpoint_dir: str | Path) -> CheckpointSeries:
    """Load and check a series up front: unreadable headers and mixed architectures fail here, by file name."""
    series = load_checkpoints(checkpoint_dir)
    problems = [p for p in series.problems if not p.startswith("ignored")] + series.verify(full=False)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)
    return series


def execute_plan(kind: str, series: CheckpointSeries, out: str | Path, tasks: list[Task], datasets: list[Dataset],
                 opts: dict[str, Any], notes: list[str], probes: dict[str, dict] | None = None) -> RunSummary:
    started = time.perf_counter()
    store = Store(out)
    summary = RunSummary(store.run_dir, planned=len(tasks))
    log = RunLog(store.run_dir, opts["quiet"])
    try:
        store.bind(series.path, series.config.to_dict())
        store.start_run(kind, dict(opts, checkpoint_dir=str(series.path.resolve())))
        for ds in datasets:
            store.record_dataset(ds.name, ds.fingerprint, ds.spec, ds.description)
        log(f"start {kind} run {store.run_id}: {series.path} -> {store.run_dir}, {len(tasks)} tasks")
        for note in notes:
            log(note, echo=True)
        todo = []
        for task in tasks:
            store.record_config(task)
            missing = store.missing(task)
            if missing is None:
                log(f"skip (finished) {task.describe()}")
            else:
                todo.append(missing)
        for note in store.mixed_configs(tasks):
            log(note, echo=True)
        summary.skipped = len(tasks) - len(todo)
        if summary.skipped:
            log(f"{summary.skipped} of {len(tasks)} tasks already finished in {store.run_dir}; computing the "
                f"other {len(todo)}", echo=True)
        todo.sort(key=lambda t: (t.step, t.estimator, t.dataset))  # consecutive tasks share a loaded checkpoint

        def failed(task: Task, message: str, detail: str | None = None) -> None:
            summary.failed += 1
            summary.errors.append(f"{task.describe()}: {message}")
            store.record_error(task, message, detail)
            log(f"FAILED {task.describe()}: {message}", echo=True)

        bar = progress_bar(total=len(tasks), initial=summary.skipped, unit="task", desc=f"rllc {kind}",
                           disable=opts["quiet"], file=sys.stderr)
        try:
            for task, result in dispatch(jobs(series, todo, datasets, failed, bar, probes or {}), opts):
                if result.error:
                    failed(task, result.error, result.traceback)
                else:
                    try:
                        store.commit(task, result)
                    except NonFiniteValue as e:  # a NaN/Inf value refused: this task failed, the run goes on
                        failed(task, str(e))
                    else:
                        summary.done += 1
                        log(f"done {task.describe()} in {result.seconds:.2f} s on {result.worker}")
                bar.update(1)
        finally:
            bar.close()
        summary.seconds = time.perf_counter() - started
        if any(t.kind == "estimate" and t.estimator == "llc" for t in tasks):
            summary.rhat = rhat_summary(store.llc_results(tasks))
            for line in summary.convergence_lines():
                log(line)
        store.finish_run(summary.planned, summary.skipped, summary.done, summary.failed)
        log(f"end run {store.run_id}: {summary.done} computed, {summary.skipped} skipped, {summary.failed} failed "
            f"in {summary.seconds:.1f} s")
    except KeyboardInterrupt:
        log("interrupted; finished tasks are saved")
        raise
    finally:
        log.close()
        store.close()
    return summary


def dispatch(job_iter: Iterator, opts: dict[str, Any]):
    if opts["ray"]:
        return backends.run_ray(job_iter, None if opts["ray"] == "local" else opts["ray"], opts["threads"])
    if opts["workers"] > 1:
        return backends.run_pool(job_iter, opts["workers"], opts["threads"])
    return backends.run_serial(job_iter, opts["threads"])


def jobs(series: CheckpointSeries, todo: list[Task], datasets: list[Dataset], failed, bar,
         probes: dict[str, dict] | None = None) -> Iterator:
    """(task, payload) pairs, built lazily: weights are read when a task is about to be submitted."""
    by_name = {ds.name: ds for ds in datasets}
    batches: dict[str, Any] = {}
    for ds in datasets:  # every task of a dataset slices the same tensor: the first k batches are shared
        needed = max((t.n_batches for t in todo if t.dataset == ds.name), default=0)
        batches[ds.name] = ds.batches(needed) if needed else None
    teachers = {ds.name: (ds.teacher.config.to_dict(), ds.teacher.state_dict())
                for ds in datasets if ds.teacher is not None and any(t.dataset == ds.name for t in todo)}
    model_config = series.config.to_dict()
    cached_step, state = None, None
    for task in todo:
        if task.step != cached_step:
            try:
                state, cached_step = series.state_dict(task.step), task.step
            except CheckpointError as e:
                failed(task, str(e))
                bar.update(1)
                continue
        ds = by_name.get(task.dataset)
        yield task, Payload(model_config, state, batches.get(task.dataset) if ds else None,
                            teachers.get(task.dataset),
                            (probes or {}).get(task.dataset) if task.estimator == "susceptibility" else None)

