"""adadsr-jax: AdaDSR (adaptive-depth EDSR and RCAN super-resolution) in JAX and Flax NNX."""

__version__ = "0.1.0"

from adadsr_jax.lazy_imports import lazy_exports

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

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "adadsr_jax.checkpoint": ("abstract_model", "load_model", "save_model"),
        "adadsr_jax.evaluation": ("Predictor",),
        "adadsr_jax.losses": ("adadsr_loss", "depth_hinge"),
        "adadsr_jax.models": ("PRESETS", "AdaDSR", "ModelConfig", "create_model", "get_model_config"),
    },
)
