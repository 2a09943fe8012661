"""One entry point for the sparse 3x3 convolution: Pallas on GPU, the JAX path on CPU, dense when dense.

`sparse_conv3x3(..., backend="auto")` picks the Pallas Triton kernel on a GPU backend (when the channel
counts suit Triton), the pure-JAX tiled path otherwise, and, at run time inside the compiled program,
the plain dense convolution when the active fraction is above `dense_threshold` (a run-time switch, so
the choice never recompiles). `backend="pallas" | "jax" | "dense"` forces one implementation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.contract import SparseConv, apply_epilogue, conv3x3_f32, run_if
from adadsr_jax.kernels.layout import from_padded_flat, to_padded_flat
from adadsr_jax.kernels.sparse_conv_jax import sparse_conv3x3_jax
from adadsr_jax.kernels.sparse_conv_pallas import pallas_supported, sparse_conv3x3_pallas

Backend = Literal["auto", "pallas", "jax", "tiles", "dense"]

# Active fraction above which the dense convolution beats the sparse path, measured with
# benchmarks/sparse_conv.py (benchmarks/RESULTS.md), by input channel count. CPU: a pixel-sparse conv
# costs about 1.9x (C=32), 1.7-1.9x (C=64) and 1.1-1.2x (C=256) the dense conv per computed pixel, so the
# crossovers are near 35%, 50% and 90% active; C=128 is interpolated. GPU (the Pallas kernel, an H200,
# one EDSR block on 500x500, coherent masks): the sparse block's time equals XLA's dense block's near
# 15% active in float32 (C=64, both in TF32) and near 25-30% in bfloat16 (C=64 and 256); the lower one.
DENSE_THRESHOLD = {
    "cpu": ((32, 0.35), (64, 0.5), (128, 0.7), (None, 0.85)),
    "gpu": ((None, 0.15),),
}

# The whole-stack switch of "auto" on a GPU (`stack_threshold_for`): on the H200 the sparse paper AdaEDSR
# x2 (Pallas, tiles or JAX) took 3-12x XLA's dense forward at 30% and 50% executed MACs, on 128x128 and
# 256x256 inputs: the per-block work around the kernels outweighs the skipped MACs. So "auto" runs the
# dense masked stack on a GPU whenever any block executes anywhere.
GPU_STACK_THRESHOLD = 0.0


def dense_threshold_for(platform: str, channels: int) -> float:
    """The measured crossover active fraction for a conv with `channels` input channels."""
    for limit, threshold in DENSE_THRESHOLD[platform]:
        if limit is None or channels <= limit:
            return threshold
    raise AssertionError("unreachable: the last entry has no limit")


def default_backend() -> str:
    """ "pallas" on a GPU backend, "jax" elsewhere."""
    return "pallas" if jax.default_backend() == "gpu" else "jax"


def uses_pallas(cin: int, cout: int, platform: str | None = None) -> bool:
    """Whether "auto" runs the Pallas kernel for a Cin -> Cout conv on `platform` (a JAX backend name,
    "gpu" / "cpu" / "tpu"; default `jax.default_backend()`): a GPU and channels the Triton kernel takes."""
    platform = jax.default_backend() if platform is None else platform
    return platform == "gpu" and pallas_supported(cin, cout)


def threshold_for(cin: int, cout: int, platform: str | None = None) -> float:
    """The dense-crossover active fraction "auto" uses for one Cin -> Cout conv on `platform` (default
    `jax.default_backend()`): the GPU table where the Pallas kernel runs the conv; 0 for the JAX path on
    a GPU (channels Triton does not take, e.g. C=48), which lost to the dense conv at every active
    fraction measured (3.8-37x at 10-90%); the CPU table elsewhere."""
    platform = jax.default_backend() if platform is None else platform
    if platform == "gpu":
        return dense_threshold_for("gpu", cin) if uses_pallas(cin, cout, platform) else 0.0
    return dense_threshold_for("cpu", cin)


def stack_threshold_for(channels: int, platform: str | None = None) -> float:
    """The executed fraction above which "auto" runs a whole residual stack of `channels` features
    dense (`kernels.plan.use_dense_stack`): the per-conv crossover on CPU, `GPU_STACK_THRESHOLD` on a
    GPU. The single source of this decision for the models and the latency cost model."""
    platform = jax.default_backend() if platform is None else platform
    return GPU_STACK_THRESHOLD if platform == "gpu" else threshold_for(channels, channels, platform)


@dataclasses.dataclass(frozen=True)
class TiledStackPlan:
    """How an EDSR stack runs the tiled path (kernels/sparse_tiles.py).

    chunk: tiles per convolution call. block_dense: a block whose two tile loops would walk more than
    this fraction of the map's tiles (both loops together, over twice the tile count) runs XLA's dense
    convolutions instead (None: never). stack_dense: the stack-level dense switch, on the executed
    pixel-blocks (dilation included) over the dense stack's (`plan.use_dense_stack`; None: its default).
    """

    chunk: int
    block_dense: float | None = None
    stack_dense: float | None = None


# Whole EDSR stacks on the CPU at <= 64 features run the tiled path: 4 x 4 tiles, chunks of 32 (C <= 32)
# or 16 (C <= 64) tiles per conv, a dense block wherever its tiles cover more than half the map, and the
# dense stack above 0.55 executed (the stack then costs about the dense stack's time: 1.06-1.11x at C=32
# and 0.94x at C=64 at 0.54 on photo-shaped depth maps, 1.1-1.2x at 0.64). Measured with
# benchmarks/sparse_stack.py (benchmarks/RESULTS.md). Wider stacks keep the pixel-list path, whose
# im2col matmul nears the dense rate there.
TILED_STACKS = {32: TiledStackPlan(32, 0.5, 0.55), 64: TiledStackPlan(16, 0.5, 0.55)}


def tiled_stack_plan(channels: int, platform: str | None = None) -> TiledStackPlan | None:
    """The plan with which "auto" runs an EDSR stack of `channels` features tiled on `platform` (default
    the current backend), or None where it keeps the pixel-list or Pallas path."""
    platform = jax.default_backend() if platform is None else platform
    if platform == "gpu":
        return None
    for limit, plan in sorted(TILED_STACKS.items()):
        if channels <= limit:
            return plan
    return None


def dense_conv3x3_padded(conv: SparseConv) -> jax.Array:
    """`conv` computed with XLA's dense convolution (all pixels), then kept at the listed rows only: the
    same result as `sparse_conv3x3_jax`."""
    conv.check()
    layout = conv.layout
    x = from_padded_flat(conv.src, layout)
    yf = to_padded_flat(conv3x3_f32(x, conv.kernel, conv.bias, "SAME"))
    valid = jnp.arange(conv.rows.shape[0]) < conv.count
    member = jnp.zeros((layout.rows,), bool).at[conv.rows].max(valid)
    dst = conv.dst
    dst_f = dst.astype(jnp.float32) if conv.epilogue == "residual" else None
    coef = None if conv.coef is None else conv.coef.astype(jnp.float32)
    out = apply_epilogue(yf, conv.epilogue, dst_f, coef)
    return jnp.where(member[:, None], out.astype(dst.dtype), dst)


def sparse_conv3x3(
    conv: SparseConv,
    *,
    backend: Backend = "auto",
    dense_threshold: float | None = None,
    tile: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """`conv` (see SparseConv: a 3x3 SAME conv at rows[:count], written into dst with an epilogue) by
    the implementation `backend` names; returns the new dst [P, Cout].

    backend: "auto" (Pallas on GPU, JAX elsewhere, dense above `dense_threshold` active fraction, which
    defaults to `threshold_for(Cin, Cout)`), or force "pallas", "jax" or "dense".
    interpret: run the Pallas kernel (when it is the one chosen) with the Pallas interpreter, on any
    backend: how CPU tests exercise the Pallas path.
    """
    if backend == "dense":
        return dense_conv3x3_padded(conv)
    if backend == "pallas":
        return sparse_conv3x3_pallas(conv, interpret=interpret)
    if backend == "jax":
        return sparse_conv3x3_jax(conv, tile=tile)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'pallas', 'jax' or 'dense', got {backend!r}")

    cin, cout = conv.channels
    if uses_pallas(cin, cout):
        sparse_impl = functools.partial(sparse_conv3x3_pallas, interpret=interpret)
    else:
        sparse_impl = functools.partial(sparse_conv3x3_jax, tile=tile)
    threshold = threshold_for(cin, cout) if dense_threshold is None else dense_threshold
    if threshold >= 1.0:
        return sparse_impl(conv)
    use_dense = conv.count > int(threshold * conv.layout.pixels)
    # Both run, in place on dst: the sparse loops with no trip when the dense conv runs (`run_if`, not a
    # lax.cond, which copied dst at every conv). The barrier ties src to the carry, or XLA would hoist
    # the dense conv of the loop-invariant src out of `run_if` and run it always.
    dst = sparse_impl(dataclasses.replace(conv, count=jnp.where(use_dense, 0, conv.count)))

    def dense(dst: jax.Array) -> jax.Array:
        src, dst = jax.lax.optimization_barrier((conv.src, dst))
        return dense_conv3x3_padded(dataclasses.replace(conv, src=src, dst=dst))

    return run_if(use_dense, dense, dst)
