"""PSNR-Y of a trained model run with a constant depth map k (the first k blocks everywhere, k = 1..D).

Not part of the test suite. A diagnostic of the backbone alone, the adapter left out: how much each
extra block adds on each image. With k = D every mask is one (the forward of `use_adapter=False`).
Images: the test sets evaluate.py would find (`--datasets`, `--data-root`), with the same LR and PSNR-Y.

  python benchmarks/unseen_photos.py /tmp/photos/photos
  python benchmarks/uniform_depth.py runs/demo --datasets demo,photos --data-root /tmp/photos [--step 400]

--step reads that saved step of a training workdir (default: the best, as evaluate.py).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import adadsr_jax
from adadsr_jax.evaluation.datasets import find_dataset
from adadsr_jax.metrics import psnr
from adadsr_jax.models import AdaDSR


def uniform_depth_forward(model: AdaDSR):
    """A jitted `(lr [1, h, w, 3] float32 0..255, k) -> sr [1, s*h, s*w, 3]` with depth map k everywhere."""

    @jax.jit
    def forward(lr: jax.Array, k: jax.Array) -> jax.Array:
        depth_map = jnp.full((*lr.shape[:3], model.config.num_maps), k, jnp.float32)
        return model(lr, depth_map=depth_map)[0]

    return forward


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a training workdir or checkpoint folder (an EDSR-backbone model)")
    p.add_argument("--datasets", default="demo", help="comma-separated test sets, as evaluate.py's")
    p.add_argument("--data-root", help="where the sets other than 'demo' are, as evaluate.py's")
    p.add_argument("--step", type=int, help="a saved step of a training workdir (default: the best)")
    args = p.parse_args(argv)
    try:
        model = adadsr_jax.load_model(args.model, which="best" if args.step is None else args.step)
    except (FileNotFoundError, ValueError) as e:  # their messages name the path and the problem
        raise SystemExit(f"error: {e}") from None
    if model.config.backbone != "edsr":
        raise SystemExit("error: one depth map for the whole body is an EDSR-backbone diagnostic")
    try:
        sets = [find_dataset(name, args.data_root, scale=model.scale) for name in args.datasets.split(",")]
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    forward = uniform_depth_forward(model)
    depths = range(1, model.config.max_depth + 1)
    print(f"{args.model} (step {args.step or 'best'}): PSNR-Y (dB) with the depth map k everywhere")
    print(f"{'image':22s} " + " ".join(f"{f'k={k}':>7s}" for k in depths))
    for pair in (pair for test_set in sets for pair in test_set):
        lr = jnp.asarray(pair.lr, jnp.float32)[None]
        values = [psnr(np.asarray(forward(lr, float(k))[0]), pair.hr, scale=model.scale) for k in depths]
        print(f"{pair.name:22s} " + " ".join(f"{v:7.3f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
