"""adadsr_jax.checkpoint: model.safetensors + model.json round trips, and the refusals (hash, config)."""

import dataclasses
import hashlib
import json
import re
import struct

import numpy as np
import pytest
from flax import nnx

import adadsr_jax
from adadsr_jax.checkpoint import (
    ChecksumError,
    ConfigError,
    ModelFileError,
    WeightsMismatchError,
    abstract_model,
    load_model,
    model_tensors,
    save_inference_checkpoint,
    save_model,
)
from adadsr_jax.models import ModelConfig, create_model


@pytest.fixture(scope="module", params=[("adaedsr_tiny", 2), ("adarcan_tiny", 4)], ids=lambda p: p[0])
def saved(request, tmp_path_factory):
    name, scale = request.param
    model = create_model(name, scale=scale, rngs=nnx.Rngs(3))
    directory = save_model(model, tmp_path_factory.mktemp(name) / "model")
    return model, directory


def _read_safetensors_header(path):
    """The JSON header of a safetensors file, parsed from the format's own layout: an 8-byte little-endian
    header length, then that many bytes of JSON {name: {"dtype", "shape", "data_offsets"}}."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), 8 + n, data


def _copy(directory, tmp_path):
    out = tmp_path / "copy"
    out.mkdir(parents=True)
    for f in directory.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def _edit_descriptor(directory, edit):
    path = directory / "model.json"
    desc = json.loads(path.read_text())
    edit(desc)
    path.write_text(json.dumps(desc))


def test_round_trip_is_bit_exact(saved):
    model, directory = saved
    loaded = load_model(directory)
    assert loaded.config == model.config and loaded.scale == model.scale
    want, got = model_tensors(model), model_tensors(loaded)
    assert sorted(want) == sorted(got)
    for name in want:
        assert got[name].dtype == want[name].dtype == np.float32
        np.testing.assert_array_equal(got[name].view(np.uint32), want[name].view(np.uint32), err_msg=name)


def test_files_follow_the_safetensors_format_and_the_descriptor(saved):
    model, directory = saved
    header, data_start, data = _read_safetensors_header(directory / "model.safetensors")
    meta = header.pop("__metadata__")
    assert meta["format"] == "adadsr-model"
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Names are the nnx state paths joined with ".".
    assert header["body.layer0.kernel"]["shape"] == list(np.shape(params["body"]["layer0"]["kernel"]))
    assert header["up.convs.0.bias"]["shape"] == list(np.shape(params["up"]["convs"][0]["bias"]))
    assert header["adapter.layers.3.slope"]["shape"] == [1]
    for name, entry in header.items():
        assert entry["dtype"] == "F32", name
        begin, end = entry["data_offsets"]
        raw = np.frombuffer(data[data_start + begin : data_start + end], "<f4").reshape(entry["shape"])
        node = params
        for key in name.split("."):
            node = node[int(key)] if key.isdigit() else node[key]
        np.testing.assert_array_equal(raw, np.asarray(node), err_msg=name)

    desc = json.loads((directory / "model.json").read_text())
    assert desc["format"] == "adadsr-model" and desc["format_version"] == 1
    assert desc["adadsr_jax_version"] == adadsr_jax.__version__
    assert desc["scale"] == model.scale
    assert desc["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert desc["weights"]["bytes"] == len(data)
    # Every ModelConfig field, whatever the dataclass holds today.
    assert set(desc["config"]) == {f.name for f in dataclasses.fields(ModelConfig)}
    for f in dataclasses.fields(ModelConfig):
        value = getattr(model.config, f.name)
        assert desc["config"][f.name] == (list(value) if isinstance(value, tuple) else value)
    assert {k: tuple(v) for k, v in desc["parameters"].items()} == {
        k: tuple(e["shape"]) for k, e in header.items()
    }


def test_loaded_model_computes_the_same_output(saved):
    model, directory = saved
    lr = np.random.default_rng(0).uniform(0, 255, (1, 9, 11, 3)).astype(np.float32)

    @nnx.jit
    def forward(m, x):
        return m(x, desired_depth=1.5)[0]

    np.testing.assert_array_equal(
        np.asarray(forward(load_model(directory), lr)), np.asarray(forward(model, lr))
    )


def test_load_accepts_the_descriptor_or_weights_file_path(saved):
    model, directory = saved
    for path in (directory / "model.json", directory / "model.safetensors"):
        assert load_model(path).config == model.config


def test_tampered_weights_are_refused_by_hash(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # one bit of one parameter: still a valid file, a different model
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        load_model(d)
    assert str(err.value).startswith(f"{d / 'model.safetensors'}: ")
    assert "sha256" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_truncated_weights_are_refused(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ChecksumError):
        load_model(d)


def test_config_that_does_not_match_the_weights_is_refused(saved, tmp_path):
    model, directory = saved
    d = _copy(directory, tmp_path)
    _edit_descriptor(d, lambda desc: desc["config"].update(num_features=2 * model.config.num_features))
    with pytest.raises(WeightsMismatchError) as err:
        load_model(d)
    assert str(err.value).startswith(f"{d / 'model.safetensors'}: ")
    assert re.search(r"\d+ of other shape: \S+ is \[[\d, ]+\] float32, the config needs \[", str(err.value))


def test_config_with_more_blocks_names_the_shapes(saved, tmp_path):
    model, directory = saved
    d = _copy(directory, tmp_path)
    _edit_descriptor(d, lambda desc: desc["config"].update(num_blocks=model.config.num_blocks + 1))
    with pytest.raises(WeightsMismatchError, match=r"of other shape: body\.\S+ is \["):
        load_model(d)


def test_unknown_and_missing_config_fields_are_named(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path)
    _edit_descriptor(d, lambda desc: desc["config"].update(dropout=0.1))
    with pytest.raises(ConfigError, match=r"unknown ModelConfig fields \['dropout'\]") as err:
        load_model(d)
    assert str(err.value).startswith(f"{d / 'model.json'}: ")
    _edit_descriptor(d, lambda desc: (desc["config"].pop("dropout"), desc["config"].pop("res_scale")))
    with pytest.raises(ConfigError, match=r"missing ModelConfig fields \['res_scale'\]"):
        load_model(d)


def test_invalid_config_values_and_scale_are_refused(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path)
    _edit_descriptor(d, lambda desc: desc["config"].update(backbone="vgg"))
    with pytest.raises(ConfigError, match="backbone"):
        load_model(d)
    d2 = _copy(directory, tmp_path / "b")
    _edit_descriptor(d2, lambda desc: desc.update(scale=5))
    with pytest.raises(ConfigError, match="scale must be 2, 3 or 4"):
        load_model(d2)


def test_renamed_tensor_with_a_consistent_hash_is_refused(saved, tmp_path):
    from safetensors.numpy import save

    model, directory = saved
    d = _copy(directory, tmp_path)
    tensors = model_tensors(model)
    tensors["head.weight"] = tensors.pop("head.kernel")
    data = save(tensors)
    (d / "model.safetensors").write_bytes(data)
    _edit_descriptor(d, lambda desc: desc["weights"].update(sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(WeightsMismatchError, match=r"missing tensors \['head.kernel'\].*unexpected tensors"):
        load_model(d)


def test_newer_format_and_foreign_json_are_refused(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path)
    _edit_descriptor(d, lambda desc: desc.update(format_version=2))
    with pytest.raises(ModelFileError, match="newer than this adadsr-jax reads"):
        load_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(d)
    (d / "model.json").write_text('{"format": "something-else"}')
    with pytest.raises(ModelFileError, match="not an adadsr-jax model descriptor"):
        load_model(d)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no model\.json\) nor a training workdir"):
        load_model(tmp_path)


def test_load_model_reads_orbax_inference_checkpoints(tmp_path):
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(5))
    save_inference_checkpoint(tmp_path / "ckpt", model, model_name="adaedsr_tiny")
    loaded = load_model(tmp_path / "ckpt")
    want, got = model_tensors(model), model_tensors(loaded)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    # ... and converts them: Orbax in, safetensors out, the same parameters back.
    again = load_model(save_model(loaded, tmp_path / "st"))
    assert all(np.array_equal(want[k], v) for k, v in model_tensors(again).items())


def test_abstract_model_allocates_nothing():
    config = adadsr_jax.get_model_config("adaedsr")  # the paper model: 40M parameters
    model = abstract_model(config, 2)
    leaves = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert leaves["body"]["layer0"]["kernel"].shape == (32, 3, 3, 256, 256)
    assert not isinstance(leaves["body"]["layer0"]["kernel"], np.ndarray)
