"""Per-block masks from a depth map (paper eq. 4) and the depth statistics the release reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def block_mask(depth_map: jax.Array, block_index: jax.Array | int) -> jax.Array:
    """Soft mask of block `block_index` (0-based) of a stack: clip(depth_map - block_index, 0, 1).

    This is eq. 4 with l = block_index + 1: 0 where the depth is <= l - 1, 1 where it is >= l, linear
    in between. Masks are nested: block l is active (mask > 0) on a subset of block l - 1's pixels.
    depth_map: [..., h, w, 1] -> same shape.
    """
    return jnp.clip(depth_map - block_index, 0.0, 1.0)


def executed_depth(depth_map: jax.Array | np.ndarray, max_depth: int) -> jax.Array | np.ndarray:
    """Blocks that actually run at each pixel: ceil(clip(depth_map, 0, D)) (block l runs where it is > l).

    A mask of 1e-4 still costs a whole block, hence the ceiling. The one definition of the executed
    depth (MACs, the sparse stacks' index lists and the mean depth all use it). A numpy array gives a
    numpy result in its own dtype (exact float64 host-side counts); anything else goes through jnp.
    depth_map: any shape -> same shape.
    """
    xp = np if isinstance(depth_map, np.ndarray) else jnp
    return xp.ceil(xp.clip(depth_map, 0.0, max_depth))


def executed_levels(depth_map: jax.Array, max_depth: int) -> tuple[jax.Array, jax.Array]:
    """(levels, dilated levels) of depth maps [N, h, w, G] (float, same shape): the blocks each pixel's
    second conv runs (`executed_depth`) and its first conv runs (their 3x3 max over h, w).

    A block's first conv must run on the 3x3 neighbourhood of its active pixels, since the second conv
    reads all 9 taps of the hidden map there; zero padding at the borders (levels are >= 0).
    """
    levels = executed_depth(jnp.asarray(depth_map), max_depth)
    dilated = jax.lax.reduce_window(levels, 0.0, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    return levels, dilated


def mean_executed_depth(depth_map: jax.Array, max_depth: int) -> jax.Array:
    """The release's "mean depth": per image, mean over pixels (and maps) of ceil(clip(d, 0, D)).

    depth_map: [N, h, w, G] -> [N].
    """
    return executed_depth(depth_map, max_depth).mean(axis=(1, 2, 3))
