"""Sparse residual stacks: the EDSR and RCAN block loops of AdaDSR on active-pixel lists.

Each block runs its first conv on the 3x3-dilated active set, its second conv on the active set, and
multiplies the second conv's output by the soft mask clip(d - l, 0, 1) (docs/adaptive_inference.md);
the result equals the dense masked stack up to float rounding. The feature map stays in the padded flat
layout for the whole stack, so no block pads or crops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.contract import Epilogue, SparseConv, run_if
from adadsr_jax.kernels.dispatch import Backend, TiledStackPlan, sparse_conv3x3, tiled_stack_plan
from adadsr_jax.kernels.layout import PaddedLayout, from_padded_flat, layout_of, to_padded_flat
from adadsr_jax.kernels.plan import IndexMode, block_lists, make_plan, use_dense_stack
from adadsr_jax.kernels.sparse_tiles import DEFAULT_CHUNK, tiled_edsr_stack


def run_sparse_stack(
    x: jax.Array,
    depth_map: jax.Array | None,
    num_blocks: int,
    *,
    dense: Callable[[jax.Array], jax.Array],
    sparse: Callable[[jax.Array], jax.Array],
    backend: Backend | None,
    threshold: float | None = None,
) -> jax.Array:
    """One residual stack of a model body, the one place its dense/sparse choice is made: `dense(x)` (the
    caller's dense masked stack) for backend None or without a depth map; `sparse(x)` for a forced
    backend; for "auto", `dense(x)` when `use_dense_stack` says most of the stack executes anyway, else
    `sparse(x)`, chosen by `lax.cond` at run time (no recompile when the depth changes); threshold:
    the switch's executed fraction (None: `use_dense_stack`'s default for the stack's width).

    x: [N, h, w, C]; depth_map: [N, h, w, 1] (this stack's map); dense, sparse: [N, h, w, C] -> same.
    """
    if backend is None or depth_map is None:
        return dense(x)
    if backend != "auto":
        return sparse(x)
    use_dense = use_dense_stack(depth_map, num_blocks, x.shape[-1], threshold)
    return jax.lax.cond(use_dense, dense, sparse, x)


def block_convs(
    conv: Callable[[SparseConv], jax.Array],
    lists: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    layout: PaddedLayout,
    xf: jax.Array,
    hf: jax.Array,
    weights: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    dst: jax.Array,
    epilogue: Epilogue,
    coef: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """A block's two convs on padded flat maps: relu(conv0(xf)) on the dilated active set into the hidden
    map hf, then conv1 of it on the active set into `dst` with `epilogue` and `coef`.

    conv: SparseConv -> new dst (e.g. `sparse_conv3x3` with a backend); lists: (rows_dil, count_dil,
    rows_act, count_act); weights: (k0, b0, k1, b1). Returns (hf, out)."""
    rows_dil, count_dil, rows_act, count_act = lists
    k0, b0, k1, b1 = weights
    first = SparseConv(
        src=xf, dst=hf, rows=rows_dil, count=count_dil, kernel=k0, bias=b0, layout=layout, epilogue="relu"
    )
    hf = conv(first)
    second = SparseConv(
        src=hf,
        dst=dst,
        rows=rows_act,
        count=count_act,
        kernel=k1,
        bias=b1,
        layout=layout,
        epilogue=epilogue,
        coef=coef,
    )
    return hf, conv(second)


def edsr_stack_tiling(channels: int, backend: Backend | None) -> TiledStackPlan | None:
    """The plan of an EDSR stack of `channels` features that runs the tiled path (forced "tiles": tile
    loops in every block, no dense switch; "auto" where `tiled_stack_plan` measured it faster), else
    None. The one place this choice is made, for the stack itself and for the model's dense switch."""
    if backend == "tiles":
        return TiledStackPlan(DEFAULT_CHUNK)
    return tiled_stack_plan(channels) if backend == "auto" else None


def sparse_edsr_stack(
    x: jax.Array,
    depth_map: jax.Array,
    params: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    *,
    res_scale: float,
    backend: Backend = "auto",
    index_mode: IndexMode = "nested",
    interpret: bool = False,
) -> jax.Array:
    """EDSR blocks `x + res_scale * m_l * conv(relu(conv(x)))` computed sparsely.

    x: [N, h, w, C]; depth_map: [N, h, w, 1]; params: kernels [D, 3, 3, C, C], biases [D, C] of the first
    and second convs. Returns [N, h, w, C], equal to the dense masked stack up to float rounding.
    backend: as `sparse_conv3x3`, plus "tiles" (kernels/sparse_tiles.py), which "auto" also picks where
    `tiled_stack_plan` says it is faster; interpret: run the Pallas kernel in the interpreter (CPU tests).
    """
    k0, b0, k1, b1 = params
    num_blocks = k0.shape[0]
    tiling = edsr_stack_tiling(x.shape[-1], backend)
    if tiling is not None:
        return tiled_edsr_stack(
            x,
            depth_map,
            params,
            res_scale=res_scale,
            chunk=tiling.chunk,
            dense_block_fraction=tiling.block_dense,
        )
    layout = layout_of(x)
    plan = make_plan(depth_map, num_blocks, index_mode)
    xf = to_padded_flat(x)
    # Hidden map of the current block: rows outside the dilated set hold stale values that the second
    # conv never reads (its taps at active pixels all lie in the dilated set), so it is not cleared.
    hf = jnp.zeros_like(xf)

    conv = functools.partial(sparse_conv3x3, backend=backend, interpret=interpret)

    def block(carry, p):
        xf, hf = carry
        k0, b0, k1, b1, index = p
        coef = res_scale * jnp.clip(plan["depth"] - index.astype(jnp.float32), 0.0, 1.0)
        hf, xf = block_convs(
            conv, block_lists(plan, index), layout, xf, hf, (k0, b0, k1, b1), xf, "residual", coef
        )
        return (xf, hf), None

    indices = jnp.arange(num_blocks, dtype=jnp.int32)
    (xf, _), _ = jax.lax.scan(block, (xf, hf), (k0, b0, k1, b1, indices))
    return from_padded_flat(xf, layout)


def _per_image_rows(layout: PaddedLayout, values: jax.Array) -> jax.Array:
    """Broadcast per-image values [N, C] to padded flat rows [P, C] (trash row zero)."""
    rows = jnp.repeat(values, layout.image_rows, axis=0)
    return jnp.pad(rows, ((0, 1), (0, 0)))


def sparse_rcan_group(
    x: jax.Array,
    depth_map: jax.Array,
    params: tuple[jax.Array, ...],
    *,
    res_scale: float,
    backend: Backend = "auto",
    index_mode: IndexMode = "nested",
    interpret: bool = False,
) -> jax.Array:
    """The B blocks of one RCAN group, `h + res_scale * CA(m_l * conv(relu(conv(h))))`, computed sparsely
    (the group-end conv and group skip are the caller's).

    x: [N, h, w, C]; depth_map: [N, h, w, 1] (this group's map); params: layer0 kernel [B, 3, 3, C, C],
    bias [B, C], layer2 kernel/bias, ca_down kernel [B, C, C/r], bias [B, C/r], ca_up kernel [B, C/r, C],
    bias [B, C]. The masked residual is zero off the active set, so CA's global average pool is the sum
    over active rows divided by h * w. A block with no active pixel in the batch is skipped entirely.
    backend: as `sparse_conv3x3`; interpret: run the Pallas kernel in the interpreter (CPU tests).
    """
    if backend == "tiles":
        raise ValueError("sparse_backend 'tiles' runs EDSR stacks; RCAN takes auto, pallas, jax or dense")
    k0, b0, k1, b1, dk, db, uk, ub = params
    num_blocks = k0.shape[0]
    layout = layout_of(x)
    n, h, w, c = x.shape
    plan = make_plan(depth_map, num_blocks, index_mode)
    xf = to_padded_flat(x)
    hf = jnp.zeros_like(xf)

    conv = functools.partial(sparse_conv3x3, backend=backend, interpret=interpret)

    def run_block(carry, p):
        xf, hf = carry
        k0, b0, k1, b1, dk, db, uk, ub, index = p
        mask = jnp.clip(plan["depth"] - index.astype(jnp.float32), 0.0, 1.0)
        lists = block_lists(plan, index)
        hf, rf = block_convs(
            conv, lists, layout, xf, hf, (k0, b0, k1, b1), jnp.zeros_like(xf), "masked", mask
        )
        pooled = rf[: layout.trash_row].reshape(n, layout.image_rows, c).sum(axis=1) / (h * w)
        hidden = jax.nn.relu(pooled @ dk.astype(pooled.dtype) + db.astype(pooled.dtype))
        weights = jax.nn.sigmoid(hidden @ uk.astype(pooled.dtype) + ub.astype(pooled.dtype))
        xf = xf + res_scale * rf * _per_image_rows(layout, weights.astype(xf.dtype))
        return xf, hf

    def block(carry, p):
        index = p[-1]
        _, _, _, count_act = block_lists(plan, index)
        return run_if(count_act > 0, lambda carry: run_block(carry, p), carry), None

    indices = jnp.arange(num_blocks, dtype=jnp.int32)
    (xf, _), _ = jax.lax.scan(block, (xf, hf), (k0, b0, k1, b1, dk, db, uk, ub, indices))
    return from_padded_flat(xf, layout)
