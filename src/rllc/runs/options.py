"""The options of a series run: defaults, TOML files, validation and the hyperparameter hash.

Options are plain dicts keyed by the CLI option names (underscores for
dashes), so `--config file.toml`, the command line and the Python API all
speak the same language. `estimator_params` picks out the options that change
an estimator's numbers; their canonical JSON, hashed, is the row's
`config_hash`, so a changed hyperparameter is a new key, never an overwrite.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
import warnings
from pathlib import Path
from typing import Any

from rllc.sampling.settings import SGLDSettings


from rllc.results import RunError  # noqa: F401  (defined with the results layer; rllc.runs re-exports it)


ESTIMATORS = ("llc", "hessian-trace", "fim-trace", "hessian-rank", "susceptibility")
COMPUTE_DTYPES = ("fp32", "bf16")
TRACE_ESTIMATORS = ("hutch++", "hutchinson")
FIM_METHODS = ("analytic", "sampled")

# Defaults: the SGLD settings are SGLDSettings' fields (declared once there: the rLLC paper's settings,
# docs/llc.md); curvature settings cheap enough for a series.
ESTIMATE_DEFAULTS: dict[str, Any] = dict(
    datasets=None,  # None: the series' training sources when it records them
    components=["heads"],
    estimators=["llc"],
    **SGLDSettings.defaults(),
    batch_size=32, n_batches=None,  # None: one distinct batch per SGLD step
    crn=True,  # common random numbers: every checkpoint gets the same seeds (and batches), see plan.py
    probes=30, trace_estimator="hutch++", curvature_batches=4,
    fim_method="analytic", fim_seqs=16,
    rank_threshold=0.01, rank_degree=60, rank_probes=10,
    # susceptibility: per-token probe losses along the same SGLD chains (rllc.sampling.susceptibility)
    probe_datasets=["prose", "code", "repeated"], probe_sequences=8, observe_every=1,
    seed=0, compute_dtype="fp32",
    steps=None, every=1,
    workers=1, ray=None, threads=None, quiet=False,
)
# `rllc calibrate` (rllc.runs.calibrate): (epsilon, nbeta) pairs with epsilon * nbeta <= 0.1, the paper's
# first, each at every gamma (also tried halved and doubled); chains x steps (burn-in included) at batch_size
# cost ~7 s per all-heads estimate for the demo model on 2 cores, inside the 10 s budget.
CALIBRATE_DEFAULTS: dict[str, Any] = dict(
    cells=((1e-3, 30.0), (3e-4, 100.0), (3e-4, 300.0), (1e-4, 300.0), (1e-4, 1000.0)), gammas=(100.0, 200.0),
    chains=2, draws=72, batch_size=8, budget_s=10.0, seed=0, sampler="sgld",
)
PROBE_DEFAULTS: dict[str, Any] = dict(
    datasets=[], batch_size=16, seed=0, steps=None, every=1, workers=1, ray=None, threads=None, quiet=False,
)
# Options that say how to run, not what to compute: never part of a hash.
EXECUTION_OPTIONS = ("steps", "every", "workers", "ray", "threads", "quiet")
# Options that no longer exist, with what to do instead (a TOML or call that still names them gets this).
REMOVED_OPTIONS = {
    "init_loss_batches": "the reference loss L(w*) is now the mean over the draws' own batches, which cannot bias "
                         "the estimate (docs/llc.md, 'The reference loss'); delete the key",
}
# Options renamed so that each one has the name of the keyword it feeds: the old name still works for one
# release (with a FutureWarning). Hashes keep the old name (estimator_params), so stored runs stay valid.
RENAMED_OPTIONS = {"precision": "compute_dtype"}
LIST_OPTIONS = ("datasets", "components", "estimators", "probe_datasets")


def read_toml(path: str | Path, defaults: dict[str, Any]) -> dict[str, Any]:
    """Options from a TOML file whose keys are the option names (`init-loss-batches` or `init_loss_batches`)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RunError(f"{path}: cannot read the TOML config ({e}); fix its syntax") from None
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in REMOVED_OPTIONS:
            raise RunError(f"{path}: option {key!r} was removed: {REMOVED_OPTIONS[name]}")
        if name not in defaults:
            valid = ", ".join(sorted(k.replace("_", "-") for k in defaults))
            raise RunError(f"{path}: unknown option {key!r}; valid keys: {valid}")
        out[name] = value
    return out


