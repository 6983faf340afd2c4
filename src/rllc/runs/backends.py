"""Where tasks run: in the driver, in a local process pool, or on a Ray cluster.

Every backend takes an iterator of (task, payload) jobs and yields
(task, result) pairs as tasks finish, in whatever order they finish; the
driver writes each result as it arrives. Jobs are pulled lazily and only a
bounded number are in flight, so the driver never holds more than a few
checkpoints' weights at once however long the series.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from rllc.runs.options import RunError
from rllc.runs.plan import Task
from rllc.runs.tasks import Payload, TaskResult, execute

Job = tuple[Task, Payload]
RAY_MAX_RETRIES = 3  # a task whose worker dies (node lost, OOM kill) is resubmitted this many times


def run_serial(jobs: Iterable[Job], threads: int | None = None) -> Iterator[tuple[Task, TaskResult]]:
    for task, payload in jobs:
        yield task, execute(task, payload, threads)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_pool(jobs: Iterable[Job], workers: int, threads: int | None = None) -> Iterator[tuple[Task, TaskResult]]:
    """`workers` spawned processes (fork is unsafe once torch has started threads), `threads` torch threads each."""
    jobs = iter(jobs)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads or 1,))
    pending: dict[Any, Task] = {}
    try:
        while True:
            while len(pending) < 2 * workers:  # keep every worker busy, with one job queued behind it
                job = next(jobs, None)
                if job is None:
                    break
                pending[pool.submit(execute, job[0], job[1], threads or 1)] = job[0]
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                try:
                    yield task, fut.result()
                except Exception as e:  # the worker process died: the pool is broken, stop here
                    raise RunError(f"a worker process died while running {task.describe()} ({e}); finished tasks "
                                   "are saved: rerun the same command to continue") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _execute_parts(task: Task, model_config: dict, state: dict, batches, teacher, threads: int | None,
                   probes=None) -> TaskResult:
    """Ray resolves object references only among top-level arguments, so the payload travels in parts."""
    return execute(task, Payload(model_config, state, batches, teacher, probes), threads)


def run_ray(jobs: Iterable[Job], address: str | None, threads: int | None = None,
            max_retries: int = RAY_MAX_RETRIES) -> Iterator[tuple[Task, TaskResult]]:
    """Submit to a Ray cluster (`address`: "auto", "HOST:PORT", "ray://..."; an already initialised Ray is used
    as it is). Batches and teachers are put in the object store once and shared by all tasks."""
    try:
        import ray
    except ImportError:
        raise RunError("--ray needs the ray package: pip install 'rllc[ray]' (or pip install ray)") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RunError(f"--ray {address}: cannot connect to a Ray cluster ({e}); start one with `ray start "
                           "--head` or pass its address") from None
    remote = ray.remote(num_cpus=threads or 1, max_retries=max_retries)(_execute_parts)
    capacity = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)) // (threads or 1))
    shared: dict[int, Any] = {}  # id(batches or teacher) -> ObjectRef: put once, not once per task

    def put_once(obj):
        if obj is None:
            return None
        if id(obj) not in shared:
            shared[id(obj)] = (obj, ray.put(obj))  # keep obj alive so its id stays unique
        return shared[id(obj)][1]

    jobs = iter(jobs)
    pending: dict[Any, Task] = {}
    last_state: list = [None, None]
    try:
        while True:
            while len(pending) < capacity:
                job = next(jobs, None)
                if job is None:
                    break
                task, p = job
                if last_state[0] is not p.state:  # consecutive tasks of one checkpoint share its weights
                    last_state[:] = [p.state, ray.put(p.state)]
                ref = remote.remote(task, p.model_config, last_state[1], put_once(p.batches), put_once(p.teacher),
                                    threads, put_once(p.probes))
                pending[ref] = task
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries exhausted, or the cluster went away
                    result = TaskResult(task.key, error=f"{type(e).__name__}: {e}".splitlines()[0])
                yield task, result
    finally:
        for ref in pending:  # interrupted: do not leave the cluster computing results nobody will write
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        if started_here:
            ray.shutdown()
