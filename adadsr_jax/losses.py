"""The AdaDSR objective: L1 reconstruction + lambda * hinge on the mean predicted depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def depth_hinge(depth_map: jax.Array, desired_depth: jax.Array) -> jax.Array:
    """Per image max(0, mean(depth_map_g) - d), averaged over the G maps (AdaRCAN: one per group).

    depth_map: [N, h, w, G]; desired_depth: [N] or scalar -> [N].
    """
    d = jnp.broadcast_to(jnp.asarray(desired_depth, jnp.float32), depth_map.shape[:1])
    per_map = depth_map.mean(axis=(1, 2))  # [N, G]
    return jax.nn.relu(per_map - d[:, None]).mean(axis=-1)


def adadsr_loss(
    sr: jax.Array,
    hr: jax.Array,
    depth_map: jax.Array,
    desired_depth: jax.Array,
    depth_loss_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of L1(sr, hr) + lambda * depth_hinge, per sample (docs/method.md, "Training objective").

    sr, hr: [N, H, W, 3] on the 0..255 scale (L1 is in those units); depth_map: [N, h, w, G];
    desired_depth: [N]. Returns the scalar loss and {"l1", "depth_loss", "mean_depth_map"} batch means.
    """
    l1 = jnp.abs(sr.astype(jnp.float32) - hr.astype(jnp.float32)).mean(axis=(1, 2, 3))
    hinge = depth_hinge(depth_map, desired_depth)
    loss = (l1 + depth_loss_weight * hinge).mean()
    return loss, {"l1": l1.mean(), "depth_loss": hinge.mean(), "mean_depth_map": depth_map.mean()}
