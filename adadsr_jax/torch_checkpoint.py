"""Read PyTorch `torch.save` checkpoints without PyTorch, and without running code from the file.

Two on-disk formats are supported:

* **zip** (PyTorch >= 1.6): a zip archive `<name>/data.pkl` (the pickled object),
  `<name>/data/<key>` (one raw little-endian storage per key), `<name>/version` and, in newer files,
  `<name>/byteorder`. Storages are pickled as persistent ids
  `('storage', <torch.XStorage>, key, location, numel)`.
* **legacy** (PyTorch 0.4 - 1.5, e.g. the AdaDSR release): one stream of five parts, (1) a pickled magic
  number 0x1950a86a20f9469cfc6c, (2) a pickled protocol version 1001, (3) a pickled sys_info dict
  (`little_endian`, `type_sizes`), (4) the main pickle whose persistent ids are
  `('storage', <torch.XStorage>, key, location, numel, view_metadata)`, (5) a pickled list of storage
  keys, then for each key an int64 element count followed by the raw storage bytes.

Tensors are pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`; they come
back as C-contiguous numpy arrays (strides and offsets honoured, so non-contiguous views are exact).

Safety: every pickle is first scanned opcode by opcode (`pickletools`, nothing is executed) and any
global outside a fixed allow-list (collections.OrderedDict, the torch tensor/parameter rebuild functions,
torch storage types, torch.Size) is refused with `UnsafeCheckpointError` before unpickling starts. The
unpickler's `find_class` enforces the same list again, and maps the allowed names to local numpy
builders, so torch is never imported and no callable from the file runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> element dtype (little-endian on disk).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    # Byte-addressed storage of newer PyTorch; its "numel" is a byte count.
    "UntypedStorage": np.dtype(np.uint8),
}


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands (message names file and problem)."""


class UnsafeCheckpointError(CheckpointFormatError):
    """The file's pickle references a global outside the allow-list; nothing from it was executed."""


