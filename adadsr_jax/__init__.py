"""adadsr-jax: AdaDSR (adaptive-depth EDSR and RCAN super-resolution) in JAX and Flax NNX."""

__version__ = "0.1.0"

from adadsr_jax.checkpoint import abstract_model, load_model, save_model
from adadsr_jax.evaluation import Predictor
from adadsr_jax.losses import adadsr_loss, depth_hinge
from adadsr_jax.models import PRESETS, AdaDSR, ModelConfig, create_model, get_model_config

__all__ = [
    "PRESETS",
    "AdaDSR",
    "ModelConfig",
    "Predictor",
    "abstract_model",
    "adadsr_loss",
    "create_model",
    "depth_hinge",
    "get_model_config",
    "load_model",
    "save_model",
]
