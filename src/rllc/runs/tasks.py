"""Running one task on a worker: weights and batches in, result rows and loss traces out.

`execute` is a pure function of its arguments (no file system, no store), so
the same call runs in the driver, in a process pool or on a Ray worker and
gives the same numbers. An exception inside the estimator becomes a failed
`TaskResult` that the driver logs; only a crashed worker escapes (and Ray
retries it).
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from rllc.models.components import resolve_component
from rllc.models.config import ModelConfig
from rllc.models.transformer import Transformer
from rllc.runs.plan import Task, component_spec, is_single_head


@dataclass
class Payload:
    """Everything a worker needs besides the task: sent once per task (batches/teacher shared by reference)."""

    model_config: dict[str, Any]
    state: dict[str, torch.Tensor]
    batches: torch.Tensor | None  # [n, batch, n_ctx]
    teacher: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None  # (config, state)
    probes: dict[str, torch.Tensor] | None = None  # susceptibility: {name: [n_seq, n_ctx]}, "sampling" among them


@dataclass
class TaskResult:
    key: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # signal, component, variant, dataset, value, ...
    traces: dict[str, np.ndarray] = field(default_factory=dict)  # component -> loss trace [chains, draws]
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None
    traceback: str | None = None


def execute(task: Task, payload: Payload, threads: int | None = None) -> TaskResult:
    """Compute one task; never raises for an estimator's error (it is returned in .error)."""
    if threads:
        torch.set_num_threads(threads)
    result = TaskResult(task.key, worker=f"{socket.gethostname()}:{os.getpid()}")
    start = time.perf_counter()
    try:
        model = build_model(payload.model_config, payload.state)
        teacher = build_model(*payload.teacher) if payload.teacher is not None else None
        data = list(payload.batches[: task.n_batches]) if payload.batches is not None else None
        if task.kind == "probe":
            result.rows = probe_rows(task, model, data)
        elif task.estimator == "llc":
            result.rows, result.traces = llc_rows(task, model, data, teacher)
        elif task.estimator == "susceptibility":
            result.rows, result.traces = susceptibility_rows(task, model, data, payload.probes)
        else:
            result.rows = curvature_rows(task, model, data, teacher)
    except Exception as e:  # reported by the driver; the task stays unfinished, so a rerun retries it
        result.error = f"{type(e).__name__}: {e}"
        result.rows, result.traces = [], {}
        result.traceback = traceback.format_exc()
    result.seconds = time.perf_counter() - start
    return result


def build_model(config: dict[str, Any], state: dict[str, torch.Tensor]) -> Transformer:
    model = Transformer(ModelConfig.from_dict(config))
    model.load_state_dict(state)
    return model.eval()


def row(task: Task, component: str, value: float, se: float, seconds: float, diagnostics: dict[str, Any],
        signal: str | None = None, variant: str = "", dataset: str | None = None) -> dict[str, Any]:
    return dict(signal=signal or task.estimator, component=component, variant=variant,
                dataset=dataset or task.dataset, value=float(value), se=nan_if_none(se),
                seconds=float(seconds), diagnostics=jsonable(diagnostics))


def _sampler_inputs(task: Task, model: Transformer):
    """The SGLD settings of a task and its components as the entry point takes them: single heads by name (the
    batched sweep), anything else resolved on the model."""
    from rllc.sampling import SGLDSettings

    specs = [label if is_single_head(label) else resolve_component(model, component_spec(label), name=label)
             for label in task.components]
    return SGLDSettings.from_options(task.params), specs


