"""EDSR residual body: D blocks `x + res_scale * m_l * conv(relu(conv(x)))`, run as one scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adadsr_jax.masks import block_mask
from adadsr_jax.models.config import ModelConfig
from adadsr_jax.models.layers import StackedConv, conv2d, resolve_scan_unroll
from adadsr_jax.models.sparse_stacks import edsr_stack_tiling, run_sparse_stack, sparse_edsr_stack


class EDSRBody(nnx.Module):
    """The residual blocks of EDSR (without the body-end conv, which the network owns).

    Params mirror the PyTorch release's `block{i}.layer0` / `block{i}.layer2`, stacked on a leading
    block axis: layer0.kernel [D, 3, 3, C, C], layer0.bias [D, C], and the same for layer2.
    """

    def __init__(self, config: ModelConfig, *, scan_unroll: bool | None = None, rngs: nnx.Rngs):
        """config: num_blocks (D), num_features (C) and res_scale are read; scan_unroll as AdaDSR's."""
        self.num_blocks = config.num_blocks
        self.res_scale = config.res_scale
        self.scan_unroll = scan_unroll
        c = config.num_features
        self.layer0 = StackedConv((self.num_blocks,), c, c, rngs=rngs)
        self.layer2 = StackedConv((self.num_blocks,), c, c, rngs=rngs)

    def __call__(
        self, x: jax.Array, depth_map: jax.Array | None = None, *, sparse_backend: str | None = None
    ):
        """x: [N, h, w, C]; depth_map: [N, h, w, 1] or None (every mask is one) -> [N, h, w, C].

        sparse_backend (inference, with a depth map; None: dense) computes each block only where its mask
        is > 0 (models.sparse_stacks); the result equals the dense one up to float rounding.
        """
        res_scale = self.res_scale

        def block(x, params):
            k0, b0, k1, b1, index = params
            residual = conv2d(jax.nn.relu(conv2d(x, k0, b0)), k1, b1)
            if depth_map is not None:
                residual = residual * block_mask(depth_map, index).astype(x.dtype)
            return x + res_scale * residual, None

        params = (
            self.layer0.kernel[...],
            self.layer0.bias[...],
            self.layer2.kernel[...],
            self.layer2.bias[...],
        )

        def dense(x):
            indices = jnp.arange(self.num_blocks, dtype=jnp.float32)
            unroll = resolve_scan_unroll(self.scan_unroll)
            return jax.lax.scan(block, x, (*params, indices), unroll=unroll)[0]

        def sparse_stack(x):
            return sparse_edsr_stack(x, depth_map, params, res_scale=res_scale, backend=sparse_backend)

        tiling = edsr_stack_tiling(x.shape[-1], sparse_backend)
        return run_sparse_stack(
            x,
            depth_map,
            self.num_blocks,
            dense=dense,
            sparse=sparse_stack,
            backend=sparse_backend,
            threshold=None if tiling is None else tiling.stack_dense,
        )
