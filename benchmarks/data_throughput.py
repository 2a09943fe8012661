"""Input-pipeline throughput: training patches per second from TrainBatches, plus per-image costs.

Usage (CPU only, no data needed; uses the built-in demo photos and one synthetic 2K image):
    python benchmarks/data_throughput.py                      # x2, batch 16, LR patch 48
    python benchmarks/data_throughput.py --scale 4 --batches 200 --prefetch 4
    python benchmarks/data_throughput.py --folder /data/DIV2K  # a real DIV2K folder (first-epoch decode)

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from adadsr_jax.data.bicubic import downscale
from adadsr_jax.data.images import load_image, save_png
from adadsr_jax.data.pipeline import TrainBatches
from adadsr_jax.data.sources import demo_source, folder_source


def _rate(it: TrainBatches, batches: int) -> float:
    next(it)  # start the prefetch threads outside the timed region
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["lr"].shape[0]
    return n / (time.perf_counter() - start)


def _synthetic_2k(seed: int = 0) -> np.ndarray:
    """A DIV2K-sized (2040x1356) textured image: a realistic PNG compression ratio, not noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1356, 0:2040].astype(np.float32)
    base = 128 + 80 * np.sin(xx / 37) * np.cos(yy / 23) + rng.normal(0, 6, (1356, 2040)).astype(np.float32)
    return np.clip(np.stack([base, base * 0.8 + 20, 255 - base], -1), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=None, help="DIV2K root to measure instead of demo")
    args = parser.parse_args()
    common = {
        "cores": os.cpu_count(),
        "scale": args.scale,
        "batch": args.batch_size,
        "patch": args.patch_size,
    }

    source = (
        folder_source(args.folder, scale=args.scale)
        if args.folder
        else demo_source(scale=args.scale, split="train")
    )
    kw = dict(batch_size=args.batch_size, patch_size=args.patch_size, scale=args.scale, seed=0)
    for prefetch in (0, args.prefetch):
        with TrainBatches(source, prefetch=prefetch, **kw) as it:
            # Warm the cache: every image decoded once (a folder's first epoch is measured below).
            for i in range(len(source)):
                source[i]
            rate = _rate(it, args.batches)
        print(
            json.dumps(
                {"measure": "train_patches_per_s", "prefetch": prefetch, "value": round(rate), **common}
            )
        )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "0001.png"
        save_png(path, _synthetic_2k())
        start = time.perf_counter()
        hr = load_image(path)
        t_decode = time.perf_counter() - start
        start = time.perf_counter()
        downscale(hr, args.scale)
        t_bicubic = time.perf_counter() - start
    print(json.dumps({"measure": "decode_2k_png_s", "value": round(t_decode, 3), **common}))
    print(json.dumps({"measure": "bicubic_downscale_2k_s", "value": round(t_bicubic, 3), **common}))


if __name__ == "__main__":
    main()
