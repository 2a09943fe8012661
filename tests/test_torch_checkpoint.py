"""The torch-free checkpoint reader: both formats read back exactly; hostile pickles are refused."""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import zipfile

import ml_dtypes
import numpy as np
import pytest
from torch_format import GlobalRef, Storage, TensorView, write_legacy, write_zip

from adadsr_jax.torch_checkpoint import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    _RestrictedUnpickler,
    load_torch_checkpoint,
    scan_pickle_globals,
)

WRITERS = {"zip": write_zip, "legacy": write_legacy}


def _sample() -> tuple[dict, dict]:
    """(object to save, expected numpy values) covering dtypes, views, shared storage, nesting."""
    rng = np.random.default_rng(0)
    shared = Storage(rng.standard_normal(30).astype(np.float32))
    state = collections.OrderedDict()
    state["conv.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    state["half"] = rng.standard_normal((5, 2)).astype(np.float16)
    state["bf16"] = rng.standard_normal(7).astype(ml_dtypes.bfloat16)
    state["double"] = rng.standard_normal((2, 2)).astype(np.float64)
    state["long"] = np.array([-(2**40), 3, 7], np.int64)
    state["mask"] = np.array([True, False, True])
    state["scalar"] = np.array(2.5, np.float32)
    state["empty"] = np.zeros((0, 3), np.float32)
    # Non-contiguous: a transposed 4x5 block starting at element 3, and a strided row of the same storage.
    state["transposed"] = TensorView(shared, 3, (5, 4), (1, 5))
    state["strided"] = TensorView(shared, 1, (3,), (7,))
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("conv", {"version": 1})])
    obj = {"scale": 3, "state_dict": state, "extra": [1.5, ("a", np.arange(3, dtype=np.int32))]}
    expected = {k: (v.numpy() if isinstance(v, TensorView) else v) for k, v in state.items()}
    return obj, expected


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_round_trip_is_exact(tmp_path, fmt):
    obj, expected = _sample()
    path = tmp_path / f"ckpt_{fmt}.pth"
    WRITERS[fmt](path, obj)
    if fmt == "zip":
        assert zipfile.is_zipfile(path)
    else:
        assert not zipfile.is_zipfile(path)
    loaded = load_torch_checkpoint(path)
    assert loaded["scale"] == 3
    assert loaded["extra"][0] == 1.5 and loaded["extra"][1][0] == "a"
    np.testing.assert_array_equal(loaded["extra"][1][1], np.arange(3, dtype=np.int32))
    state = loaded["state_dict"]
    assert isinstance(state, collections.OrderedDict)
    assert list(state) == list(expected)  # order preserved
    assert state._metadata["conv"] == {"version": 1}
    for key, want in expected.items():
        got = state[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert got.flags.c_contiguous, key
        # Bitwise equality (float16/bfloat16 included).
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key
    # The views really were strided: the transposed one is the transpose of a contiguous 4x5 block.
    np.testing.assert_array_equal(state["transposed"].T, expected["transposed"].T)
    assert state["transposed"][1, 0] == expected["transposed"][1, 0]


def test_noncontiguous_view_reference_is_right():
    """The writer's own view semantics (used as the oracle above) match numpy striding."""
    base = np.arange(30, dtype=np.float32)
    view = TensorView(Storage(base), 3, (5, 4), (1, 5)).numpy()
    np.testing.assert_array_equal(view, base[3:23].reshape(4, 5).T)


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _hostile_state(marker) -> collections.OrderedDict:
    state = collections.OrderedDict()
    state["ok.weight"] = [1.0, 2.0]
    state["payload"] = _Evil(f"touch {marker}")
    return state


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_os_system_is_refused_and_never_runs(tmp_path, fmt, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{fmt}.pth"
    pkl = pickle.dumps(_hostile_state(marker), protocol=protocol)
    # Sanity: this pickle really would run the command with a plain unpickler.
    assert b"system" in pkl
    if fmt == "zip":
        write_zip(path, {}, data_pkl=pkl)
    else:
        write_legacy(path, {}, main_pkl=pkl)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{os.system.__module__}.system'" in message
    assert "Nothing from the file was executed" in message
    assert not marker.exists()


def test_any_other_global_is_refused_even_by_the_unpickler(tmp_path):
    """Defence in depth: the unpickler's find_class refuses too, if the scan were ever bypassed."""
    marker = tmp_path / "pwned"
    pkl = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        _RestrictedUnpickler(io.BytesIO(pkl), "mem", None).load()
    assert not marker.exists()
    # A harmless-looking global outside the list is refused as well (builtins.getattr, via STACK_GLOBAL).
    pkl = pickle.dumps(getattr, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match=r"'builtins\.getattr'"):
        scan_pickle_globals(io.BytesIO(pkl), "mem")


def test_hostile_sys_info_in_legacy_header_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_header.pth"
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps(_Evil(f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_scan_lists_only_allowed_globals(tmp_path):
    obj, _ = _sample()
    path = tmp_path / "ok.pth"
    write_zip(path, obj)
    with zipfile.ZipFile(path) as archive:
        pkl = archive.read("archive/data.pkl")
    found = set(scan_pickle_globals(io.BytesIO(pkl), "mem"))
    assert found == {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch", "FloatStorage"),
        ("torch", "HalfStorage"),
        ("torch", "BFloat16Storage"),
        ("torch", "DoubleStorage"),
        ("torch", "LongStorage"),
        ("torch", "BoolStorage"),
        ("torch", "IntStorage"),
    }
    # The pickle uses protocol 2 GLOBAL opcodes, as torch.save does.
    assert any(op.name == "GLOBAL" for op, _, _ in pickletools.genops(pkl))


def test_out_of_bounds_view_is_refused(tmp_path):
    path = tmp_path / "oob.pth"
    write_zip(path, {"w": TensorView(Storage(np.zeros(6, np.float32)), 2, (2, 3), (3, 1))})
    with pytest.raises(CheckpointFormatError, match="reaches element 7 of storage '0', which has 6"):
        load_torch_checkpoint(path)


def test_truncated_storage_and_garbage_are_reported(tmp_path):
    path = tmp_path / "short.pth"
    write_legacy(path, {"w": np.arange(10, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointFormatError, match=r"short\.pth: storage '0' holds 32 bytes, expected 40"):
        load_torch_checkpoint(path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointFormatError, match=r"junk\.pth: not a PyTorch checkpoint"):
        load_torch_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_torch_checkpoint(tmp_path / "nope.pth")


def test_rebuild_from_a_non_storage_is_refused(tmp_path):
    """A tensor rebuild given some other object (here a string) fails cleanly, naming the problem."""

    class Bad:
        def __reduce__(self):
            return GlobalRef("torch._utils", "_rebuild_tensor_v2"), (
                "notastorage",
                0,
                (1,),
                (1,),
                False,
                None,
            )

    path = tmp_path / "bad.pth"
    write_zip(path, {"w": Bad()})
    with pytest.raises(CheckpointFormatError, match="non-storage object str"):
        load_torch_checkpoint(path)
