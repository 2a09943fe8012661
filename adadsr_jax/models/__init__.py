"""Flax NNX models: EDSR/RCAN backbones, the AdaDSR adapter and masked residual stacks."""

from adadsr_jax.masks import block_mask, executed_depth, mean_executed_depth
from adadsr_jax.models.adapter import Adapter
from adadsr_jax.models.config import PRESETS, ModelConfig, get_model_config
from adadsr_jax.models.edsr import EDSRBody
from adadsr_jax.models.layers import pixel_shuffle
from adadsr_jax.models.network import AdaDSR, create_model
from adadsr_jax.models.rcan import RCANBody, channel_attention

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
