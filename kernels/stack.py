"""Sparse residual stacks: the EDSR and RCAN block loops of AdaDSR on active-pixel lists (SPEC 6).

Block l (0-based) of a stack with depth map d runs its first conv on the 3x3-dilated active set
(where the 3x3 max of ceil(d) is > l), its second conv on the active set (ceil(d) > l), and multiplies
the second conv's output by the soft mask clip(d - l, 0, 1). The feature map stays in the padded flat
layout for the whole stack, so no block pads or crops.

Index lists, `index_mode`:
- "nested" (default): one stable sort of ceil(d) (and one of its dilation) per stack; block l's lists
  are the prefixes of length count_l (masks are nested, SPEC 4). Measured 6-10% faster than
  "per_block" for a whole small-EDSR stack on CPU (benchmarks/RESULTS.md).
- "per_block": `jnp.nonzero` of each block's mask (raster order), two per block.

`use_dense_stack` is the stack-level switch of the "auto" backend: when the whole stack's executed
fraction is above the measured threshold, `run_sparse_stack` (which the EDSR and RCAN bodies call) runs
the caller's dense masked stack instead (no layout conversions, no index building), so "auto" is never
much slower than dense.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from adadsr_jax.kernels.dispatch import Backend, sparse_conv3x3, threshold_for
from adadsr_jax.kernels.layout import (
    PaddedLayout,
    active_list,
    from_padded_flat,
    layout_of,
    nested_order,
    prefix_counts,
    to_padded_flat,
)

from adadsr_jax.models.masks import executed_levels

IndexMode = Literal["nested", "per_block"]


def stack_levels(depth_map: jax.Array, num_blocks: int) -> tuple[jax.Array, jax.Array]:
    """(levels, dilated levels) int32 [N, h, w] for one stack's depth map [N, h, w, 1]
    (`models.masks.executed_levels`, the definition the MACs count uses too)."""
    levels, dilated = executed_levels(depth_map, num_blocks)
    return levels[..., 0].astype(jnp.int32), dilated[..., 0].astype(jnp.int32)


def use_dense_stack(
    depth_map: jax.Array,
    num_blocks: int,
    channels: int,
    threshold: float | None = None,
    platform: str | None = None,
) -> jax.Array:
    """bool []: whether the stack's executed pixel-blocks (both convs, dilation included) exceed
    `threshold` of the dense stack's. The default threshold is `threshold_for(C, C, platform)`, the one
    the per-conv dispatcher uses for the stack's convs (platform: a JAX backend name, default the
    current one)."""
    if threshold is None:
        threshold = threshold_for(channels, channels, platform)
    levels, dilated = stack_levels(depth_map, num_blocks)
    executed = (levels.sum() + dilated.sum()).astype(jnp.float32)
    return executed > threshold * 2 * num_blocks * levels.size


def run_sparse_stack(
    x: jax.Array,
    depth_map: jax.Array,
    num_blocks: int,
    *,
    dense: Callable[[jax.Array], jax.Array],
    sparse: Callable[[jax.Array], jax.Array],
    backend: Backend,
) -> jax.Array:
    """A model body's stack with sparse=True: `sparse(x)` for a forced backend; for "auto", `dense(x)`
    (the caller's dense masked stack) when `use_dense_stack` says most of the stack executes anyway,
    else `sparse(x)`, chosen by `lax.cond` at run time (no recompile when the depth changes).

    x: [N, h, w, C]; depth_map: [N, h, w, 1] (this stack's map); dense, sparse: [N, h, w, C] -> same.
    """
    if backend != "auto":
        return sparse(x)
    return jax.lax.cond(use_dense_stack(depth_map, num_blocks, x.shape[-1]), dense, sparse, x)


def make_plan(depth_map: jax.Array, num_blocks: int, index_mode: IndexMode) -> dict[str, jax.Array]:
    """Everything the blocks of one stack need to find their lists (arrays only, scan-friendly)."""
    levels, dilated = stack_levels(depth_map, num_blocks)
    plan = {"depth": to_padded_flat(depth_map.astype(jnp.float32))[:, 0]}
    if index_mode == "nested":
        plan |= {
            "rows_act": nested_order(levels),
            "rows_dil": nested_order(dilated),
            "counts_act": prefix_counts(levels, num_blocks),
            "counts_dil": prefix_counts(dilated, num_blocks),
        }
    elif index_mode == "per_block":
        plan |= {"levels": levels, "dilated": dilated}
    else:
        raise ValueError(f"index_mode must be 'nested' or 'per_block', got {index_mode!r}")
    return plan


def block_lists(plan: dict[str, jax.Array], block: jax.Array) -> tuple[jax.Array, ...]:
    """(rows_dil, count_dil, rows_act, count_act) of block `block` (int32 scalar, may be traced)."""
    if "rows_act" in plan:
        return plan["rows_dil"], plan["counts_dil"][block], plan["rows_act"], plan["counts_act"][block]
    rows_dil, count_dil = active_list(plan["dilated"] > block)
    rows_act, count_act = active_list(plan["levels"] > block)
    return rows_dil, count_dil, rows_act, count_act


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
    backend: as `sparse_conv3x3`; interpret: run the Pallas kernel in the interpreter (CPU tests).
    """
    k0, b0, k1, b1 = params
    num_blocks = k0.shape[0]
    layout = layout_of(x)
    plan = make_plan(depth_map, num_blocks, index_mode)
    xf = to_padded_flat(x)
    # Hidden map of the current block: rows outside the dilated set hold stale values that the second
    # conv never reads (its taps at active pixels all lie in the dilated set), so it is not cleared.
    hf = jnp.zeros_like(xf)

    def block(carry, p):
        xf, hf = carry
        k0, b0, k1, b1, index = p
        rows_dil, count_dil, rows_act, count_act = block_lists(plan, index)
        hf = sparse_conv3x3(
            xf, hf, rows_dil, count_dil, k0, b0, layout, epilogue="relu", backend=backend, interpret=interpret
        )
        coef = res_scale * jnp.clip(plan["depth"] - index.astype(jnp.float32), 0.0, 1.0)
        xf = sparse_conv3x3(
            hf,
            xf,
            rows_act,
            count_act,
            k1,
            b1,
            layout,
            epilogue="residual",
            coef=coef,
            backend=backend,
            interpret=interpret,
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
    k0, b0, k1, b1, dk, db, uk, ub = params
    num_blocks = k0.shape[0]
    layout = layout_of(x)
    n, h, w, c = x.shape
    plan = make_plan(depth_map, num_blocks, index_mode)
    xf = to_padded_flat(x)
    hf = jnp.zeros_like(xf)

    def run_block(carry, p):
        xf, hf = carry
        k0, b0, k1, b1, dk, db, uk, ub, index = p
        rows_dil, count_dil, rows_act, count_act = block_lists(plan, index)
        hf = sparse_conv3x3(
            xf, hf, rows_dil, count_dil, k0, b0, layout, epilogue="relu", backend=backend, interpret=interpret
        )
        mask = jnp.clip(plan["depth"] - index.astype(jnp.float32), 0.0, 1.0)
        rf = sparse_conv3x3(
            hf,
            jnp.zeros_like(xf),
            rows_act,
            count_act,
            k1,
            b1,
            layout,
            epilogue="masked",
            coef=mask,
            backend=backend,
            interpret=interpret,
        )
        pooled = rf[: layout.trash_row].reshape(n, layout.image_rows, c).sum(axis=1) / (h * w)
        hidden = jax.nn.relu(pooled @ dk.astype(pooled.dtype) + db.astype(pooled.dtype))
        weights = jax.nn.sigmoid(hidden @ uk.astype(pooled.dtype) + ub.astype(pooled.dtype))
        xf = xf + res_scale * rf * _per_image_rows(layout, weights.astype(xf.dtype))
        return xf, hf

    def block(carry, p):
        index = p[-1]
        _, _, _, count_act = block_lists(plan, index)
        return jax.lax.cond(count_act > 0, run_block, lambda carry, p: carry, carry, p), None

    indices = jnp.arange(num_blocks, dtype=jnp.int32)
    (xf, _), _ = jax.lax.scan(block, (xf, hf), (k0, b0, k1, b1, dk, db, uk, ub, indices))
    return from_padded_flat(xf, layout)
