"""GPU checks of the sparse path: correctness of every backend, Pallas tile configurations, whole-model speed.

Not part of the test suite (CI has no GPU). `benchmarks/gpu_check.sh` runs every section on a GPU machine
within one device slot; each section is its own process, so a crash in one leaves the others' results.

  python benchmarks/gpu_check.py kernels --out DIR   # every backend vs a float64 host oracle
  python benchmarks/gpu_check.py models --out DIR    # sparse AdaEDSR / AdaRCAN forward vs dense
  python benchmarks/gpu_check.py tune --out DIR      # Pallas tile configurations vs XLA dense, one block
  python benchmarks/gpu_check.py speed --out DIR     # paper AdaEDSR x2 at 30% / 50% executed MACs

Correctness: float32 runs under `jax.default_matmul_precision("float32")` (XLA and Triton both use TF32
for float32 matmuls by default on this GPU; the float32 error at default precision is printed beside it);
bfloat16 multiplies in bfloat16 and accumulates in float32. Errors are max |out - ref| / max |ref|.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conv_oracle import reference as oracle
from sparse_conv import block_fns, coherent_mask, load, time_interleaved

from adadsr_jax.kernels import (
    SparseConv,
    active_list,
    dilate3x3,
    from_padded_flat,
    layout_of,
    sparse_conv3x3,
    sparse_conv3x3_pallas,
    to_padded_flat,
)
from adadsr_jax.kernels.sparse_conv_pallas import PallasTiles
from adadsr_jax.models.sparse_stacks import block_convs

TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def test_masks(n: int, h: int, w: int) -> dict[str, np.ndarray]:
    """[n, h, w] bool: empty, one pixel, coherent 30% (smooth noise), iid 40%, every border, full."""
    rng = np.random.RandomState(0)
    z = ndimage.gaussian_filter(rng.randn(n, h, w), sigma=(0, 3, 3))
    one = np.zeros((n, h, w), bool)
    one[n - 1, h // 2, w // 3] = True
    border = np.zeros((n, h, w), bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    return {
        "empty": np.zeros((n, h, w), bool),
        "one_pixel": one,
        "coherent": z > np.quantile(z, 0.7),
        "iid": rng.rand(n, h, w) < 0.4,
        "borders": border,
        "full": np.ones((n, h, w), bool),
    }


def relative_error(out, ref) -> float:
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


EPILOGUES = ("relu", "residual", "masked")


def kernel_cases(args) -> list[dict]:
    """Every (channels, dtype, backend, epilogue, mask) against the float64 oracle of the same (rounded)
    inputs. One jit per (channels, dtype, backend, precision), all three epilogues in it; masks change
    only the lists. float32 at default (TF32) precision: Pallas and dense only, reported, not judged."""
    n, h, w = 2, 37, 45
    layout = layout_of(jnp.zeros((n, h, w, 1)))
    masks = test_masks(n, h, w)
    out = []
    for c in args.channels:
        rng = np.random.RandomState(c)
        raw = {"x": (n, h, w, c), "dst": (n, h, w, c), "k": (3, 3, c, c), "b": (c,)}
        raw = {key: rng.randn(*shape) / (np.sqrt(9 * c) if key == "k" else 1) for key, shape in raw.items()}
        coef = rng.rand(n, h, w).astype(np.float32)
        for dtype_name in args.dtypes:
            # The oracle sees exactly the values the kernels see (rounded to the map dtype).
            arrays = {key: jnp.asarray(v, DTYPES[dtype_name]) for key, v in raw.items()}
            rounded = {key: np.asarray(v.astype(jnp.float32), np.float64) for key, v in arrays.items()}
            refs = {
                (e, m): oracle(rounded["x"], rounded["dst"], mask, rounded["k"], rounded["b"], e, coef)
                for e in EPILOGUES
                for m, mask in masks.items()
            }
            for backend in args.backends:
                precisions = ["float32"] if dtype_name == "float32" else ["default"]
                if dtype_name == "float32" and backend in ("pallas", "dense"):
                    precisions.append("default")
                for precision in precisions:
                    case = {"C": c, "dtype": dtype_name, "precision": precision, "backend": backend}
                    out += _kernel_case(case, arrays, coef, masks, layout, refs, args.interpret)
    return out


def _kernel_case(case: dict, arrays, coef, masks, layout, refs, interpret: bool) -> list[dict]:
    def run(src, dst, rows, count, k, b, coef_flat):
        convs = {
            e: SparseConv(
                src=src,
                dst=dst,
                rows=rows,
                count=count,
                kernel=k,
                bias=b,
                layout=layout,
                epilogue=e,
                coef=None if e == "relu" else coef_flat,
            )
            for e in EPILOGUES
        }
        return {
            e: sparse_conv3x3(conv, backend=case["backend"], interpret=interpret) for e, conv in convs.items()
        }

    judged = case["precision"] != "default" or case["dtype"] != "float32"
    precision = case["precision"]
    out = []
    with jax.default_matmul_precision(precision) if precision != "default" else contextlib.nullcontext():
        f = jax.jit(run)
        src, dst = to_padded_flat(arrays["x"]), to_padded_flat(arrays["dst"])
        coef_flat = to_padded_flat(jnp.asarray(coef)[..., None])[:, 0]
        for name, mask in masks.items():
            try:
                rows, count = active_list(jnp.asarray(mask))
                got = f(src, dst, rows, count, arrays["k"], arrays["b"], coef_flat)
                got = {e: from_padded_flat(v, layout).astype(jnp.float32) for e, v in got.items()}
                errors = {e: relative_error(got[e], refs[e, name]) for e in EPILOGUES}
            except Exception as exc:  # a lowering or runtime error is a result: record it, go on
                errors = dict.fromkeys(EPILOGUES, f"{type(exc).__name__}: {exc}"[:2000])
                traceback.print_exc()
            for e, err in errors.items():
                passed = (isinstance(err, float) and err <= TOLERANCE[case["dtype"]]) if judged else None
                out.append(case | {"epilogue": e, "mask": name, "rel_err": err, "passed": passed})
            if all(isinstance(err, str) for err in errors.values()) and len(out) == len(EPILOGUES):
                break  # the first mask failed: a compile error, the same for every mask
        bad = [f"{r['epilogue']}/{r['mask']}" for r in out if r["passed"] is False]
        worst = max((r["rel_err"] for r in out if isinstance(r["rel_err"], float)), default=float("nan"))
    status = "info only" if not judged else ("FAIL " + ", ".join(bad) if bad else "ok")
    print(
        f"C={case['C']:<4} {case['dtype']:<9} {precision:<8} {case['backend']:<7} max rel err {worst:.2e} "
        f"over {len(out)} cases: {status}",
        flush=True,
    )
    return out


def model_cases(args) -> list[dict]:
    """Sparse forward (each backend) vs the dense forward of the same model and d, float32 at full
    precision, on a photo crop; the paper presets (long compiles) on "auto" only."""
    from skimage import data

    lr = jnp.asarray(data.astronaut()[100:148, 140:180].astype(np.float32))[None]  # 48 x 40
    out = []
    with jax.default_matmul_precision("float32"):
        for name in args.models:
            backends = args.backends if name.endswith(("_small", "_tiny")) else ["auto"]
            out += _model_case(name, lr, backends)
    return out


def _spread_model(name: str, lr: jax.Array, **overrides):
    """A preset with random weights whose adapter reaches most blocks at d = D (dense_peers)."""
    from dense_peers import spread_random_adapter
    from flax import nnx

    from adadsr_jax import create_model

    model = create_model(name, scale=2, rngs=nnx.Rngs(0), **overrides)
    return model, spread_random_adapter(model, lr)


def _forwards(model, backends: list[str]):
    """(state, dense(state, lr, d) -> (sr, aux), {backend: sparse(state, lr, d) -> (sr, aux)})."""
    from flax import nnx

    graph, state = nnx.split(model)
    dense = jax.jit(lambda st, x, d: nnx.merge(graph, st)(x, desired_depth=d))

    def sparse(st, x, d, backend):
        return nnx.merge(graph, st)(x, desired_depth=d, sparse=True, sparse_backend=backend)

    backends = [b for b in backends if b != "tiles" or model.config.backbone == "edsr"]
    sparse = {b: jax.jit(functools.partial(sparse, backend=b)) for b in backends}
    return state, dense, sparse


def _model_case(name: str, lr: jax.Array, backends: list[str]) -> list[dict]:
    model, spread = _spread_model(name, lr)
    state, dense, sparse = _forwards(model, backends)
    out = []
    for b, f in sparse.items():
        for q in (0.25, 0.5, 1.0):
            d = jnp.float32(q * model.config.max_depth)
            ref, aux = dense(state, lr, d)
            row = {"model": name, "backend": b, "d": float(d), "adapter_scale": spread}
            row["mean_depth"] = float(aux["mean_depth"][0])
            try:
                sr, aux_s = f(state, lr, d)
                row["rel_err"] = relative_error(sr, np.asarray(ref, np.float64))
                same_map = np.array_equal(np.asarray(aux_s["depth_map"]), np.asarray(aux["depth_map"]))
                row |= {"same_depth_map": same_map, "passed": row["rel_err"] <= 1e-4 and same_map}
            except Exception as e:
                row |= {"error": f"{type(e).__name__}: {e}"[:2000], "passed": False}
                traceback.print_exc()
            out.append(row)
            print(
                f"{name:<14} d={float(d):>6.2f} mean depth {row['mean_depth']:>6.2f} {b:<7} rel err "
                f"{row.get('rel_err', float('nan')):.2e} {'ok' if row['passed'] else 'FAIL'}",
                flush=True,
            )
    return out


# (block_rows, block_cout or None for the default, num_warps, num_stages)
PALLAS_CONFIGS = [
    (64, None, 4, 2),
    (128, None, 4, 2),
    (128, None, 8, 2),
    (128, None, 8, 3),
    (256, None, 8, 2),
]
PALLAS_CONFIGS += [(64, 64, 4, 2), (128, 64, 4, 2), (128, 256, 8, 2), (64, 256, 8, 2)]


def tune_cases(args) -> list[dict]:
    """One EDSR block (two convs) on the Pallas kernel with each tile configuration (block_rows,
    num_warps, num_stages) vs XLA's dense block, coherent masks: what the defaults should be."""
    print(f"\n== Pallas tile configurations, one EDSR block, {args.dtype} {args.size}^2; load {load()}")
    dtype = DTYPES[args.dtype]
    out = []
    for c in args.channels:
        rng = np.random.RandomState(c)
        shapes = [(3, 3, c, c), (c,)] * 2
        params = tuple(jnp.asarray(rng.randn(*sh) / np.sqrt(9 * c), dtype) for sh in shapes)
        x = jnp.asarray(rng.randn(1, args.size, args.size, c), dtype)
        for frac in args.fractions:
            mask = jnp.asarray(coherent_mask(args.size, args.size, frac, seed=int(frac * 100)))
            out.append(_tune_block(x, mask, params, args.reps))
    return out


