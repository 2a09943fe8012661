"""Active-pixel index plans of one residual stack, built once from its depth map.

Block l (0-based) of a stack with depth map d runs its first conv on the 3x3-dilated active set
(where the 3x3 max of ceil(d) is > l) and its second conv on the active set (ceil(d) > l); see
docs/adaptive_inference.md for the whole contract.

Index lists, `index_mode`:
- "nested" (default): one stable sort of ceil(d) (and one of its dilation) per stack; block l's lists
  are the prefixes of length count_l (masks are nested). Measured 6-10% faster than "per_block" for a
  whole small-EDSR stack on CPU (benchmarks/RESULTS.md).
- "per_block": `jnp.nonzero` of each block's mask (raster order), two per block.

`use_dense_stack` is the stack-level switch of the "auto" backend: above the measured executed fraction
the model's stack runs its dense masked loop instead (no layout conversions, no index building).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from adadsr_jax.kernels.dispatch import stack_threshold_for
from adadsr_jax.kernels.layout import active_list, nested_order, prefix_counts, to_padded_flat
from adadsr_jax.masks import executed_levels

IndexMode = Literal["nested", "per_block"]


def stack_levels(depth_map: jax.Array, num_blocks: int) -> tuple[jax.Array, jax.Array]:
    """(levels, dilated levels) int32 [N, h, w] for one stack's depth map [N, h, w, 1]
    (`masks.executed_levels`, the definition the MACs count uses too)."""
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
    `threshold` of the dense stack's. The default threshold is `stack_threshold_for(C, platform)`: on
    CPU the one the per-conv dispatcher uses for the stack's convs, on a GPU the whole-model
    measurement (platform: a JAX backend name, default the current one)."""
    if threshold is None:
        threshold = stack_threshold_for(channels, platform)
    levels, dilated = stack_levels(depth_map, num_blocks)
    executed = (levels.sum() + dilated.sum()).astype(jnp.float32)
    return executed > threshold * 2 * num_blocks * levels.size


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
