"""The torch-free checkpoint reader: both real formats read back exactly; corrupt files get one clear error
naming the file; hostile pickles can neither run code, nor change the reader, nor exhaust memory."""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from torch_format import (
    ALIGNMENT,
    MAGIC_NUMBER,
    Storage,
    TensorView,
    global_ref,
    main_pickle,
    state_dict,
    write_legacy,
    write_zip,
)

from adadsr_jax import torch_checkpoint
from adadsr_jax.torch_checkpoint import (
    ALLOWED_GLOBALS,
    CheckpointFormatError,
    UnsafeCheckpointError,
    _RestrictedUnpickler,
    load_torch_checkpoint,
    scan_pickle_globals,
)

WRITERS = {
    "zip": write_zip,
    "zip_stream_old": lambda path, obj, **kw: write_zip(path, obj, folder="archive", modern=False, **kw),
    "legacy": write_legacy,
}
SRC = Path(torch_checkpoint.__file__)


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


def _small(path) -> Path:
    """A small valid checkpoint (zip by extension .pth, legacy by .legacy), written at `path`."""
    sd = state_dict([("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4)), ("a.bias", np.ones(3))])
    (write_legacy if str(path).endswith(".legacy") else write_zip)(path, {"scale": 2, "state_dict": sd})
    return Path(path)


def _data_start(raw: bytes, info: zipfile.ZipInfo) -> int:
    """File offset of a record's data: after the 30-byte local header, its name and its extra field."""
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _assert_small_loads(path) -> None:
    loaded = load_torch_checkpoint(path)
    np.testing.assert_array_equal(
        loaded["state_dict"]["a.weight"], np.arange(12, dtype=np.float32).reshape(3, 4)
    )
    assert loaded["state_dict"]["a.weight"].dtype == np.float32
    np.testing.assert_array_equal(loaded["state_dict"]["a.bias"], np.ones(3))


# --------------------------------------------------------------------------------------------------
# The writer follows the real formats (facts, checked on the bytes, not through our reader)


def test_zip_fixture_has_the_real_layout(tmp_path):
    path = tmp_path / "adaedsr_x2.pth"
    write_zip(path, {"w": np.zeros(3, np.float32), "v": np.ones(2, np.float64)})
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        # A path save names the folder after the file (PyTorchStreamWriter(file_name) -> basename).
        assert names == [
            "adaedsr_x2/data.pkl",
            "adaedsr_x2/.format_version",
            "adaedsr_x2/.storage_alignment",
            "adaedsr_x2/byteorder",
            "adaedsr_x2/data/0",
            "adaedsr_x2/data/1",
            "adaedsr_x2/version",
            "adaedsr_x2/.data/serialization_id",
        ]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        raw = path.read_bytes()
        for info in infos:  # record data aligned to 64 bytes through the local header's extra field
            assert _data_start(raw, info) % ALIGNMENT == 0
        assert archive.read("adaedsr_x2/version") == b"3\n"
        assert archive.read("adaedsr_x2/byteorder") == b"little"
        assert archive.read("adaedsr_x2/data/1") == np.ones(2, np.float64).tobytes()
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(archive.read("adaedsr_x2/data.pkl"))]
    assert ops[0] == ("PROTO", 2)  # torch.save's default protocol
    globals_ = [arg for name, arg in ops if name == "GLOBAL"]
    # Each global once (memoized, BINGET afterwards), as the C pickler writes them.
    assert sorted(globals_) == [
        "collections OrderedDict",
        "torch DoubleStorage",
        "torch FloatStorage",
        "torch._utils _rebuild_tensor_v2",
    ]
    assert ("BINPERSID", None) in ops


def test_legacy_fixture_has_the_real_layout(tmp_path):
    path = tmp_path / "old.pth"
    write_legacy(path, {"w": np.arange(3, dtype=np.float32), "v": np.ones(2, np.float64)})
    f = io.BytesIO(path.read_bytes())
    assert pickle.load(f) == MAGIC_NUMBER == 0x1950A86A20F9469CFC6C
    assert pickle.load(f) == 1001
    sys_info = pickle.load(f)
    assert sys_info == {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 8},
    }
    start = f.tell()
    pids = [arg for op, arg, _ in pickletools.genops(f) if op.name in ("BINUNICODE", "SHORT_BINUNICODE")]
    f.seek(start)
    for _ in pickletools.genops(f):  # skip the main pickle
        pass
    keys = pickle.load(f)
    # Keys are C addresses as decimal strings, sorted as strings, and appear in the persistent ids.
    assert keys == sorted(keys) and all(k.isdigit() and len(k) > 10 for k in keys) and len(keys) == 2
    assert set(keys) <= set(pids)
    (n0,) = struct.unpack("<q", f.read(8))
    assert n0 in (3, 2)
    f.read(n0 * (4 if n0 == 3 else 8))
    (n1,) = struct.unpack("<q", f.read(8))
    assert {n0, n1} == {2, 3}
    assert len(f.read()) == n1 * (4 if n1 == 3 else 8)


# --------------------------------------------------------------------------------------------------
# Read-back


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_round_trip_is_exact(tmp_path, fmt):
    obj, expected = _sample()
    path = tmp_path / f"ckpt_{fmt}.pth"
    WRITERS[fmt](path, obj)
    assert zipfile.is_zipfile(path) == fmt.startswith("zip")
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


def test_scan_lists_only_allowed_globals(tmp_path):
    obj, _ = _sample()
    pkl = main_pickle(obj)
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


# --------------------------------------------------------------------------------------------------
# Forbidden globals: never executed, however they are spelled


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


def _expect_refused(path, marker, global_name: str) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refusing to load"), message
    assert f"'{global_name}'" in message, message
    assert "Nothing from the file was executed" in message
    assert not Path(marker).exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_os_system_is_refused_and_never_runs(tmp_path, fmt, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{fmt}.pth"
    pkl = pickle.dumps(_hostile_state(marker), protocol=protocol)
    # Sanity: this pickle really would run the command with a plain unpickler (GLOBAL at protocol 2,
    # STACK_GLOBAL at 4).
    ops = {op.name for op, _, _ in pickletools.genops(pkl)}
    assert ("GLOBAL" if protocol == 2 else "STACK_GLOBAL") in ops
    if fmt == "zip":
        write_zip(path, {}, data_pkl=pkl)
    else:
        write_legacy(path, {}, main_pkl=pkl)
    _expect_refused(path, marker, f"{os.system.__module__}.system")


# What the hand-made hostile pickles would create if they ran.
MARKER = f"/tmp/adadsr_jax_test_pwned_{os.getpid()}"


def _hand_pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def _short(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


@pytest.mark.parametrize(
    ("name", "body", "refused"),
    [
        # INST: module/name inline, arguments from the MARK.
        ("inst", b"(" + _short("touch " + MARKER) + b"ios\nsystem\n", "os.system"),
        # STACK_GLOBAL with both operands fetched back from the memo after being popped.
        (
            "memo_stack_global",
            _short("os")
            + b"q\x00"
            + b"0"
            + _short("system")
            + b"q\x01"
            + b"0"
            + b"h\x00h\x01\x93"
            + _short("touch " + MARKER)
            + b"\x85R",
            "os.system",
        ),
        # Memo slots overwritten: first an allowed name, then the real target under the same index.
        (
            "memo_overwrite",
            _short("torch")
            + b"q\x00"
            + b"0"
            + _short("builtins")
            + b"q\x00"
            + b"0"
            + _short("eval")
            + b"q\x01"
            + b"0"
            + b"h\x00h\x01\x93"
            + _short("print(1)")
            + b"\x85R",
            "builtins.eval",
        ),
        # MEMOIZE (protocol 4) instead of BINPUT.
        (
            "memoize",
            _short("posix")
            + b"\x94"
            + b"0"
            + _short("system")
            + b"\x94"
            + b"0"
            + b"h\x00h\x01\x93"
            + _short("touch " + MARKER)
            + b"\x85R",
            "posix.system",
        ),
        # Operands that are not plain strings on the stack: refused without guessing.
        ("computed", b"K\x01K\x02\x93", "<computed module>.<computed name>"),
        # The copyreg extension registry.
        ("ext1", b"\x82\x01", "<copyreg extension>.1"),
    ],
    # Ids from the case names alone: the bodies hold MARKER, whose pid differs between xdist workers.
    ids=["inst", "memo_stack_global", "memo_overwrite", "memoize", "computed", "ext1"],
)
def test_every_spelling_of_a_global_is_refused(tmp_path, name, body, refused):
    marker = Path(MARKER)
    assert not marker.exists()
    pkl = _hand_pickle(body)
    # The hand-made pickles are well formed (pickletools can walk them).
    assert list(pickletools.genops(pkl))
    path = tmp_path / f"{name}.pth"
    write_zip(path, {}, data_pkl=pkl)
    _expect_refused(path, marker, refused)


@pytest.mark.parametrize("part", ["magic", "protocol", "sys_info", "keys"])
def test_payloads_in_legacy_header_pickles_are_refused(tmp_path, part):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
    good_pkl = main_pickle({"w": np.zeros(2, np.float32)}, legacy=True)
    parts = {
        "magic": pickle.dumps(MAGIC_NUMBER, protocol=2),
        "protocol": pickle.dumps(1001, protocol=2),
        "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        "main": good_pkl,
        "keys": pickle.dumps([], protocol=2),
    }
    parts[part] = evil
    path = tmp_path / f"evil_{part}.pth"
    path.write_bytes(b"".join(parts.values()))
    _expect_refused(path, marker, f"{os.system.__module__}.system")


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


# --------------------------------------------------------------------------------------------------
# Nothing a file does changes the reader


def _tensor_call(storage_pid: bytes, size: bytes, stride: bytes) -> bytes:
    """Opcodes of _rebuild_tensor_v2(persistent storage, 0, size, stride, False, OrderedDict())."""
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage_pid
        + b"Q"
        + b"K\x00"
        + size
        + stride
        + b"\x89"
        + b"ccollections\nOrderedDict\n)R"
        + b"tR"
    )


def _pid(storage: str, key: str, numel: int, legacy: bool = False) -> bytes:
    """('storage', torch.<storage>, key, 'cpu', numel[, None]): a legacy id has view_metadata too."""
    head = b"(" + _short("storage") + f"ctorch\n{storage}\n".encode() + _short(key) + _short("cpu")
    return head + b"J" + struct.pack("<i", numel) + (b"N" if legacy else b"") + b"t"


def _poisons(legacy: bool) -> dict[str, bytes]:
    pid = _pid("FloatStorage", "0", 2, legacy)
    return {
        # BUILD with a dict state on the storage type the unpickler hands out (the case).
        "storage_type_dict": b"ctorch\nFloatStorage\n}" + _short("dtype") + _short("x") + b"sb0",
        # BUILD with (None, slotstate): setattr path.
        "storage_type_slots": b"ctorch\nFloatStorage\nN}" + _short("dtype") + _short("x") + b"s\x86b0",
        # __defaults__ of a rebuild function (setattr via slotstate).
        "function_defaults": b"ctorch\nSize\nN}" + _short("__defaults__") + b"K\x07\x85s\x86b0",
        "function_dict": b"ctorch._utils\n_rebuild_tensor_v2\n}" + _short("x") + b"K\x01sb0",
        # The OrderedDict global itself.
        "ordered_dict_class": b"ccollections\nOrderedDict\nN}" + _short("__init__") + b"K\x01s\x86b0",
        # A storage handed out by persistent_load, and a tensor after its arguments were checked: a 1-element
        # view turned into a 2^40-element stride-0 view.
        "storage": pid + b"Q}" + _short("numel") + b"J\xff\xff\xff\x7fsb0",
        "tensor": _tensor_call(pid, b"K\x01\x85", b"K\x01\x85")
        + b"N}"
        + _short("size")
        + b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85s"
        + _short("stride")
        + b"K\x00\x85s\x86b0",
    }


POISONS = sorted(_poisons(False))
_FLOAT_PID = _pid("FloatStorage", "0", 2)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("poison", POISONS)
def test_poisoning_attempts_are_refused_and_a_clean_load_still_works(tmp_path, poison, fmt):
    clean = _small(tmp_path / ("clean.legacy" if fmt == "legacy" else "clean.pth"))
    _assert_small_loads(clean)
    pkl = _hand_pickle(_poisons(fmt == "legacy")[poison] + b"N")
    assert list(pickletools.genops(pkl))
    path = tmp_path / f"poison_{poison}.pth"
    if fmt == "zip":
        write_zip(path, {}, data_pkl=pkl)
    else:
        write_legacy(path, {}, main_pkl=pkl)
    with pytest.raises(CheckpointFormatError) as info:
        load_torch_checkpoint(path)
    # Refused by the sealed object itself, while unpickling (not by a later consistency check).
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert "the pickle tries to " in str(info.value), str(info.value)
    # The reader's objects are untouched and the same process still loads a good file exactly.
    assert ALLOWED_GLOBALS["torch", "FloatStorage"].dtype == np.float32
    assert ALLOWED_GLOBALS["torch", "Size"]() == ()
    assert not hasattr(ALLOWED_GLOBALS["torch._utils", "_rebuild_tensor_v2"], "x")
    _assert_small_loads(clean)


def test_shared_and_self_referencing_structures_resolve_once(tmp_path):
    """A doubling chain (2^60 paths through 60 lists) and a list holding itself load quickly."""
    chain = b"]q\x00" + b"h\x00a"  # a list that contains itself (stays on the stack)
    chain += _tensor_call(_FLOAT_PID, b"K\x02\x85", b"K\x01\x85") + b"q\x010"
    for i in range(60):  # list i+1 = [list i, list i], memo slot 2 + i
        chain += b"(" + (b"h" + bytes([1 + i])) * 2 + b"lq" + bytes([2 + i]) + b"0"
    chain += b"h" + bytes([61]) + b"\x86"  # (self-list, top of the chain)
    pkl = _hand_pickle(chain)
    path = tmp_path / "laughs.pth"
    write_zip(path, {"w": np.arange(2, dtype=np.float32)}, data_pkl=pkl)
    start = time.perf_counter()
    loaded = load_torch_checkpoint(path)
    assert time.perf_counter() - start < 5.0
    looped, top = loaded
    assert looped[0] is looped
    node = top
    for _ in range(60):
        assert node[0] is node[1]
        node = node[0]
    np.testing.assert_array_equal(node, np.arange(2, dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Memory bombs: refused from the numbers, before anything large is allocated

_BOMB_SCRIPT = textwrap.dedent(
    """
    import importlib.util, resource, sys
    # Load the reader alone (no jax: its address-space reservations would blur the limit).
    spec = importlib.util.spec_from_file_location("tc", sys.argv[1])
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * resource.getpagesize() + (256 << 20)  # what is mapped now + 256 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for path in sys.argv[2:]:
        try:
            tc.load_torch_checkpoint(path)
            print("LOADED", path)
        except tc.CheckpointFormatError as err:
            print("REFUSED", err)
        except MemoryError:
            print("MEMORYERROR", path)
    """
)


def test_tensor_and_storage_bombs_are_refused_under_a_memory_limit(tmp_path):
    # 1. The case: stride 0, 2^40 elements over a 1-element storage (4 TiB as float32).
    huge = b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85"  # LONG1 2^40, TUPLE1
    stride0 = _hand_pickle(
        b"}" + _short("w") + _tensor_call(_pid("FloatStorage", "0", 1), huge, b"K\x00\x85") + b"s"
    )
    files = {"stride0": tmp_path / "stride0.pth"}
    write_zip(files["stride0"], {"w": np.zeros(1, np.float32)}, data_pkl=stride0)
    # 2. A 2-D broadcast: (2^20, 2^20) over 4 elements with strides (0, 0).
    broadcast = _hand_pickle(
        _tensor_call(
            _pid("FloatStorage", "0", 4), b"J\x00\x00\x10\x00J\x00\x00\x10\x00\x86", b"K\x00K\x00\x86"
        )
    )
    files["broadcast"] = tmp_path / "broadcast.pth"
    write_zip(files["broadcast"], {"w": np.zeros(4, np.float32)}, data_pkl=broadcast)
    # 3. A zip storage claiming 2^31 - 1 elements while its entry holds 4 bytes.
    claim = _hand_pickle(_tensor_call(_pid("FloatStorage", "0", 2**31 - 1), b"K\x01\x85", b"K\x01\x85"))
    files["zip_claim"] = tmp_path / "zip_claim.pth"
    write_zip(files["zip_claim"], {"w": np.zeros(1, np.float32)}, data_pkl=claim)
    # 4. A legacy file whose pickle and storage header both claim 2^31 - 1 elements (8 GiB).
    files["legacy_claim"] = tmp_path / "legacy_claim.pth"
    write_legacy(files["legacy_claim"], {"w": np.zeros(1, np.float32)})
    raw = files["legacy_claim"].read_bytes()
    assert raw.count(b"K\x01Nt") == 1 and raw[-12:-4] == struct.pack("<q", 1)
    raw = raw.replace(b"K\x01Nt", b"J\xff\xff\xff\x7fNt")  # numel in the persistent id
    raw = raw[:-12] + struct.pack("<q", 2**31 - 1) + raw[-4:]  # the storage's int64 count
    files["legacy_claim"].write_bytes(raw)
    for path in files.values():
        assert path.stat().st_size < 2048  # tiny files
    run = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, str(SRC), *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("REFUSED ") for line in lines), run.stdout
    by_file = dict(zip(files, lines, strict=True))
    assert (
        f"{files['stride0']}: tensor (offset 0, size (1099511627776,), stride (0,)) would materialise "
        in (by_file["stride0"])
    )
    assert (
        "1099511627776 elements (4398046511104 bytes) from storage '0', which holds 1" in by_file["stride0"]
    )
    assert (
        "size (1048576, 1048576), stride (0, 0)) would materialise 1099511627776 elements"
        in (by_file["broadcast"])
    )
    assert f"{files['zip_claim']}: storage '0' holds 4 bytes, expected 8589934588" in by_file["zip_claim"]
    assert f"{files['legacy_claim']}: storage '" in by_file["legacy_claim"]
    assert "holds 4 bytes, expected 8589934588" in by_file["legacy_claim"]


# --------------------------------------------------------------------------------------------------
# Corrupt files: one clear error naming the file


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_byte_inside_a_zip_tensor_is_a_crc_error(tmp_path):
    path = _small(tmp_path / "crc.pth")
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("crc/data/1")
    _flip(path, _data_start(path.read_bytes(), info) + 5)  # inside the tensor's bytes
    with pytest.raises(CheckpointFormatError) as info_err:
        load_torch_checkpoint(path)
    assert str(info_err.value) == (
        f"{path}: the zip archive is damaged (BadZipFile: Bad CRC-32 for file 'crc/data/1'); "
        "download it again"
    )


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "garbage.pth",
            lambda p: p.write_bytes(b"hello world, not a checkpoint"),
            "not a PyTorch checkpoint",
        ),
        ("empty.pth", lambda p: p.write_bytes(b""), "the file is empty"),
        ("pickle_garbage.pth", lambda p: p.write_bytes(b"\x80\x02\xff\xfe\xfd"), "corrupt pickle data"),
        (
            "wrong_magic.pth",
            lambda p: p.write_bytes(pickle.dumps(12345, protocol=2) + pickle.dumps(1001, protocol=2)),
            "not a PyTorch checkpoint (wrong magic number)",
        ),
        (
            "wrong_version.pth",
            lambda p: p.write_bytes(pickle.dumps(MAGIC_NUMBER, protocol=2) + pickle.dumps(7, protocol=2)),
            "unsupported legacy protocol version 7",
        ),
        (
            "big_endian.pth",
            lambda p: write_legacy(p, {"w": np.zeros(1, np.float32)}, sys_info={"little_endian": False}),
            "only little-endian checkpoints are supported",
        ),
        ("no_data_pkl.pth", lambda p: _zip_of(p, {"archive/version": b"3\n"}), "without exactly one"),
        (
            "two_data_pkl.pth",
            lambda p: _zip_of(p, {"a/data.pkl": b"\x80\x02N.", "b/data.pkl": b"\x80\x02N."}),
            "zip file without exactly one '<name>/data.pkl'",
        ),
        ("not_zip_pickle.pth", lambda p: _zip_of(p, {"x/data.pkl": b"garbage"}), "corrupt pickle data"),
        ("torchscript.pth", lambda p: _torchscript(p), "a TorchScript archive"),
        ("missing_storage.pth", lambda p: _drop_entry(p, "missing_storage/data/0"), "storage '0' is missing"),
        ("zip_cut.pth", lambda p: _cut(_small(p), 0.5), "a zip archive without its central directory"),
        ("dir.pth", lambda p: p.mkdir(), "not a file"),
    ],
)
def test_corrupt_files_get_one_clear_error(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(CheckpointFormatError) as info:
        load_torch_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def _zip_of(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def _torchscript(path: Path) -> None:
    write_zip(path, {"w": np.zeros(1, np.float32)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("torchscript/code/__torch__.py", "")


def _drop_entry(path: Path, entry: str) -> None:
    src = path.with_suffix(".src")
    write_zip(src, {"w": np.zeros(1, np.float32)}, folder=path.stem)
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(path, "w") as b:
        for info in a.infolist():
            if info.filename != entry:
                b.writestr(info, a.read(info))


def _cut(path: Path, fraction: float) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_truncations_and_byte_flips_give_a_clean_error(tmp_path, kind):
    """Whatever the damage, the reader answers with its own error (or, for flips the format cannot
    detect, e.g. inside legacy tensor bytes, a load): never a raw zipfile/pickle/struct exception."""
    good = _small(tmp_path / ("good.legacy" if kind == "legacy" else "good.pth"))
    raw = good.read_bytes()
    bad = tmp_path / "bad.pth"
    rng = np.random.default_rng(0)
    cuts = [(f"cut at {n}", raw[:n], True) for n in range(1, len(raw), 3)]  # ~450 (zip) / ~130 (legacy)
    # Zip: the CRC-32 of each record covers its data, so a flip inside data.pkl or a tensor is refused;
    # elsewhere (alignment padding, timestamps, ...) and in legacy files (no checksum) it may load.
    checked = set()
    if kind == "zip":
        with zipfile.ZipFile(good) as archive:
            for info in archive.infolist():
                if info.filename.endswith(("/data.pkl", "/data/0", "/data/1")):
                    start = _data_start(raw, info)
                    checked |= set(range(start, start + info.file_size))
    flips = []
    for offset in rng.choice(len(raw), size=200, replace=False):
        damaged = bytearray(raw)
        damaged[offset] ^= 1 << int(rng.integers(8))
        flips.append((f"flip at {offset}", bytes(damaged), int(offset) in checked))
    assert kind == "legacy" or sum(f[2] for f in flips) > 20
    for what, data, must_refuse in cuts + flips:
        bad.write_bytes(data)
        try:
            load_torch_checkpoint(bad)
        except CheckpointFormatError as err:
            assert str(err).startswith(f"{bad}: ") and "\n" not in str(err), (what, str(err))
        else:
            assert not must_refuse, f"{what}: the damaged file loaded"


def test_short_legacy_storage_and_missing_files_are_reported(tmp_path):
    path = tmp_path / "short.pth"
    write_legacy(path, {"w": np.arange(10, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointFormatError, match=r"short\.pth: storage '\d+' holds 32 bytes, expected 40"):
        load_torch_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_torch_checkpoint(tmp_path / "nope.pth")


def test_out_of_bounds_view_is_refused(tmp_path):
    path = tmp_path / "oob.pth"
    write_zip(path, {"w": TensorView(Storage(np.zeros(6, np.float32)), 2, (2, 3), (3, 1))})
    with pytest.raises(CheckpointFormatError, match="reaches element 7 of storage '0', which has 6"):
        load_torch_checkpoint(path)


def test_rebuild_from_a_non_storage_is_refused(tmp_path):
    """A tensor rebuild given some other object (here a string) fails cleanly, naming the problem."""

    class Bad:
        def __reduce__(self):
            return global_ref("torch._utils", "_rebuild_tensor_v2"), (
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
