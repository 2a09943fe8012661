"""Issue 12's per-image quality and cost targets, read from an `evaluate.py` results.csv.

Not part of the test suite. The CSV must hold the bicubic row and a depth sweep that includes D/4, D/2
and D (evaluate.py's default depths D/4, D/2, 3D/4, D do); D is the largest desired depth in it.

  python evaluate.py --workdir runs/demo --datasets demo,photos --data-root /tmp/photos --output out
  python benchmarks/demo_targets.py out/results.csv

Per image: PSNR-Y gain over bicubic at every depth, whether PSNR-Y never falls as d rises, D - D/2 in
dB, the residual blocks' executed MACs at D/4, and the largest mean(depth map) / d; then how many images
pass each target (gain >= +0.8 dB at D/4 and >= +1.0 at D, rises with d, D/2 within 0.05 dB of D,
block MACs <= 35% at D/4, depth map mean <= 1.1 d).
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections import defaultdict
from dataclasses import dataclass

TARGET_NAMES = ("gain", "rises", "d/2 gap", "macs", "map")


@dataclass(frozen=True)
class ImageSweep:
    """One image's bicubic PSNR-Y and, per desired depth, PSNR-Y, block MACs fraction, depth map mean."""

    name: str
    bicubic: float
    psnr: dict[float, float]
    block_fraction: dict[float, float]
    map_mean: dict[float, float]


def read_sweeps(path: str) -> list[ImageSweep]:
    """Per (dataset, image) sweeps from a results.csv; MEAN rows are skipped."""
    bicubic: dict[tuple[str, str], float] = {}
    columns: dict[tuple[str, str], dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["name"] == "MEAN":
                continue
            key = (row["dataset"], row["name"])
            if row["setting"] == "bicubic":
                bicubic[key] = float(row["psnr_y"])
            elif row["setting"].startswith("d"):  # "d2", "d4", ...; budgets are "budget-..."
                d = float(row["desired_depth"])
                for column in ("psnr_y", "block_fraction", "depth_map_mean"):
                    columns[key][column][d] = float(row[column])
    missing = sorted(set(columns) - set(bicubic))
    if missing:
        raise SystemExit(f"error: {path}: no bicubic row for {missing}; evaluate without --no-bicubic")
    return [
        ImageSweep(name, bicubic[(ds, name)], c["psnr_y"], c["block_fraction"], c["depth_map_mean"])
        for (ds, name), c in columns.items()
    ]


def targets(sweep: ImageSweep) -> dict[str, bool | float]:
    """The issue's targets for one image, and the numbers behind them."""
    depths = sorted(sweep.psnr)
    full = depths[-1]
    quarter, half = full / 4, full / 2
    for d in (quarter, half):
        if d not in sweep.psnr:
            raise SystemExit(
                f"error: {sweep.name}: the sweep has no d = {d:g} (D = {full:g}); add it to --depths"
            )
    p = sweep.psnr
    numbers = {
        "gain_quarter": p[quarter] - sweep.bicubic,
        "gain_full": p[full] - sweep.bicubic,
        "gap": p[full] - p[half],
        "macs_quarter": sweep.block_fraction[quarter],
        "map_ratio": max(sweep.map_mean[d] / d for d in depths if d > 0),
    }
    return numbers | {
        "gain": numbers["gain_quarter"] >= 0.8 and numbers["gain_full"] >= 1.0,
        "rises": all(p[b] >= p[a] for a, b in itertools.pairwise(depths)),
        "d/2 gap": numbers["gap"] <= 0.05,
        "macs": numbers["macs_quarter"] <= 0.35,
        "map": numbers["map_ratio"] <= 1.1,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_csv")
    args = p.parse_args(argv)
    sweeps = read_sweeps(args.results_csv)
    passed = dict.fromkeys(TARGET_NAMES, 0)
    for sweep in sweeps:
        t = targets(sweep)
        gains = " ".join(f"{d:g}:{v - sweep.bicubic:+.3f}" for d, v in sorted(sweep.psnr.items()))
        fails = [n for n in TARGET_NAMES if not t[n]]
        for n in TARGET_NAMES:
            passed[n] += bool(t[n])
        print(
            f"{sweep.name:22s} gain {gains} | D - D/2 {t['gap']:+.3f} dB, block MACs at D/4 "
            f"{t['macs_quarter']:.1%}, map <= {t['map_ratio']:.2f} d | fails: {', '.join(fails) or '-'}"
        )
    print("passed: " + ", ".join(f"{n} {passed[n]}/{len(sweeps)}" for n in TARGET_NAMES))


if __name__ == "__main__":
    main()
