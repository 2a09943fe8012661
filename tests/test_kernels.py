"""Sparse 3x3 conv kernels: JAX path vs a float64 numpy dense-conv-times-mask oracle, Pallas (interpret)
vs the JAX path, the dispatcher's branches, and lowering of the Triton kernel for CUDA on this CPU host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_oracle import conv3x3_same_f64, reference
from scipy import ndimage

from adadsr_jax.kernels import (
    SparseConv,
    active_list,
    dense_threshold_for,
    dilate3x3,
    from_padded_flat,
    layout_of,
    nested_order,
    prefix_counts,
    sparse_conv3x3,
    sparse_conv3x3_jax,
    sparse_conv3x3_pallas,
    stack_threshold_for,
    threshold_for,
    to_padded_flat,
    uses_pallas,
)
from adadsr_jax.kernels.plan import use_dense_stack
from adadsr_jax.kernels.sparse_conv_pallas import PallasTiles, dot_precision
from adadsr_jax.models.sparse_stacks import sparse_edsr_stack, sparse_rcan_group


def coherent_mask(shape, frac, seed):
    """Thresholded smooth noise (like a real depth map) with about `frac` of the pixels set."""
    n, h, w = shape
    z = ndimage.gaussian_filter(np.random.RandomState(seed).randn(n, h, w), sigma=(0, 2, 2))
    return z > np.quantile(z, 1 - frac)


def make_masks(shape):
    n, h, w = shape
    rng = np.random.RandomState(0)
    single = np.zeros(shape, bool)
    single[n - 1, h // 2, w // 2] = True
    border = np.zeros(shape, bool)
    border[:, 0, :] = border[:, -1, :] = True
    border[0, :, 0] = border[-1, :, -1] = True
    corners = np.zeros(shape, bool)
    corners[0, 0, 0] = corners[-1, -1, -1] = True
    return {
        "random": rng.rand(*shape) < 0.4,
        "coherent": coherent_mask(shape, 0.3, 1),
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
        "single": single,
        "border": border,
        "corners": corners,
    }


SHAPE = (2, 7, 9)  # odd sizes, batch of two
CIN, COUT = 16, 32
rng = np.random.RandomState(42)
X = rng.randn(*SHAPE, CIN).astype(np.float32)
DST = rng.randn(*SHAPE, COUT).astype(np.float32)
K = (rng.randn(3, 3, CIN, COUT) / np.sqrt(9 * CIN)).astype(np.float32)
B = rng.randn(COUT).astype(np.float32)
SOFT = rng.rand(*SHAPE).astype(np.float32)
MASKS = make_masks(SHAPE)
LAYOUT = layout_of(jnp.zeros((*SHAPE, 1)))


def flat_inputs(mask, dtype=jnp.float32):
    rows, count = active_list(jnp.asarray(mask))
    src = to_padded_flat(jnp.asarray(X, dtype))
    dst = to_padded_flat(jnp.asarray(DST, dtype))
    coef = to_padded_flat(jnp.asarray(SOFT)[..., None])[:, 0]
    return src, dst, rows, count, coef


def operands(src, dst, rows, count, coef, epilogue):
    """The SparseConv of the module's test conv (kernel K, bias B, LAYOUT)."""
    return SparseConv(
        src=src,
        dst=dst,
        rows=rows,
        count=count,
        kernel=K,
        bias=B,
        layout=LAYOUT,
        epilogue=epilogue,
        coef=coef,
    )


@pytest.fixture(scope="module")
def jax_path():
    """The JAX path, jitted once per (epilogue, tile, tail): tile 8 splits lists into many whole tiles;
    tile 64 with tails of 32 (at 256 features the default tail is 32; at this test's 16 -> 32 channels
    the last tile is whole) runs the "full" list (126 entries) as a whole tile, then tails of 32 and
    30, and the lists of fewer than 64 entries in tails alone; tails of 8 walk the rest of a list in
    halving tiles of 32, 16 and 8 rows (the "full" list: 64, then 32, then 16 twice)."""

    def f(src, dst, rows, count, coef, *, epilogue, tile, tail=None):
        return sparse_conv3x3_jax(operands(src, dst, rows, count, coef, epilogue), tile=tile, tail=tail)

    return jax.jit(f, static_argnames=("epilogue", "tile", "tail"))