def llc_rows(task: Task, model: Transformer, data: list[torch.Tensor], teacher: Transformer | None):
    """All components in one call of the entry point: single heads go through the batched sweep (all heads x
    chains at once), other components, and every component under a teacher, through the generic back-end."""
    from rllc.sampling import estimate_llcs

    p = task.params
    settings, specs = _sampler_inputs(task, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimates = estimate_llcs(model, data, specs, settings=settings, seed=task.seed, teacher=teacher,
                                  compute_dtype=p["precision"])
    shared = [str(w.message) for w in caught]
    notes = {label: list(shared) for label in task.components}
    for label in task.components:
        if p["precision"] == "bf16" and not estimates[label].diagnostics.get("fast_path"):
            notes[label].append("bf16 applies to the batched single-head path only; this component ran in fp32")
    critical = critical_point_check(model, data, task.components, teacher)
    rows, traces = [], {}
    for label in task.components:
        est = estimates[label]
        d = est.diagnostics
        # se: the MCSE of the mean (arviz-stats); ess: bulk ESS
        diag = dict(per_chain=est.per_chain, std=est.std, se=d["se"], rhat=d["rhat"], ess=d["ess"],
                    ess_tail=d["ess_tail"], init_loss=est.init_loss, n_coords=est.n_coords, estimator=d["estimator"],
                    mala_accept=d["mala_accept"], distance_max=d["distance_max"],
                    seconds_per_step=d["seconds_per_step"], n_distinct_batches=d["n_distinct_batches"],
                    fast_path=bool(d.get("fast_path", False)), compute_dtype=d.get("compute_dtype", "fp32"),
                    seed=task.seed, warnings=notes[label], **critical[label])
        diag.update(settings.as_dict())  # the sampler settings (burn_in, paired, ...), one column each
        if d.get("bf16_check"):
            check = d["bf16_check"]
            diag["bf16_check"] = dict(accepted=check["accepted"], worst_head=check["worst_head"],
                                      worst_ratio=check["worst_ratio"], pilot_draws=check["pilot_draws"])
        rows.append(row(task, label, est.mean, d["se"], d["seconds"], diag))
        traces[label] = est.loss_trace.astype(np.float32)
        traces[f"{label}|loss_at_w_star"] = np.asarray(d["loss_at_w_star_trace"], dtype=np.float32)
    return rows, traces


def susceptibility_rows(task: Task, model: Transformer, data: list[torch.Tensor], probes: dict[str, torch.Tensor]):
    """Per component and probe set (variant "probe=<name>"), the mean per-token susceptibility (value) and its
    standard error (se);
    the per-token values (and the probe tokens) go beside the store as traces: "<component>|<probe>" and
    "tokens|<probe>". The full model's own values (Var(pt) - Cov(pt, l)) come as component "model"."""
    from rllc.sampling.susceptibility import susceptibilities

    p = task.params
    settings, specs = _sampler_inputs(task, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = susceptibilities(model, data, probes, sampling_probe=SAMPLING_PROBE, components=specs,
                                  every=p["observe_every"], settings=settings, seed=task.seed)
    notes = [str(w.message) for w in caught]
    rows, traces = [], {}
    summary = result.summary()
    for r in summary.itertuples():
        est, values = result.llc[r.component], result.values[r.component][r.probe]
        diag = dict(probe_sequences=int(values.shape[0]), probe_tokens=int(values.size), init_loss=result.init_loss,
                    observe_every=p["observe_every"], seed=task.seed, warnings=notes, llc=est.mean,
                    llc_rhat=est.diagnostics["rhat"])
        diag.update(settings.as_dict())
        rows.append(row(task, r.component, r.value, r.se, result.seconds / max(len(summary), 1), diag,
                        variant=f"probe={r.probe}"))
        traces[f"{r.component}|{r.probe}"] = values.astype(np.float32)
    for name, tokens in result.tokens.items():
        traces[f"tokens|{name}"] = np.asarray(tokens, dtype=np.int32)
    return rows, traces


SAMPLING_PROBE = "sampling"  # the probe set of fixed sequences drawn from the task's own dataset (pt)
GRADIENT_CHECK_BATCHES = 16  # batches of the task's data for the gradient at w* (one forward/backward each)
GRADIENT_SNR_LIMIT = 3.0  # |mean gradient| above this many standard errors: w* is not a critical point


def critical_point_check(model: Transformer, data: list[torch.Tensor], labels: list[str],
                         teacher: Transformer | None) -> dict[str, dict[str, Any]]:
    """Per component: the gradient norm at w* on the first batches of the task's data, relative to its
    minibatch noise (rllc.sampling.stationarity), and whether w* passes as a critical point."""
    from rllc.losses import TeacherTargets, teacher_loss
    from rllc.sampling.stationarity import gradient_check

    batches = data[:GRADIENT_CHECK_BATCHES]
    loss_fn = None
    if teacher is not None:
        prepare = TeacherTargets(teacher)
        batches, loss_fn = [prepare(b) for b in batches], teacher_loss
    # Components named by their labels (as llc_rows names them), so the checks come back keyed by label.
    comps = [resolve_component(model, component_spec(label), name=label) for label in labels]
    out = {}
    for label, check in gradient_check(model, batches, comps, loss_fn=loss_fn).items():
        snr = check["snr"]
        out[label] = dict(grad_norm=check["grad_norm"], grad_noise_se=check["noise_se"], grad_snr=snr,
                          grad_batches=check["n_batches"],
                          critical_point=bool(snr <= GRADIENT_SNR_LIMIT) if snr == snr else None)
    return out


def curvature_rows(task: Task, model: Transformer, data: list[torch.Tensor] | None, teacher: Transformer | None):
    from rllc.curvature import fim_trace, hessian_rank, hessian_trace

    p = task.params
    rows = []
    for label in task.components:
        comp = resolve_component(model, component_spec(label), name=label)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if task.estimator == "hessian-trace":
                est = hessian_trace(model, data, component=comp, teacher=teacher, n_probes=p["probes"],
                                    estimator=p["trace_estimator"], seed=task.seed)
            elif task.estimator == "fim-trace":
                est = fim_trace(model, data, component=comp, method=p["fim_method"], n_probes=p["probes"],
                                estimator=p["trace_estimator"], n_seqs=p["fim_seqs"], seed=task.seed)
            else:
                est = hessian_rank(model, data, [p["rank_threshold"]], component=comp, teacher=teacher,
                                   degree=p["rank_degree"], n_probes=p["rank_probes"], seed=task.seed)[0]
        diag = {k: v for k, v in est.to_row().items() if k not in ("value", "se", "component", "seconds")}
        diag.update(seed=task.seed, warnings=[str(w.message) for w in caught])
        rows.append(row(task, label, est.value, est.se, est.seconds, diag))
    return rows


# Columns of all_signals that tell rows of one signal apart (the rest is diagnostics).
VARIANT_COLUMNS = ("target", "method", "side")


def probe_rows(task: Task, model: Transformer, data: list[torch.Tensor] | None):
    from rllc.behavior import all_signals

    start = time.perf_counter()
    tokens = data[0] if data else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = all_signals(model, tokens, dataset=task.dataset if tokens is not None else None, step=task.step,
                         seed=task.seed, batch_size=task.params["batch_size"], progress=False)
    seconds = time.perf_counter() - start  # the whole checkpoint's probe: its signals share forward passes
    notes = [str(w.message) for w in caught]
    extras = [c for c in df.columns if c not in ("step", "signal", "head", "sender", "receiver", "dataset",
                                                   "value", "stderr", *VARIANT_COLUMNS)]
    rows = []
    for rec in df.to_dict("records"):
        if present(rec.get("head")):
            component = str(rec["head"])
        elif present(rec.get("sender")):
            component = f"{rec['sender']}->{rec['receiver']}"
        else:
            component = "model"
        variant = ",".join(f"{c}={rec[c]}" for c in VARIANT_COLUMNS if present(rec.get(c)))
        diag = {c: rec[c] for c in extras if present(rec.get(c))}
        diag.update({c: rec[c] for c in VARIANT_COLUMNS if present(rec.get(c))})
        if notes:
            diag["warnings"] = notes
        rows.append(row(task, component, rec["value"], rec.get("stderr"), seconds, diag, signal=str(rec["signal"]),
                        variant=variant, dataset=str(rec["dataset"]) if present(rec.get("dataset")) else None))
    return rows


def present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


def nan_if_none(value: Any) -> float:
    return math.nan if value is None or value is pd.NA else float(value)


def jsonable(value: Any) -> Any:
    """Diagnostics as plain JSON: arrays to lists, numpy scalars to Python, NaN/Inf to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
