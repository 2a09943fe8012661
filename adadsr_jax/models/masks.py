"""Per-block masks from a depth map (paper eq. 4) and the depth statistics the release reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_mask(depth_map: jax.Array, block_index: jax.Array | int) -> jax.Array:
    """Soft mask of block `block_index` (0-based) of a stack: clip(depth_map - block_index, 0, 1).

    This is eq. 4 with l = block_index + 1: 0 where the depth is <= l - 1, 1 where it is >= l, linear
    in between. Masks are nested: block l is active (mask > 0) on a subset of block l - 1's pixels.
    depth_map: [..., h, w, 1] -> same shape.
    """
    return jnp.clip(depth_map - block_index, 0.0, 1.0)


def executed_depth(depth_map: jax.Array, max_depth: int) -> jax.Array:
    """Blocks that actually run at each pixel: ceil(clip(depth_map, 0, D)).

    A mask of 1e-4 still costs a whole block, hence the ceiling.
    """
    return jnp.ceil(jnp.clip(depth_map, 0.0, max_depth))


def mean_executed_depth(depth_map: jax.Array, max_depth: int) -> jax.Array:
    """The release's "mean depth": per image, mean over pixels (and maps) of ceil(clip(d, 0, D)).

    depth_map: [N, h, w, G] -> [N].
    """
    return executed_depth(depth_map, max_depth).mean(axis=(1, 2, 3))
