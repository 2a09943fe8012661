"""The training loop: outputs of a run, SIGTERM/SIGKILL + resume == uninterrupted, NaN stop, learning."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from adadsr_jax import checkpoint
from adadsr_jax.training import checkpoints as ck
from adadsr_jax.training import parallel
from adadsr_jax.training.config import resolve_config
from adadsr_jax.training.logs import read_metrics
from adadsr_jax.training.loop import NonFiniteLossError, train

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def resume_config():
    c = load_config("tiny")
    c.train.steps = 12
    c.train.checkpoint_every = 4
    c.train.eval_every = 4
    c.train.log_every = 1
    return c


def assert_params_equal(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of resume_config() on the 4 fake devices."""
    workdir = tmp_path_factory.mktemp("reference")
    return train(resume_config(), workdir), workdir


def test_a_run_writes_config_metrics_tensorboard_and_checkpoints(reference, capsys):
    result, workdir = reference
    assert result.status == "completed" and result.step == 12
    saved = json.loads((workdir / "config.json").read_text())
    assert saved == resolve_config(resume_config()).to_dict()
    assert saved["train"]["depth_range"] == [0.0, 3.0] and saved["train"]["depth_loss_weight"] == 0.01
    records = read_metrics(workdir)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 13))
    for r in records:
        if r["split"] == "train":
            assert np.isfinite(r["loss"]) and 0.0 <= r["desired_depth"] <= 3.0 and r["steps_per_sec"] > 0
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [4, 8, 12]
    names = {"val/demo/psnr_y/d0.75", "val/demo/mean_depth/d3", "val/demo/psnr_y/bicubic", "val_psnr"}
    assert names <= set(valid[0])
    assert records[-1]["split"] == "final" and records[-1]["val_psnr"] == valid[-1]["val_psnr"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # keep_checkpoints=2 latest plus the best by val_psnr.
    manager = ck.make_manager(workdir, read_only=True)
    best = max(valid, key=lambda r: r["val_psnr"])["step"]
    assert manager.best_step() == best
    assert set(manager.all_steps()) == {8, 12, best}
    model, config = checkpoint.load_orbax_model(workdir, which="latest")
    assert_params_equal(
        jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))), result.params
    )
    assert config["model"]["name"] == "adaedsr_tiny"


def test_sigterm_saves_and_resume_matches_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "run"
    fired = threading.Event()

    def send_sigterm_after_first_checkpoint():
        while not (workdir / "checkpoints" / "4").is_dir():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)
        fired.set()

    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # a late signal must not kill pytest
    try:
        threading.Thread(target=send_sigterm_after_first_checkpoint, daemon=True).start()
        first = train(resume_config(), workdir)
    finally:
        fired.wait(5)
        signal.signal(signal.SIGTERM, previous)
    assert first.status == "preempted" and 4 <= first.step < 12
    assert ck.make_manager(workdir, read_only=True).latest_step() == first.step  # saved on SIGTERM
    second = train(resume_config(), workdir)
    assert second.status == "completed" and second.step == 12
    assert_params_equal(second.params, reference[0].params)
    assert_each_step_logged_once(workdir)


def test_sigkill_between_saves_then_resume_matches_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "run"
    # --cpu_devices=4: the same 4-device mesh as this process (conftest), hence the same programs.
    cmd = train_cli(workdir, "--cpu_devices=4")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "checkpoints" / "4").is_dir():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no chance to save
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = ck.make_manager(workdir, read_only=True).latest_step()
    assert latest is not None and latest < 12
    resumed = train(resume_config(), workdir)
    assert resumed.step == 12
    assert_params_equal(resumed.params, reference[0].params)
    assert_each_step_logged_once(workdir)
    # Running the finished command again validates the last step again, without a second record of it.
    train(resume_config(), workdir)
    assert_each_step_logged_once(workdir)


def assert_each_step_logged_once(workdir):
    """metrics.jsonl after kills and resumes reads as one uninterrupted run: no step twice."""
    records = read_metrics(workdir)
    for split, steps in (("train", list(range(1, 13))), ("valid", [4, 8, 12]), ("final", [12])):
        assert [r["step"] for r in records if r["split"] == split] == steps, split


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    c = resume_config()
    # From update 4 on the learning rate is 1e26: the parameters blow up and the loss becomes inf/NaN.
    c.optimizer.schedule = "step"
    c.optimizer.decay_steps = 4
    c.optimizer.decay_factor = 1e30
    with pytest.raises(NonFiniteLossError, match=r"became (nan|inf|NaN/Inf).*step 4 in") as err:
        train(c, tmp_path)
    assert str(tmp_path / "checkpoints") in str(err.value)
    assert ck.make_manager(tmp_path, read_only=True).all_steps() == [4]
    model, _ = checkpoint.load_orbax_model(tmp_path, which="latest")
    leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)


