"""The CHECKPOINTS contract: save_inference_checkpoint / load_model round trips, best vs latest, errors."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from adadsr_jax import checkpoint
from adadsr_jax.models import create_model
from adadsr_jax.training import checkpoints as ck


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _assert_same_params(a, b):
    la, lb = jax.tree.leaves_with_path(_params(a)), jax.tree.leaves_with_path(_params(b))
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = create_model("adaedsr_tiny", scale=3, rngs=nnx.Rngs(7), num_blocks=2)
    directory = tmp_path_factory.mktemp("inference")
    checkpoint.save_inference_checkpoint(
        directory, model, model_name="adaedsr_tiny", overrides={"num_blocks": 2}, step=5
    )
    return model, directory


def test_round_trip_params_config_and_outputs(saved):
    model, directory = saved
    loaded, config = checkpoint.load_orbax_model(directory)
    assert config == {"model": {"name": "adaedsr_tiny", "scale": 3, "overrides": {"num_blocks": 2}}}
    assert loaded.config == model.config and loaded.scale == 3
    _assert_same_params(model, loaded)
    lr = np.random.default_rng(0).uniform(0, 255, (1, 6, 5, 3)).astype(np.float32)
    sr_a, _ = model(lr, desired_depth=1.5)
    sr_b, _ = loaded(lr, desired_depth=1.5)
    np.testing.assert_array_equal(np.asarray(sr_a), np.asarray(sr_b))
    assert sr_b.shape == (1, 18, 15, 3)
    # An inference checkpoint has no metrics: "best" falls back to the latest (the only) step.
    loaded_latest, _ = checkpoint.load_orbax_model(directory, which="latest")
    _assert_same_params(model, loaded_latest)


def test_best_and_latest_in_a_training_workdir(tmp_path):
    models = [create_model("edsr_tiny", scale=2, rngs=nnx.Rngs(s)) for s in range(4)]
    checkpoint.write_config(
        tmp_path, {"model": {"name": "edsr_tiny", "scale": 2, "overrides": {}}, "train": {}}
    )
    manager = ck.make_manager(tmp_path, max_to_keep=1)
    psnrs = [30.0, 31.0, 29.0, None]  # the best is step 20; step 40 (no eval) is the latest
    for i, (m, p) in enumerate(zip(models, psnrs, strict=True)):
        ck.save_checkpoint(
            manager,
            (i + 1) * 10,
            params=_params(m),
            opt_state={"count": np.zeros((), np.int32)},
            meta={"step": (i + 1) * 10},
            metrics=None if p is None else {"val_psnr": p},
        )
    manager.wait_until_finished()
    # latest-1 plus the best are kept; the others are deleted.
    assert manager.all_steps() == [20, 40]
    manager.close()
    best, _ = checkpoint.load_orbax_model(tmp_path, which="best")
    latest, _ = checkpoint.load_orbax_model(tmp_path, which="latest")
    _assert_same_params(best, models[1])
    _assert_same_params(latest, models[3])
    # A saved step by number (through load_model, as benchmarks/uniform_depth.py --step does).
    _assert_same_params(checkpoint.load_model(tmp_path, which=40), models[3])
    _assert_same_params(checkpoint.load_model(tmp_path, which=20), models[1])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 10; saved steps: \[20, 40\]"):
        checkpoint.load_model(tmp_path, which=10)


def test_missing_paths_raise_file_not_found(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        checkpoint.load_orbax_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        checkpoint.load_orbax_model(tmp_path)
    checkpoint.write_config(tmp_path, {"model": {"name": "edsr_tiny", "scale": 2}})
    with pytest.raises(FileNotFoundError, match="no 'checkpoints' folder"):
        checkpoint.load_orbax_model(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="contains no finished checkpoint"):
        checkpoint.load_orbax_model(tmp_path)
    with pytest.raises(ValueError, match="which must be"):
        checkpoint.load_orbax_model(saved[1], which="newest")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"train": {}}), "needs a 'model' entry"),
        (json.dumps({"model": {"name": "adaedsr_tiny", "scale": 3, "overrides": [1]}}), "must be a mapping"),
        (json.dumps({"model": {"name": "nosuchnet", "scale": 3}}), "cannot build the model"),
    ],
)
def test_bad_config_raises_value_error_naming_the_file(tmp_path, saved, text, message):
    shutil.copytree(saved[1], tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        checkpoint.load_orbax_model(tmp_path / "ck")
    assert str(tmp_path / "ck") in str(err.value)


def test_mismatched_or_corrupt_params_raise_value_error(tmp_path, saved):
    shutil.copytree(saved[1], tmp_path / "ck")
    # The config says 3 blocks, the checkpoint has 2.
    checkpoint.write_config(tmp_path / "ck", {"model": {"name": "adaedsr_tiny", "scale": 3, "overrides": {}}})
    with pytest.raises(ValueError, match=r"cannot read the parameters|do not match") as err:
        checkpoint.load_orbax_model(tmp_path / "ck")
    assert str(tmp_path / "ck") in str(err.value)

    shutil.copytree(saved[1], tmp_path / "ck2")
    for f in (tmp_path / "ck2" / "checkpoints" / "5" / "params").rglob("*"):
        if f.is_file() and f.name not in ("commit_success.txt",):
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the parameters") as err:
        checkpoint.load_orbax_model(tmp_path / "ck2")
    assert str(tmp_path / "ck2") in str(err.value)


def test_save_refuses_a_name_that_does_not_rebuild_the_model(tmp_path):
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0), num_blocks=2)
    with pytest.raises(ValueError, match="but the model has"):
        checkpoint.save_inference_checkpoint(tmp_path, model, model_name="adaedsr_tiny")
