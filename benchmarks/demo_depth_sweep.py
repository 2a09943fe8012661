"""Sparse / dense time of a trained model over desired depths on the held-out demo photo.

Not part of the test suite. Both forwards of the same model, timed alternately in one loop
(`Predictor.predict(..., repeats=)`), so machine load falls on both alike.

  python benchmarks/demo_depth_sweep.py runs/demo 0 0.5 1 1.5 2 2.6 3 4
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import adadsr_jax
from adadsr_jax.data import demo_source
from adadsr_jax.evaluation.inference import Predictor


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a training workdir or checkpoint folder")
    p.add_argument("depths", type=float, nargs="+")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    model = adadsr_jax.load_model(args.model)
    predictor = Predictor(model, sparse=True)
    lr = np.asarray(demo_source(scale=model.scale, split="valid")[0].lr, np.float32)
    print(f"load {os.getloadavg()[0]:.2f}; {args.model} on chelsea LR {lr.shape[0]}x{lr.shape[1]}")
    for d in args.depths:
        pred = predictor.predict(lr, d, repeats=args.repeats)
        print(
            f"d={d:5.2f} block MACs {pred.block_fraction:6.1%} sparse {pred.latency_ms:7.1f} ms "
            f"dense {pred.dense_latency_ms:7.1f} ms ratio {pred.latency_ms / pred.dense_latency_ms:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
