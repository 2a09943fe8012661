"""Dense peers of the sparse path: XLA dense vs onnxruntime dense (CPU) vs our sparse forward, one run.

Not part of the test suite. For each setting (the paper width, EDSR 32 x 256 on a 64x64 LR crop, and the
demo width, adaedsr_small) it times, interleaved in the same run and reduced with the minimum
(benchmarks/sparse_conv.py's `time_interleaved`):

  - plain EDSR of the same depth and width, dense: XLA (jax.jit) and onnxruntime;
  - AdaEDSR dense masked forward (what the exported graphs compute): XLA and onnxruntime;
  - AdaEDSR sparse (`sparse=True`, backend "auto") at the desired depth whose executed MACs are 30% and
    50% of the dense network's (found per setting by bisection over d on the adapter's depth map, with
    adadsr_jax.evaluation.inference.search_depth, the search behind `--budget`).

Sparse ratios are stated against the faster of the two AdaEDSR dense runs. Weights are random unless
`--demo-checkpoint` gives trained ones for the demo width (the adapter's map then follows the image as in
use); a random adapter's maps stay far below D, so its last conv is scaled by a power of two (printed,
and in the JSON as adapter_output_scale) until d = D runs >= 90% of the dense MACs. The LR input is a
crop of scikit-image's astronaut photo. Prints a table and writes JSON (nothing goes into RESULTS.md).

  python benchmarks/dense_peers.py                                  # both settings (minutes on 2 cores)
  python benchmarks/dense_peers.py --settings demo --demo-size 64 --reps 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_conv import load, time_interleaved

import adadsr_jax
from adadsr_jax.evaluation.inference import search_depth
from adadsr_jax.export import export_onnx
from adadsr_jax.macs import model_macs
from adadsr_jax.models.layers import DIV2K_RGB_MEAN

SETTINGS = {"paper": ("adaedsr", "edsr"), "demo": ("adaedsr_small", "edsr_small")}


def ort_session(model):
    import onnxruntime as ort

    return ort.InferenceSession(export_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])


def depth_for_fraction(model, lr: jax.Array, fraction: float, quiet: bool = False) -> tuple[float, float]:
    """(d, executed/dense MACs) with the largest d whose executed MACs are <= fraction of dense."""
    graph, state = nnx.split(model)

    @jax.jit
    def depth_map(state, x, d):
        m = nnx.merge(graph, state)
        return m.depth_map(m.head(x - jnp.asarray(DIV2K_RGB_MEAN, x.dtype)), d)

    def ratio(d: float) -> float:
        macs, dense = model_macs(model.config, model.scale, lr.shape, depth_map(state, lr, jnp.float32(d)))
        return float(macs[0]) / float(dense[0])

    d, r, met, _ = search_depth(ratio, fraction, lo=0.0, hi=float(model.config.max_depth))
    if not quiet and not met:
        print(f"  note: even d=0 executes {r:.1%} of the dense MACs (> {fraction:.0%})")
    elif not quiet and r < fraction - 0.02:
        print(f"  note: even d=D executes only {r:.1%} of the dense MACs (< {fraction:.0%})")
    return d, r


def spread_random_adapter(model, lr: jax.Array, reach: float = 0.9) -> float:
    """Random weights give a depth map far below D (d * relu(P) with a small random P), so 30%/50% of the
    dense MACs may be out of reach. Scale the adapter's last conv (kernel and bias: the map's spatial
    pattern is unchanged, only its size) by powers of two until d = D executes >= `reach` of the dense
    MACs. Returns the factor (1.0: untouched)."""
    last = model.adapter.layers[-1].conv
    factor = 1.0
    for _ in range(20):
        _, r = depth_for_fraction(model, lr, 1.0, quiet=True)
        if r >= reach:
            break
        last.kernel[...] = last.kernel[...] * 2.0
        last.bias[...] = last.bias[...] * 2.0
        factor *= 2.0
    return factor


def run_setting(name: str, size: int, reps: int, checkpoint: str | None, fractions: list[float]) -> dict:
    ada_name, plain_name = SETTINGS[name]
    if checkpoint:
        from adadsr_jax.checkpoint import load_model

        ada = load_model(checkpoint)
        weights = f"trained ({checkpoint})"
    else:
        ada = adadsr_jax.create_model(ada_name, scale=2, rngs=nnx.Rngs(0))
        weights = "random"
    cfg = ada.config
    plain = adadsr_jax.create_model(
        plain_name,
        scale=ada.scale,
        rngs=nnx.Rngs(1),
        num_blocks=cfg.num_blocks,
        num_features=cfg.num_features,
        res_scale=cfg.res_scale,
    )
    lr_np = np.ascontiguousarray(data.astronaut()[:size, 128 : 128 + size].astype(np.float32))[None]
    lr = jnp.asarray(lr_np)
    print(
        f"\n== {name} width: {ada_name} ({cfg.num_blocks} x {cfg.num_features}, {weights} weights) and "
        f"{plain_name} of that size, x{ada.scale} on astronaut {size}x{size} LR; ms, min of {reps}; "
        f"load {load()}",
        flush=True,
    )

    def xla(model, sparse=False):
        graph, state = nnx.split(model)
        f = jax.jit(lambda st, x, d: nnx.merge(graph, st)(x, desired_depth=d, sparse=sparse)[0])
        return lambda d: lambda: f(state, lr, jnp.float32(d))

    scale_note = 1.0
    if not checkpoint:
        scale_note = spread_random_adapter(ada, lr)
        if scale_note != 1.0:
            print(f"  random adapter's last conv scaled by {scale_note:g} so that d = D runs most blocks")
    depths = {f: depth_for_fraction(ada, lr, f) for f in fractions}
    d_dense = float(cfg.max_depth)  # dense masked cost does not depend on d; use the full depth
    sess_ada, sess_plain = ort_session(ada), ort_session(plain)
    d_arr = np.full((1,), d_dense, np.float32)
    fns = {
        "edsr_xla": xla(plain)(0.0),
        "edsr_ort": lambda: sess_plain.run(["sr"], {"lr": lr_np, "d": d_arr}),
        "adaedsr_xla": xla(ada)(d_dense),
        "adaedsr_ort": lambda: sess_ada.run(["sr"], {"lr": lr_np, "d": d_arr}),
    }
    sparse = xla(ada, sparse=True)
    for f, (d, _) in depths.items():
        fns[f"sparse_{round(100 * f)}"] = sparse(d)
    # Same numbers from every path (a timing of a wrong result is worthless).
    ref = np.asarray(fns["adaedsr_xla"]())
    err_ort = float(np.abs(fns["adaedsr_ort"]()[0] - ref).max())
    t = time_interleaved(fns, reps)
    best_dense = min(("adaedsr_xla", "adaedsr_ort"), key=lambda k: t[k])
    row = {
        "setting": name,
        "model": ada_name,
        "weights": weights,
        "adapter_output_scale": scale_note,
        "blocks": cfg.num_blocks,
        "features": cfg.num_features,
        "lr_size": size,
        "ms": t,
        "onnx_max_abs_diff": err_ort,
        "faster_dense": best_dense,
        "sparse": {
            f"{round(100 * f)}%": {
                "desired_depth": d,
                "macs_fraction": r,
                "ms": t[f"sparse_{round(100 * f)}"],
                "ratio_to_faster_dense": t[f"sparse_{round(100 * f)}"] / t[best_dense],
                "ratio_to_xla_dense": t[f"sparse_{round(100 * f)}"] / t["adaedsr_xla"],
            }
            for f, (d, r) in depths.items()
        },
        "load": load(),
    }
    print(f"{'path':<36}{'ms':>10}{'cpu ms':>10}{'vs faster dense':>17}")
    labels = {
        "edsr_xla": "EDSR dense, XLA",
        "edsr_ort": "EDSR dense, onnxruntime",
        "adaedsr_xla": "AdaEDSR dense, XLA",
        "adaedsr_ort": "AdaEDSR dense, onnxruntime",
    }
    labels |= {
        f"sparse_{round(100 * f)}": f"AdaEDSR sparse {r:.1%} MACs, d={d:.2f}" for f, (d, r) in depths.items()
    }
    for key, label in labels.items():
        print(f"{label:<36}{t[key]:>10.1f}{t[key + '_cpu']:>10.1f}{t[key] / t[best_dense]:>17.2f}")
    print(f"(faster AdaEDSR dense: {labels[best_dense]}; onnxruntime vs XLA max abs diff {err_ort:.1e})")
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["paper", "demo"])
    p.add_argument("--paper-size", type=int, default=64, help="LR size at the paper width")
    p.add_argument("--demo-size", type=int, default=256, help="LR size at the demo width")
    p.add_argument("--demo-checkpoint", default=None, help="trained demo weights (workdir or model dir)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results_cpu_dense_peers.json")
    args = p.parse_args(argv)
    import onnxruntime as ort

    print(
        f"jax {jax.__version__}, onnxruntime {ort.__version__} on {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs, {platform.node()}"
    )
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    rows = []
    for name in args.settings:
        size = args.paper_size if name == "paper" else args.demo_size
        ckpt = args.demo_checkpoint if name == "demo" else None
        rows.append(run_setting(name, size, args.reps, ckpt, args.fractions))
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
