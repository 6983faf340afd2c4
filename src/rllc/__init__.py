"""rllc: refined local learning coefficients per attention head over training.

Names are imported lazily so `rllc --help` and `import rllc.data` do not pay
for torch/transformer-lens start-up until a model is needed.

The architecture (data flowing one way: load → estimate → store → cluster/compare
→ report; the layers and what each may import; the contracts between them) is
docs/design.md; tests/test_layout.py checks it.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "rllc.models.config",
    "Transformer": "rllc.models.transformer",
    "CheckpointError": "rllc.models.checkpoints",
    "CheckpointSeries": "rllc.models.checkpoints",
    "load_checkpoints": "rllc.models.checkpoints",
    "Component": "rllc.models.components",
    "resolve_component": "rllc.models.components",
    "heads": "rllc.models.components",
    "estimate_llc": "rllc.sampling",
    "estimate_llcs": "rllc.sampling",
    "estimates_table": "rllc.sampling",
    "SGLDSettings": "rllc.sampling",
    "calibrate": "rllc.sampling",
    "calibrate_heads": "rllc.runs.calibrate",
    "LLCEstimate": "rllc.sampling",
    "ChainDivergedError": "rllc.sampling",
    "TokenLossObserver": "rllc.sampling",
    "susceptibilities": "rllc.sampling",
    "bif": "rllc.sampling",
    "NonFiniteDataError": "rllc.sampling",
    "hessian_trace": "rllc.curvature",
    "hessian_eigenvalues": "rllc.curvature",
    "hessian_rank": "rllc.curvature",
    "fim_trace": "rllc.curvature",
    "load_results": "rllc.results",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rllc' has no attribute {name!r}")
