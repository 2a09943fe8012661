"""Test helper: write `torch.save` files from numpy arrays, without PyTorch, in the real on-disk formats.

The facts followed (PyTorch's torch/serialization.py and caffe2/serialize/inline_container.cc):

* zip (torch >= 1.6, `torch.save(obj, path)`): a zip archive whose entries are STORED (no compression)
  under one top-level folder, the file's base name without extension for a path save (`adaedsr_x2.pth`
  -> `adaedsr_x2/`) and `archive/` for a save to a stream. Entries, in order: `data.pkl` (pickle
  protocol 2 of the object; every storage pickled as the persistent id
  `('storage', torch.<X>Storage, key, 'cpu', numel)` with keys "0", "1", ... in order of first use), in
  torch >= 2.x `.format_version` ("1"), `.storage_alignment` ("64") and `byteorder` ("little"), then
  `data/<key>` (the raw little-endian bytes of each storage, data aligned to 64 bytes in the file by
  padding the local header's extra field), `version` ("3\\n") and in torch >= 2.x
  `.data/serialization_id`.
* legacy (torch 0.4 - 1.5, and `_use_new_zipfile_serialization=False`): one stream of pickles (protocol
  2): the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, the sys_info dict
  {protocol_version, little_endian, type_sizes{short, int, long}}, the object (persistent ids
  `('storage', torch.<X>Storage, key, 'cpu', numel, view_metadata=None)`, where the key is the storage's
  C address as a decimal string), the list of keys sorted as strings; then for each key in that order an
  int64 element count and the raw storage bytes.

Tensors pickle as `torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), stride, requires_grad,
OrderedDict())` (Tensor.__reduce_ex__). Globals (the rebuild function, the storage classes) are written as
GLOBAL opcodes and memoized like the C pickler does (later uses are BINGETs), through stand-in objects,
since torch itself is not importable. State dicts are OrderedDicts carrying a `_metadata` attribute
(pickled by OrderedDict.__reduce__ as REDUCE, SETITEMS, BUILD), as `Module.state_dict()` returns.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ALIGNMENT = 64  # torch's kFieldAlignment for zip records
assert sys.byteorder == "little", "the writer dumps host-order bytes"
# Stand-in C addresses for legacy storage keys (torch uses str(storage._cdata)).
_LEGACY_BASE_ADDRESS = 94_853_271_552_000

STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class GlobalRef:
    """Pickles as the opcode GLOBAL 'module name' (stand-in for an object we cannot import)."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def __call__(self, *args):  # pickle requires reduce callables to be callable
        raise RuntimeError("stand-in only")


_GLOBALS: dict[tuple[str, str], GlobalRef] = {}


def global_ref(module: str, name: str) -> GlobalRef:
    """The one stand-in per global, so the pickler memoizes it like the real (unique) object."""
    return _GLOBALS.setdefault((module, name), GlobalRef(module, name))


class Storage:
    """A flat storage: numpy 1-D array of one dtype."""

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data).reshape(-1)


class TensorView:
    """A tensor over `storage` with explicit offset, size and stride (in elements), like torch's."""

    def __init__(self, storage: Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return global_ref("torch._utils", "_rebuild_tensor_v2"), args

    def numpy(self) -> np.ndarray:
        """The values this tensor denotes (reference for read-back tests)."""
        flat = self.storage.data
        out = np.empty(self.size, flat.dtype)
        for index in np.ndindex(*self.size):
            out[index] = flat[self.offset + sum(i * s for i, s in zip(index, self.stride, strict=True))]
        return out


def tensor(array: np.ndarray) -> TensorView:
    """A contiguous tensor owning its storage."""
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in array.copy(order="C").strides)
    return TensorView(Storage(array), 0, array.shape, strides)


def state_dict(items) -> collections.OrderedDict:
    """An OrderedDict of tensors with the `_metadata` attribute `Module.state_dict()` attaches
    ({module prefix: {'version': 1}} for the root and every module owning a key)."""
    sd = collections.OrderedDict(items)
    modules = {""} | {k.rsplit(".", 1)[0] for k in sd if "." in k}
    sd._metadata = collections.OrderedDict((m, {"version": 1}) for m in sorted(modules))
    return sd


