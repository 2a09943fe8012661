"""Benchmark whole sparse EDSR stacks: XLA's dense masked stack vs the pixel-list stack vs the tiled stack.

Not part of the test suite. For each (C, D, LR size) and each executed fraction (mean over pixels of
ceil(clip(d, 0, D)) / D), the depth map is made from the demo photo's gradient magnitude (like a trained
adapter's: deep on edges and texture, 0 on flat regions), scaled to hit the fraction. Every variant is
compiled once per shape (the depth map is a run-time argument) and timed round-robin, interleaved, with
the median of --reps runs; ratios are against the dense stack of the same run. Prints a table, writes JSON.

  python benchmarks/sparse_stack.py                                   # the default table
  python benchmarks/sparse_stack.py --configs 32:8:150x225 --tiled 4:64 4:64:0.5 8:16 --reps 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from adadsr_jax.data import demo_source
from adadsr_jax.kernels.sparse_tiles import tiled_edsr_stack
from adadsr_jax.models.sparse_stacks import sparse_edsr_stack

RES_SCALE = 0.1


def load() -> str:
    """The 1/5/15-minute load averages (the machine may be shared)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def photo_gradient(h: int, w: int) -> np.ndarray:
    """Smoothed gradient magnitude of the demo photo's LR luminance, normalised by its 97th percentile;
    the whole photo (150 x 225) or a centre crop of h x w. Returns [h, w] float64."""
    lr = demo_source(scale=2, split="valid")[0].lr.astype(np.float64) / 255.0
    if (h, w) != lr.shape[:2]:
        y0, x0 = (lr.shape[0] - h) // 2, (lr.shape[1] - w) // 2
        if y0 < 0 or x0 < 0:
            raise ValueError(f"the demo photo is {lr.shape[:2]}, smaller than {h}x{w}")
        lr = lr[y0 : y0 + h, x0 : x0 + w]
    grad = ndimage.gaussian_filter(
        np.hypot(*(ndimage.sobel(lr @ np.array([0.299, 0.587, 0.114]), a) for a in (0, 1))), 1.5
    )
    return grad / np.quantile(grad, 0.97)


def executed_fraction(depth: np.ndarray, blocks: int) -> float:
    return float(np.ceil(np.clip(depth, 0, blocks)).mean() / blocks)


def depth_for_fraction(grad: np.ndarray, blocks: int, frac: float) -> np.ndarray:
    """d = a * grad - 1 (flat regions at depth 0), with a bisected so the executed fraction is `frac`."""
    lo, hi = 0.0, 1e4
    for _ in range(60):
        a = (lo + hi) / 2
        lo, hi = (a, hi) if executed_fraction(a * grad - 1, blocks) < frac else (lo, a)
    return np.clip(hi * grad - 1, 0, blocks + 1)


def dense_masked_stack(x: jax.Array, depth: jax.Array, params, res_scale: float) -> jax.Array:
    """Every block on every pixel with XLA's conv, masked by clip(d - l, 0, 1)."""

    def conv(x, k, b):
        y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b

    def block(x, p):
        k0, b0, k1, b1, index = p
        m = jnp.clip(depth - index.astype(jnp.float32), 0.0, 1.0)
        return x + res_scale * m * conv(jax.nn.relu(conv(x, k0, b0)), k1, b1), None

    indices = jnp.arange(params[0].shape[0], dtype=jnp.int32)
    return jax.lax.scan(block, x, (*params, indices))[0]


def time_interleaved(fns: dict[str, Callable[[], jax.Array]], reps: int) -> dict[str, float]:
    """Median wall time (ms) of each fn over `reps` round-robin runs, after one warm-up call each; also
    the median process CPU time (key + "_cpu"), steadier on a shared machine."""
    for f in fns.values():
        jax.block_until_ready(f())
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(f())
            wall[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)
    return {k: float(np.median(v)) for k, v in wall.items()} | {
        k + "_cpu": float(np.median(v)) for k, v in cpu.items()
    }


