"""Tiled sparse EDSR stack: dense XLA convolutions on the T x T tiles of the map that a block needs.

The pixel-list path (`models/sparse_stacks.py`) gathers 9 taps per active pixel and multiplies an im2col
tile; on CPU that matmul runs well below the FLOP rate of XLA's dense convolution at 32-64 channels.
Here the unit of sparsity is a T x T tile instead of a pixel: a block visits the tiles holding an active
pixel, gathers each with a halo, and runs XLA's dense convolution (VALID) on a batch of K such tiles.

Geometry. h and w are padded up to multiples of T; padded pixels have depth 0, so no block writes them
and they stay zero, which is what the SAME convolution reads outside the image. Tile t (image-major,
raster within an image) covers rows ty*T..ty*T+T-1 and columns tx*T..tx*T+T-1 of its image.

Each block runs two tile loops. The first computes the hidden map relu(conv1(x)) on every tile
touching the 3x3-dilated active set (tiles gathered from x with a halo of 1) into a hidden buffer; the
second computes x + res_scale * m * conv2(hidden) on every tile touching the active set (tiles gathered
from the hidden buffer with a halo of 1) and writes them back into x in place (the second loop reads x
only at the tile it writes). Every pixel the second conv reads at an active pixel lies in the dilated
set, so it is fresh; stale hidden values elsewhere only reach pixels whose soft mask is 0. Hidden values
outside the image are masked to 0 (SAME padding). A fused variant (one loop, halo 2, conv1 recomputed
on each tile's ring) and one gather of every tile per block were measured and lost.

A block whose tiles cover most of the map (the first blocks at small d: block 0 runs wherever d > 0)
runs XLA's dense convolutions on the whole map instead (`dense_block_fraction`, a run-time choice):
per pixel a tile loop costs about twice the dense conv, so covering half the map's tiles already costs
as much. Tile counts fall with the block index, so these blocks are a prefix of the stack; they run
first, on the plain map, and the tile loops' bordered buffers are built after them.

Tiles are sorted once per stack by their executed level (the max over the tile of ceil(clip(d, 0, D)),
or of its 3x3 dilation for the hidden loop), highest first, so block l's tiles are a prefix of length
count_l (masks are nested, as plan.py's "nested" mode). Each loop walks its prefix in chunks of K tiles
in a `fori_loop` whose trip count ceil(count_l / K) is a run-time value: work follows the depth and
nothing recompiles when it changes. The last chunk's padding entries repeat the prefix's last tile
(identical writes).

Measured (CPU, 2 shared cores, float32; benchmarks/sparse_stack.py, benchmarks/RESULTS.md):
- XLA's conv on a chunk of tiles costs ~1.2x the dense conv per output pixel (T = 8, K = 4-16; worse
  for K >= 64 at T = 16, and for one conv over all tiles at once: 2-5x), far better than im2col +
  matmul on the tiles (~3x) or nine accumulated matmuls (~2.6-3.4x). Each chunk's gather and scatter
  add ~65 us each at K = 16, T = 8, C = 32; with them a tile loop over the whole map took ~2x one dense
  conv, hence the dense block above half the map's tiles.
- On the demo photo's gradient-shaped depth maps, tiles cover more than the active pixels
  (T = 4/8/16 at 30% executed: 40/49/65% of the map), so small tiles win; the two loops beat the fused
  variant (its halo recompute costs more than the second loop's extra gathers).
- C = 32 (D = 8, 150 x 225), T = 4, K = 64: with the dense block switch 0.30 / 0.62 / 0.94 / 0.84 /
  1.11x the dense stack at 10 / 20 / 30 / 40 / 50% executed, against 0.39 / 0.85 / 1.35 / 1.27 / 1.58x
  for the tile loops alone (and 0.67 / - / 1.52 / - / 2.09x for the pixel-list stack in an earlier run).
  C = 64 (D = 16), K = 16: 0.29 / 0.60 / 0.67 / 0.87 / 0.95x. C = 256 (D = 32, 64 x 64): the pixel
  path wins at 10-30% executed (its im2col matmul is near the dense rate there) and both lose to dense
  at 50%.
- A 2-core Xeon (AVX-512; 2026-12-08), C = 32, 150 x 225: 0.50 / 0.68 / 0.84x the dense stack at 20 / 30
  / 40% executed with the dense blocks first and K = 32 (0.57 / 0.75 / 0.92x before, K = 64). There a
  whole chunk costs ~2.5x the dense conv per pixel, and on a trained adapter's speckled maps a deep
  block's tiles cover 2-3x its active pixels.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.contract import conv3x3_f32, run_if
from adadsr_jax.masks import executed_levels

# Measured fastest at C = 32 (benchmarks/sparse_stack.py; module docstring): small tiles waste least of
# a photo's scattered active set. 32 of them per chunk: on a 2-core Xeon (AVX-512) XLA's conv on a chunk
# of 4 x 4 tiles ran at ~135 ns per output pixel up to 512 pixels and ~200 from 1024 (64 tiles); on a
# 2-core EPYC 32 to 256 measured alike.
DEFAULT_TILE = 4
DEFAULT_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """T x T tiles over a batch of N images of h x w pixels (h, w padded up to multiples of T)."""

    n: int
    h: int
    w: int
    tile: int

    @property
    def tiles_y(self) -> int:
        return -(-self.h // self.tile)

    @property
    def tiles_x(self) -> int:
        return -(-self.w // self.tile)

    @property
    def hp(self) -> int:
        """Padded height: a multiple of T."""
        return self.tiles_y * self.tile

    @property
    def wp(self) -> int:
        """Padded width: a multiple of T."""
        return self.tiles_x * self.tile

    @property
    def count(self) -> int:
        """Tiles in the batch."""
        return self.n * self.tiles_y * self.tiles_x

    def pad(self, a: jax.Array, border: int = 0) -> jax.Array:
        """[N, h, w, ...] -> [N, hp + 2 * border, wp + 2 * border, ...], zeros outside the image."""
        pads = [(0, 0), (border, self.hp - self.h + border), (border, self.wp - self.w + border)]
        return jnp.pad(a, pads + [(0, 0)] * (a.ndim - 3))

    def per_tile(self, a: jax.Array) -> jax.Array:
        """[N, hp, wp, ...] -> [count, T, T, ...] in tile order."""
        t = self.tile
        a = a.reshape(self.n, self.tiles_y, t, self.tiles_x, t, *a.shape[3:])
        a = jnp.swapaxes(a, 2, 3)
        return a.reshape(self.count, t, t, *a.shape[5:])

    def corners(self, ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(image, top row, left column) int32 [K] of tiles `ids` [K] in padded image coordinates."""
        per_image = self.tiles_y * self.tiles_x
        image, r = jnp.divmod(ids, per_image)
        ty, tx = jnp.divmod(r, self.tiles_x)
        return image, ty * self.tile, tx * self.tile

    def inside(self, y0: jax.Array, x0: jax.Array, size: int, offset: int) -> jax.Array:
        """bool [K, size, size, 1]: which pixels of the size x size windows starting `offset` pixels above
        and left of the tile corners (y0, x0) [K] lie inside the (unpadded) image."""
        r = y0[:, None] - offset + jnp.arange(size)
        c = x0[:, None] - offset + jnp.arange(size)
        rows = (r >= 0) & (r < self.h)
        cols = (c >= 0) & (c < self.w)
        return (rows[:, :, None] & cols[:, None, :])[..., None]


