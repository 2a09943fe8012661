"""MACs accounting: paper-model constants, a hand computation on a tiny model, XLA's cost analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from adadsr_jax.kernels.plan import stack_levels
from adadsr_jax.macs import (
    block_macs_fraction,
    ca_mlp_macs,
    dense_macs,
    executed_macs,
    model_macs,
    release_gmacs,
)
from adadsr_jax.masks import executed_depth, executed_levels
from adadsr_jax.models import create_model, get_model_config, network


@pytest.mark.parametrize(("scale", "per_pixel"), [(2, 40_732_416), (3, 43_716_096), (4, 50_252_544)])
def test_paper_edsr_macs_per_lr_pixel(scale, per_pixel):
    """Pure conv MACs per LR pixel of EDSR 32x256 (docs/adaptive_inference.md); the AdaEDSR adapter
    adds 738,432."""
    assert dense_macs(get_model_config("edsr"), scale, 1, 1) == per_pixel
    assert dense_macs(get_model_config("adaedsr"), scale, 1, 1) == per_pixel + 738_432


# adaedsr_tiny: C=8, D=3 blocks, adapter 8 features, 1 map. A 4x4 LR image at x2.
HAND_DEPTH = np.zeros((1, 4, 4, 1), np.float32)
HAND_DEPTH[0, 0, 1, 0] = 0.2  # ceil -> 1 block
HAND_DEPTH[0, 3, 3, 0] = 2.5  # ceil -> 3 blocks


def test_executed_macs_by_hand():
    config = get_model_config("adaedsr_tiny")
    # Dense layers per image (16 LR pixels, 64 HR pixels), 9 taps each:
    head = 16 * 9 * 3 * 8
    adapter = 16 * 9 * (8 * 8 + 3 * 8 * 8 + 8 * 1)
    lastconv = 16 * 9 * 8 * 8
    up = 16 * 9 * 8 * 32
    tail = 64 * 9 * 8 * 3
    rest = head + adapter + lastconv + up + tail
    per_conv_pixel = 9 * 8 * 8
    # Second convs run at ceil(depth): 1 + 3 pixel-blocks. First convs run on the 3x3 dilation:
    # 6 pixels around (0, 1) for block 1, 4 pixels around (3, 3) for blocks 1..3: 6 + 12 = 18.
    executed = rest + per_conv_pixel * (4 + 18)
    dense = rest + per_conv_pixel * 2 * 3 * 16
    assert float(executed_macs(config, 2, jnp.asarray(HAND_DEPTH))[0]) == executed
    assert dense_macs(config, 2, 4, 4) == dense
    # Release-compatible: second-conv positions for both convs, + bias/ReLU/add ops, in 2^30 units.
    # Dense convs with one bias add per output: out_pixels * Cout * (9 * Cin + 1).
    other_ops = (
        16 * 8 * 28  # head
        + 16 * 8 * 73  # adapter conv 0
        + 3 * 16 * 8 * 73  # adapter convs 1..3
        + 16 * 1 * 73  # adapter output conv
        + 16 * 8 * 73  # body_lastconv
        + 16 * 32 * 73  # upsampler conv
        + 64 * 3 * 73  # tail
    )
    release = other_ops + 4 * (2 * per_conv_pixel + 4 * 8)
    assert release_gmacs(config, 2, HAND_DEPTH)[0] == pytest.approx(release / 2**30, rel=1e-12)


def test_block_macs_fraction_by_hand():
    """The hand count above: (4 + 18) of 2 * 3 * 16 pixel-blocks; one map per group sums the same way."""
    assert block_macs_fraction(HAND_DEPTH[0], 3) == pytest.approx(22 / 96, rel=1e-12)
    two_groups = np.concatenate([HAND_DEPTH[0], np.full((4, 4, 1), 3.0, np.float32)], axis=-1)
    assert block_macs_fraction(two_groups, 3) == pytest.approx((22 + 96) / 192, rel=1e-12)


def test_executed_levels_one_definition():
    """executed_levels (MACs, sparse stacks) against scipy: ceil(clip(d, 0, D)) and its 3x3 max with zero
    borders; the stacks' int32 lists use the same values; numpy input stays numpy float64."""
    d = np.random.RandomState(5).randn(2, 6, 5, 2) * 2 + 1.5
    levels, dilated = executed_levels(jnp.asarray(d, jnp.float32), 3)
    want = np.ceil(np.clip(d, 0, 3))
    np.testing.assert_array_equal(np.asarray(levels), want)
    np.testing.assert_array_equal(
        np.asarray(dilated), ndimage.maximum_filter(want, size=(1, 3, 3, 1), mode="constant", cval=0)
    )
    stack_l, stack_d = stack_levels(jnp.asarray(d[..., 1:], jnp.float32), 3)
    np.testing.assert_array_equal(np.asarray(stack_l), np.asarray(levels)[..., 1])
    np.testing.assert_array_equal(np.asarray(stack_d), np.asarray(dilated)[..., 1])
    host = executed_depth(d, 3)
    assert isinstance(host, np.ndarray) and host.dtype == np.float64
    np.testing.assert_array_equal(host, want)


