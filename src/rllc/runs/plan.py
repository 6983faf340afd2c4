"""What a run computes: checkpoint selection, component names and the task list.

One task is one checkpoint x one estimator x one dataset x one hyperparameter
set, over all of its components, so the fast path can batch every head of a
checkpoint in one sampler. Its seed is derived from its config_hash alone by
default (common random numbers, option ``crn``): every checkpoint of a series
gets the same chain seeds, Hutchinson probes and minibatch sequence for a given
(dataset, settings), so the step-to-step differences of a curve are not
independent seed noise (docs/llc.md measures how much this removes). With
``crn = false`` the seed is derived from (config_hash, checkpoint) instead.
Either way the same task draws the same numbers whatever the order, the
backend or the number of interruptions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from rllc.models.checkpoints import CheckpointSeries, compress_steps
from rllc.models.components import ComponentError, resolve_component
from rllc.models.config import ModelConfig
from rllc.models.transformer import Transformer
from rllc.runs.datasets import Dataset
from rllc.runs.options import RunError, batches_needed, config_hash, derive_seed, estimator_params

# In every probe task's config_hash: bump when all_signals' own probe batches change what they draw, so rows
# measured on the old batches are never mixed with new ones (2: repeated-random spans without repeated tokens).
PROBE_BATCHES_VERSION = 2
_HEAD = re.compile(r"^\d+:\d+$")
_RANGE = re.compile(r"^(\d+)?-(\d+)?$")


@dataclass
class Task:
    kind: str  # "estimate" or "probe"
    estimator: str  # llc, hessian-trace, fim-trace, hessian-rank, susceptibility; "behavior" for probes
    step: int
    checkpoint: str  # file or folder name
    dataset: str
    config_hash: str
    params: dict[str, Any]  # the hashed hyperparameters
    seed: int
    n_batches: int  # how many of the dataset's batches it reads (0: none)
    components: list[str] = field(default_factory=list)  # estimates: labels to compute; probes: all signals

    @property
    def group(self) -> str:
        """The task's identity without its component list (what the seed derives from)."""
        return f"{self.kind}|{self.estimator}|{self.checkpoint}|{self.dataset}|{self.config_hash}"

    @property
    def key(self) -> str:
        comps = hashlib.sha1("\0".join(self.components).encode()).hexdigest()[:8] if self.components else "all"
        return f"{self.group}|{comps}"

    def describe(self) -> str:
        what = f"{self.estimator} ({len(self.components)} components)" if self.kind == "estimate" else "probe"
        return f"{what} step {self.step} ({self.checkpoint}) dataset {self.dataset} config {self.config_hash}"


def select_steps(series: CheckpointSeries, steps: str | None, every: int = 1) -> list[int]:
    """Steps matching `steps` ("A-B" inclusive, "-B", "A-", exact steps, comma-separated; None: all),
    then every `every`-th of them (the first always included)."""
    chosen = series.steps
    if steps:
        wanted = []
        for part in str(steps).split(","):
            part = part.strip()
            m = _RANGE.match(part)
            if m:
                lo = int(m.group(1)) if m.group(1) else -1
                hi = int(m.group(2)) if m.group(2) else float("inf")
                wanted.append(lambda s, lo=lo, hi=hi: lo <= s <= hi)
            elif part.isdigit():
                if int(part) not in series:
                    raise RunError(f"--steps: step {part} is not in {series.path} "
                                   f"(steps: {compress_steps(series.steps)})")
                wanted.append(lambda s, x=int(part): s == x)
            else:
                raise RunError(f"--steps {steps!r}: write a range A-B, -B, A-, or steps separated by commas")
        chosen = [s for s in chosen if any(w(s) for w in wanted)]
    chosen = chosen[::every]
    if not chosen:
        raise RunError(f"--steps {steps!r} --every {every} selects no checkpoint of {series.path}")
    return chosen


def component_spec(label: str) -> Any:
    """The resolve_component spec of a label: a head set "1:6+1:7" is the union of its parts."""
    return label.split("+") if "+" in label else label


def is_single_head(label: str) -> bool:
    return bool(_HEAD.match(label))


def expand_components(labels: list[str], cfg: ModelConfig) -> list[str]:
    """`heads` -> every "l:h", `layers` -> every "layer:l", others as written; each is checked on the model."""
    out: list[str] = []
    for label in labels:
        label = label.strip().replace(" ", "")
        if label == "heads":
            out += [f"{layer}:{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
        elif label == "layers":
            out += [f"layer:{layer}" for layer in range(cfg.n_layers)]
        else:
            out.append(label)
    model = Transformer(cfg)  # resolving head sets needs real tensors (masks are summed), not meta ones
    for label in out:
        try:
            resolve_component(model, component_spec(label))
        except ComponentError as e:
            raise RunError(f"unknown component {label!r}: {e}. Use heads, layers, model, l:h, l:*, layer:l, "
                           "embed, unembed, a parameter name, or head sets like 1:6+1:7") from None
    return list(dict.fromkeys(out))  # repeated names once, first order kept


def compatible(estimator: str, dataset: Dataset) -> str | None:
    """None if the estimator can run on the dataset, else why not."""
    if dataset.is_self and estimator != "fim-trace":
        return "dataset 'self' (sequences sampled from the model) applies to fim-trace only"
    if dataset.teacher is not None and estimator == "fim-trace":
        return "fim-trace takes the model's own next-token distribution, not a teacher's"
    return None


def plan_estimates(series: CheckpointSeries, steps: list[int], datasets: list[Dataset], opts: dict[str, Any],
                   components: list[str]) -> tuple[list[Task], list[str]]:
    """Every (checkpoint, estimator, dataset) task, and notes on the pairs that cannot run."""
    tasks, notes = [], []
    for estimator in opts["estimators"]:
        for ds in datasets:
            reason = compatible(estimator, ds)
            if reason:
                notes.append(f"{estimator} on {ds.name}: skipped ({reason})")
                continue
            params = estimator_params(estimator, opts, ds.fingerprint)
            h = config_hash(params)
            n = 0 if ds.is_self else batches_needed(estimator, opts)
            for step in steps:
                name = series.files[step].name
                seed = derive_seed(h) if params["crn"] else derive_seed(h, name)
                tasks.append(Task("estimate", estimator, step, name, ds.name, h, params, seed, n, list(components)))
    return tasks, notes


def plan_probes(series: CheckpointSeries, steps: list[int], datasets: list[Dataset | None],
                opts: dict[str, Any]) -> list[Task]:
    """One behavior task per checkpoint and probe dataset (None: all_signals' own probe batches)."""
    tasks = []
    for ds in datasets:
        params = estimator_params("behavior", opts, ds.fingerprint if ds else "default")
        params["probe_dataset"] = ds.name if ds else None
        params["probe_batches"] = PROBE_BATCHES_VERSION
        h = config_hash(params)
        for step in steps:
            name = series.files[step].name
            tasks.append(Task("probe", "behavior", step, name, ds.name if ds else "default", h, params,
                              int(opts["seed"]), 1 if ds else 0))
    return tasks
