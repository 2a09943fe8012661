"""RCAN residual body: G residual groups of B channel-attention blocks, run as nested scans."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adadsr_jax.masks import block_mask
from adadsr_jax.models.config import ModelConfig
from adadsr_jax.models.layers import StackedConv, StackedDense, conv2d, resolve_scan_unroll
from adadsr_jax.models.sparse_stacks import run_sparse_stack, sparse_rcan_group


def channel_attention(
    x: jax.Array, down_kernel: jax.Array, down_bias: jax.Array, up_kernel: jax.Array, up_bias: jax.Array
) -> jax.Array:
    """RCAN's CA: x * sigmoid(up(relu(down(global_avg_pool(x))))). x: [N, h, w, C] -> same shape."""
    pooled = x.mean(axis=(1, 2))
    hidden = jax.nn.relu(pooled @ down_kernel.astype(x.dtype) + down_bias.astype(x.dtype))
    weights = jax.nn.sigmoid(hidden @ up_kernel.astype(x.dtype) + up_bias.astype(x.dtype))
    return x * weights[:, None, None, :]


class RCANBody(nnx.Module):
    """The residual groups of RCAN (without the body-end conv, which the network owns).

    Block: `x + res_scale * CA(m_l * conv(relu(conv(x))))` (the mask comes before channel attention);
    each group ends with a dense conv and a group skip. Group g uses depth map g.
    Params (G groups, B blocks, C features, C/r reduced): layer0/layer2 kernel [G, B, 3, 3, C, C],
    bias [G, B, C]; ca_down kernel [G, B, C, C/r]; ca_up kernel [G, B, C/r, C]; group_end kernel
    [G, 3, 3, C, C]. They mirror the release's `group{g}.block{i}.layer0/layer2/cuca.conv_du.{0,2}` and
    `group{g}.block{B}`.
    """

    def __init__(self, config: ModelConfig, *, scan_unroll: bool | None = None, rngs: nnx.Rngs):
        """config: num_groups (G), num_blocks (B), num_features (C), reduction (r) and res_scale are read;
        scan_unroll as AdaDSR's."""
        self.num_groups = num_groups = config.num_groups
        self.num_blocks = num_blocks = config.num_blocks
        self.scan_unroll = scan_unroll
        self.res_scale = config.res_scale
        features, reduction = config.num_features, config.reduction
        stack = (num_groups, num_blocks)
        self.layer0 = StackedConv(stack, features, features, rngs=rngs)
        self.layer2 = StackedConv(stack, features, features, rngs=rngs)
        self.ca_down = StackedDense(stack, features, features // reduction, rngs=rngs)
        self.ca_up = StackedDense(stack, features // reduction, features, rngs=rngs)
        self.group_end = StackedConv((num_groups,), features, features, rngs=rngs)

    def __call__(
        self, x: jax.Array, depth_map: jax.Array | None = None, *, sparse_backend: str | None = None
    ):
        """x: [N, h, w, C]; depth_map: [N, h, w, G] or None (every mask is one) -> [N, h, w, C].

        sparse_backend (inference, with depth maps; None: dense) computes each block only where its mask
        is > 0 (models.sparse_stacks); group-end convs stay dense. Equal to the dense result up to rounding.
        """
        res_scale = self.res_scale
        block_indices = jnp.arange(self.num_blocks, dtype=jnp.float32)

        def group(x, group_params):
            blocks, end_kernel, end_bias, group_depth = group_params

            def block(h, params):
                k0, b0, k1, b1, dk, db, uk, ub, index = params
                residual = conv2d(jax.nn.relu(conv2d(h, k0, b0)), k1, b1)
                if group_depth is not None:
                    residual = residual * block_mask(group_depth, index).astype(h.dtype)
                return h + res_scale * channel_attention(residual, dk, db, uk, ub), None

            def dense(x):
                return jax.lax.scan(block, x, (*blocks, block_indices), unroll=unroll)[0]

            def sparse_blocks(x):
                return sparse_rcan_group(x, group_depth, blocks, res_scale=res_scale, backend=sparse_backend)

            h = run_sparse_stack(
                x, group_depth, self.num_blocks, dense=dense, sparse=sparse_blocks, backend=sparse_backend
            )
            return x + conv2d(h, end_kernel, end_bias), None

        blocks = tuple(
            p[...]
            for p in (
                self.layer0.kernel,
                self.layer0.bias,
                self.layer2.kernel,
                self.layer2.bias,
                self.ca_down.kernel,
                self.ca_down.bias,
                self.ca_up.kernel,
                self.ca_up.bias,
            )
        )
        unroll = resolve_scan_unroll(self.scan_unroll)
        # One [N, h, w, 1] map per group, scanned along the group axis.
        group_depths = None if depth_map is None else jnp.moveaxis(depth_map, -1, 0)[..., None]
        x, _ = jax.lax.scan(
            group,
            x,
            (blocks, self.group_end.kernel[...], self.group_end.bias[...], group_depths),
            unroll=unroll,
        )
        return x
