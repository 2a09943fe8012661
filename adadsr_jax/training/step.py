"""Pure training and evaluation steps (jitted; data parallel through the shardings of their inputs).

Parameters travel as pure dicts (`nnx.to_pure_dict(nnx.state(model, nnx.Param))`) and are merged with
the model's graphdef inside the jitted functions, so the steps are plain functions of arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adadsr_jax.losses import adadsr_loss


def draw_desired_depth(base_key: jax.Array, step: jax.Array, batch: int, depth_range) -> jax.Array:
    """Per-sample desired depth d ~ U(lo, hi), [batch] float32, a pure function of (key, step).

    Deriving the key from the step (not carrying a split key) makes a resumed run draw exactly the
    depths of an uninterrupted one.
    """
    lo, hi = float(depth_range[0]), float(depth_range[1])
    key = jax.random.fold_in(base_key, step)
    return jax.random.uniform(key, (batch,), jnp.float32, minval=lo, maxval=hi)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    depth_range: tuple[float, float],
    depth_loss_weight: float,
    replicated: jax.sharding.Sharding | None = None,
    donate: bool = True,
    backbone_only: bool = False,
) -> Callable[..., tuple[Any, Any, dict[str, jax.Array]]]:
    """A jitted `train_step(params, opt_state, lr, hr, step, base_key) -> (params, opt_state, metrics)`.

    lr: uint8 [B, p, p, 3], hr: uint8 [B, s*p, s*p, 3] (0..255), sharded over the batch for data
    parallelism; params/opt_state replicated (`replicated` pins the outputs to that sharding, so the
    gradient all-reduce happens inside the step). step: int32 scalar, the number of updates done so far.
    metrics: scalar loss, l1, depth_loss, mean_depth_map, desired_depth (batch mean), grad_norm, lr.

    backbone_only: train the backbone alone, every mask one (`use_adapter=False`); the adapter's gradient
    is zero, so Adam leaves it (and its moments) untouched. Used for a warm-up from
    scratch: with random residual blocks the L1 gradient drives the masks, and then the adapter's ReLU
    output, to zero within a few dozen steps, and a dead adapter never recovers.
    """

    def train_step(params, opt_state, lr, hr, step, base_key):
        desired = draw_desired_depth(base_key, step, lr.shape[0], depth_range)

        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            sr, aux = model(lr.astype(jnp.float32), desired_depth=desired, use_adapter=not backbone_only)
            weight = 0.0 if backbone_only else depth_loss_weight
            return adadsr_loss(sr, hr, aux["depth_map"], desired, weight)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(
            metrics,
            loss=loss,
            desired_depth=desired.mean(),
            grad_norm=optax.tree.norm(grads),
            lr=jnp.asarray(schedule(step), jnp.float32),
        )
        return params, opt_state, metrics

    out_shardings = None if replicated is None else (replicated, replicated, replicated)
    return jax.jit(train_step, out_shardings=out_shardings, donate_argnums=(0, 1) if donate else ())


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True when every floating leaf of `tree` is finite (no NaN/Inf)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)
