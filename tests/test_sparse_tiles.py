"""Tiled sparse EDSR stack (`kernels/sparse_tiles.py`) against a float64 numpy dense masked stack.

The reference is written here from the formula x <- x + res_scale * clip(d - l, 0, 1) * conv(relu(conv(x)))
(3x3 SAME, zero padding), independent of the model and kernel code.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from adadsr_jax.data import demo_source
from adadsr_jax.kernels.sparse_tiles import tiled_edsr_stack
from adadsr_jax.models.sparse_stacks import sparse_edsr_stack

C = 8
D = 4
RES_SCALE = 0.7
# Relative error bound of the brief (float32 against float64).
RTOL = 1e-4


def conv3x3_np(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SAME 3x3 conv, zero padding, float64: x [N, h, w, Ci], k [3, 3, Ci, Co], b [Co] -> [N, h, w, Co]."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, k.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwi,io->nhwo", xp[:, dy : dy + h, dx : dx + w], k[dy, dx])
    return out + b


def dense_masked_stack_np(x, depth, params, res_scale: float) -> np.ndarray:
    """The dense masked EDSR stack in float64: every block runs everywhere, masked by clip(d - l, 0, 1)."""
    k0, b0, k1, b1 = (np.asarray(p, np.float64) for p in params)
    x = np.asarray(x, np.float64)
    depth = np.asarray(depth, np.float64)
    for i in range(k0.shape[0]):
        m = np.clip(depth - i, 0.0, 1.0)
        x = x + res_scale * m * conv3x3_np(np.maximum(conv3x3_np(x, k0[i], b0[i]), 0.0), k1[i], b1[i])
    return x


def make_params(c: int = C, blocks: int = D, seed: int = 0) -> tuple[jax.Array, ...]:
    """Weights large enough that every block changes the map visibly (a real residual to get right)."""
    rng = np.random.RandomState(seed)
    std = 1.5 / np.sqrt(9 * c)
    return (
        jnp.asarray(rng.randn(blocks, 3, 3, c, c) * std, jnp.float32),
        jnp.asarray(rng.randn(blocks, c) * 0.2, jnp.float32),
        jnp.asarray(rng.randn(blocks, 3, 3, c, c) * std, jnp.float32),
        jnp.asarray(rng.randn(blocks, c) * 0.2, jnp.float32),
    )


PARAMS = make_params()


def features(n: int, h: int, w: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.RandomState(seed).randn(n, h, w, C), jnp.float32)


def photo_depth(blocks: int = D) -> np.ndarray:
    """A depth map like a trained adapter's: smoothed gradient magnitude of the demo photo's LR
    luminance, scaled to [0, blocks + 0.5] (fractional values, deep on edges, 0 on flat regions).
    Returns [1, 150, 225, 1] float32."""
    lr = demo_source(scale=2, split="valid")[0].lr.astype(np.float64) / 255.0
    gray = lr @ np.array([0.299, 0.587, 0.114])
    grad = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    grad = ndimage.gaussian_filter(grad, 1.5)
    lo, hi = np.quantile(grad, [0.4, 0.97])
    depth = (blocks + 0.5) * (grad - lo) / (hi - lo)
    return np.clip(depth, 0.0, blocks + 0.5)[None, ..., None].astype(np.float32)


def assert_close(out: jax.Array, ref: np.ndarray, x: jax.Array) -> None:
    """Relative error of the stack's change (out - x), which is where a bug shows; exact identity
    where the reference does not change."""
    out = np.asarray(out, np.float64)
    x = np.asarray(x, np.float64)
    assert out.shape == ref.shape
    delta_ref = ref - x
    scale = max(np.abs(delta_ref).max(), 1e-30)
    err = np.abs((out - x) - delta_ref).max() / scale
    assert err <= RTOL, f"relative error {err:.2e}"
    untouched = delta_ref == 0.0
    np.testing.assert_array_equal(out[untouched], x[untouched])


# (tile, chunk, dense_block_fraction): every tile size, chunks smaller and larger than a block's tile
# count; tile loops only, the "auto" plan's block switch (0.5), and 0.0 (every block that runs at all
# runs dense).
MODES = [(4, 4, None), (4, 32, None), (16, 4, None), (8, 4, None), (16, 64, None), (8, 16, None)]
MODES += [(4, 32, 0.5), (4, 16, 0.0)]


@pytest.fixture(scope="module")
def stacks():
    """One jitted stack per mode, reused across inputs of one shape (fewer compiles)."""
    return {
        key: jax.jit(
            lambda x, d, key=key: tiled_edsr_stack(
                x, d, PARAMS, res_scale=RES_SCALE, tile=key[0], chunk=key[1], dense_block_fraction=key[2]
            )
        )
        for key in MODES
    }


PHOTO_MODES = [MODES[0], MODES[1], MODES[5], MODES[6]]
DEFAULT_KEY = (4, 32, None)  # tiled_edsr_stack's defaults


@pytest.fixture(scope="module")
def photo_case():
    """(x [1, 150, 225, C], depth [1, 150, 225, 1], float64 reference) on the demo photo's map."""
    depth = photo_depth()
    x = features(1, 150, 225)
    return x, depth, dense_masked_stack_np(x, depth, PARAMS, RES_SCALE)


@pytest.mark.parametrize("key", PHOTO_MODES)
def test_photo_depth_map(stacks, photo_case, key):
    x, depth, ref = photo_case
    active = (np.ceil(np.clip(depth, 0, D)) > 0).mean()
    assert 0.1 < active < 0.9  # a real mix of active and inactive pixels
    assert_close(stacks[key](x, jnp.asarray(depth)), ref, x)