def _tune_block(x: jax.Array, mask: jax.Array, params, reps: int) -> dict:
    fns, _, ref, dil = block_fns(x, mask, params, [], None)
    fns = {"dense": fns["dense"]}
    ref = np.asarray(ref.astype(jnp.float32), np.float64)
    layout = layout_of(x)
    lists = (*active_list(dilate3x3(mask)), *active_list(mask))
    xf = to_padded_flat(x)
    hf = jnp.zeros_like(xf)
    coef = to_padded_flat(mask.astype(jnp.float32)[..., None])[:, 0]

    def block(xf, hf, conv):
        return block_convs(conv, lists, layout, xf, hf, params, xf, "residual", coef)[1]

    errs = {}
    for r, bc, w, s in PALLAS_CONFIGS:
        if bc is not None and bc > x.shape[-1]:
            continue
        key = f"r{r}_c{bc or 'default'}_w{w}_s{s}"
        tiles = PallasTiles(block_rows=r, block_cout=bc, num_warps=w, num_stages=s)
        conv = functools.partial(sparse_conv3x3_pallas, tiles=tiles)
        f = jax.jit(functools.partial(block, conv=conv))
        try:
            errs[key] = relative_error(from_padded_flat(f(xf, hf), layout).astype(jnp.float32), ref)
            fns[key] = functools.partial(f, xf, hf)
        except Exception as e:
            errs[key] = f"{type(e).__name__}: {e}"[:300]
    t = time_interleaved(fns, reps)
    ranked = sorted((k for k in fns if k != "dense"), key=lambda k: t[k])
    c = x.shape[-1]
    row = {"C": c, "size": x.shape[1], "active": float(mask.mean()), "dilated": dil, "dtype": str(x.dtype)}
    row |= {"ms": {k: t[k] for k in fns}, "rel_err": errs, "best": ranked[:3], "load": load()}
    line = f"C={c:<4} active {row['active']:.2f} (dilated {dil:.2f}) dense {t['dense']:.3f} ms"
    if ranked:
        line += "; best " + ", ".join(f"{k} {t[k]:.3f} ms ({t[k] / t['dense']:.2f}x)" for k in ranked[:3])
        line += f"; worst {ranked[-1]} {t[ranked[-1]]:.3f} ms"
    print(line, flush=True)
    failed = {k: v for k, v in errs.items() if isinstance(v, str)}
    if failed:
        print(f"   failed configurations: {failed}", flush=True)
    return row


