"""Benchmark the sparse 3x3 convolution and the sparse AdaDSR forward against XLA's dense convolution.

Not part of the test suite. Every ratio compares timings taken in the same run, interleaved (dense,
sparse, dense, sparse, ...) and reduced with the minimum, so a shared, loaded machine biases both sides
alike. Prints tables and writes JSON.

  python benchmarks/sparse_conv.py                      # CPU tables (block + whole model)
  python benchmarks/sparse_conv.py --gpu                # GPU tables + Pallas-vs-JAX check (< 5 min)
  python benchmarks/sparse_conv.py --only block --channels 64 --sizes 256 --fractions 0.3 0.5
"""

from __future__ import annotations

import argparse
import functools
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

from adadsr_jax.kernels import (
    active_list,
    dilate3x3,
    from_padded_flat,
    layout_of,
    sparse_conv3x3,
    to_padded_flat,
)
from adadsr_jax.macs import model_macs
from adadsr_jax.models.sparse_stacks import block_convs


def load() -> str:
    """The 1/5/15-minute load averages (the machine may be shared)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def coherent_mask(h: int, w: int, frac: float, seed: int) -> np.ndarray:
    """Thresholded smooth noise (like a real depth map): [1, h, w] bool with `frac` of pixels set."""
    z = ndimage.gaussian_filter(np.random.RandomState(seed).randn(h, w), sigma=max(h, w) / 32)
    return (z > np.quantile(z, 1 - frac))[None]


def iid_mask(h: int, w: int, frac: float, seed: int) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w) < frac)[None]


def time_interleaved(fns: dict[str, Callable[[], jax.Array]], reps: int) -> dict[str, float]:
    """Min time (ms) of each fn, run round-robin `reps` times after one warm-up call each.

    Records wall time (key) and process CPU time (key + "_cpu"): on a shared, loaded machine the CPU
    time of this process is the steadier measure of the work done (it sums all of XLA's threads).
    """
    for f in fns.values():
        jax.block_until_ready(f())
    best = {k: float("inf") for k in fns} | {k + "_cpu": float("inf") for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(f())
            best[k] = min(best[k], (time.perf_counter() - t) * 1e3)
            best[k + "_cpu"] = min(best[k + "_cpu"], (time.process_time() - c) * 1e3)
    return best


def conv(x: jax.Array, k: jax.Array, b: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b.astype(y.dtype)


def block_fns(x, mask, params, backends, tile):
    """Jitted closures for one EDSR block: dense, dense x mask, and sparse on each backend."""
    k0, b0, k1, b1 = params
    m = mask.astype(x.dtype)[..., None]

    dense = jax.jit(lambda x: x + conv(jax.nn.relu(conv(x, k0, b0)), k1, b1))
    dense_mask = jax.jit(lambda x, m: x + m * conv(jax.nn.relu(conv(x, k0, b0)), k1, b1))
    layout = layout_of(x)
    rows_dil, count_dil = active_list(dilate3x3(mask))
    rows_act, count_act = active_list(mask)
    xf = to_padded_flat(x)
    coef = to_padded_flat(m.astype(jnp.float32))[:, 0]

    def sparse_block(xf, hf, backend):
        conv = functools.partial(sparse_conv3x3, backend=backend, tile=tile)
        lists = (rows_dil, count_dil, rows_act, count_act)
        return block_convs(conv, lists, layout, xf, hf, params, xf, "residual", coef)[1]

    fns = {"dense": lambda: dense(x), "dense_x_mask": lambda: dense_mask(x, m)}
    hf = jnp.zeros_like(xf)
    for backend in backends:
        f = jax.jit(lambda xf, hf, backend=backend: sparse_block(xf, hf, backend))
        fns[backend] = lambda f=f: f(xf, hf)
    index = jax.jit(lambda m: (active_list(dilate3x3(m)), active_list(m)))
    fns["index_build"] = lambda: index(mask)
    check = {
        b: from_padded_flat(jax.jit(lambda xf, hf, b=b: sparse_block(xf, hf, b))(xf, hf), layout)
        for b in backends
    }
    return fns, check, dense_mask(x, m), float(dilate3x3(mask).mean())


def run_block_table(args) -> list[dict]:
    rows = []
    backends = ["jax"] + (["pallas"] if args.gpu else [])
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    header = (
        f"{'C':>4} {'size':>5} {'mask':>9} {'act':>5} {'dil':>5} {'dense':>9} {'dense*m':>9} "
        + " ".join(f"{b:>9} {b + '/d':>8}" for b in backends)
    )
    print(f"\n== per-block (EDSR block: 2 convs, {args.dtype}), ms, min of {args.reps}; load {load()}")
    print(header)
    for c in args.channels:
        rng = np.random.RandomState(c)
        params = (
            jnp.asarray(rng.randn(3, 3, c, c) / np.sqrt(9 * c), dtype),
            jnp.asarray(rng.randn(c) * 0.1, dtype),
            jnp.asarray(rng.randn(3, 3, c, c) / np.sqrt(9 * c), dtype),
            jnp.asarray(rng.randn(c) * 0.1, dtype),
        )
        for size in args.sizes:
            x = jnp.asarray(rng.randn(1, size, size, c), dtype)
            for kind in args.masks:
                for frac in args.fractions:
                    make = coherent_mask if kind == "coherent" else iid_mask
                    mask = jnp.asarray(make(size, size, frac, seed=int(frac * 100)))
                    fns, check, ref, dil = block_fns(x, mask, params, backends, args.tile)
                    errs = {
                        b: float(jnp.abs(check[b].astype(jnp.float32) - ref.astype(jnp.float32)).max())
                        for b in check
                    }
                    t = time_interleaved(fns, args.reps)
                    row = {
                        "C": c,
                        "size": size,
                        "mask": kind,
                        "active": float(mask.mean()),
                        "dilated": dil,
                        "dtype": args.dtype,
                        "ms": t,
                        "max_abs_err": errs,
                        "load": load(),
                        "ratio": {b: t[b] / t["dense"] for b in backends},
                        "cpu_time_ratio": {b: t[b + "_cpu"] / t["dense_cpu"] for b in backends},
                    }
                    rows.append(row)
                    print(
                        f"{c:>4} {size:>5} {kind:>9} {row['active']:>5.2f} {dil:>5.2f} {t['dense']:>9.2f} "
                        f"{t['dense_x_mask']:>9.2f} "
                        + " ".join(f"{t[b]:>9.2f} {t[b] / t['dense']:>8.2f}" for b in backends)
                        + " ".join(f" {t[b + '_cpu'] / t['dense_cpu']:>8.2f}" for b in backends)
                        + f"   (index {t['index_build']:.2f} ms; max err vs dense*m "
                        + ", ".join(f"{b} {e:.1e}" for b, e in errs.items())
                        + ")",
                        flush=True,
                    )
    return rows


def run_model_table(args) -> list[dict]:
    from flax import nnx
    from skimage import data

    from adadsr_jax.models import create_model

    model = create_model(args.model, scale=2, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    # A real photo (docs/data.md): a size x size crop of scikit-image's astronaut as the LR input.
    s = args.model_size
    lr = jnp.asarray(data.astronaut()[:s, 128 : 128 + s].astype(np.float32))[None]
    dense = jax.jit(lambda st, x, d: nnx.merge(graph, st)(x, desired_depth=d))
    sparse = {
        b: jax.jit(
            lambda st, x, d, b=b: nnx.merge(graph, st)(x, desired_depth=d, sparse=True, sparse_backend=b)
        )
        for b in args.model_backends
    }
    d_max = model.config.max_depth
    depths = args.depths or [d_max * q / 4 for q in (1, 2, 3, 4)]
    print(
        f"\n== whole model {args.model} (random weights) x2 on astronaut {s}x{s} LR, ms, min of {args.reps}; "
        f"load {load()}"
    )
    print(
        f"{'d':>6} {'mean_dep':>8} {'macs/dense':>10} {'dense ms':>9} "
        + " ".join(f"{b:>9} {b + '/d':>8}" for b in sparse)
    )
    rows = []
    for d in depths:
        dd = jnp.float32(d)
        sr_dense, aux = dense(state, lr, dd)
        macs, dense_macs = (float(v[0]) for v in model_macs(model.config, 2, lr.shape, aux["depth_map"]))
        macs_ratio = macs / dense_macs
        errs = {b: float(jnp.abs(f(state, lr, dd)[0] - sr_dense).max()) for b, f in sparse.items()}
        fns = {"dense": lambda dd=dd: dense(state, lr, dd)[0]}
        fns |= {b: (lambda f=f, dd=dd: f(state, lr, dd)[0]) for b, f in sparse.items()}
        t = time_interleaved(fns, args.reps)
        row = {
            "model": args.model,
            "lr_size": s,
            "desired_depth": d,
            "mean_depth": float(aux["mean_depth"][0]),
            "macs": macs,
            "dense_macs": dense_macs,
            "macs_ratio": macs_ratio,
            "ms": t,
            "time_ratio": {b: t[b] / t["dense"] for b in sparse},
            "max_abs_err": errs,
            "load": load(),
        }
        rows.append(row)
        print(
            f"{d:>6.2f} {row['mean_depth']:>8.2f} {macs_ratio:>10.3f} {t['dense']:>9.1f} "
            + " ".join(
                f"{t[b]:>9.1f} {t[b] / t['dense']:>8.2f} {t[b + '_cpu'] / t['dense_cpu']:>5.2f}"
                for b in sparse
            ),
            flush=True,
        )
    return rows


def run_index_table(args) -> list[dict]:
    """Nested lists (one sort per stack) vs per-block jnp.nonzero, on a whole sparse EDSR stack."""
    from adadsr_jax.models.sparse_stacks import sparse_edsr_stack

    c, blocks, size = 32, 8, args.model_size
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(1, size, size, c), jnp.float32)
    params = tuple(
        jnp.asarray(rng.randn(*shape) * 0.05, jnp.float32)
        for shape in [(blocks, 3, 3, c, c), (blocks, c)] * 2
    )
    smooth = ndimage.gaussian_filter(rng.randn(size, size), sigma=size / 32)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    print(
        f"\n== index lists: sparse EDSR stack C={c} D={blocks} {size}x{size}, ms, min of {args.reps}; "
        f"load {load()}"
    )
    print(f"{'mean depth':>10} {'nested':>9} {'per_block':>9} {'ratio':>6}")
    rows = []
    for scale in (2.0, 4.0, 6.0):
        depth = jnp.asarray(smooth * 2 * scale, jnp.float32)[None, ..., None]
        fns = {
            mode: jax.jit(
                lambda x, d, mode=mode: sparse_edsr_stack(
                    x, d, params, res_scale=1.0, backend="jax", index_mode=mode
                )
            )
            for mode in ("nested", "per_block")
        }
        t = time_interleaved({m: (lambda f=f, depth=depth: f(x, depth)) for m, f in fns.items()}, args.reps)
        mean_depth = float(jnp.ceil(jnp.clip(depth, 0, blocks)).mean())
        rows.append({"mean_depth": mean_depth, "ms": t, "load": load()})
        print(
            f"{mean_depth:>10.2f} {t['nested']:>9.1f} {t['per_block']:>9.1f} "
            f"{t['nested'] / t['per_block']:>6.2f}"
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU sizes, bf16, the Pallas kernel and its check")
    p.add_argument("--only", choices=["block", "model", "index"], default=None)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--masks", nargs="+", default=None, choices=["coherent", "iid"])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--tile", type=int, default=None, help="rows per tile of the JAX path (default: its own)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--model", default="adaedsr_small")
    p.add_argument("--model-size", type=int, default=256)
    p.add_argument("--model-backends", nargs="+", default=["auto", "jax"])
    p.add_argument("--depths", type=float, nargs="+", default=None)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results_{cpu,gpu}.json)")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [500, 1000] if args.gpu else [128, 256]
    if args.masks is None:
        # GPU: coherent masks only by default, to stay within a 5-minute device slot.
        args.masks = ["coherent"] if args.gpu else ["coherent", "iid"]
    if args.dtype is None:
        args.dtype = "bfloat16" if args.gpu else "float32"
    if args.gpu and jax.default_backend() != "gpu":
        sys.exit(f"--gpu needs a GPU backend; JAX has {jax.default_backend()!r}")
    if args.gpu:
        args.model_backends = ["auto", "pallas", "jax"]
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, {platform.node()}"
    )
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    result = {"args": vars(args), "jax": jax.__version__, "device": str(jax.devices()[0].device_kind)}
    if args.only in (None, "block"):
        result["block"] = run_block_table(args)
    if args.only in (None, "model"):
        result["model"] = run_model_table(args)
    if args.only in (None, "index"):
        result["index"] = run_index_table(args)
    out = args.out or os.path.join(os.path.dirname(__file__), f"results_{'gpu' if args.gpu else 'cpu'}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
