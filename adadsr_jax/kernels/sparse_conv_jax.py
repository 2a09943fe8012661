"""Pure-JAX sparse 3x3 convolution on the padded flat layout (the CPU fast path and the test oracle).

The active list is walked in tiles of `tile` rows by a while loop whose trip count is count // tile at
run time, and the rest of it by loops over halves of the tile (tile / 2, tile / 4, ... down to `tail`
rows, as many trips as the rest needs: at most two of the first, one of each other). Every tile has a
static shape (gather 9 taps -> im2col [rows, 9 * Cin] -> one matmul -> epilogue -> scatter), so nothing
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

# Measured per width (benchmarks/RESULTS.md, "Pixel lists at 256 features" and "The pixel lists' rest in
# halving tiles"). At 256 features the rest of a list after its whole tiles is computed in tails of 32
# rows (a block whose list ended a few rows into a tile had computed a whole tile of padding, and the
# deep blocks of a stack hold few rows) and the taps are gathered as 3-row slices: together the whole
# paper-size forward 15-20% faster. A rest of up to 8 tails ran as up to 8 matmuls of 32 rows, at ~60%
# of the rate of a 256-row one; halving tiles (256, 128, 64, 32 after tiles of 512) take it in at most
# four, and the paper-size forward at 30% / 50% executed MACs took 3-8% / 0.5-6% less. At 64 features the
# 3-row gathers were ~30% slower and smaller matmuls keep two cores less busy, so up to WIDE features
# the path is as it was: tiles of 512 rows, the last one whole, nine single-row gathers (128 features
# is unmeasured).
WIDE = 128


def tile_sizes(
    tile: int | None, capacity: int, cin: int, cout: int, tail: int | None = None
) -> tuple[int, int]:
    """(tile, tail) rows for a list of `capacity` entries of a Cin -> Cout conv: whole tiles, then the
    rest rounded up to whole tails.

    tile (None: 512) is capped at the capacity (at least 8 rows); tail (None: 32 above WIDE input
    channels, else the whole tile) at the tile; the tile is a multiple of the tail."""
    wide = cin > WIDE
    tile = min(512 if tile is None else tile, max(8, capacity))
    tail = min((32 if wide else tile) if tail is None else tail, tile)
    return -(-tile // tail) * tail, tail


def computed_rows(count: np.ndarray, tile: int, tail: int) -> np.ndarray:
    """Rows the loops compute for lists of `count` entries: whole tiles, then the rest rounded up to
    whole tails (the halving tiles add up to that)."""
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
    """`conv` (see SparseConv) computed by tiles of `tile` active rows, the rest of the list by halving
    tiles down to `tail` rows (None: `tile_sizes`'s choice for the conv's channels); returns the new dst
    [P, Cout]."""
    conv.check()
    cin, cout = conv.channels
    layout, count = conv.layout, conv.count
    k = conv.rows.shape[0]
    tile, tail = tile_sizes(tile, k, cin, cout, tail)
    # Pad the list to whole tiles; padding entries gather from the safe row and are never written.
    padded = -(-k // tile) * tile
    rows = jnp.pad(conv.rows, (0, padded - k), constant_values=layout.safe_row)
    compute = conv.src.dtype  # bfloat16 inputs multiply in bfloat16 and accumulate in float32
    # The kernel stays [3, 3, Cin, Cout] (the taps are reshaped to match): as a [9 * Cin, Cout] matrix
    # XLA sliced each block's kernel out of the stacked weights twice, once per shape (the dense switch
    # takes the 4-D one), 2.4 MB copies at 256 features, ~13 ms of a paper-size forward.
    w = conv.kernel.astype(compute)
    bias = conv.bias.astype(jnp.float32)
    p = conv.dst.shape[0]

    def tiles_of(size: int, first: jax.Array):
        def body(t, dst):
            start = first + t * size
            r = jax.lax.dynamic_slice_in_dim(rows, start, size)
            valid = start + jnp.arange(size, dtype=jnp.int32) < count
            r = jnp.where(valid, r, layout.safe_row)
            taps = gather_taps(conv.src, r, layout)
            taps4 = taps.astype(compute).reshape(size, 3, 3, cin)
            y = jnp.einsum("tabi,abio->to", taps4, w, preferred_element_type=jnp.float32) + bias
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
    start = full * tile
    rest = (count - start + tail - 1) // tail * tail  # rounded up to whole tails: at most one tile
    for size in _halving_sizes(tile, tail):
        trips = rest // size
        dst = jax.lax.fori_loop(0, trips, tiles_of(size, start), dst)
        start, rest = start + trips * size, rest - trips * size
    return dst


def _halving_sizes(tile: int, tail: int) -> list[int]:
    """Row counts of the loops over the rest of a list after its whole tiles: tile / 2, tile / 4, ... down
    to tail (just [tail] when tail >= tile / 2)."""
    sizes = [tail]
    while sizes[-1] * 2 < tile:
        sizes.append(sizes[-1] * 2)
    return sizes[::-1]
