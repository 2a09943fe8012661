"""Training-step throughput: compiled step time of a model preset on random patches.

    python benchmarks/train_step.py --model adaedsr --scale 2 --batch 16 --patch 48 --steps 3
    python benchmarks/train_step.py --model adaedsr --compare edsr   # adapter + mask overhead
    python benchmarks/train_step.py --model adaedsr_small --patch 32 --cpu-devices 1   # one XLA CPU device

The step is the real one (loss, gradients, Adam update) on all local devices; compile time is reported
separately and excluded from the rate. On a CPU host the devices are split as train.py splits them
(`parallel.default_cpu_devices`: one per core, within the batch's divisors) unless --cpu-devices pins them.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adadsr_jax.models import AdaDSR, get_model_config
from adadsr_jax.training import parallel
from adadsr_jax.training.config import method_defaults
from adadsr_jax.training.optim import make_optimizer
from adadsr_jax.training.step import make_train_step


def time_train_step(name: str, *, scale: int, batch: int, patch: int, steps: int, overrides=None) -> dict:
    """Seconds per compiled train step (median of `steps` after one warm-up) and the compile time."""
    overrides = dict(overrides or {})
    model_cfg = get_model_config(name, **overrides)
    depth_loss_weight, depth_range = method_defaults(model_cfg)
    graphdef, _ = nnx.split(
        nnx.eval_shape(lambda: AdaDSR(model_cfg, scale=scale, rngs=nnx.Rngs(0))), nnx.Param
    )
    init = jax.jit(
        lambda key: nnx.to_pure_dict(nnx.state(AdaDSR(model_cfg, scale=scale, rngs=nnx.Rngs(key)), nnx.Param))
    )
    tx, schedule = make_optimizer(
        {"name": "adam", "lr": 1e-4, "schedule": "step", "decay_steps": 200_000, "decay_factor": 0.5}
    )
    mesh = parallel.data_mesh()
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (batch, scale * patch, scale * patch, 3), dtype=np.uint8)
    with jax.set_mesh(mesh):
        rep, bsh = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
        step_fn = make_train_step(
            graphdef,
            tx,
            schedule,
            depth_range=depth_range,
            depth_loss_weight=depth_loss_weight,
            replicated=rep,
        )
        params = jax.device_put(init(jax.random.key(0)), rep)
        opt_state = jax.jit(tx.init, out_shardings=rep)(params)
        gb = parallel.global_batch({"lr": lr, "hr": hr}, bsh)
        key = jax.random.key(0)
        t0 = time.perf_counter()
        params, opt_state, m = step_fn(params, opt_state, gb["lr"], gb["hr"], jnp.int32(0), key)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for k in range(steps):
            t0 = time.perf_counter()
            params, opt_state, m = step_fn(params, opt_state, gb["lr"], gb["hr"], jnp.int32(k + 1), key)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {
        "model": name,
        "overrides": overrides,
        "scale": scale,
        "batch": batch,
        "patch": patch,
        "devices": mesh.devices.size,
        "platform": jax.devices()[0].platform,
        "first_step_s": round(compile_s, 3),
        "step_s": round(step_s, 4),
        "steps_per_s": round(1.0 / step_s, 3),
        "patches_per_s": round(batch / step_s, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="adaedsr")
    p.add_argument("--compare", default=None, help="a plain preset of the same depth, e.g. edsr")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--override", action="append", default=[], help="ModelConfig field=value (both models)")
    p.add_argument("--cpu-devices", type=int, default=None, help="XLA CPU devices (default: as train.py)")
    args = p.parse_args()
    cpu_devices = args.cpu_devices or parallel.default_cpu_devices(args.batch, parallel.usable_cores())
    jax.config.update("jax_num_cpu_devices", cpu_devices)  # before the first device is used
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    kwargs = dict(scale=args.scale, batch=args.batch, patch=args.patch, steps=args.steps, overrides=overrides)
    result = time_train_step(args.model, **kwargs)
    print(json.dumps(result))
    if args.compare:
        base = time_train_step(args.compare, **kwargs)
        print(json.dumps(base))
        print(json.dumps({"adapter_and_mask_overhead": round(result["step_s"] / base["step_s"] - 1.0, 4)}))


if __name__ == "__main__":
    main()
