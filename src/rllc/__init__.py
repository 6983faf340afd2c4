"""rllc: refined local learning coefficients per attention head over training."""

__version__ = "0.1.0"

from rllc.models import ModelConfig, Transformer  # noqa: E402
from rllc.models.checkpoints import CheckpointError, CheckpointSeries, load_checkpoints  # noqa: E402

__all__ = ["CheckpointError", "CheckpointSeries", "ModelConfig", "Transformer", "load_checkpoints", "__version__"]
