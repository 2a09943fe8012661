"""Pure-JAX sparse 3x3 convolution on the padded flat layout (the CPU fast path and the test oracle).

The active list is walked in tiles of `tile` rows by a while loop whose trip count is ceil(count / tile)
at run time: every tile has a static shape (gather 9 taps -> im2col [tile, 9 * Cin] -> one matmul ->
epilogue -> scatter), so nothing recompiles when the number of active pixels changes, and the work done
is proportional to the active count (rounded up to a tile), not to the list's static capacity. Tiling
also keeps the im2col buffer small enough to stay in cache: materialising it for a whole 256x256 map
costs more memory time than the matmul itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.contract import SparseConv, apply_epilogue
from adadsr_jax.kernels.layout import PaddedLayout

DEFAULT_TILE = 512


def gather_taps(src: jax.Array, r: jax.Array, layout: PaddedLayout) -> jax.Array:
    """im2col rows [T, 9 * Cin] (HWIO tap order) of padded flat rows r [T] of src [P, Cin].

    Nine plain row gathers, concatenated. Measured on CPU (benchmarks/RESULTS.md) against one gather
    of [T, 9] indices and against three gathers of 3-pixel slices: gather + matmul is 30-35% faster this
    way, as XLA lowers each [T]-row gather to contiguous row copies.
    """
    return jnp.concatenate(
        [src.at[r + int(off)].get(mode="promise_in_bounds") for off in layout.tap_offsets()], axis=1
    )


def sparse_conv3x3_jax(conv: SparseConv, *, tile: int = DEFAULT_TILE) -> jax.Array:
    """`conv` (see SparseConv) computed by tiles of `tile` active rows; returns the new dst [P, Cout]."""
    conv.check()
    cin, cout = conv.channels
    layout, count = conv.layout, conv.count
    k = conv.rows.shape[0]
    tile = min(tile, max(8, k))
    # Pad the list to whole tiles; padding entries gather from the safe row and are never written.
    padded = -(-k // tile) * tile
    rows = jnp.pad(conv.rows, (0, padded - k), constant_values=layout.safe_row)
    compute = conv.src.dtype  # bfloat16 inputs multiply in bfloat16 and accumulate in float32
    w = conv.kernel.reshape(9 * cin, cout).astype(compute)
    bias = conv.bias.astype(jnp.float32)
    p = conv.dst.shape[0]

    def body(t, dst):
        start = t * tile
        r = jax.lax.dynamic_slice_in_dim(rows, start, tile)
        valid = start + jnp.arange(tile, dtype=jnp.int32) < count
        r = jnp.where(valid, r, layout.safe_row)
        taps = gather_taps(conv.src, r, layout)
        y = jnp.dot(taps.astype(compute), w, preferred_element_type=jnp.float32) + bias
        dst_rows = None
        if conv.epilogue == "residual":
            dst_rows = dst.at[r].get(mode="promise_in_bounds").astype(jnp.float32)
        coef = (
            None if conv.coef is None else conv.coef.at[r].get(mode="promise_in_bounds").astype(jnp.float32)
        )
        out = apply_epilogue(y, conv.epilogue, dst_rows, coef).astype(dst.dtype)
        # Padding entries get distinct out-of-bounds targets, which mode="drop" discards.
        target = jnp.where(valid, r, p + jnp.arange(tile, dtype=jnp.int32))
        return dst.at[target].set(out, mode="drop", unique_indices=True)

    trips = (count + tile - 1) // tile
    return jax.lax.fori_loop(0, trips, body, conv.dst)
