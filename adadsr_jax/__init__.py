"""adadsr-jax: AdaDSR (adaptive-depth EDSR and RCAN super-resolution) in JAX and Flax NNX."""

from adadsr_jax.losses import adadsr_loss, depth_hinge
from adadsr_jax.models import PRESETS, AdaDSR, ModelConfig, create_model, get_model_config

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AdaDSR",
    "ModelConfig",
    "adadsr_loss",
    "create_model",
    "depth_hinge",
    "get_model_config",
]
