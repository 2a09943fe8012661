"""The adapter learns to obey the desired depth: a short training of adaedsr_tiny on real photo patches.

The recipe is the demo's (configs/demo.py): Adam with b2 = 0.99, the backbone alone first
(backbone_warmup_steps), then the AdaDSR loss with lambda = 0.48 / D (1.5 times the paper's 0.01 at
D = 32 scaled to the stack depth) and d ~ U(0, D). On the held-out photo the mean of the depth map
must stay within 1.1 d at every evaluated d and the executed depth must follow d. The same training
without the depth loss (lambda = 0) is the control: its adapter overspends by far, so the assertions can fail.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adadsr_jax.data import TrainBatches, demo_source
from adadsr_jax.masks import mean_executed_depth
from adadsr_jax.models import create_model
from adadsr_jax.training.optim import make_optimizer
from adadsr_jax.training.step import make_train_step

WARMUP, STEPS = 80, 260
DEMO_LAMBDA_TIMES_DEPTH = 0.48  # configs/demo.py: lambda = 0.48 / D


@functools.cache
def trained(depth_loss_weight: float):
    """(model, D) after WARMUP backbone-only steps and STEPS - WARMUP adaptive steps, batch 8 of 16x16."""
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0))
    depth = model.config.max_depth
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    tx, schedule = make_optimizer(
        {"name": "adam", "lr": 2e-3, "b2": 0.99, "schedule": "cosine", "decay_steps": STEPS}
    )
    kwargs = dict(depth_range=(0.0, float(depth)), depth_loss_weight=depth_loss_weight)
    warmup = make_train_step(graphdef, tx, schedule, **kwargs, backbone_only=True)
    adaptive = make_train_step(graphdef, tx, schedule, **kwargs)
    opt_state = tx.init(params)
    key = jax.random.key(0)
    with TrainBatches(demo_source(scale=2), batch_size=8, patch_size=16, scale=2, seed=0) as batches:
        for k in range(STEPS):
            b = next(batches)
            step = warmup if k < WARMUP else adaptive
            params, opt_state, metrics = step(params, opt_state, b["lr"], b["hr"], np.int32(k), key)
    assert np.isfinite(float(metrics["loss"]))
    return nnx.merge(graphdef, params), depth


def held_out_depths(model, depth: int) -> list[tuple[float, float, float]]:
    """(d, mean of the depth map, mean executed depth) on the held-out demo photo at d = D/4 .. D."""
    lr = jnp.asarray(demo_source(scale=2, split="valid")[0].lr, jnp.float32)[None]
    out = []
    for d in (depth / 4, depth / 2, 3 * depth / 4, float(depth)):
        depth_map = model.depth_map_of(lr, jnp.float32(d))
        out.append((d, float(depth_map.mean()), float(mean_executed_depth(depth_map, depth)[0])))
    return out


def test_the_adapter_obeys_the_desired_depth_after_a_short_training():
    model, depth = trained(DEMO_LAMBDA_TIMES_DEPTH / 3)
    rows = held_out_depths(model, depth)
    print("d, mean depth map, mean executed depth:", rows)
    for d, mean_map, _ in rows:
        assert mean_map <= 1.1 * d, f"d={d}: the depth map's mean {mean_map:.3f} exceeds 1.1 d"
    executed = [e for _, _, e in rows]
    assert all(a < b for a, b in itertools.pairwise(executed)), executed
    # Compute follows the knob: at D/4 clearly less than at D, and the full depth is not saturated.
    assert executed[0] < 0.6 * executed[-1] and executed[-1] < 0.95 * depth, executed


def test_without_the_depth_loss_the_same_training_overspends():
    model, depth = trained(0.0)
    (d, mean_map, executed), *_ = held_out_depths(model, depth)
    assert mean_map > 2 * d and executed > 0.9 * depth, (d, mean_map, executed)
