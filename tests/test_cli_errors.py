"""Every command meets a wrong path or flag with one `error: <path>: <problem>` line and exit status 2.

Each case runs the real command line (a subprocess), and checks the exit status, the one error line naming
the path, that no traceback is printed, and that no file under the test's folders changed (hashes before
and after). Most cases fail before a model is built, so they cost an interpreter start; the few that need
a model share one tiny inference checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from adadsr_jax.checkpoint import save_inference_checkpoint
from adadsr_jax.cli import EXIT_USER_ERROR, UserError, error_line, run_cli
from adadsr_jax.data.images import save_png
from adadsr_jax.models import create_model

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
TRAIN = [sys.executable, str(REPO / "train.py")]
EVALUATE = [sys.executable, str(REPO / "evaluate.py")]
UPSCALE = [sys.executable, "-m", "adadsr_jax.upscale"]
CONVERT = [sys.executable, "-m", "adadsr_jax.convert"]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A tiny x2 inference checkpoint (random weights: these tests check messages, not pixels)."""
    path = tmp_path_factory.mktemp("cli_ckpt") / "ckpt"
    save_inference_checkpoint(
        path, create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0)), model_name="adaedsr_tiny"
    )
    return path


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    save_png(path, np.random.default_rng(0).integers(0, 256, size=(10, 12, 3), dtype=np.uint8))
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and the names of every folder) under `roots`."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def train_tiny(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    """train.py on configs/tiny.py in `workdir` with extra flags."""
    return run(TRAIN, "--config", REPO / "configs" / "tiny.py", "--workdir", workdir, *flags)


def run(cmd: list[str], *args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cmd, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def assert_user_error(proc: subprocess.CompletedProcess, path: Path | str, *phrases: str) -> str:
    """Exit status 2, no traceback, and an `error: <path>: ...` line that says each phrase."""
    both = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_USER_ERROR, both
    assert "Traceback" not in both, both
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ the helper itself


def test_run_cli_maps_user_errors_and_lets_bugs_through(capsys):
    def missing() -> None:
        Path("/nonexistent-dir/x.png").read_bytes()  # raw OSError: the path is in err.filename

    assert run_cli(missing) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: /nonexistent-dir/x.png: no such file or directory\n"
    assert run_cli(lambda: (_ for _ in ()).throw(UserError("a/b", "broken", "fix it"))) == 2
    assert capsys.readouterr().err == "error: a/b: broken; fix it\n"
    assert run_cli(lambda: None) == 0 and run_cli(lambda: 3) == 3
    with pytest.raises(KeyError):  # our own bug: the traceback is kept
        run_cli(lambda: {}["x"])
    assert error_line(ValueError("error: x: y")) == "error: x: y"


# ------------------------------------------------------------------ 1, 2: an output path that is a file


def test_evaluate_output_is_an_existing_file(ckpt, tmp_path):
    out = tmp_path / "results"
    out.write_text("keep me")
    before = snapshot(tmp_path, ckpt)
    proc = run(EVALUATE, "--checkpoint", ckpt, "--datasets", "demo", "--output", out)
    assert_user_error(proc, out, "not a directory", "--output")
    assert snapshot(tmp_path, ckpt) == before


def test_upscale_out_is_an_existing_file(ckpt, photo, tmp_path):
    out = tmp_path / "sr"
    out.write_text("keep me")
    before = snapshot(tmp_path, ckpt)
    proc = run(UPSCALE, photo, "--checkpoint", ckpt, "--out", out)
    assert_user_error(proc, out, "not a directory", "--out")
    assert snapshot(tmp_path, ckpt) == before
    # An output folder whose parent is a file cannot be created either: said before the model runs.
    proc = run(UPSCALE, photo, "--checkpoint", ckpt, "--out", out / "sub")
    assert_user_error(proc, out, "cannot be created")
    assert snapshot(tmp_path, ckpt) == before


def test_user_errors_are_reported_before_jax_is_imported(tmp_path):
    """A wrong path costs an interpreter start, not jax's ~4 s import: evaluate, upscale, convert and train
    (after loading its config file) refuse it with nothing of jax, flax or orbax imported."""
    missing = tmp_path / "missing"
    code = f"""
