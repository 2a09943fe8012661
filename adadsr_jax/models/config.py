"""Model configuration and the named presets (paper models and small CPU-sized ones)."""

from __future__ import annotations

import dataclasses
from typing import Literal

DepthInput = Literal["weight", "output"]

Backbone = Literal["edsr", "rcan"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture of an AdaDSR model (what its parameters' shapes and its forward depend on).

    num_blocks is per group for RCAN. adapter_features=None gives the plain backbone (every mask one).
    depth_input: how the desired depth enters the adapter ("output" scaling, the AdaEDSR release;
    "weight" scaling of its first conv, the paper and the AdaRCAN release). Training settings (the depth
    loss weight, the desired-depth range) live in adadsr_jax.training.config.
    """

    backbone: Backbone
    num_features: int
    num_blocks: int
    num_groups: int = 1
    res_scale: float = 1.0
    reduction: int = 16
    adapter_features: int | None = None
    depth_input: DepthInput = "output"

    def __post_init__(self):
        if self.backbone not in ("edsr", "rcan"):
            raise ValueError(f"backbone must be 'edsr' or 'rcan', got {self.backbone!r}")
        if self.backbone == "edsr" and self.num_groups != 1:
            raise ValueError("EDSR has a single stack of blocks: num_groups must be 1")
        if self.backbone == "rcan" and self.num_features % self.reduction:
            raise ValueError(
                f"num_features {self.num_features} is not divisible by reduction {self.reduction}"
            )

    @property
    def adaptive(self) -> bool:
        return self.adapter_features is not None

    @property
    def num_maps(self) -> int:
        """Depth maps the adapter predicts: one for EDSR, one per residual group for RCAN."""
        return self.num_groups if self.backbone == "rcan" else 1

    @property
    def max_depth(self) -> int:
        """D: blocks in one masked stack (per group for RCAN)."""
        return self.num_blocks

    @property
    def default_depths(self) -> tuple[float, ...]:
        """The paper's sweep scaled to D: D/4, D/2, 3D/4, D (the release's 8, 16, 24, 32 for D = 32; 5, 10,
        15, 20 for D = 20) for an adaptive model; (D,) for a plain backbone, which has no other depth."""
        d = float(self.max_depth)
        if not self.adaptive:
            return (d,)
        return tuple(round(d * q, 3) for q in (0.25, 0.5, 0.75, 1.0))


def _edsr(blocks: int, features: int, res_scale: float) -> ModelConfig:
    return ModelConfig("edsr", features, blocks, res_scale=res_scale)


def _adaedsr(blocks: int, features: int, adapter: int) -> ModelConfig:
    return ModelConfig(
        "edsr",
        features,
        blocks,
        adapter_features=adapter,
        depth_input="output",
    )


def _rcan(groups: int, blocks: int, features: int, reduction: int) -> ModelConfig:
    return ModelConfig("rcan", features, blocks, num_groups=groups, reduction=reduction)


def _adarcan(groups: int, blocks: int, features: int, reduction: int, adapter: int) -> ModelConfig:
    return ModelConfig(
        "rcan",
        features,
        blocks,
        num_groups=groups,
        reduction=reduction,
        adapter_features=adapter,
        depth_input="weight",
    )


# Paper models (docs/method.md). The AdaEDSR release runs res_scale 1 (EDSR's 0.1 is folded into its
# weights); upstream EDSR 32x256 checkpoints use 0.1, hence the plain "edsr" preset's value.
PRESETS: dict[str, ModelConfig] = {
    "edsr": _edsr(32, 256, res_scale=0.1),
    "adaedsr": _adaedsr(32, 256, adapter=128),
    "rcan": _rcan(10, 20, 64, reduction=16),
    "adarcan": _adarcan(10, 20, 64, reduction=16, adapter=64),
    # CPU-sized models for the demo and quick experiments.
    "edsr_small": _edsr(8, 32, res_scale=1.0),
    "adaedsr_small": _adaedsr(8, 32, adapter=16),
    "rcan_small": _rcan(2, 4, 32, reduction=8),
    "adarcan_small": _adarcan(2, 4, 32, reduction=8, adapter=16),
    # Test-sized models: they compile in a second or two.
    "edsr_tiny": _edsr(3, 8, res_scale=1.0),
    "adaedsr_tiny": _adaedsr(3, 8, adapter=8),
    "rcan_tiny": _rcan(2, 2, 8, reduction=4),
    "adarcan_tiny": _adarcan(2, 2, 8, reduction=4, adapter=8),
}


def get_model_config(name: str, **overrides) -> ModelConfig:
    """The preset `name` with fields replaced by `overrides` (e.g. num_blocks=16)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown model config fields {sorted(unknown)} for {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)