def tile_levels(levels: jax.Array, grid: TileGrid) -> jax.Array:
    """Executed level of each tile, the max of `levels` [N, h, w] over it: int32 [grid.count]."""
    return grid.per_tile(grid.pad(levels)).max(axis=(1, 2)).astype(jnp.int32)


def nested_tiles(levels: jax.Array, num_blocks: int) -> tuple[jax.Array, jax.Array]:
    """(order, counts): tiles sorted by level, highest first (tile order within a level), int32 [count];
    count_l = #{tiles with level > l}, int32 [num_blocks]. Block l's tiles are order[:count_l]."""
    order = jnp.argsort(-levels, stable=True).astype(jnp.int32)
    thresholds = jnp.arange(num_blocks, dtype=levels.dtype)
    counts = (levels[None, :] > thresholds[:, None]).sum(axis=1, dtype=jnp.int32)
    return order, counts


def gather_windows(buf: jax.Array, image: jax.Array, y0: jax.Array, x0: jax.Array, size: int) -> jax.Array:
    """Windows buf[image, y0:y0+size, x0:x0+size, :] of buf [N, H, W, C] -> [K, size, size, C]."""
    c = buf.shape[-1]
    starts = jnp.stack([image, y0, x0], axis=1)
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=(1, 2, 3), collapsed_slice_dims=(0,), start_index_map=(0, 1, 2)
    )
    return jax.lax.gather(
        buf,
        starts,
        dims,
        slice_sizes=(1, size, size, c),
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def scatter_windows(
    buf: jax.Array, windows: jax.Array, image: jax.Array, y0: jax.Array, x0: jax.Array
) -> jax.Array:
    """buf [N, H, W, C] with windows [K, S, S, C] written at (image, y0, x0) [K] (top-left corners)."""
    starts = jnp.stack([image, y0, x0], axis=1)
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2, 3), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1, 2)
    )
    # Repeated padding tiles write identical values, so the order of duplicate writes does not matter.
    return jax.lax.scatter(
        buf, starts, windows.astype(buf.dtype), dims, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS
    )


