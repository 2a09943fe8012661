"""Multiply-accumulate (MAC) counts of an AdaDSR model: dense, executed by sparse inference, and the
release-compatible figure (docs/adaptive_inference.md).

Conventions
- One MAC = one multiply-add of a convolution (or of the channel-attention MLP). Bias adds, ReLUs,
  residual adds and mask multiplies are not MACs (they are counted only by `release_gmacs`).
- `dense_macs`: the whole network run densely: every conv at every pixel, 9 taps each (zero-padding
  taps included, as papers count), the adapter included for adaptive models.
- `executed_macs`: what sparse inference (docs/method.md) must compute for a depth map: block l's first
  conv at every pixel of the 3x3-dilated active set (where ceil(depth) > l after a 3x3 max), its second
  conv at the active set (ceil(depth) > l), every other layer (head, adapter, body-end conv, RCAN
  group-end convs and CA MLPs, upsampler, tail) densely. Tile padding of an implementation is not included.
- XLA's `cost_analysis()["flops"]` counts 2 FLOPs per MAC but skips taps that fall on the zero padding:
  `dense_macs(..., skip_padding=True)` is that count (per 3x3 conv on H x W: (3H - 2)(3W - 2) taps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adadsr_jax.masks import executed_depth, executed_levels
from adadsr_jax.models.config import ModelConfig
from adadsr_jax.models.layers import upsampler_stages


def _taps(h: int, w: int, skip_padding: bool) -> int:
    """Tap-pixel pairs of a 3x3 SAME conv on h x w: 9hw, or (3h-2)(3w-2) without padding taps."""
    return (3 * h - 2) * (3 * w - 2) if skip_padding else 9 * h * w


def conv_layers(config: ModelConfig, scale: int, h: int, w: int) -> list[tuple[str, int, int, int, int, int]]:
    """Every 3x3 conv of the dense network: (name, height, width, Cin, Cout, how many).

    Residual-block convs are listed as "block" (2 per block); h, w is the LR size.
    """
    c = config.num_features
    layers = [("head", h, w, 3, c, 1)]
    if config.adaptive:
        ca = config.adapter_features
        layers += [("adapter0", h, w, c, ca, 1), ("adapter_mid", h, w, ca, ca, 3)]
        layers += [("adapter_out", h, w, ca, config.num_maps, 1)]
    blocks = config.num_blocks * config.num_groups
    layers.append(("block", h, w, c, c, 2 * blocks))
    if config.backbone == "rcan":
        layers.append(("group_end", h, w, c, c, config.num_groups))
    layers.append(("body_lastconv", h, w, c, c, 1))
    uh, uw = h, w
    for r in upsampler_stages(scale):
        layers.append(("up", uh, uw, c, c * r * r, 1))
        uh, uw = uh * r, uw * r
    layers.append(("tail", uh, uw, c, 3, 1))
    return layers


def ca_mlp_macs(config: ModelConfig) -> int:
    """Channel-attention MLP MACs of the whole RCAN body per image (0 for EDSR)."""
    if config.backbone != "rcan":
        return 0
    c, cr = config.num_features, config.num_features // config.reduction
    return 2 * c * cr * config.num_blocks * config.num_groups


def dense_macs(config: ModelConfig, scale: int, h: int, w: int, *, skip_padding: bool = False) -> int:
    """MACs per image of the dense network on an h x w LR input (a Python int)."""
    total = sum(
        _taps(lh, lw, skip_padding) * ci * co * n for _, lh, lw, ci, co, n in conv_layers(config, scale, h, w)
    )
    return total + ca_mlp_macs(config)


def block_macs_per_pixel(config: ModelConfig) -> int:
    """MACs of one 3x3 C -> C conv at one pixel (a residual block runs two of them)."""
    return 9 * config.num_features**2


def executed_macs(config: ModelConfig, scale: int, depth_map: jax.Array | None) -> jax.Array:
    """MACs per image sparse inference executes for depth_map [N, h, w, G] (None: the dense network).

    Returns float32 [N] (float: the paper model on a 1000x1000 image exceeds int32).
    """
    if depth_map is None:
        raise ValueError("executed_macs needs a depth map; plain backbones execute dense_macs")
    _, h, w, _ = depth_map.shape
    body_dense = 2 * config.num_blocks * config.num_groups * 9 * h * w * config.num_features**2
    rest = float(dense_macs(config, scale, h, w) - body_dense)
    levels, dilated = executed_levels(depth_map.astype(jnp.float32), config.max_depth)
    pixel_blocks = (levels.sum(axis=(1, 2, 3)) + dilated.sum(axis=(1, 2, 3))).astype(jnp.float32)
    return rest + float(block_macs_per_pixel(config)) * pixel_blocks


def block_macs_fraction(depth_map: np.ndarray, max_depth: int) -> float:
    """Executed residual-block MACs over the dense blocks' MACs for depth maps [h, w, G] (host numpy,
    float64): (active + dilated pixel-blocks) / (2 D h w G), the body part of `executed_macs`."""
    levels, dilated = executed_levels(jnp.asarray(depth_map, jnp.float32)[None], max_depth)
    executed = float(np.asarray(levels, np.float64).sum() + np.asarray(dilated, np.float64).sum())
    return executed / (2.0 * max_depth * np.asarray(depth_map).size)


def model_macs(
    config: ModelConfig, scale: int, lr_shape: tuple[int, ...], depth_map: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(executed, dense) MACs per image as float32 [N] arrays for a forward on `lr_shape` [N, h, w, 3]
    whose adapter gave `depth_map` [N, h, w, G] (a model's aux["depth_map"]; None or a plain backbone:
    dense). Traceable: call it inside the caller's jit, next to the forward."""
    n, h, w = lr_shape[0], lr_shape[1], lr_shape[2]
    dense = jnp.full((n,), float(dense_macs(config, scale, h, w)), jnp.float32)
    if depth_map is None or not config.adaptive:
        return dense, dense
    return executed_macs(config, scale, depth_map), dense


GIGA = 2.0**30


def release_gmacs(config: ModelConfig, scale: int, depth_map: np.ndarray | jax.Array) -> np.ndarray:
    """The AdaDSR release's FLOPs figure per image, in units of 2^30 (docs/evaluation.md), for comparison
    with the paper's tables.

    Counted: each residual block's two convs at the pixels where its mask is > 0 (the release ignores
    the dilated positions the first conv needs), plus per active pixel and block the elementwise ops
    2C bias adds, C ReLUs and C residual adds; every other conv densely with its bias adds; the adapter.
    Not counted: the release's 4-tile "chop" overlap (we run whole images; chop duplicates border rows,
    adding a few percent on small images), MeanShift, PReLU, upsampler reshapes.
    depth_map: [N, h, w, G]. Returns float64 [N].
    """
    d = np.asarray(depth_map, np.float64)
    _, h, w, _ = d.shape
    c = config.num_features
    levels = executed_depth(d, config.max_depth).sum(axis=(1, 2, 3))  # active pixel-blocks (numpy f64)
    per_active = 2 * 9 * c * c + 4 * c
    other = 0.0
    for name, lh, lw, ci, co, cnt in conv_layers(config, scale, h, w):
        if name != "block":
            other += cnt * lh * lw * co * (9 * ci + 1)
    other += ca_mlp_macs(config)
    return (other + per_active * levels) / GIGA