import runpy, sys
from adadsr_jax.evaluation.cli import main as evaluate
from adadsr_jax.upscale import main as upscale
from adadsr_jax.convert import main as convert
codes = [evaluate(["--checkpoint", "{missing}", "--output", "out"])]
codes.append(upscale(["{missing}.png", "--checkpoint", "{missing}", "--out", "out"]))
codes.append(convert(["{missing}.pth", "--model", "adaedsr", "--scale", "2", "--out", "out"]))
sys.argv = ["train.py", "--config", "configs/tiny.py", "--workdir", "{tmp_path / "run"}",
            "--config.data.kind=folder", "--config.data.root={missing}"]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as stop:
    codes.append(stop.code)
print(codes, [m for m in ("jax", "flax", "orbax.checkpoint", "optax", "grain") if m in sys.modules])
"""
    proc = run([sys.executable, "-c", code])
    assert proc.stdout.splitlines()[-1] == "[2, 2, 2, 2] []", proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    paths = [str(missing), f"{missing}.png", f"{missing}.pth", str(missing)]
    assert [line.split(": ")[1] for line in errors] == paths, errors
    assert list(tmp_path.iterdir()) == []


def test_convert_layout_choices_are_the_converters_layouts():
    """convert.py writes the layouts out to stay jax-free; they must be conversion.LAYOUTS."""
    from adadsr_jax import conversion, convert

    assert ("auto", *conversion.LAYOUTS) == convert.LAYOUT_CHOICES
    assert convert.LAYOUTS is conversion.LAYOUTS


# ------------------------------------------------------------------ 3, 4, 5: train's --config and --workdir


def test_train_config_is_a_directory(tmp_path):
    workdir = tmp_path / "run"
    proc = run(TRAIN, "--config", REPO / "configs", "--workdir", workdir)
    assert_user_error(proc, REPO / "configs", "is a directory", "--config")
    assert not workdir.exists()


def test_train_config_does_not_exist(tmp_path):
    workdir = tmp_path / "run"
    proc = run(TRAIN, "--config", REPO / "configs" / "no_such.py", "--workdir", workdir)
    assert_user_error(proc, REPO / "configs" / "no_such.py", "no such config file")
    assert not workdir.exists()


def test_train_workdir_is_an_existing_file(tmp_path):
    workdir = tmp_path / "run"
    workdir.write_text("keep me")
    before = snapshot(tmp_path)
    proc = train_tiny(workdir)
    assert_user_error(proc, workdir, "not a directory", "--workdir")
    assert snapshot(tmp_path) == before


def test_train_help_exits_0_with_the_usage_on_stdout(tmp_path):
    for flag in ("--help", "--helpfull"):
        proc = run(TRAIN, flag, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "--config" in proc.stdout and "--workdir" in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        ("def get_config(:\n", "line 1"),  # a syntax error in the user's file
        ("x = 1\n", "defines no get_config()"),
        ("def get_config(arg=None):\n    return None\n", "get_config() returned None"),
    ],
)
def test_train_config_file_that_cannot_work(tmp_path, source, phrase):
    config = tmp_path / "my_config.py"
    config.write_text(source)
    proc = run(TRAIN, "--config", config, "--workdir", tmp_path / "run")
    assert_user_error(proc, config, phrase)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_config.py"]


def test_train_bad_config_argument_and_missing_data_folder(tmp_path):
    spec = f"{REPO / 'configs' / 'adaedsr.py'}:foo=1"
    proc = run(TRAIN, "--config", spec, "--workdir", tmp_path / "run")
    assert_user_error(proc, spec, "config argument 'foo'")
    root = tmp_path / "DIV2K"
    proc = train_tiny(tmp_path / "run", "--config.data.kind=folder", f"--config.data.root={root}")
    assert_user_error(proc, root, "no such data folder", "data.root")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------- 6: HR-only sets say "generated" everywhere


def test_hr_only_set_is_labelled_generated_in_csv_and_terminal(ckpt, tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    save_png(root / "Set5" / "a.png", rng.integers(0, 256, size=(24, 28, 3), dtype=np.uint8))  # HR only
    out = tmp_path / "out"
    proc = run(
        EVALUATE,
        *("--checkpoint", ckpt, "--data-root", root, "--datasets", "Set5", "--depths", "1,3"),
        *("--repeats", "0", "--no-progress", "--output", out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("Set5 x2 ")]
    assert len(rows) == 3  # bicubic, d=1, d=3
    assert all(line.endswith("[LR generated from HR by MATLAB-style bicubic]") for line in rows)
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table and {r["lr_source"] for r in table} == {"generated"}
    assert "WARNING:absl" not in proc.stdout + proc.stderr  # point 8, for evaluate


# ------------------------------------------------- 7: a file where a folder belongs; an empty image


def test_checkpoint_path_that_is_a_file(photo, tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"PK\x03\x04 not ours")
    before = snapshot(tmp_path)
    proc = run(EVALUATE, "--checkpoint", weights, "--datasets", "demo", "--output", tmp_path / "o")
    assert_user_error(proc, weights, "is a file", "adadsr_jax.convert")
    proc = run(UPSCALE, photo, "--workdir", weights, "--out", tmp_path / "o")
    assert_user_error(proc, weights, "is a file", "adadsr_jax.convert")
    assert snapshot(tmp_path) == before


def test_empty_image_says_file_is_empty(ckpt, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    proc = run(UPSCALE, empty, "--checkpoint", ckpt, "--out", tmp_path / "o")
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stderr
    assert f"error: {empty}: file is empty" in proc.stderr
    assert "cannot identify" not in proc.stderr
    assert not (tmp_path / "o" / "empty_x2.png").exists()
    # The same file in a test set: evaluate names it the same way.
    root = tmp_path / "data"
    (root / "Set5").mkdir(parents=True)
    (root / "Set5" / "a.png").write_bytes(b"")
    before = snapshot(tmp_path, ckpt)
    proc = run(
        EVALUATE, "--checkpoint", ckpt, "--data-root", root, "--datasets", "Set5", "--output", tmp_path / "o"
    )
    assert_user_error(proc, root / "Set5" / "a.png", "file is empty")
    assert snapshot(tmp_path, ckpt) == before


# ------------------------------------------------------------------ 8: no library chatter


def test_upscale_and_convert_print_no_absl_warnings(ckpt, photo, tmp_path):
    proc = run(UPSCALE, photo, "--checkpoint", ckpt, "--out", tmp_path / "sr")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING:absl" not in proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert (tmp_path / "sr" / "photo_x2.png").is_file()
    # convert saves through the same manager: no "Requested `tracked_metric`" either.
    from test_convert import release_state_dict
    from torch_format import write_zip

    weights = tmp_path / "release_x2.pth"
    write_zip(weights, {"scale": 2, "state_dict": release_state_dict("adaedsr_tiny", 2)})
    proc = run(CONVERT, weights, "--model", "adaedsr_tiny", "--scale", "2", "--out", tmp_path / "converted")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING:absl" not in proc.stdout + proc.stderr and proc.stderr == ""
    assert (tmp_path / "converted" / "config.json").is_file()


# ------------------------------------------------------------------ 10: one exit status for user errors


def test_train_and_convert_exit_2_on_bad_input(tmp_path):
    proc = train_tiny(tmp_path / "run", "--config.train.stepz=3")
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stderr
    assert "error: unknown config fields ['train.stepz']" in proc.stderr
    proc = train_tiny(tmp_path / "run", "--nosuchflag")
    assert (
        proc.returncode == EXIT_USER_ERROR and "error: Unknown command line flag 'nosuchflag'" in proc.stderr
    )
    assert not list(tmp_path.iterdir())
    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"not a checkpoint")
    before = snapshot(tmp_path)
    proc = run(CONVERT, bogus, "--model", "adaedsr_tiny", "--scale", "2", "--out", tmp_path / "converted")
    assert_user_error(proc, bogus, "not a PyTorch checkpoint")
    assert snapshot(tmp_path) == before


def test_convert_refuses_an_existing_non_empty_out(ckpt, tmp_path):
    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"not a checkpoint")
    before = snapshot(tmp_path, ckpt)
    # --out is checked before the file is read: an earlier conversion is never half replaced.
    proc = run(CONVERT, bogus, "--model", "adaedsr_tiny", "--scale", "2", "--out", ckpt)
    assert_user_error(proc, ckpt, "not empty", "--out")
    proc = run(
        CONVERT, tmp_path / "none.pth", "--model", "adaedsr_tiny", "--scale", "2", "--out", tmp_path / "c"
    )
    assert_user_error(proc, tmp_path / "none.pth", "no such checkpoint file")
    assert snapshot(tmp_path, ckpt) == before