def chunk_positions(count: jax.Array, start: jax.Array, chunk: int) -> jax.Array:
    """Prefix positions start..start+chunk-1, int32 [chunk]; positions past count (> 0) repeat count - 1
    (the padding entries of the last chunk redo its last tile: identical writes)."""
    return jnp.minimum(start + jnp.arange(chunk, dtype=jnp.int32), count - 1)


def for_chunks(order: jax.Array, count: jax.Array, chunk: int, body, init):
    """Run body(ids [chunk], carry) -> carry over the chunks of order[:count], with a run-time trip count
    ceil(count / chunk)."""

    def step(i, carry):
        return body(order[chunk_positions(count, i * chunk, chunk)], carry)

    return jax.lax.fori_loop(0, (count + chunk - 1) // chunk, step, init)


def _residual(x_tile: jax.Array, depth: jax.Array, index: jax.Array, res: jax.Array, res_scale: float):
    """x + res_scale * clip(d - l, 0, 1) * res in float32, cast back to x's dtype."""
    m = jnp.clip(depth - index.astype(jnp.float32), 0.0, 1.0)
    return (x_tile.astype(jnp.float32) + res_scale * m * res).astype(x_tile.dtype)


def dense_prefix(
    x: jax.Array,
    depth: jax.Array,
    params: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    dense: jax.Array,
    res_scale: float,
) -> jax.Array:
    """The blocks flagged in `dense` (bool [D], a prefix) run with XLA's dense SAME convolutions on the
    whole map x [N, h, w, C]; the others are left to the tile loops. depth: [N, h, w, 1] float32."""

    def block(x, p):
        k0, b0, k1, b1, index, run = p

        def dense_block(x):
            res = conv3x3_f32(jax.nn.relu(conv3x3_f32(x, k0, b0, "SAME")), k1, b1, "SAME")
            return _residual(x, depth, index, res, res_scale)

        return run_if(run, dense_block, x), None

    indices = jnp.arange(dense.shape[0], dtype=jnp.int32)
    return jax.lax.scan(block, x, (*params, indices, dense))[0]


def tiled_edsr_stack(
    x: jax.Array,
    depth_map: jax.Array,
    params: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    *,
    res_scale: float,
    tile: int = DEFAULT_TILE,
    chunk: int = DEFAULT_CHUNK,
    dense_block_fraction: float | None = None,
) -> jax.Array:
    """EDSR blocks `x <- x + res_scale * m_l * conv(relu(conv(x)))`, m_l = clip(d - l, 0, 1), computed on
    the T x T tiles each block needs (module docstring), with XLA's dense convolution per chunk of tiles.

    x: [N, h, w, C]; depth_map: [N, h, w, 1]; params: kernels [D, 3, 3, C, C], biases [D, C] of the first
    and second convs. tile: T; chunk: K tiles per convolution call. dense_block_fraction: a block whose
    two loops would walk more than this fraction of the tiles (count_dil + count_act > f * 2 * tiles)
    runs XLA's dense SAME convolutions on the whole map instead, decided at run time (None: never).
    Returns [N, h, w, C], equal to the dense masked stack up to float rounding (float32 or bfloat16 maps;
    convolutions accumulate in float32).
    """
    k0, b0, k1, b1 = params
    num_blocks = k0.shape[0]
    n, h, w, _ = x.shape
    grid = TileGrid(n, h, w, tile)
    levels, dilated = executed_levels(depth_map, num_blocks)
    order_act, counts_act = nested_tiles(tile_levels(levels[..., 0], grid), num_blocks)
    depth = depth_map.astype(jnp.float32)
    depth_tiles = grid.per_tile(grid.pad(depth))  # [count, T, T, 1]
    indices = jnp.arange(num_blocks, dtype=jnp.int32)
    order_dil, counts_dil = nested_tiles(tile_levels(dilated[..., 0], grid), num_blocks)
    if dense_block_fraction is not None:
        # Counts fall with l (nested masks), so the dense blocks are a prefix of the stack: they run first,
        # on the unpadded map, before the tile loops' bordered buffers exist (inside them each dense block
        # also cost a crop and a write-back of the whole map; benchmarks/RESULTS.md, 2026-12-08).
        dense = counts_dil + counts_act > dense_block_fraction * 2 * grid.count
        x = dense_prefix(x, depth, params, dense, res_scale)
        counts_dil, counts_act = (jnp.where(dense, 0, c) for c in (counts_dil, counts_act))
    # x and the hidden map carry a 1-pixel zero border (one 3x3 conv's halo). Hidden values outside the
    # image are always written as 0, and its other stale values are never read at an active pixel.
    xb = grid.pad(x, border=1)
    hb = jnp.zeros_like(xb)

    def split_block(carry, p):
        k0, b0, k1, b1, index = p

        def first(ids, buffers):
            xb, hb = buffers
            image, y0, x0 = grid.corners(ids)
            hidden = jax.nn.relu(conv3x3_f32(gather_windows(xb, image, y0, x0, tile + 2), k0, b0, "VALID"))
            hidden = jnp.where(grid.inside(y0, x0, tile, 0), hidden, 0.0)
            return xb, scatter_windows(hb, hidden, image, y0 + 1, x0 + 1)

        def second(ids, buffers):
            xb, hb = buffers
            image, y0, x0 = grid.corners(ids)
            res = conv3x3_f32(gather_windows(hb, image, y0, x0, tile + 2), k1, b1, "VALID")
            x_tile = gather_windows(xb, image, y0 + 1, x0 + 1, tile)
            new = _residual(x_tile, depth_tiles[ids], index, res, res_scale)
            return scatter_windows(xb, new, image, y0 + 1, x0 + 1), hb

        carry = for_chunks(order_dil, counts_dil[index], chunk, first, carry)
        return for_chunks(order_act, counts_act[index], chunk, second, carry), None

    (xb, _), _ = jax.lax.scan(split_block, (xb, hb), (k0, b0, k1, b1, indices))
    return xb[:, 1 : 1 + h, 1 : 1 + w]