def test_model_macs_of_depth_maps():
    """model_macs on a model's aux["depth_map"], dense and sparse calls alike, agrees with the counter."""
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0))
    lr = jnp.asarray(np.random.RandomState(0).rand(2, 4, 4, 3) * 255, jnp.float32)
    config = model.config
    _, aux = model(lr, desired_depth=jnp.asarray([0.0, 1.5]))
    macs, dense = model_macs(config, 2, lr.shape, aux["depth_map"])
    np.testing.assert_array_equal(np.asarray(dense), [dense_macs(config, 2, 4, 4)] * 2)
    np.testing.assert_array_equal(np.asarray(macs), np.asarray(executed_macs(config, 2, aux["depth_map"])))
    assert float(macs[0]) == dense_macs(config, 2, 4, 4) - 2 * 3 * 16 * 9 * 64  # depth 0: no block
    _, aux_sparse = model(lr, desired_depth=jnp.asarray([0.0, 1.5]), sparse=True)
    np.testing.assert_array_equal(
        np.asarray(model_macs(config, 2, lr.shape, aux_sparse["depth_map"])[0]), macs
    )
    plain = create_model("edsr_tiny", scale=2, rngs=nnx.Rngs(0))
    plain_macs, plain_dense = model_macs(plain.config, 2, lr.shape, None)
    np.testing.assert_array_equal(np.asarray(plain_macs), np.asarray(plain_dense))
    assert "macs" not in aux  # counted by the callers that want it, not inside every forward


def _conv_stub(lhs, rhs, *args, **kwargs):
    """A zero-FLOP stand-in for a stride-1 SAME conv with the right output shape."""
    return jnp.broadcast_to(lhs[..., :1], (*lhs.shape[:-1], rhs.shape[-1]))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("adaedsr_tiny", {"num_blocks": 1}),
        ("adarcan_tiny", {"num_blocks": 1, "num_groups": 1}),
        ("edsr_tiny", {"num_blocks": 1}),
    ],
)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_dense_macs_match_xla_cost_analysis(monkeypatch, name, overrides, scale):
    """XLA counts 2 FLOPs per MAC and skips zero-padding taps; its conv FLOPs are the model's FLOPs minus
    those of the same model with every conv replaced by a zero-FLOP stub. One block (per group), since
    cost analysis counts a scan's body once."""
    model = create_model(name, scale=scale, rngs=nnx.Rngs(0), **overrides)
    graph, state = nnx.split(model)
    h, w = 5, 7
    # The architecture's MACs: upsampler convs, pixel shuffles, then the tail conv at HR. The forward
    # folds the last upsampler conv and the tail into one LR conv (layers.upsample_and_tail, fewer MACs,
    # the same outputs: tests/test_models.py); count the network as the paper defines it.
    monkeypatch.setattr(network, "upsample_and_tail", lambda up, tail, x: tail(up(x)))
    lr = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)

    def flops():
        fn = jax.jit(lambda s, x: nnx.merge(graph, s)(x, desired_depth=1.0)[0])
        return fn.lower(state, lr).cost_analysis()["flops"]

    total = flops()
    monkeypatch.setattr(jax.lax, "conv_general_dilated", _conv_stub)
    non_conv = flops()
    expected = 2 * (dense_macs(model.config, scale, h, w, skip_padding=True) - ca_mlp_macs(model.config))
    # XLA also runs the head conv's fourth, zero input channel (layers.conv2d pads RGB to 4 channels for
    # speed): one channel's taps inside the image, (3h - 2)(3w - 2) of them, times C outputs.
    # And XLA's cost analysis counts 1 FLOP per pad op: the padded kernel's pad is dead code once the
    # stub ignores the kernel's values, so only the full program counts it.
    zero_channel = (3 * h - 2) * (3 * w - 2) * model.config.num_features
    assert total - non_conv == expected + 2 * zero_channel + 1
