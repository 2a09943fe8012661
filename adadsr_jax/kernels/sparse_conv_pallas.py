"""Pallas sparse 3x3 convolution for NVIDIA GPUs on the Triton backend (kernels/README.md).

Grid: (tiles of the active list, tiles of Cout). Program (i, j) loads `block_rows` padded flat rows of
the active list, gathers their 9 taps from the padded flat input through the ref (`src_ref[rows, :]`,
the in-kernel row gather only the Triton backend lowers), accumulates 9 [rows, Cin] x [Cin, block_cout]
matmuls in float32, applies the epilogue and scatters the result into the output, which aliases `dst`
(so pixels not in the list keep dst's values). Padding entries of the list gather from a safe interior
row and store into the layout's trash row (its last); a program whose first entry is padding
returns at once, so the work follows the active count even though the grid is static.

Constraints from Triton: power-of-two tiles (block_rows, block_cout, Cin), dot operands >= 16 on each
side; `lax.rem`/`lax.div` on traced ints, never Python `%`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from adadsr_jax.kernels.contract import Epilogue, SparseConv


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def pallas_supported(cin: int, cout: int) -> bool:
    """Whether the Triton kernel handles these channel counts (power of two, >= 16)."""
    return _is_pow2(cin) and cin >= 16 and cout >= 16 and (_is_pow2(cout) or cout % 64 == 0)


@dataclasses.dataclass(frozen=True)
class PallasTiles:
    """The kernel's launch configuration: list rows per program, output channels per program (None:
    min(Cout, 128)), Triton warps and pipeline stages."""

    block_rows: int = 64
    block_cout: int | None = None
    num_warps: int = 4
    num_stages: int = 2


def dot_precision(dtype) -> jax.lax.Precision | None:
    """The precision of the kernel's dots: Triton runs float32 dots in TF32 unless told otherwise, as
    XLA's GPU convs do at default precision; under `jax.default_matmul_precision("float32")` (or
    "highest") XLA computes in full float32, so the kernel does too (IEEE dots), and the sparse and dense
    paths keep agreeing. bfloat16 maps are unaffected."""
    full = jax.config.jax_default_matmul_precision in ("float32", "highest")
    return jax.lax.Precision.HIGHEST if full and jnp.dtype(dtype) == jnp.float32 else None


def _kernel(
    gather_ref,
    store_ref,
    coef_ref,
    src_ref,
    w_ref,
    b_ref,
    dst_ref,
    out_ref,
    *,
    epilogue: Epilogue,
    offsets: tuple[int, ...],
    trash_row: int,
    block_cout: int,
    precision: jax.lax.Precision | None,
):
    del dst_ref  # aliased to out_ref: read and written through out_ref, in place
    j = pl.program_id(1)
    cols = pl.ds(j * block_cout, block_cout)

    # Lists are prefixes: if the first entry is padding, the whole tile is. (A scalar ref load, since
    # Triton lowers no slices of values.)
    @pl.when(store_ref[0] != trash_row)
    def _():
        store_rows = store_ref[...]
        rows = gather_ref[...]
        acc = jnp.zeros((rows.shape[0], block_cout), jnp.float32)
        for t, off in enumerate(offsets):
            taps = src_ref[rows + off, :]
            acc += jnp.dot(taps, w_ref[t, :, cols], preferred_element_type=jnp.float32, precision=precision)
        y = acc + b_ref[cols].astype(jnp.float32)[None, :]
        if epilogue == "relu":
            y = jnp.maximum(y, 0.0)
        elif epilogue == "residual":
            y = out_ref[store_rows, cols].astype(jnp.float32) + coef_ref[...][:, None] * y
        elif epilogue == "masked":
            y = coef_ref[...][:, None] * y
        out_ref[store_rows, cols] = y.astype(out_ref.dtype)


def sparse_conv3x3_pallas(
    conv: SparseConv,
    *,
    tiles: PallasTiles = PallasTiles(),
    interpret: bool = False,
) -> jax.Array:
    """`conv` (see SparseConv) as a Pallas Triton kernel; returns the new dst [P, Cout].

    float32 or bfloat16 maps; accumulation in float32. tiles: the launch configuration
    (`benchmarks/gpu_check.py tune` times others). `interpret=True` runs the kernel body with the
    Pallas interpreter (any backend, for tests).
    """
    conv.check()
    cin, cout = conv.channels
    if not pallas_supported(cin, cout):
        raise ValueError(f"the Triton kernel needs power-of-two channels >= 16, got Cin={cin}, Cout={cout}")
    block_rows, block_cout = tiles.block_rows, tiles.block_cout
    if not _is_pow2(block_rows) or block_rows < 16:
        raise ValueError(f"block_rows must be a power of two >= 16, got {block_rows}")
    if block_cout is None:
        block_cout = min(cout, 128) if _is_pow2(cout) else 64
    if not _is_pow2(block_cout) or cout % block_cout:
        raise ValueError(f"block_cout {block_cout} must be a power of two dividing Cout={cout}")
    src, dst, rows, count, coef, layout = conv.src, conv.dst, conv.rows, conv.count, conv.coef, conv.layout

    trash = layout.trash_row
    k = rows.shape[0]
    kp = -(-k // block_rows) * block_rows
    valid = jnp.arange(kp, dtype=jnp.int32) < count
    rows = jnp.pad(rows.astype(jnp.int32), (0, kp - k), constant_values=layout.safe_row)
    gather_rows = jnp.where(valid, rows, layout.safe_row)
    store_rows = jnp.where(valid, rows, trash)
    if coef is None:
        coef_rows = jnp.zeros((kp,), jnp.float32)
    else:
        coef_rows = jnp.where(valid, coef[gather_rows].astype(jnp.float32), 0.0)
    w = conv.kernel.reshape(9, cin, cout).astype(src.dtype)

    grid = (kp // block_rows, cout // block_cout)
    list_spec = pl.BlockSpec((block_rows,), lambda i, j: (i,))
    whole = pl.no_block_spec
    body = functools.partial(
        _kernel,
        epilogue=conv.epilogue,
        offsets=tuple(int(o) for o in layout.tap_offsets()),
        trash_row=trash,
        block_cout=block_cout,
        precision=dot_precision(src.dtype),
    )
    out = pl.pallas_call(
        body,
        out_shape=jax.ShapeDtypeStruct(dst.shape, dst.dtype),
        grid=grid,
        in_specs=[list_spec, list_spec, list_spec, whole, whole, whole, whole],
        out_specs=whole,
        input_output_aliases={6: 0},
        compiler_params=pltriton.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages),
        interpret=interpret,
        name=f"sparse_conv3x3_{conv.epilogue}",
    )(gather_rows, store_rows, coef_rows, src, w, conv.bias, dst)
    return out
