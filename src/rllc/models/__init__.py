"""Models: the hookable transformer, its config, and checkpoint-directory loading."""

from rllc.models.config import ConfigError, ModelConfig
from rllc.models.transformer import Transformer

__all__ = ["ConfigError", "ModelConfig", "Transformer"]
