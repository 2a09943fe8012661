"""The AdaDSR loss against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adadsr_jax import adadsr_loss, depth_hinge


def test_l1_in_pixel_units_and_hinge_per_sample():
    sr = jnp.zeros((2, 2, 2, 3))
    hr = jnp.concatenate([jnp.full((1, 2, 2, 3), 10.0), jnp.full((1, 2, 2, 3), -4.0)])
    # image 0: depth map mean 3.0, d = 2 -> hinge 1.0; image 1: mean 1.0, d = 5 -> hinge 0.
    dmap = jnp.stack([jnp.array([[[2.0], [4.0]], [[3.0], [3.0]]]), jnp.ones((2, 2, 1))])
    d = jnp.array([2.0, 5.0])
    loss, metrics = adadsr_loss(sr, hr, dmap, d, 0.5)
    # per sample: 10 + 0.5 * 1 = 10.5 and 4 + 0 = 4 -> mean 7.25
    assert float(loss) == pytest.approx(7.25, rel=1e-7)
    assert float(metrics["l1"]) == pytest.approx(7.0)
    assert float(metrics["depth_loss"]) == pytest.approx(0.5)


def test_rcan_hinge_per_group_then_averaged():
    # One image, 3 group maps with means 1, 4, 6 and d = 3: hinges 0, 1, 3 -> mean 4/3.
    dmap = jnp.stack([jnp.full((2, 3), 1.0), jnp.full((2, 3), 4.0), jnp.array([[5.0, 7, 6], [6, 6, 6]])], -1)
    got = depth_hinge(dmap[None], jnp.array([3.0]))
    assert float(got[0]) == pytest.approx(4.0 / 3.0, rel=1e-6)
    # Not the hinge of the mean over groups (that would be max(0, 11/3 - 3) = 2/3).
    assert float(got[0]) != pytest.approx(2.0 / 3.0)


def test_hinge_gradient_only_above_desired_depth():
    dmap = jnp.full((2, 4, 4, 1), 3.0)
    grad = jax.grad(lambda m: depth_hinge(m, jnp.array([2.0, 5.0])).sum())(dmap)
    assert np.all(np.asarray(grad[0]) == pytest.approx(1 / 16))
    assert np.all(np.asarray(grad[1]) == 0)
