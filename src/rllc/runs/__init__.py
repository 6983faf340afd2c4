"""Runs over a checkpoint series: `rllc estimate` / `rllc probe` and their results store.

    options.py   option defaults, TOML configs, the hyperparameter hash
    datasets.py  dataset specs -> deterministic token batches
    plan.py      checkpoint selection, component names, the task list and task seeds
    tasks.py     one task on a worker (estimators and behaviour signals -> rows)
    backends.py  serial, process pool, Ray
    store.py     writing the results store (its layout and readers: rllc.results)
    runner.py    the driver: plan, skip finished tasks, dispatch, commit, log, progress

See docs/cli.md.
"""

from rllc.deprecation import forward
from rllc.runs.options import RunError
from rllc.runs.runner import RunSummary, run_estimate, run_probe

__all__ = ["RunError", "RunSummary", "run_estimate", "run_probe"]

# The readers moved to rllc.results (torch-free); the old paths warn for one release.
__getattr__ = forward("rllc.runs", "rllc.results",
                      ["export_results", "load_results", "load_run_config", "load_susceptibility", "load_trace"])