@pytest.mark.parametrize("epilogue", ["relu", "residual", "masked"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("tile, tail", [(8, None), (64, 32), (64, 8)])
def test_jax_path_matches_dense_conv_times_mask(jax_path, epilogue, mask_name, tile, tail):
    mask = MASKS[mask_name]
    src, dst, rows, count, coef = flat_inputs(mask)
    assert int(count) == mask.sum()
    out = jax_path(src, dst, rows, count, coef, epilogue=epilogue, tile=tile, tail=tail)
    out = from_padded_flat(out, LAYOUT)
    ref = reference(X, DST, mask, K, B, epilogue, SOFT)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("channels", [(16, 32), (64, 64), (128, 128), (256, 256)])
def test_tile_sizes_and_computed_rows_follow_the_loops(channels):
    """computed_rows (what the cost model counts) equals the rows the loops of sparse_conv3x3_jax
    compute, walked here trip by trip: whole tiles, then halving tiles, each as long as it fits in the
    rest rounded up to whole tails. At 256 features tiles of 512 and tails of 32 rows (the rest in at
    most four matmuls), at <= 128 tiles of 512 and the last one whole."""
    from adadsr_jax.kernels.sparse_conv_jax import computed_rows, tile_sizes

    cin, cout = channels
    tile, tail = tile_sizes(None, 10_000, cin, cout)
    assert (tile, tail) == ((512, 32) if cin == 256 else (512, 512))
    for count in [0, 1, 31, 32, 33, 97, 255, 480, 481, 511, 512, 513, 1000, 1024, 1500, 9999]:
        rows, calls = count // tile * tile, 0
        need = -(-(count - rows) // tail) * tail
        size = tile
        while need:
            size = max(size // 2, tail)
            while need >= size:
                rows, need, calls = rows + size, need - size, calls + 1
        assert rows >= count and calls <= (4 if tail == 32 else 1), count
        assert computed_rows(np.array([count]), tile, tail)[0] == rows, count


@pytest.mark.parametrize("mask_name", ["full", "coherent", "border", "single"])
def test_jax_path_wide_maps_match_dense_conv_times_mask(mask_name):
    """Above 128 input channels the JAX path gathers 3-row slices and runs tails of 32 rows by default;
    against the float64 oracle at 144 -> 136 channels, tiles of 64 (the "full" list: a tile, then tails)."""
    rng = np.random.RandomState(7)
    cin, cout = 144, 136
    x = rng.randn(*SHAPE, cin).astype(np.float32)
    dst = rng.randn(*SHAPE, cout).astype(np.float32)
    k = (rng.randn(3, 3, cin, cout) / np.sqrt(9 * cin)).astype(np.float32)
    b = rng.randn(cout).astype(np.float32)
    mask = MASKS[mask_name]
    rows, count = active_list(jnp.asarray(mask))
    conv = SparseConv(
        src=to_padded_flat(jnp.asarray(x)),
        dst=to_padded_flat(jnp.asarray(dst)),
        rows=rows,
        count=count,
        kernel=jnp.asarray(k),
        bias=jnp.asarray(b),
        layout=LAYOUT,
        epilogue="residual",
        coef=to_padded_flat(jnp.asarray(SOFT)[..., None])[:, 0],
    )
    out = from_padded_flat(jax.jit(lambda c: sparse_conv3x3_jax(c, tile=64))(conv), LAYOUT)
    ref = reference(x, dst, mask, k, b, "residual", SOFT)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=3e-5)


def test_jax_path_keeps_borders_and_trash_clean(jax_path):
    """Only interior rows in the list are written: padding borders stay zero."""
    src, dst, rows, count, coef = flat_inputs(MASKS["full"])
    out = np.asarray(jax_path(src, dst, rows, count, coef, epilogue="residual", tile=8))
    interior = np.zeros(LAYOUT.rows, bool)
    interior[np.asarray(LAYOUT.interior_rows())] = True
    assert np.all(out[~interior] == 0)


@pytest.mark.parametrize("backend", ["dense", "jax", "auto"])
@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_dispatcher_branches_agree(backend, threshold):
    mask = MASKS["coherent"]
    src, dst, rows, count, coef = flat_inputs(mask)
    out = sparse_conv3x3(
        operands(src, dst, rows, count, coef, "residual"), backend=backend, dense_threshold=threshold
    )
    ref = reference(X, DST, mask, K, B, "residual", SOFT)
    np.testing.assert_allclose(np.asarray(from_padded_flat(out, LAYOUT)), ref, rtol=1e-5, atol=2e-5)


def test_thresholds_follow_the_measured_backends():
    """The crossovers measured on CPU and on the H200 (benchmarks/RESULTS.md): on a GPU a conv the Triton
    kernel runs (C=64) switches to dense above 15% active, one it cannot (C=48, the JAX path, which lost
    at every fraction on the GPU) always; the CPU table is untouched. The whole-stack switch on a GPU runs
    the dense stack whenever anything executes, the CPU stack switch uses the per-conv crossover."""
    assert not uses_pallas(48, 48, "gpu") and uses_pallas(64, 64, "gpu") and not uses_pallas(64, 64, "cpu")
    assert threshold_for(48, 48, "gpu") == 0.0
    assert threshold_for(64, 64, "gpu") == dense_threshold_for("gpu", 64) == 0.15
    assert threshold_for(64, 64, "cpu") == 0.5 and threshold_for(48, 48, "cpu") == 0.5
    assert stack_threshold_for(64, "gpu") == stack_threshold_for(48, "gpu") == 0.0
    assert stack_threshold_for(64, "cpu") == threshold_for(64, 64, "cpu")
    # A constant depth 11 of 20 blocks executes 55% of the stack: above the CPU crossover at C=48 (0.5),
    # below it at C=256 (0.85); any executed block means dense on a GPU, none means the (empty) sparse stack.
    depth = jnp.full((1, 4, 4, 1), 11.0)
    assert bool(use_dense_stack(depth, 20, 48, platform="cpu"))
    assert not bool(use_dense_stack(depth, 20, 256, platform="cpu"))
    assert bool(use_dense_stack(jnp.full((1, 4, 4, 1), 0.5), 20, 256, platform="gpu"))
    assert not bool(use_dense_stack(jnp.zeros((1, 4, 4, 1)), 20, 256, platform="gpu"))


def test_nested_order_prefixes_are_block_lists():
    """One sort of the levels gives block l's active set as the first count_l entries."""
    levels = jnp.asarray(np.random.RandomState(3).randint(0, 5, SHAPE), jnp.int32)
    order = np.asarray(nested_order(levels))
    counts = np.asarray(prefix_counts(levels, 5))
    for block in range(5):
        rows, count = active_list(levels > block)
        assert counts[block] == int(count)
        assert set(order[: counts[block]]) == set(np.asarray(rows)[: int(count)])


def test_dilate3x3_matches_scipy():
    for mask in MASKS.values():
        ref = np.stack([ndimage.binary_dilation(m, np.ones((3, 3), bool)) for m in mask])
        np.testing.assert_array_equal(np.asarray(dilate3x3(jnp.asarray(mask))), ref)


# --- Pallas (Triton) kernel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pallas_interpret():
    def f(src, dst, rows, count, coef, *, epilogue):
        return sparse_conv3x3_pallas(
            operands(src, dst, rows, count, coef, epilogue),
            tiles=PallasTiles(block_rows=16, block_cout=16),
            interpret=True,
        )

    return jax.jit(f, static_argnames=("epilogue",))


@pytest.mark.parametrize(
    ("epilogue", "mask_name"),
    [
        ("relu", "random"),
        ("residual", "coherent"),
        ("residual", "empty"),
        ("residual", "full"),
        ("residual", "single"),
        ("masked", "border"),
    ],
)
def test_pallas_interpret_matches_jax_path(pallas_interpret, jax_path, epilogue, mask_name):
    src, dst, rows, count, coef = flat_inputs(MASKS[mask_name])
    got = pallas_interpret(src, dst, rows, count, coef, epilogue=epilogue)
    want = jax_path(src, dst, rows, count, coef, epilogue=epilogue, tile=64, tail=32)
    np.testing.assert_allclose(
        np.asarray(got[: LAYOUT.trash_row]), np.asarray(want[: LAYOUT.trash_row]), rtol=1e-5, atol=2e-5
    )


def test_pallas_interpret_bfloat16(pallas_interpret, jax_path):
    """bf16 maps, f32 accumulation: equal to the JAX path on the same bf16 inputs up to bf16 rounding."""
    src, dst, rows, count, coef = flat_inputs(MASKS["random"], jnp.bfloat16)
    got = pallas_interpret(src, dst, rows, count, coef, epilogue="residual")
    want = jax_path(src, dst, rows, count, coef, epilogue="residual", tile=64, tail=32)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-2, atol=2e-2
    )


def test_pallas_dots_follow_the_default_matmul_precision():
    """Triton runs float32 dots in TF32 unless asked: under jax.default_matmul_precision("float32") the
    kernel asks for full float32 (IEEE), as XLA's dense conv then computes; bfloat16 maps are unchanged."""
    assert dot_precision(jnp.float32) is None
    for name in ("float32", "highest"):
        with jax.default_matmul_precision(name):
            assert dot_precision(jnp.float32) == jax.lax.Precision.HIGHEST
            assert dot_precision(jnp.bfloat16) is None
    with jax.default_matmul_precision("tensorfloat32"):
        assert dot_precision(jnp.float32) is None


@pytest.mark.parametrize("channels", [32, 64, 256])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_lowers_for_cuda(channels, dtype):
    """The Triton kernel lowers for CUDA on this CPU-only host (catches what interpret mode misses)."""
    n, h, w = 1, 12, 20
    layout = layout_of(jnp.zeros((n, h, w, 1)))
    src = jax.ShapeDtypeStruct((layout.rows, channels), dtype)
    rows = jax.ShapeDtypeStruct((n * h * w,), jnp.int32)
    count = jax.ShapeDtypeStruct((), jnp.int32)
    kernel = jax.ShapeDtypeStruct((3, 3, channels, channels), jnp.float32)
    bias = jax.ShapeDtypeStruct((channels,), jnp.float32)
    coef = jax.ShapeDtypeStruct((layout.rows,), jnp.float32)

    def block(x, h_buf, rows, count, k0, b0, k1, b1, coef):
        def conv(src, dst, kernel, bias, epilogue, coef=None):
            return sparse_conv3x3_pallas(
                SparseConv(
                    src=src,
                    dst=dst,
                    rows=rows,
                    count=count,
                    kernel=kernel,
                    bias=bias,
                    layout=layout,
                    epilogue=epilogue,
                    coef=coef,
                )
            )

        h_buf = conv(x, h_buf, k0, b0, "relu")
        # "masked" is RCAN's second conv; "residual" EDSR's.
        r = conv(h_buf, x, k1, b1, "masked", coef)
        return conv(r, x, k1, b1, "residual", coef)

    text = (
        jax.jit(block)
        .trace(src, src, rows, count, kernel, bias, kernel, bias, coef)
        .lower(lowering_platforms=("cuda",))
        .as_text()
    )
    assert text.count("xla.gpu.triton") == 3


# --- Whole sparse stacks on the Pallas path (interpret mode) --------------------------------------------


def edsr_stack_f64(x, depth, params, res_scale):
    """Dense masked EDSR stack in float64: x + res_scale * clip(d - l, 0, 1) * conv(relu(conv(x)))."""
    k0, b0, k1, b1 = params
    x = x.astype(np.float64)
    for block in range(k0.shape[0]):
        r = conv3x3_same_f64(np.maximum(conv3x3_same_f64(x, k0[block], b0[block]), 0), k1[block], b1[block])
        x = x + res_scale * np.clip(depth - block, 0, 1) * r
    return x


def rcan_group_f64(x, depth, params, res_scale):
    """Dense masked RCAN blocks in float64: x + res_scale * CA(clip(d - l, 0, 1) * conv(relu(conv(x))))."""
    k0, b0, k1, b1, dk, db, uk, ub = params
    x = x.astype(np.float64)
    for block in range(k0.shape[0]):
        r = conv3x3_same_f64(np.maximum(conv3x3_same_f64(x, k0[block], b0[block]), 0), k1[block], b1[block])
        r = np.clip(depth - block, 0, 1) * r
        hidden = np.maximum(r.mean(axis=(1, 2)) @ dk[block] + db[block], 0)
        weights = 1 / (1 + np.exp(-(hidden @ uk[block] + ub[block])))
        x = x + res_scale * r * weights[:, None, None, :]
    return x


STACK_C, STACK_BLOCKS = 16, 3  # C=16: a power of two, so the Triton kernel takes it


def stack_inputs(rcan: bool):
    """x [2, 6, 7, 16], depth [2, 6, 7, 1] and the stack's params (float32 numpy).

    Image 0's depths stay below 1.2 (blocks 2-3 have no active pixel there), image 1's reach 3.5 with
    zeros in its top rows; fractional values everywhere exercise the soft masks.
    """
    rng = np.random.RandomState(7)
    c, blocks = STACK_C, STACK_BLOCKS
    x = rng.randn(2, 6, 7, c).astype(np.float32)
    depth = rng.rand(2, 6, 7, 1) * np.array([1.2, 3.5])[:, None, None, None]
    depth[1, :2] = 0.0
    scale = 1 / np.sqrt(9 * c)
    shapes = [(blocks, 3, 3, c, c), (blocks, c)] * 2
    if rcan:
        shapes += [(blocks, c, c // 4), (blocks, c // 4), (blocks, c // 4, c), (blocks, c)]
    params = tuple((rng.randn(*s) * scale).astype(np.float32) for s in shapes)
    return x, depth.astype(np.float32), params


@pytest.mark.parametrize("rcan", [False, True], ids=["edsr", "rcan"])
def test_pallas_interpret_stack_matches_dense_masked_stack(rcan):
    """The whole scanned stack on the Pallas path: the aliased output inside the scan, the trash row of
    padded list tiles, the hidden buffer reused across blocks, RCAN's skip of empty blocks."""
    x, depth, params = stack_inputs(rcan)
    stack, oracle = (sparse_rcan_group, rcan_group_f64) if rcan else (sparse_edsr_stack, edsr_stack_f64)
    fn = jax.jit(lambda x, d, p: stack(x, d, p, res_scale=0.5, backend="pallas", interpret=True))
    got = fn(jnp.asarray(x), jnp.asarray(depth), tuple(map(jnp.asarray, params)))
    want = oracle(x, depth, params, 0.5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=5e-5)
