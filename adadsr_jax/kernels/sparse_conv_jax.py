"""Pure-JAX sparse 3x3 convolution on the padded flat layout (the CPU fast path and the test oracle).

The active list is walked in tiles of `tile` rows by a while loop whose trip count is count // tile at
run time, and its last partial tile by a second loop over tiles of `tail` rows: every tile has a static
shape (gather 9 taps -> im2col [tile, 9 * Cin] -> one matmul -> epilogue -> scatter), so nothing
recompiles when the number of active pixels changes, and the work done is the active count rounded up
to `tail` rows, not the list's static capacity. Tiling also keeps the im2col buffer small enough to
stay in cache: materialising it for a whole 256x256 map costs more memory time than the matmul itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adadsr_jax.kernels.contract import SparseConv, apply_epilogue
from adadsr_jax.kernels.layout import PaddedLayout

# Measured per width (benchmarks/RESULTS.md, "Pixel lists at 256 features"). At 256 features, tiles of
# 256 rows, the last partial tile in tails of 32 (a block whose list ended a few rows into a tile had
# computed a whole tile of padding, and the deep blocks of a stack hold few rows) and 3-row gathers
# made the whole paper-size forward 15-20% faster. At 64 features the 3-row gathers were ~30% slower
# and smaller matmuls keep two cores less busy, so up to WIDE features the path is as it was: tiles of
# 512 rows, the last one whole, nine single-row gathers (128 features is unmeasured).
WIDE = 128


def tile_sizes(
    tile: int | None, capacity: int, cin: int, cout: int, tail: int | None = None
) -> tuple[int, int]:
    """(tile, tail) rows of the two loops for a list of `capacity` entries of a Cin -> Cout conv.

    tile (None: 256 above WIDE input channels, else 512) is capped at the capacity (at least 8 rows);
    tail (None: 32 above WIDE, else the whole tile) at the tile; the tile is a multiple of the tail."""
    wide = cin > WIDE
    tile = min((256 if wide else 512) if tile is None else tile, max(8, capacity))
    tail = min((32 if wide else tile) if tail is None else tail, tile)
    return -(-tile // tail) * tail, tail


def computed_rows(count: np.ndarray, tile: int, tail: int) -> np.ndarray:
    """Rows the two loops compute for lists of `count` entries: whole tiles, then whole tails."""
    count = np.asarray(count, np.int64)
    full = count // tile * tile
    return full + -(-(count - full) // tail) * tail


def gather_taps(src: jax.Array, r: jax.Array, layout: PaddedLayout) -> jax.Array:
    """im2col rows [T, 9 * Cin] (HWIO tap order) of padded flat rows r [T] of src [P, Cin].

    Above WIDE channels, per kernel row dy one gather of 3 consecutive flat rows (the taps dx = -1, 0, 1
    are adjacent in the padded flat layout); else nine single-row gathers, which XLA lowers to
    contiguous row copies. Concatenated either way (see WIDE for the measurements).
    """
    if src.shape[1] > WIDE:
        s = layout.row_stride

        def three_rows(start: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice_in_dim(src, start, 3).reshape(-1)

        return jnp.concatenate([jax.vmap(three_rows)(r + dy * s - 1) for dy in (-1, 0, 1)], axis=1)
    return jnp.concatenate(
        [src.at[r + int(off)].get(mode="promise_in_bounds") for off in layout.tap_offsets()], axis=1
    )


def sparse_conv3x3_jax(conv: SparseConv, *, tile: int | None = None, tail: int | None = None) -> jax.Array:
    """`conv` (see SparseConv) computed by tiles of `tile` active rows, the last partial tile by tails of
    `tail` rows (None: `tile_sizes`'s choice for the conv's channels); returns the new dst [P, Cout]."""
    conv.check()
    cin, cout = conv.channels
    layout, count = conv.layout, conv.count
    k = conv.rows.shape[0]
    tile, tail = tile_sizes(tile, k, cin, cout, tail)
    # Pad the list to whole tiles; padding entries gather from the safe row and are never written.
    padded = -(-k // tile) * tile
    rows = jnp.pad(conv.rows, (0, padded - k), constant_values=layout.safe_row)
    compute = conv.src.dtype  # bfloat16 inputs multiply in bfloat16 and accumulate in float32
    w = conv.kernel.reshape(9 * cin, cout).astype(compute)
    bias = conv.bias.astype(jnp.float32)
    p = conv.dst.shape[0]

    def tiles_of(size: int, first: jax.Array):
        def body(t, dst):
            start = first + t * size
            r = jax.lax.dynamic_slice_in_dim(rows, start, size)
            valid = start + jnp.arange(size, dtype=jnp.int32) < count
            r = jnp.where(valid, r, layout.safe_row)
            taps = gather_taps(conv.src, r, layout)
            y = jnp.dot(taps.astype(compute), w, preferred_element_type=jnp.float32) + bias
            dst_rows = None
            if conv.epilogue == "residual":
                dst_rows = dst.at[r].get(mode="promise_in_bounds").astype(jnp.float32)
            coef = None
            if conv.coef is not None:
                coef = conv.coef.at[r].get(mode="promise_in_bounds").astype(jnp.float32)
            out = apply_epilogue(y, conv.epilogue, dst_rows, coef).astype(dst.dtype)
            # Padding entries get distinct out-of-bounds targets, which mode="drop" discards.
            target = jnp.where(valid, r, p + jnp.arange(size, dtype=jnp.int32))
            return dst.at[target].set(out, mode="drop", unique_indices=True)

        return body

    full = count // tile
    dst = jax.lax.fori_loop(0, full, tiles_of(tile, jnp.int32(0)), conv.dst)
    return jax.lax.fori_loop(0, (count - full * tile + tail - 1) // tail, tiles_of(tail, full * tile), dst)