def speed_cases(args) -> list[dict]:
    """Paper AdaEDSR x2 (random weights, spread adapter) at 30% / 50% executed MACs: each sparse backend vs
    XLA's dense AdaEDSR and plain EDSR forward of the same size, in the same run."""
    from skimage import data

    out = []
    for size in args.sizes:  # the LR crop dense_peers.py takes, up to 384 x 384
        lr = jnp.asarray(np.ascontiguousarray(data.astronaut()[:size, 128 : 128 + size]).astype(np.float32))[
            None
        ]
        out.append(_speed_at(lr, args.backends, args.fractions, args.reps))
    return out


def _speed_at(lr: jax.Array, backends: list[str], fractions: list[float], reps: int) -> dict:
    from dense_peers import depth_for_fraction
    from flax import nnx

    from adadsr_jax import create_model

    ada, spread = _spread_model("adaedsr", lr)
    cfg = ada.config
    plain = create_model(
        "edsr", scale=2, rngs=nnx.Rngs(1), num_blocks=cfg.num_blocks, num_features=cfg.num_features
    )
    depths = {round(100 * f): depth_for_fraction(ada, lr, f) for f in fractions}
    state, dense, sparse = _forwards(ada, backends)
    plain_state, plain_dense, _ = _forwards(plain, [])
    fns = {
        "edsr_dense": functools.partial(plain_dense, plain_state, lr, jnp.float32(0)),
        "adaedsr_dense": functools.partial(dense, state, lr, jnp.float32(cfg.max_depth)),
    }
    first_call_s, errors = {}, {}
    for b, f in sparse.items():
        for pct, (d, _) in depths.items():
            key = f"{b}_{pct}"
            try:
                t0 = time.perf_counter()
                got = jax.block_until_ready(f(state, lr, jnp.float32(d))[0])
                first_call_s[key] = time.perf_counter() - t0
                errors[key] = relative_error(got, np.asarray(dense(state, lr, jnp.float32(d))[0], np.float64))
                fns[key] = functools.partial(f, state, lr, jnp.float32(d))
            except Exception as e:
                first_call_s[key] = f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc()
    t = time_interleaved({k: (lambda f=f: f()[0]) for k, f in fns.items()}, reps)
    row = {"lr_size": lr.shape[1], "adapter_scale": spread, "ms": {k: t[k] for k in fns}}
    row |= {"first_call_s": first_call_s, "rel_err_vs_dense": errors, "load": load()}
    row |= {"macs_fraction": {p: r for p, (_, r) in depths.items()}}
    row["desired_depth"] = {p: d for p, (d, _) in depths.items()}
    print(f"\n== paper AdaEDSR x2, LR {lr.shape[1]}^2: ms (min of {reps}), ratio to AdaEDSR dense")
    for k in fns:
        print(f"  {k:<16} {t[k]:>9.3f} ms {t[k] / t['adaedsr_dense']:>6.2f}x", flush=True)
    print(f"  executed MACs {row['macs_fraction']}, d {row['desired_depth']}; first calls (s) {first_call_s}")
    print(f"  max rel err vs dense (default precision): {errors}", flush=True)
    return row


