"""Sparse 3x3 convolution for adaptive-depth inference (see kernels/README.md for the contract)."""

from adadsr_jax.kernels.contract import Epilogue, SparseConv
from adadsr_jax.kernels.dispatch import (
    DENSE_THRESHOLD,
    Backend,
    default_backend,
    dense_conv3x3_padded,
    dense_threshold_for,
    sparse_conv3x3,
    stack_threshold_for,
    threshold_for,
    uses_pallas,
)
from adadsr_jax.kernels.layout import (
    PaddedLayout,
    active_list,
    dilate3x3,
    from_padded_flat,
    layout_of,
    nested_order,
    prefix_counts,
    to_padded_flat,
)
from adadsr_jax.kernels.sparse_conv_jax import sparse_conv3x3_jax
from adadsr_jax.kernels.sparse_conv_pallas import pallas_supported, sparse_conv3x3_pallas

__all__ = [
    "DENSE_THRESHOLD",
    "Backend",
    "Epilogue",
    "PaddedLayout",
    "SparseConv",
    "active_list",
    "default_backend",
    "dense_conv3x3_padded",
    "dense_threshold_for",
    "dilate3x3",
    "from_padded_flat",
    "layout_of",
    "nested_order",
    "pallas_supported",
    "prefix_counts",
    "sparse_conv3x3",
    "sparse_conv3x3_jax",
    "sparse_conv3x3_pallas",
    "stack_threshold_for",
    "threshold_for",
    "to_padded_flat",
    "uses_pallas",
]
