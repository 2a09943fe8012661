"""How long each command line takes to refuse a wrong path, against importing jax, flax and orbax (what
a command that checked its arguments after those imports would pay first).

Usage (no data needed):
    python benchmarks/cli_startup.py --reps 5

Prints one line per command: the median wall time of `reps` runs and its ratio to the import baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE_IMPORTS = "import jax, flax.nnx, orbax.checkpoint"


def _wall(argv: list[str], reps: int, missing: str) -> float:
    """Median seconds of `reps` runs; each must succeed (the baseline, --help) or refuse `missing`."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0 and not (proc.returncode == 2 and f"error: {missing}" in proc.stderr):
            raise SystemExit(f"{argv[1:]} did not refuse {missing}: exit {proc.returncode}\n{proc.stderr}")
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    missing = str(Path(tempfile.mkdtemp()) / "missing")
    py = sys.executable
    data = ["--config", "configs/tiny.py", "--config.data.kind=folder", f"--config.data.root={missing}"]
    convert = ["--model", "adaedsr", "--scale", "2", "--out", missing]
    cases = {
        "import jax, flax.nnx, orbax.checkpoint (baseline)": [py, "-c", BASELINE_IMPORTS],
        "train.py, missing --config": [py, "train.py", "--config", f"{missing}.py", "--workdir", missing],
        "train.py, missing data folder": [py, "train.py", *data, "--workdir", missing],
        "train.py --help": [py, "train.py", "--help"],
        "evaluate.py, missing --workdir": [py, "evaluate.py", "--workdir", missing, "--output", missing],
        "upscale, missing input": [
            py,
            "-m",
            "adadsr_jax.upscale",
            f"{missing}.png",
            "--workdir",
            missing,
            "--out",
            missing,
        ],
        "convert, missing file": [py, "-m", "adadsr_jax.convert", f"{missing}.pth", *convert],
    }
    baseline = None
    for name, argv in cases.items():
        seconds = _wall(argv, args.reps, missing)
        baseline = baseline or seconds
        print(f"{name:52s} {seconds:6.2f} s  {seconds / baseline:5.2f}x the import baseline", flush=True)


if __name__ == "__main__":
    main()