SECTIONS = {"kernels": kernel_cases, "models": model_cases, "tune": tune_cases, "speed": speed_cases}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=sorted(SECTIONS))
    p.add_argument("--out", default=".", help="folder for <section>.json")
    p.add_argument("--channels", type=int, nargs="+", default=None)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="tune: map dtype")
    p.add_argument("--backends", nargs="+", default=None)
    p.add_argument("--models", nargs="+", default=["adaedsr_small", "adarcan_small", "adaedsr", "adarcan"])
    p.add_argument("--size", type=int, default=500, help="tune: map side")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="speed: LR sides")
    p.add_argument("--fractions", type=float, nargs="+", default=None)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--interpret", action="store_true", help="kernels: Pallas in the interpreter (CPU smoke)")
    args = p.parse_args(argv)
    defaults = {
        "kernels": {"channels": [16, 64, 256], "backends": ["pallas", "jax", "dense", "auto"]},
        "models": {"backends": ["auto", "pallas", "jax", "tiles"]},
        "tune": {"channels": [64, 256], "fractions": [0.5]},
        "speed": {"backends": ["auto", "pallas", "jax", "tiles"], "fractions": [0.3, 0.5]},
    }[args.section]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); load {load()}")
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    t0 = time.perf_counter()
    rows = SECTIONS[args.section](args)
    failed = [r for r in rows if r.get("passed") is False]
    result = {
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "args": vars(args),
        "rows": rows,
    }
    result["seconds"] = time.perf_counter() - t0
    path = Path(args.out) / f"{args.section}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    summary = f"{len(failed)} of {len(rows)} cases failed" if "passed" in (rows[0] if rows else {}) else ""
    print(f"\n{args.section}: {summary} ({result['seconds']:.0f} s); wrote {path}")


if __name__ == "__main__":
    main()
