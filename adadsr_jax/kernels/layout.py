"""The padded flat layout the sparse convolution works on, and active-pixel lists.

A feature map x [N, H, W, C] is stored as a *padded flat* array [N * (H + 2) * (W + 2) + 1, C]: every
image gets a one-pixel zero border, the rows are the pixels in raster order, image-major, and one last
"trash" row receives the stores of list padding entries (the Pallas kernel writes there; the JAX path
drops them). The 3x3 taps of
an interior pixel at flat row r are then rows r + dy * (W + 2) + dx for dy, dx in {-1, 0, 1}, always in
bounds and reading zeros at image borders, so a gather needs no bounds logic. Sparse convs only ever
write interior rows, so the borders stay zero from block to block.

Active lists are int32 arrays of padded flat rows with a static length (the capacity) plus a count:
entries at positions >= count are padding and must be ignored. Static lengths mean one compiled program
serves every depth map.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PaddedLayout:
    """Geometry of the padded flat layout for a batch of N images of H x W pixels."""

    n: int
    h: int
    w: int

    @property
    def row_stride(self) -> int:
        """Flat rows between vertically adjacent pixels."""
        return self.w + 2

    @property
    def image_rows(self) -> int:
        return (self.h + 2) * (self.w + 2)

    @property
    def rows(self) -> int:
        """P: rows of the padded flat array, the trash row included."""
        return self.n * self.image_rows + 1

    @property
    def trash_row(self) -> int:
        """The last row: a store target for padding entries, never read back as a pixel."""
        return self.n * self.image_rows

    @property
    def pixels(self) -> int:
        """N * H * W: interior pixels, the most an active list can hold."""
        return self.n * self.h * self.w

    @property
    def safe_row(self) -> int:
        """An interior row whose 3x3 taps are all in bounds: where padded list entries gather from."""
        return self.row_stride + 1

    def tap_offsets(self) -> np.ndarray:
        """Row offsets of the 9 taps in HWIO kernel order (dy major, dx minor): int32 [9]."""
        s = self.row_stride
        return np.array([dy * s + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.int32)

    def interior_rows(self) -> jax.Array:
        """Padded flat row of every interior pixel in raster order: int32 [N * H * W]."""
        n, i, j = jnp.meshgrid(
            jnp.arange(self.n, dtype=jnp.int32),
            jnp.arange(self.h, dtype=jnp.int32),
            jnp.arange(self.w, dtype=jnp.int32),
            indexing="ij",
        )
        return (n * self.image_rows + (i + 1) * self.row_stride + (j + 1)).reshape(-1)


def layout_of(x: jax.Array) -> PaddedLayout:
    """Layout for an NHWC map x [N, H, W, C]."""
    n, h, w, _ = x.shape
    return PaddedLayout(n, h, w)


def to_padded_flat(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> padded flat [N * (H + 2) * (W + 2) + 1, C] with zero borders and trash row."""
    c = x.shape[-1]
    return jnp.pad(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c), ((0, 1), (0, 0)))


def from_padded_flat(xf: jax.Array, layout: PaddedLayout) -> jax.Array:
    """Padded flat [P, C] -> [N, H, W, C] (the interior)."""
    c = xf.shape[-1]
    x = xf[: layout.trash_row].reshape(layout.n, layout.h + 2, layout.w + 2, c)
    return x[:, 1:-1, 1:-1, :]


def dilate3x3(mask: jax.Array) -> jax.Array:
    """3x3 binary dilation of mask [N, H, W] (bool): pixels with an active pixel in their 3x3 window.

    Exactly the outputs whose SAME 3x3 conv reads an active input, hence where a block's first conv
    must run (docs/method.md, "Sparse inference").
    """
    m = mask.astype(jnp.float32)
    pooled = jax.lax.reduce_window(m, 0.0, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    return pooled > 0


def active_list(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Static-shape active list of mask [N, H, W] (bool), in raster order.

    Returns (rows int32 [N * H * W] padded flat rows, padding entries = the safe row; count int32 []).
    """
    layout = PaddedLayout(*mask.shape)
    flat = mask.reshape(-1)
    (pos,) = jnp.nonzero(flat, size=flat.shape[0], fill_value=0)
    rows = layout.interior_rows()[pos]
    count = flat.sum(dtype=jnp.int32)
    valid = jnp.arange(flat.shape[0]) < count
    return jnp.where(valid, rows, layout.safe_row).astype(jnp.int32), count


def nested_order(levels: jax.Array) -> jax.Array:
    """Pixels sorted by integer level, highest first (raster order within a level).

    levels: [N, H, W] int32 (e.g. ceil of the depth map). Because block l (0-based) is active exactly
    where level > l, the first count_l = sum(level > l) entries are block l's active list: one sort
    serves every block of the stack. Returns padded flat rows int32 [N * H * W].
    """
    layout = PaddedLayout(*levels.shape)
    order = jnp.argsort(-levels.reshape(-1), stable=True)
    return layout.interior_rows()[order].astype(jnp.int32)


def prefix_counts(levels: jax.Array, num_levels: int) -> jax.Array:
    """count_l = #{pixels with level > l} for l = 0..num_levels-1 over the whole batch: int32 [L]."""
    thresholds = jnp.arange(num_levels, dtype=levels.dtype)
    return (levels.reshape(1, -1) > thresholds[:, None]).sum(axis=1, dtype=jnp.int32)