class StorageType:
    """Stand-in for a torch storage class (torch.FloatStorage, ...): only carries the element dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"StorageType({self.name})"


class _Storage:
    """A storage referenced by the pickle. Its bytes are attached after unpickling (legacy files keep
    them after the main pickle), so tensors are built lazily in `_resolve`."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None  # flat [numel] array of dtype
        # Legacy storage views: (root storage, element offset) instead of own data.
        self.view_of: tuple[_Storage, int] | None = None

    def flat(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset = self.view_of
            return root.flat()[offset : offset + self.numel]
        assert self.data is not None, f"storage {self.key} has no data"
        return self.data


class _PendingTensor:
    """Arguments of a `_rebuild_tensor_v2` call, materialised once storage bytes are known."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise CheckpointFormatError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointFormatError(f"tensor storage offset must be an int >= 0, got {storage_offset!r}")
    size_t = _as_int_tuple(size, "size")
    stride_t = _as_int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise CheckpointFormatError(f"tensor size {size_t} and stride {stride_t} differ in length")
    return _PendingTensor(storage, storage_offset, size_t, stride_t)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    # requires_grad, backward hooks and metadata mean nothing for numpy arrays.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    return data


def _torch_size(values=()) -> tuple:
    return tuple(values)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): _torch_size,
    }
    for name, dtype in STORAGE_DTYPES.items():
        allowed["torch", name] = StorageType(name, dtype)
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()

_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}


def _refuse(source: str, module: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{source}: refusing to load: its pickle references the global '{module}.{name}', which is not "
        "one of the allowed tensor-rebuilding functions or storage types (loading it could run "
        "arbitrary code). Nothing from the file was executed."
    )


def scan_pickle_globals(stream: BinaryIO, source: str) -> list[tuple[str, str]]:
    """Read one pickle from `stream` without executing it and check every global it references.

    Returns the (module, name) pairs; raises UnsafeCheckpointError at the first one outside the
    allow-list (or one that cannot be resolved statically). The stream is left after the STOP opcode.
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # recent string pushes, enough to resolve STACK_GLOBAL operands
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                pair = (module, attr)
            elif name == "STACK_GLOBAL":
                if len(pushed) < 2 or not all(isinstance(v, str) for v in pushed[-2:]):
                    raise _refuse(source, "<computed module>", "<computed name>")
                pair = (pushed[-2], pushed[-1])
            elif name in ("EXT1", "EXT2", "EXT4"):
                # The copyreg extension registry resolves to arbitrary globals: never used by torch.
                raise _refuse(source, "<copyreg extension>", str(arg))
            else:
                if name in _STRING_OPS:
                    pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
                elif name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                else:
                    pushed.append(None)
                del pushed[:-4]
                continue
            if pair not in ALLOWED_GLOBALS:
                raise _refuse(source, *pair)
            found.append(pair)
            pushed.append(None)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # truncated or corrupt pickle
        raise CheckpointFormatError(f"{source}: corrupt pickle data ({err})") from err
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only globals are ALLOWED_GLOBALS and whose persistent ids are torch storages."""

    def __init__(self, stream: BinaryIO, source: str, persistent_load: Callable[[Any], Any] | None):
        super().__init__(stream)
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise _refuse(self._source, module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CheckpointFormatError(f"{self._source}: unexpected persistent id {pid!r}")
        return self._persistent(pid)


def _safe_load(stream: BinaryIO, source: str, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Scan, then unpickle, one pickle from a seekable stream."""
    start = stream.tell()
    scan_pickle_globals(stream, source)
    stream.seek(start)
    try:
        return _RestrictedUnpickler(stream, source, persistent_load).load()
    except CheckpointFormatError as err:
        if str(err).startswith(source):
            raise
        raise type(err)(f"{source}: {err}") from err
    except Exception as err:
        raise CheckpointFormatError(f"{source}: cannot unpickle ({type(err).__name__}: {err})") from err


def _materialise(t: _PendingTensor, source: str) -> np.ndarray:
    storage = t.storage
    flat = storage.flat()
    if any(s < 0 for s in t.size) or any(s < 0 for s in t.stride):
        raise CheckpointFormatError(f"{source}: tensor with negative size/stride {t.size}/{t.stride}")
    if 0 in t.size:
        return np.zeros(t.size, storage.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if last >= flat.size:
        # as_strided would read outside the buffer: refuse instead.
        raise CheckpointFormatError(
            f"{source}: tensor (offset {t.offset}, size {t.size}, stride {t.stride}) reaches element "
            f"{last} of storage '{storage.key}', which has {flat.size}"
        )
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, order="C", copy=True)


def _resolve(obj: Any, source: str) -> Any:
    """Replace pending tensors by numpy arrays throughout dicts, lists and tuples."""
    if isinstance(obj, _PendingTensor):
        return _materialise(obj, source)
    if isinstance(obj, _Storage):
        return obj.flat().copy()
    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = _resolve(obj[key], source)
        for key, value in getattr(obj, "__dict__", {}).items():  # e.g. a state_dict's _metadata
            obj.__dict__[key] = _resolve(value, source)
        return obj
    if isinstance(obj, list):
        obj[:] = [_resolve(v, source) for v in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_resolve(v, source) for v in obj)
    return obj


def _storage_header(pid: Any, source: str, length: int) -> tuple[StorageType, str, int]:
    if not isinstance(pid, tuple) or len(pid) != length or pid[0] != "storage":
        raise CheckpointFormatError(f"{source}: unexpected persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    if not isinstance(storage_type, StorageType):
        raise CheckpointFormatError(f"{source}: persistent id names no storage type: {pid!r}")
    if not isinstance(numel, int) or numel < 0:
        raise CheckpointFormatError(f"{source}: bad storage size in persistent id {pid!r}")
    return storage_type, str(key), numel


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: zip file without exactly one '<name>/data.pkl'; not a torch.save checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        if any(n.startswith(prefix + "code/") for n in names):
            raise CheckpointFormatError(
                f"{path}: a TorchScript archive (torch.jit.save), not a state dict; save "
                "`model.state_dict()` with torch.save instead"
            )
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order != "little":
                raise CheckpointFormatError(f"{path}: byte order {order!r} is not supported (only little)")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, numel = _storage_header(pid, path, 5)
            if key not in storages:
                storages[key] = _Storage(key, storage_type.dtype, numel)
            return storages[key]

        obj = _safe_load(io.BytesIO(archive.read(pickles[0])), path, persistent_load)
        for key, storage in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise CheckpointFormatError(f"{path}: storage '{key}' is missing (no entry {entry})")
            raw = archive.read(entry)
            storage.data = _storage_from_bytes(raw, storage, path)
    return _resolve(obj, path)


def _storage_from_bytes(raw: bytes, storage: _Storage, source: str) -> np.ndarray:
    expected = storage.numel * storage.dtype.itemsize
    if len(raw) < expected:
        raise CheckpointFormatError(
            f"{source}: storage '{storage.key}' holds {len(raw)} bytes, expected {expected} "
            f"({storage.numel} x {storage.dtype})"
        )
    return np.frombuffer(raw[:expected], dtype=storage.dtype)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        magic = _safe_load(f, path)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        version = _safe_load(f, path)
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {version!r}")
        sys_info = _safe_load(f, path)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise CheckpointFormatError(f"{path}: only little-endian checkpoints are supported")

        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, numel = _storage_header(pid, path, 6)
            view_metadata = pid[5]
            if key not in storages:
                storages[key] = _Storage(key, storage_type.dtype, numel)
            if view_metadata is None:
                return storages[key]
            # Pre-1.0 storage views: (view_key, element offset, view size) into the root storage.
            view_key, offset, view_size = view_metadata
            view = _Storage(str(view_key), storage_type.dtype, int(view_size))
            view.view_of = (storages[key], int(offset))
            return view

        obj = _safe_load(f, path, persistent_load)
        keys = _safe_load(f, path)
        if not isinstance(keys, list):
            raise CheckpointFormatError(f"{path}: storage key list missing after the main pickle")
        for key in keys:
            key = str(key)
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path}: file ends before storage '{key}'")
            (numel,) = struct.unpack("<q", header)
            if key not in storages:
                raise CheckpointFormatError(f"{path}: storage '{key}' is not referenced by the pickle")
            storage = storages[key]
            if numel != storage.numel:
                raise CheckpointFormatError(
                    f"{path}: storage '{key}' has {numel} elements on disk, {storage.numel} in the pickle"
                )
            raw = f.read(numel * storage.dtype.itemsize)
            storage.data = _storage_from_bytes(raw, storage, path)
        absent = [k for k, s in storages.items() if s.data is None]
        if absent:
            raise CheckpointFormatError(f"{path}: storages {absent} have no data in the file")
    return _resolve(obj, path)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a `torch.save` file (zip or legacy format) as plain Python containers of numpy arrays.

    Tensors become C-contiguous numpy arrays of the storage dtype (float32, float16, bfloat16 via
    ml_dtypes, int64, ...). Dicts (incl. OrderedDict state dicts), lists and tuples keep their
    structure. Raises FileNotFoundError, CheckpointFormatError (unreadable / unsupported) or
    UnsafeCheckpointError (a global outside the allow-list; nothing from the file is executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        return _load_legacy(path)
    if _is_tar(path):
        raise CheckpointFormatError(f"{path}: tar-based checkpoints (PyTorch < 0.4) are not supported")
    raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy pickle format)")


def _is_tar(path: str) -> bool:
    """True for the pre-0.4 tar container format (detected by the ustar magic at byte 257)."""
    with open(path, "rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"
