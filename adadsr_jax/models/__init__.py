"""Flax NNX models: EDSR/RCAN backbones, the AdaDSR adapter and masked residual stacks."""

from adadsr_jax.lazy_imports import lazy_exports

__all__ = [
    "PRESETS",
    "AdaDSR",
    "Adapter",
    "EDSRBody",
    "ModelConfig",
    "RCANBody",
    "block_mask",
    "channel_attention",
    "create_model",
    "executed_depth",
    "get_model_config",
    "mean_executed_depth",
    "pixel_shuffle",
]

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "adadsr_jax.masks": ("block_mask", "executed_depth", "mean_executed_depth"),
        "adadsr_jax.models.adapter": ("Adapter",),
        "adadsr_jax.models.config": ("PRESETS", "ModelConfig", "get_model_config"),
        "adadsr_jax.models.edsr": ("EDSRBody",),
        "adadsr_jax.models.layers": ("pixel_shuffle",),
        "adadsr_jax.models.network": ("AdaDSR", "create_model"),
        "adadsr_jax.models.rcan": ("RCANBody", "channel_attention"),
    },
)