def _wrap(obj: Any) -> Any:
    """Replace numpy arrays by TensorViews throughout dicts/lists/tuples (keeps OrderedDict attrs)."""
    if isinstance(obj, np.ndarray):
        return tensor(obj)
    if isinstance(obj, dict):
        out = type(obj)((k, _wrap(v)) for k, v in obj.items())
        if hasattr(obj, "__dict__"):  # a state_dict's _metadata attribute
            out.__dict__.update(obj.__dict__)
        return out
    if isinstance(obj, list):
        return [_wrap(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_wrap(v) for v in obj)
    return obj


class _TorchPickler(pickle._Pickler):
    """Pure-Python pickler: GlobalRefs become (memoized) GLOBAL opcodes, Storages persistent ids."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}
        self.keys: dict[int, str] = {}

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, GlobalRef):
            memoized = self.memo.get(id(obj))
            if memoized is not None:
                self.write(self.get(memoized[0]))
                return
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in self.keys:
            n = len(self.keys)
            # zip: a counter; legacy: the storage's C address (distinct, same number of digits).
            self.keys[id(obj)] = str(_LEGACY_BASE_ADDRESS + 4160 * n) if self.legacy else str(n)
        key = self.keys[id(obj)]
        self.storages[key] = obj
        kind = global_ref("torch", STORAGE_NAMES[obj.data.dtype])
        pid = ("storage", kind, key, "cpu", obj.data.size)
        return (*pid, None) if self.legacy else pid


def _dump_main(obj: Any, legacy: bool) -> tuple[bytes, dict[str, Storage]]:
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, legacy)
    pickler.dump(_wrap(obj))
    return buffer.getvalue(), pickler.storages


def main_pickle(obj: Any, *, legacy: bool = False) -> bytes:
    """The object pickle alone, as torch.save writes it (for hand-edited hostile files)."""
    return _dump_main(obj, legacy)[0]


def _write_aligned(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    """One STORED record whose data starts at a multiple of ALIGNMENT, padded through the extra field
    (header id 'FB', as PyTorchStreamWriter does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = archive.fp.tell() + 30 + len(name.encode())  # local header is 30 bytes + name + extra
    pad = (-(offset + 4)) % ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    archive.writestr(info, data)


def write_zip(
    path,
    obj: Any,
    *,
    data_pkl: bytes | None = None,
    folder: str | None = None,
    modern: bool = True,
) -> None:
    """torch.save(obj, path) in the zip format. `data_pkl` replaces the pickle (for hostile files);
    `folder` the top-level folder (default: the file's base name, as a path save does; "archive" is what
    a save to a stream writes); `modern=False` leaves out the records torch >= 2 adds."""
    pkl, storages = _dump_main(obj, legacy=False)
    stem = folder if folder is not None else os.path.splitext(os.path.basename(os.fspath(path)))[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        _write_aligned(archive, f"{stem}/data.pkl", data_pkl if data_pkl is not None else pkl)
        if modern:
            _write_aligned(archive, f"{stem}/.format_version", b"1")
            _write_aligned(archive, f"{stem}/.storage_alignment", str(ALIGNMENT).encode())
            _write_aligned(archive, f"{stem}/byteorder", b"little")
        for key in sorted(storages, key=int):
            _write_aligned(archive, f"{stem}/data/{key}", storages[key].data.tobytes())  # little-endian host
        _write_aligned(archive, f"{stem}/version", b"3\n")
        if modern:
            _write_aligned(archive, f"{stem}/.data/serialization_id", b"0123456789" * 4)


def write_legacy(path, obj: Any, *, main_pkl: bytes | None = None, sys_info: dict | None = None) -> None:
    """torch.save(obj, path, _use_new_zipfile_serialization=False): the PyTorch 1.2-era stream."""
    pkl, storages = _dump_main(obj, legacy=True)
    if sys_info is None:
        sys_info = {
            "protocol_version": PROTOCOL_VERSION,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 8},  # Linux sizes
        }
    with open(path, "wb") as f:
        f.write(pickle.dumps(MAGIC_NUMBER, protocol=2))
        f.write(pickle.dumps(PROTOCOL_VERSION, protocol=2))
        f.write(pickle.dumps(sys_info, protocol=2))
        f.write(main_pkl if main_pkl is not None else pkl)
        keys = sorted(storages)  # torch sorts the keys as strings
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            data = storages[key].data
            f.write(struct.pack("<q", data.size))  # element count, then the raw little-endian bytes
            f.write(data.tobytes())