def parse_config(s: str) -> tuple[int, int, int, int]:
    """ "C:D:HxW" -> (C, D, H, W)."""
    c, d, size = s.split(":")
    h, w = size.split("x")
    return int(c), int(d), int(h), int(w)


def parse_tiled(s: str) -> dict:
    """ "T:K" or "T:K:F" -> tiled_edsr_stack keyword arguments (F: dense_block_fraction)."""
    tile, chunk, *fraction = s.split(":")
    kw = {"tile": int(tile), "chunk": int(chunk)}
    return kw | ({"dense_block_fraction": float(fraction[0])} if fraction else {})


def run_config(config: str, tiled: list[str], fractions: list[float], reps: int, pixel: bool) -> list[dict]:
    c, blocks, h, w = parse_config(config)
    rng = np.random.RandomState(c + blocks)
    params = tuple(
        jnp.asarray(rng.randn(*shape) * scale, jnp.float32)
        for shape, scale in [((blocks, 3, 3, c, c), 1 / np.sqrt(9 * c)), ((blocks, c), 0.1)] * 2
    )
    x = jnp.asarray(rng.randn(1, h, w, c), jnp.float32)
    fns = {"dense": jax.jit(lambda x, d: dense_masked_stack(x, d, params, RES_SCALE))}
    if pixel:
        fns["pixel"] = jax.jit(
            lambda x, d: sparse_edsr_stack(x, d, params, res_scale=RES_SCALE, backend="jax")
        )
    for name in tiled:
        kw = parse_tiled(name)
        fns[name] = jax.jit(lambda x, d, kw=kw: tiled_edsr_stack(x, d, params, res_scale=RES_SCALE, **kw))
    grad = photo_gradient(h, w)
    rows = []
    for frac in fractions:
        depth_np = depth_for_fraction(grad, blocks, frac)
        depth = jnp.asarray(depth_np, jnp.float32)[None, ..., None]
        ref = np.asarray(fns["dense"](x, depth))
        delta = np.abs(ref - np.asarray(x)).max()
        errs = {k: float(np.abs(np.asarray(f(x, depth)) - ref).max() / delta) for k, f in fns.items()}
        t = time_interleaved({k: (lambda f=f, depth=depth: f(x, depth)) for k, f in fns.items()}, reps)
        row = {
            "C": c,
            "D": blocks,
            "size": f"{h}x{w}",
            "executed": executed_fraction(depth_np, blocks),
            "ms": t,
            "ratio": {k: t[k] / t["dense"] for k in fns},
            "cpu_ratio": {k: t[k + "_cpu"] / t["dense_cpu"] for k in fns},
            "rel_err": errs,
            "load": load(),
        }
        rows.append(row)
        print(
            f"C={c:<3} D={blocks:<2} {h}x{w:<4} exec {row['executed']:.2f}  dense {t['dense']:8.1f} ms  "
            + "  ".join(f"{k} {t[k]:7.1f} ({row['ratio'][k]:.2f})" for k in fns if k != "dense")
            + f"  | max rel err {max(errs.values()):.1e} | load {row['load']}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configs",
        nargs="+",
        default=["32:8:150x225", "32:16:150x225", "64:16:150x225", "32:8:64x64", "256:32:64x64"],
        help="C:D:HxW",
    )
    p.add_argument(
        "--tiled",
        nargs="*",
        default=["4:64:0.5", "4:16:0.5"],
        help="T:K[:F] (tile, chunk, dense block fraction); none after the flag: no tiled stack",
    )
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-pixel", action="store_true", help="skip the pixel-list stack")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results_cpu_stack.json)")
    args = p.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, {platform.node()}"
    )
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print(f"load {load()}; times: median of {args.reps} interleaved runs, ms (ratio vs dense)")
    rows = []
    for config in args.configs:
        rows += run_config(config, args.tiled, args.fractions, args.reps, not args.no_pixel)
    out = args.out or os.path.join(os.path.dirname(__file__), f"results_{jax.default_backend()}_stack.json")
    with open(out, "w") as f:
        json.dump({"args": vars(args), "jax": jax.__version__, "rows": rows}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
