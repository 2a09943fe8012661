"""Pure-JAX sparse 3x3 convolution on the padded flat layout (the CPU fast path and the test oracle).

The active list is walked in tiles of `tile` rows by a while loop whose trip count is ceil(count / tile)
at run time: every tile has a static shape (gather 9 taps -> im2col [tile, 9 * Cin] -> one matmul ->
epilogue -> scatter), so nothing recompiles when the number of active pixels changes, and the work done
is proportional to the active count (rounded up to a tile), not to the list's static capacity. Tiling
also keeps the im2col buffer small enough to stay in cache: materialising it for a whole 256x256 map
costs more memory time than the matmul itself.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.layout import PaddedLayout

Epilogue = Literal["relu", "residual", "masked", "none"]

DEFAULT_TILE = 512


def apply_epilogue(
    y: jax.Array, epilogue: Epilogue, dst_rows: jax.Array | None, coef: jax.Array | None
) -> jax.Array:
    """The fused epilogue on conv outputs y [T, Cout] (bias already added), in float32.

    relu: relu(y).  residual: dst + coef * y (coef = res_scale * soft mask, per row).
    masked: coef * y.  none: y.
    """
    if epilogue == "relu":
        return jax.nn.relu(y)
    if epilogue == "residual":
        return dst_rows + coef[:, None] * y
    if epilogue == "masked":
        return coef[:, None] * y
    if epilogue == "none":
        return y
    raise ValueError(f"unknown epilogue {epilogue!r}")


def gather_taps(src: jax.Array, r: jax.Array, layout: PaddedLayout) -> jax.Array:
    """im2col rows [T, 9 * Cin] (HWIO tap order) of padded flat rows r [T] of src [P, Cin].

    Nine plain row gathers, concatenated. Measured on CPU (benchmarks/RESULTS.md) against one gather
    of [T, 9] indices and against three gathers of 3-pixel slices: gather + matmul is 30-35% faster this
    way, as XLA lowers each [T]-row gather to contiguous row copies.
    """
    return jnp.concatenate(
        [src.at[r + int(off)].get(mode="promise_in_bounds") for off in layout.tap_offsets()], axis=1
    )


def sparse_conv3x3_jax(
    src: jax.Array,
    dst: jax.Array,
    rows: jax.Array,
    count: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    layout: PaddedLayout,
    *,
    epilogue: Epilogue,
    coef: jax.Array | None = None,
    tile: int = DEFAULT_TILE,
) -> jax.Array:
    """3x3 SAME conv of `src` computed at `rows[:count]` only, written into `dst` with an epilogue.

    src: padded flat [P, Cin]; dst: padded flat [P, Cout] (rows not in the list are returned unchanged,
    so inactive pixels keep dst's value: the block's identity for the residual epilogue).
    rows: int32 [K] padded flat rows of active pixels (entries >= count are ignored);
    count: int32 [] (0 <= count <= K); kernel: [3, 3, Cin, Cout] HWIO; bias: [Cout];
    coef: float [P] per-row factor for the residual/masked epilogues (e.g. res_scale * soft mask),
    indexed by padded flat row. Accumulates in float32; returns dst's dtype.
    """
    cin, cout = kernel.shape[2], kernel.shape[3]
    if src.shape[1] != cin or dst.shape[1] != cout:
        raise ValueError(f"channel mismatch: src {src.shape}, dst {dst.shape}, kernel {kernel.shape}")
    if epilogue in ("residual", "masked") and coef is None:
        raise ValueError(f"the {epilogue!r} epilogue needs coef")
    k = rows.shape[0]
    tile = min(tile, max(8, k))
    # Pad the list to whole tiles; padding entries gather from the safe row and are never written.
    padded = -(-k // tile) * tile
    rows = jnp.pad(rows, (0, padded - k), constant_values=layout.safe_row)
    w = kernel.reshape(9 * cin, cout)
    p = dst.shape[0]
    compute = src.dtype  # bfloat16 inputs multiply in bfloat16 and accumulate in float32

    def body(t, dst):
        start = t * tile
        r = jax.lax.dynamic_slice_in_dim(rows, start, tile)
        valid = start + jnp.arange(tile, dtype=jnp.int32) < count
        r = jnp.where(valid, r, layout.safe_row)
        taps = gather_taps(src, r, layout)
        y = jnp.dot(
            taps.reshape(tile, 9 * cin).astype(compute),
            w.astype(compute),
            preferred_element_type=jnp.float32,
        ) + bias.astype(jnp.float32)
        dst_rows = None
        if epilogue == "residual":
            dst_rows = dst.at[r].get(mode="promise_in_bounds").astype(jnp.float32)
        c = None if coef is None else coef.at[r].get(mode="promise_in_bounds").astype(jnp.float32)
        out = apply_epilogue(y, epilogue, dst_rows, c).astype(dst.dtype)
        # Padding entries get distinct out-of-bounds targets, which mode="drop" discards.
        target = jnp.where(valid, r, p + jnp.arange(tile, dtype=jnp.int32))
        return dst.at[target].set(out, mode="drop", unique_indices=True)

    trips = (count + tile - 1) // tile
    return jax.lax.fori_loop(0, trips, body, dst)
