"""Test helper: write `torch.save`-format files from numpy arrays, without PyTorch.

Follows the documented formats byte for byte where it matters to a reader:
  zip:    archive/data.pkl (pickle protocol 2, persistent ids ('storage', torch.XStorage, key, 'cpu', numel)),
          archive/data/<key> (raw little-endian storage bytes), archive/version, archive/byteorder.
  legacy: pickle(magic) pickle(1001) pickle(sys_info) pickle(obj; persistent ids with a 6th element
          view_metadata=None) pickle(sorted storage keys), then per key int64 numel + raw bytes.
Tensors are reduce tuples calling the global torch._utils._rebuild_tensor_v2; the globals are written
as raw GLOBAL opcodes through stand-in objects, since torch itself is not importable.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

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
        return GlobalRef("torch._utils", "_rebuild_tensor_v2"), args

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
    """Pure-Python pickler: GlobalRefs become GLOBAL opcodes, Storages become persistent ids."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}
        self.keys: dict[int, str] = {}

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, GlobalRef):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        key = self.keys.setdefault(id(obj), str(len(self.keys)))
        self.storages[key] = obj
        kind = GlobalRef("torch", STORAGE_NAMES[obj.data.dtype])
        pid = ("storage", kind, key, "cpu", obj.data.size)
        return (*pid, None) if self.legacy else pid


def _dump_main(obj: Any, legacy: bool) -> tuple[bytes, dict[str, Storage]]:
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, legacy)
    pickler.dump(_wrap(obj))
    return buffer.getvalue(), pickler.storages


def write_zip(path, obj: Any, *, data_pkl: bytes | None = None) -> None:
    """torch.save(obj, path) in the zip format. `data_pkl` replaces the pickle (for hostile files)."""
    pkl, storages = _dump_main(obj, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl if data_pkl is not None else pkl)
        archive.writestr("archive/byteorder", "little")
        for key, storage in storages.items():
            archive.writestr(f"archive/data/{key}", storage.data.tobytes())  # little-endian host
        archive.writestr("archive/version", "3\n")


def write_legacy(path, obj: Any, *, main_pkl: bytes | None = None) -> None:
    """torch.save(obj, path, _use_new_zipfile_serialization=False): the PyTorch 1.2-era stream."""
    pkl, storages = _dump_main(obj, legacy=True)
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 8},
    }
    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps(sys_info, protocol=2))
        f.write(main_pkl if main_pkl is not None else pkl)
        keys = sorted(storages)  # torch sorts the keys as strings
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            data = storages[key].data
            f.write(struct.pack("<q", data.size))
            f.write(data.tobytes())
