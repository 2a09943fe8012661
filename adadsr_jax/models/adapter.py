"""The AdaDSR adapter: a five-conv network that predicts per-pixel depth maps from head features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adadsr_jax.models.config import DepthInput
from adadsr_jax.models.layers import Conv


class PReLUConv(nnx.Module):
    """PReLU with one shared slope (initialised 0.25, as PyTorch's nn.PReLU()) followed by a 3x3 conv."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.slope = nnx.Param(jnp.full((1,), 0.25, jnp.float32))
        self.conv = Conv(in_features, out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.where(x >= 0, x, self.slope[...].astype(x.dtype) * x)
        return self.conv(x)


class Adapter(nnx.Module):
    """Depth predictor P(z0, d): conv, 3 x [PReLU, conv], [PReLU, conv -> G maps], ReLU.

    The desired depth d enters in one of two ways:
      - "weight": the first conv's weight is multiplied by d (bias untouched), i.e. conv0(d * z0).
        The paper's formulation and the AdaRCAN release.
      - "output": the depth map is d * relu(P(z0)), so its spatial pattern does not depend on d.
        The AdaEDSR release.
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        num_maps: int,
        *,
        depth_input: DepthInput,
        rngs: nnx.Rngs,
    ):
        if depth_input not in ("weight", "output"):
            raise ValueError(f"depth_input must be 'weight' or 'output', got {depth_input!r}")
        self.depth_input = depth_input
        self.layer0 = Conv(in_features, features, rngs=rngs)
        self.layers = nnx.List(
            [PReLUConv(features, features, rngs=rngs) for _ in range(3)]
            + [PReLUConv(features, num_maps, rngs=rngs)]
        )

    def __call__(self, z0: jax.Array, desired_depth: jax.Array) -> jax.Array:
        """z0: [N, h, w, C] head features; desired_depth: [N] -> depth maps [N, h, w, G], >= 0."""
        d = desired_depth.astype(z0.dtype)[:, None, None, None]
        x = z0 * d if self.depth_input == "weight" else z0
        x = self.layer0(x)
        for layer in self.layers:
            x = layer(x)
        x = jax.nn.relu(x)
        return x * d if self.depth_input == "output" else x