def train_cli(workdir, *flags):
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={REPO / 'configs' / 'tiny.py'}",
        f"--workdir={workdir}",
        "--config.train.steps=12",
        "--config.train.checkpoint_every=4",
        "--config.train.eval_every=4",
        "--config.train.log_every=1",
        *flags,
    ]


def test_cli_reports_config_errors_on_stderr(tmp_path):
    out = subprocess.run(
        train_cli(tmp_path, "--config.train.stepz=3"), cwd=REPO, capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 2  # the exit status of every user error (adadsr_jax.cli)
    assert out.stderr.startswith("error: unknown config fields ['train.stepz']")
    assert "Traceback" not in out.stderr


def test_cli_splits_a_cpu_host_into_one_device_per_core_by_default(tmp_path):
    """No --cpu_devices: as many XLA devices as the cores allow and the batch (4, configs/tiny.py) divides."""
    out = subprocess.run(
        train_cli(tmp_path, "--config.train.steps=1"), cwd=REPO, capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stderr
    expected = parallel.default_cpu_devices(4, parallel.usable_cores())
    assert f"for 1 steps on {expected} device(s) (1 process(es)), global batch 4" in out.stdout


def test_two_processes_match_one_process_on_the_same_global_batch(reference, tmp_path):
    """Two localhost processes (2 CPU devices each, gloo collectives) vs this process's 4 devices."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            train_cli(
                tmp_path,
                "--cpu_devices=2",
                f"--coordinator=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    assert "on 4 device(s) (2 process(es))" in outputs[0]
    model, _ = checkpoint.load_orbax_model(tmp_path, which="latest")
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    for (path, a), (_, b) in zip(
        jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(reference[0].params), strict=True
    ):
        np.testing.assert_allclose(
            a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=jax.tree_util.keystr(path)
        )


def test_a_tiny_model_trained_for_seconds_beats_bicubic_on_real_photo_patches():
    """edsr_tiny (3 blocks x 8 features), 800 Adam steps of 16 real-photo patches (demo photos, x2), then
    PSNR-Y on 32 other patches of those photos (another seed) vs MATLAB-bicubic upscaling of their LR."""
    from flax import nnx

    from adadsr_jax.data import TrainBatches, demo_source, upscale
    from adadsr_jax.evaluation import Predictor
    from adadsr_jax.metrics import mean_over_images, psnr
    from adadsr_jax.models import create_model
    from adadsr_jax.training.optim import make_optimizer
    from adadsr_jax.training.step import make_train_step

    steps = 800
    graphdef, state = nnx.split(create_model("edsr_tiny", scale=2, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(state)
    tx, schedule = make_optimizer({"name": "adam", "lr": 8e-3, "schedule": "cosine", "decay_steps": steps})
    step_fn = make_train_step(graphdef, tx, schedule, depth_range=(3.0, 3.0), depth_loss_weight=0.0)
    opt_state = tx.init(params)
    source = demo_source(scale=2)
    test = TrainBatches(source, batch_size=32, patch_size=24, scale=2, seed=99, augment=False).make_batch(0)
    key = jax.random.key(0)
    with TrainBatches(source, batch_size=16, patch_size=16, scale=2, seed=0) as batches:
        for k in range(steps):
            b = next(batches)
            params, opt_state, metrics = step_fn(params, opt_state, b["lr"], b["hr"], np.int32(k), key)
    assert np.isfinite(float(metrics["loss"]))
    predictor = Predictor(nnx.merge(graphdef, params))
    model_psnr = mean_over_images(
        [
            psnr(predictor.predict(lr, 3.0).sr, h, scale=2)
            for lr, h in zip(test["lr"], test["hr"], strict=True)
        ]
    )
    bicubic = mean_over_images(
        [psnr(upscale(lr, 2), h, scale=2) for lr, h in zip(test["lr"], test["hr"], strict=True)]
    )
    print(f"tiny model {model_psnr:.2f} dB vs bicubic {bicubic:.2f} dB on held-out patches")
    assert model_psnr > bicubic
