"""Compile time and steady-state dense forward time of the AdaDSR presets on this machine.

Run: python benchmarks/model_forward.py [--models adaedsr,adaedsr_small] [--scale 2] [--size 64]
Prints one row per model and residual-stack mode (rolled `lax.scan` vs unrolled): compile time
(lowering + XLA compilation, no execution) and the median forward time of a batch of one LR image.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adadsr_jax


def time_model(name: str, scale: int, size: int, repeats: int, unroll: bool) -> dict:
    model = adadsr_jax.create_model(name, scale=scale, rngs=nnx.Rngs(0), scan_unroll=unroll)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, lr, d: nnx.merge(graphdef, state)(lr, desired_depth=d)[0])
    lr = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), jnp.float32)
    depth = jnp.float32(model.config.max_depth / 2)
    start = time.perf_counter()
    compiled = forward.lower(state, lr, depth).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(state, lr, depth))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, lr, depth))
        times.append(time.perf_counter() - start)
    return {
        "model": name,
        "scale": scale,
        "lr_size": size,
        "scan": "unrolled" if unroll else "rolled",
        "compile_s": round(compile_s, 2),
        "forward_ms_median": round(1e3 * float(np.median(times)), 1),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="adaedsr,adaedsr_small")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, load {load}")
    rows = [
        time_model(name, args.scale, args.size, args.repeats, unroll)
        for name in args.models.split(",")
        for unroll in (False, True)
    ]
    print(f"{'model':<16}{'scale':>6}{'LR':>6}{'scan':>10}{'compile (s)':>13}{'forward (ms)':>14}")
    for r in rows:
        print(
            f"{r['model']:<16}{r['scale']:>6}{r['lr_size']:>6}{r['scan']:>10}"
            f"{r['compile_s']:>13}{r['forward_ms_median']:>14}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