def tile_cover_np(depth: np.ndarray, tile: int) -> np.ndarray:
    """Per block l, the fraction of T x T tiles holding a pixel of its active set (ceil(clip(d)) > l) and
    of its 3x3-dilated set, summed over both (0..2), from depth [1, h, w, 1] in numpy."""
    levels = np.ceil(np.clip(depth[0, ..., 0], 0, D))
    dilated = ndimage.maximum_filter(levels, size=3, mode="constant", cval=0)
    h, w = levels.shape
    pad = ((0, -h % tile), (0, -w % tile))
    cover = []
    for lv in (levels, dilated):
        t = np.pad(lv, pad).reshape(-(-h // tile), tile, -(-w // tile), tile).max(axis=(1, 3))
        cover.append([(t > level).mean() for level in range(D)])
    return np.sum(cover, axis=0)


def test_photo_map_mixes_dense_and_tiled_blocks(photo_case):
    # The block switch at 0.5 (MODES[6]) meets both kinds of block in one stack on the photo's map.
    cover = tile_cover_np(photo_case[1], tile=4)
    assert (cover > 2 * 0.5).any() and (cover[cover > 0] <= 2 * 0.5).any(), cover


def test_equals_pixel_list_stack(stacks, photo_case):
    defaults = inspect.signature(tiled_edsr_stack).parameters
    assert tuple(defaults[k].default for k in ("tile", "chunk", "dense_block_fraction")) == DEFAULT_KEY
    assert DEFAULT_KEY in MODES
    x, depth, _ = photo_case
    pixel = jax.jit(lambda x, d: sparse_edsr_stack(x, d, PARAMS, res_scale=RES_SCALE, backend="jax"))
    a, b = np.asarray(pixel(x, jnp.asarray(depth))), np.asarray(stacks[DEFAULT_KEY](x, jnp.asarray(depth)))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a - np.asarray(x)).max()


def edge_depths(h: int, w: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Depth maps [h, w] for the edge cases."""
    none = np.zeros((h, w))
    full = np.full((h, w), D + 1.0)
    one = none.copy()
    one[h // 2, w // 3] = 2.5
    border = none.copy()
    border[0, :] = 1.0
    border[-1, :] = 3.0
    border[:, 0] = 2.0
    border[:, -1] = D
    border[0, 0] = border[0, -1] = border[-1, 0] = border[-1, -1] = D + 0.5
    soft = np.random.RandomState(seed).uniform(-0.5, D + 0.5, (h, w))
    soft[: h // 2] = np.round(soft[: h // 2] * 4) / 4  # exact quarter levels: mask 0 and 1 at l boundaries
    return {"none": none, "full": full, "one": one, "border": border, "soft": soft}


def edge_batch(case: str) -> np.ndarray:
    """[2, 13, 19, 1]: the case's map, and a different second image (a mirrored or shifted map, another
    random draw for "soft", a shallower "full", nothing active for "none"). 13 x 19 is no multiple of 4,
    8 or 16: every tile size pads."""
    first = edge_depths(13, 19)[case]
    second = edge_depths(13, 19, seed=7)[case][::-1, ::-1]
    if case == "one":
        second = np.roll(second, (3, 5), axis=(0, 1))
    if case == "full":
        second = second - 1.5  # every pixel active, the last block at half strength
    return np.stack([first, second])[..., None].astype(np.float32)


@pytest.mark.parametrize("case", ["none", "full", "one", "border", "soft"])
def test_edge_cases_batch_of_two(stacks, case):
    depth = edge_batch(case)
    assert case == "none" or not np.array_equal(depth[0], depth[1])
    x = features(2, 13, 19, seed=2)
    ref = dense_masked_stack_np(x, depth, PARAMS, RES_SCALE)
    for f in stacks.values():
        out = f(x, jnp.asarray(depth))
        if case == "none":
            np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
        else:
            assert_close(out, ref, x)


def test_images_independent(stacks):
    # Image 0 alone gives the same result: tiles of one image never read the other's pixels.
    depth = edge_batch("border")
    x = features(2, 13, 19, seed=2)
    f = stacks[DEFAULT_KEY]
    out, alone = f(x, jnp.asarray(depth)), f(x[:1], jnp.asarray(depth[:1]))
    np.testing.assert_allclose(np.asarray(out[:1]), np.asarray(alone), rtol=0, atol=1e-5)


def test_no_recompile_when_depth_changes(stacks):
    f = stacks[DEFAULT_KEY]
    x = features(2, 13, 19, seed=2)
    f(x, jnp.asarray(edge_batch("one")))
    size = f._cache_size()
    f(x, jnp.asarray(edge_batch("full")))
    f(x, jnp.asarray(edge_batch("soft")))
    assert f._cache_size() == size


def test_bfloat16_maps():
    # bfloat16 features (convs accumulate in float32): within bfloat16's precision of the float64 stack.
    depth = edge_batch("soft")
    x = features(2, 13, 19, seed=6)
    ref = dense_masked_stack_np(x, depth, PARAMS, RES_SCALE)
    out = tiled_edsr_stack(x.astype(jnp.bfloat16), jnp.asarray(depth), PARAMS, res_scale=RES_SCALE)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32), np.float64)
    delta = ref - np.asarray(x, np.float64)
    assert np.abs(out - ref).max() <= 0.03 * np.abs(ref).max()
    assert np.abs((out - np.asarray(x, np.float64)) - delta).max() <= 0.05 * np.abs(delta).max()