def merge_options(defaults: dict[str, Any], *layers: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then each layer (config file, command line) where it gives a value; lists are normalised."""
    opts = dict(defaults)
    for layer in layers:
        for key, value in layer.items():
            if key in RENAMED_OPTIONS:
                warnings.warn(f"option {key!r} is deprecated and will be removed in the next release; use "
                              f"{RENAMED_OPTIONS[key]!r}", FutureWarning, stacklevel=2)
                key = RENAMED_OPTIONS[key]
            if key in REMOVED_OPTIONS:
                raise RunError(f"option {key!r} was removed: {REMOVED_OPTIONS[key]}")
            if key not in defaults:
                raise RunError(f"unknown option {key!r}; valid: {sorted(defaults)}")
            if value is not None:
                opts[key] = value
    for key in LIST_OPTIONS:
        if key in opts and isinstance(opts[key], str):
            opts[key] = split_list(opts[key])
    return opts


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# Options whose type the range checks below do not already enforce (the integer ones they do; the SGLD
# settings check their own).
NUMBER_OPTIONS = ("rank_threshold",)
BOOL_OPTIONS = ("crn", "quiet")


def check_types(opts: dict[str, Any]) -> None:
    """Wrong types (e.g. epsilon = "fast" in a TOML file) as one-line errors, before any range check."""
    for key in NUMBER_OPTIONS:
        value = opts.get(key)
        if key in opts and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RunError(f"--{key.replace('_', '-')} must be a number, got {value!r} ({type(value).__name__})")
    for key in BOOL_OPTIONS:
        if key in opts and opts[key] is not None and not isinstance(opts[key], bool):
            raise RunError(f"--{key.replace('_', '-')} must be true or false, got {opts[key]!r}")
    if "seed" in opts and (isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int)):
        raise RunError(f"--seed must be an integer, got {opts['seed']!r}")
    for key in ("datasets", "components", "estimators"):
        value = opts.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RunError(f"--{key} must be a list of names (e.g. {key} = [\"a\", \"b\"] in TOML), got {value!r}")


def sgld_settings(opts: dict[str, Any]) -> SGLDSettings:
    """The SGLD settings among the options, checked by SGLDSettings; errors name the option as a flag."""
    try:
        return SGLDSettings.from_options(opts)
    except ValueError as e:
        name, _, rest = str(e).partition(" ")
        raise RunError(f"--{name.replace('_', '-')} {rest}") from None


def validate_estimate_options(opts: dict[str, Any]) -> None:
    check_types(opts)
    sgld_settings(opts)
    unknown = [e for e in opts["estimators"] if e not in ESTIMATORS]
    if unknown or not opts["estimators"]:
        raise RunError(f"unknown estimator(s) {unknown or '(none given)'}; choose from {', '.join(ESTIMATORS)}")
    if opts["compute_dtype"] not in COMPUTE_DTYPES:
        raise RunError(f"--compute-dtype must be fp32 or bf16, got {opts['compute_dtype']!r}")
    if opts["trace_estimator"] not in TRACE_ESTIMATORS:
        raise RunError(f"--trace-estimator must be one of {TRACE_ESTIMATORS}, got {opts['trace_estimator']!r}")
    if opts["fim_method"] not in FIM_METHODS:
        raise RunError(f"--fim-method must be one of {FIM_METHODS}, got {opts['fim_method']!r}")
    positive = ("batch_size", "curvature_batches", "fim_seqs",
                "rank_degree", "rank_probes", "probes", "probe_sequences", "observe_every")
    for key in positive:
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
            raise RunError(f"--{key.replace('_', '-')} must be a positive integer, got {opts[key]!r}")
    # Each estimator's own limits, checked here so that no task starts only to fail.
    uses_probes = {"hessian-trace", "fim-trace"} & set(opts["estimators"])
    least = 6 if opts["trace_estimator"] == "hutch++" else 2
    if uses_probes and opts["probes"] < least:
        raise RunError(f"--probes must be at least {least} for --trace-estimator {opts['trace_estimator']} "
                       f"(needed by {', '.join(sorted(uses_probes))}), got {opts['probes']}")
    if "hessian-rank" in opts["estimators"]:
        if opts["rank_probes"] < 2 or opts["rank_degree"] < 2:
            raise RunError(f"--rank-probes and --rank-degree must be at least 2 for hessian-rank, got "
                           f"{opts['rank_probes']} and {opts['rank_degree']}")
        if not 0 < opts["rank_threshold"]:
            raise RunError(f"--rank-threshold must be positive, got {opts['rank_threshold']}")
    if opts["n_batches"] is not None and opts["n_batches"] < 1:
        raise RunError(f"--n-batches must be positive, got {opts['n_batches']}")
    if not opts["components"]:
        raise RunError("--components is empty; give e.g. heads, layers, model, 1:6,1:7 or 1:6+1:7")
    if "susceptibility" in opts["estimators"]:
        if not opts["probe_datasets"]:
            raise RunError("--probe-datasets is empty: susceptibility needs probe sets, e.g. prose,code,repeated")
        if "model" in opts["components"]:
            raise RunError("susceptibility: leave 'model' out of --components; the full model is always sampled "
                           "as the reference every susceptibility is centred with")
    validate_execution_options(opts)


def validate_execution_options(opts: dict[str, Any]) -> None:
    if not isinstance(opts["workers"], int) or opts["workers"] < 1:
        raise RunError(f"--workers must be a positive integer, got {opts['workers']!r}")
    if not isinstance(opts["every"], int) or opts["every"] < 1:
        raise RunError(f"--every must be a positive integer, got {opts['every']!r}")
    if opts["threads"] is not None and opts["threads"] < 1:
        raise RunError(f"--threads must be positive, got {opts['threads']}")


def llc_batches(opts: dict[str, Any]) -> int:
    """Distinct SGLD batches: --n-batches, else one per step; they cycle."""
    if opts.get("n_batches"):
        return int(opts["n_batches"])
    return opts["burn_in"] + opts["draws"]


def batches_needed(estimator: str, opts: dict[str, Any]) -> int:
    """How many batches of a dataset an estimator reads. Batches are drawn in a fixed order, so the
    first k are the same whatever the total: adding an estimator never changes another's data."""
    if estimator in ("llc", "susceptibility"):
        return llc_batches(opts)
    if estimator == "behavior":
        return 1
    return opts["curvature_batches"]


def estimator_params(estimator: str, opts: dict[str, Any], dataset_fingerprint: str) -> dict[str, Any]:
    """The hyperparameters that determine one estimator's numbers on one dataset (hashed into config_hash)."""
    data = dict(batch_size=opts["batch_size"], dataset_fingerprint=dataset_fingerprint)
    if estimator in ("llc", "susceptibility"):
        data["n_batches"] = llc_batches(opts)
        # The reference loss over the draws' batches is part of the key: rows from before it (a reference over
        # the first init_loss_batches batches) were biased and are never reused for the same settings.
        data["reference"] = "draws"
        # Every SGLD setting (new ones only when off their default: old hashes stay valid, see settings.py).
        data.update(sgld_settings(opts).hashed())
        if estimator == "llc":
            data["precision"] = opts["compute_dtype"]  # hashed under the option's old name: stored runs stay valid
        keys = () if estimator == "llc" else ("probe_datasets", "probe_sequences", "observe_every")
    elif estimator == "hessian-trace":
        keys = ("probes", "trace_estimator", "curvature_batches")
    elif estimator == "fim-trace":
        keys = ("probes", "trace_estimator", "fim_method", "curvature_batches", "fim_seqs")
    elif estimator == "hessian-rank":
        keys = ("rank_threshold", "rank_degree", "rank_probes", "curvature_batches")
    elif estimator == "behavior":
        keys = ()
    else:
        raise RunError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    # The probe estimator is hashed under its old spelling, "behaviour": stored runs keep their hashes.
    name = "behaviour" if estimator == "behavior" else estimator
    return {"estimator": name, "seed": opts["seed"], "crn": bool(opts.get("crn", True)), **data,
            **{k: opts[k] for k in keys}}


def canonical(value: Any) -> Any:
    """JSON-ready, order-independent form: ints stay ints, other numbers become floats."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    raise RunError(f"option value {value!r} of type {type(value).__name__} is not a plain number, string or list")


def config_hash(params: dict[str, Any]) -> str:
    text = json.dumps(canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from a task's key: the same task gets the same seed whatever the run order or backend."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1
