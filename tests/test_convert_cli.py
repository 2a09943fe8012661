"""End to end through the real command lines: a torch.save file of each supported layout, in the zip and the
legacy format, goes through the converter's command line (`python -m adadsr_jax.convert` for the zip
files, its main() in this process for the legacy ones), and the zip file's result through
`python evaluate.py --checkpoint`; the evaluated SR image equals a float64 numpy forward of the PyTorch
model on the file's tensors. Bad files get one line naming the file, exit status 2, no traceback."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from checkpoint_fixtures import LAYOUT_CASES, layout_state_dict, saved_object
from flax import nnx
from test_convert import reference_forward
from torch_format import write_legacy, write_zip

from adadsr_jax.convert import main as convert_main
from adadsr_jax.data.bicubic import downscale
from adadsr_jax.data.images import load_image, save_png
from adadsr_jax.models import get_model_config

ROOT = Path(__file__).resolve().parents[1]
# (layout case, preset, scale): every layout once, the three scales spread over them.
E2E_CASES = [
    ("release_adaedsr", "adaedsr_tiny", 2),
    ("release_adarcan", "adarcan_tiny", 3),
    ("release_edsr", "edsr_tiny", 4),
    ("edsr_pytorch", "edsr_tiny", 3),
    ("rcan", "rcan_tiny", 2),
]
FORMATS = {"zip": write_zip, "legacy": write_legacy}
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV
    )


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    """Set5 in the EDSR layout holding one real photo crop (skimage astronaut, 48x48 HR) with its
    bicubic LR at x2, x3 and x4."""
    from skimage import data

    root = tmp_path_factory.mktemp("bench")
    hr = data.astronaut()[170:218, 190:238]
    save_png(root / "Set5" / "HR" / "astro.png", hr)
    for s in (2, 3, 4):
        save_png(root / "Set5" / "LR_bicubic" / f"X{s}" / f"astrox{s}.png", downscale(hr, s))
    return root


def _convert_in_process(argv: list[str]) -> subprocess.CompletedProcess:
    """convert's main(argv) in this process, its exit status and output as a CompletedProcess."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = convert_main(argv)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every (case, format) file written and converted by the command line: the zip files (which
    evaluate.py then reads) by `python -m adadsr_jax.convert`, two processes at a time, the legacy ones by
    the same main() in this process (each new process costs ~4 s of interpreter and JAX start-up)."""
    base = tmp_path_factory.mktemp("convert")
    jobs = {}
    for case, model, scale in E2E_CASES:
        sd = layout_state_dict(case, model, scale, seed=scale)
        for fmt, write in FORMATS.items():
            path = base / f"{case}_{fmt}_x{scale}.pth"
            write(path, saved_object(case, sd, scale))
            out = base / f"{case}_{fmt}_ckpt"
            argv = [str(path), "--model", model, "--scale", str(scale), "--out", str(out)]
            jobs[case, fmt] = (sd, path, out, argv)
    zips = [key for key in jobs if key[1] == "zip"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        subprocesses = pool.map(lambda key: _run("-m", "adadsr_jax.convert", *jobs[key][3]), zips)
        runs = dict(zip(zips, subprocesses, strict=True))
    runs |= {key: _convert_in_process(job[3]) for key, job in jobs.items() if key not in runs}
    return {key: (sd, path, out, runs[key]) for key, (sd, path, out, _) in jobs.items()}


@pytest.fixture(scope="module")
def evaluated(converted, photo_root, tmp_path_factory):
    """evaluate.py on the zip-converted checkpoint of every case (two at a time): case -> (run, folder)."""
    base = tmp_path_factory.mktemp("eval")
    jobs = {}
    for case, model, _ in E2E_CASES:
        cfg = get_model_config(model)
        out, results = converted[case, "zip"][2], base / case
        argv = ["evaluate.py", "--checkpoint", str(out), "--data-root", str(photo_root), "--datasets", "Set5"]
        argv += ["--depths", str(cfg.num_blocks), "--repeats", "0", "--no-bicubic", "--no-progress"]
        jobs[case] = ([*argv, "--save-images", "--output", str(results)], results)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(jobs, pool.map(lambda job: _run(*job[0]), jobs.values()), strict=True))
    return {case: (runs[case], results) for case, (_, results) in jobs.items()}


def _params(out: Path) -> list[np.ndarray]:
    from adadsr_jax.checkpoint import load_model

    model = load_model(out)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize(("case", "model", "scale"), E2E_CASES)
def test_convert_cli_accepts_both_formats_of_each_layout(converted, case, model, scale):
    _, layout, form, _ = LAYOUT_CASES[case]
    params = {}
    for fmt in FORMATS:
        _, path, out, run = converted[case, fmt]
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"converted {path} ({layout} layout, ")
        assert run.stdout.count(f"({form}) equals our constant") == 2, run.stdout
        assert "Traceback" not in run.stderr
        config = json.loads((out / "config.json").read_text())
        assert config["model"]["name"] == model and config["model"]["scale"] == scale
        params[fmt] = _params(out)
    # Same tensors in both formats: the same converted model.
    assert len(params["zip"]) == len(params["legacy"]) > 0
    for a, b in zip(params["zip"], params["legacy"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("case", "model", "scale"), E2E_CASES)
def test_evaluate_reads_the_converted_checkpoint(converted, evaluated, photo_root, case, model, scale):
    _, layout, _, _ = LAYOUT_CASES[case]
    cfg = get_model_config(model)
    sd, _, _, run = converted[case, "zip"]
    assert run.returncode == 0, run.stderr
    ev, results = evaluated[case]
    assert ev.returncode == 0, ev.stderr
    doc = json.loads((results / "results.json").read_text())
    assert doc["model"]["name"] == model and [r["scale"] for r in doc["runs"]] == [scale]
    (png,) = sorted((results / "sr" / "Set5" / f"x{scale}").glob("*/astro.png"))
    sr = load_image(png)

    lr = load_image(photo_root / "Set5" / "LR_bicubic" / f"X{scale}" / f"astrox{scale}.png")
    d = np.array([float(cfg.num_blocks)])
    depth_input = ("output" if cfg.backbone == "edsr" else "weight") if cfg.adaptive else None
    ref, _ = reference_forward(
        sd,
        layout,
        cfg.backbone,
        scale,
        lr[None].astype(np.float64),
        d,
        groups=cfg.num_groups,
        blocks=cfg.num_blocks,
        depth_input=depth_input,
    )
    want = np.clip(np.round(ref[0]), 0, 255)
    assert sr.shape == want.shape == (48, 48, 3)
    diff = np.abs(sr.astype(np.float64) - want)
    # uint8 output: float32 vs float64 can only flip a rounding at a .5 boundary, by one level.
    assert diff.max() <= 1.0 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert np.std(want) > 5.0  # a real image came out, not a constant


def _flip_tensor_byte(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{path.stem}/data/3")
    raw = bytearray(path.read_bytes())
    at = info.header_offset
    name_len, extra_len = (int.from_bytes(raw[i : i + 2], "little") for i in (at + 26, at + 28))
    raw[at + 30 + name_len + extra_len + 1] ^= 0x40  # a byte inside the tensor's data
    path.write_bytes(bytes(raw))


def test_damaged_and_hostile_files_get_one_line_and_exit_2(tmp_path):
    """Through the real command line: the issue's CRC case and its stride-0 bomb."""
    sd = layout_state_dict("release_adaedsr", "adaedsr_tiny", 2)
    crc = tmp_path / "adaedsr_x2.pth"
    write_zip(crc, saved_object("release_adaedsr", sd, 2))
    _flip_tensor_byte(crc)
    bomb = tmp_path / "bomb.pth"
    # One stride-0 tensor claiming 2^40 elements over a 1-element storage (4 TiB if materialised).
    pkl = (
        b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
        b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQK\x00"
        b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85K\x00\x85\x89ccollections\nOrderedDict\n)RtRs."
    )
    write_zip(bomb, {"w": np.zeros(1, np.float32)}, data_pkl=pkl)
    for path, problem in [
        (crc, "the zip archive is damaged (BadZipFile: Bad CRC-32 for file 'adaedsr_x2/data/3')"),
        (bomb, "tensor (offset 0, size (1099511627776,), stride (0,)) would materialise 1099511627776"),
    ]:
        out = tmp_path / f"out_{path.stem}"
        run = _run(
            "-m",
            "adadsr_jax.convert",
            str(path),
            "--model",
            "adaedsr_tiny",
            "--scale",
            "2",
            "--out",
            str(out),
        )
        assert run.returncode == 2, (run.returncode, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert lines[0].startswith(f"error: {path}: ") and problem in lines[0], lines[0]
        assert not out.exists()
