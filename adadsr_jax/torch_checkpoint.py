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
Nothing a file does can change the reader: the objects a pickle can reach (the builders standing in for
the allowed globals, storages, pending tensors) are sealed, so BUILD (`__setstate__`) and attribute
assignment on them are refused, and every load gets fresh storages. Sizes are checked before anything
is allocated: a storage must fit in the file, and a tensor may not hold more elements than its storage
(a stride-0 view claiming 2^40 elements is refused with the numbers). A damaged file (bad CRC, truncated,
garbage) raises CheckpointFormatError naming the file, never a raw zipfile/pickle/struct error.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
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


class _Sealed:
    """Base of every object a pickle can reach: BUILD (which calls `__setstate__`, or assigns to
    `__dict__`/attributes when there is none) is refused, so a file cannot alter the reader's objects.
    Subclasses use __slots__ (no `__dict__`) and assign their fields with `object.__setattr__`."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointFormatError(
            f"the pickle tries to modify a {type(self).__name__} (BUILD {type(state).__name__}); "
            "torch.save never does that"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointFormatError(f"the pickle tries to set '{name}' on a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise CheckpointFormatError(f"the pickle tries to delete '{name}' from a {type(self).__name__}")


class StorageType(_Sealed):
    """Stand-in for a torch storage class (torch.FloatStorage, ...): only carries the element dtype."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"StorageType({self.name})"


class _Builder(_Sealed):
    """Stand-in for an allowed callable global (torch._utils._rebuild_tensor_v2, OrderedDict, ...): calling
    it calls our local function; the function object itself is never handed to the unpickler, so its
    attributes (`__defaults__`, ...) cannot be reached."""

    __slots__ = ("_fn", "qualname")

    def __init__(self, qualname: str, fn: Callable[..., Any]):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<allowed global {self.qualname}>"


class _Storage(_Sealed):
    """A storage referenced by the pickle. Its bytes are attached after unpickling (legacy files keep
    them after the main pickle), so tensors are built lazily in `_resolve`."""

    __slots__ = ("data", "dtype", "key", "numel", "view_of")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "data", None)  # flat [numel] array of dtype, once read
        # Legacy storage views: (root storage, element offset) instead of own data.
        object.__setattr__(self, "view_of", None)

    def attach(self, data: np.ndarray) -> None:
        object.__setattr__(self, "data", data)

    def make_view_of(self, root: _Storage, offset: int) -> None:
        object.__setattr__(self, "view_of", (root, offset))

    def flat(self, source: str) -> np.ndarray:
        """The storage's elements, [numel]."""
        if self.view_of is not None:
            root, offset = self.view_of
            base = root.flat(source)
            if offset + self.numel > base.size:
                raise CheckpointFormatError(
                    f"{source}: storage view '{self.key}' (offset {offset}, {self.numel} elements) reaches "
                    f"past the end of storage '{root.key}' ({base.size} elements)"
                )
            return base[offset : offset + self.numel]
        if self.data is None:
            raise CheckpointFormatError(f"{source}: storage '{self.key}' has no data in the file")
        return self.data


class _PendingTensor(_Sealed):
    """Arguments of a `_rebuild_tensor_v2` call, materialised once storage bytes are known."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(_is_int(v) for v in value):
        raise CheckpointFormatError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(int(v) for v in value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise CheckpointFormatError(f"tensor storage offset must be an int >= 0, got {storage_offset!r}")
    size_t = _as_int_tuple(size, "size")
    stride_t = _as_int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise CheckpointFormatError(f"tensor size {size_t} and stride {stride_t} differ in length")
    if any(s < 0 for s in size_t) or any(s < 0 for s in stride_t):
        raise CheckpointFormatError(f"tensor with negative size/stride {size_t}/{stride_t}")
    return _PendingTensor(storage, int(storage_offset), size_t, stride_t)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    # requires_grad, backward hooks and metadata mean nothing for numpy arrays.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    return data


def _torch_size(values=()) -> tuple:
    return tuple(values)


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    # A fresh OrderedDict per call; the class itself is not handed out (the pickle could not change a
    # builtin type anyway, but nothing of ours should be reachable).
    return collections.OrderedDict(*args)


def _allowed_globals() -> dict[tuple[str, str], _Sealed]:
    functions: dict[tuple[str, str], Callable[..., Any]] = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): _torch_size,
    }
    allowed: dict[tuple[str, str], _Sealed] = {
        key: _Builder(".".join(key), fn) for key, fn in functions.items()
    }
    for name, dtype in STORAGE_DTYPES.items():
        allowed["torch", name] = StorageType(name, dtype)
    return allowed


# Values are sealed (immutable to the pickle), so sharing them between loads is safe.
ALLOWED_GLOBALS: dict[tuple[str, str], _Sealed] = _allowed_globals()

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
        raise CheckpointFormatError(f"{source}: corrupt pickle data ({type(err).__name__}: {err})") from err
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
        except (KeyError, TypeError):
            raise _refuse(self._source, str(module), str(name)) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CheckpointFormatError(f"{self._source}: unexpected persistent id {pid!r:.200}")
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


class _Budget:
    """Bytes materialised so far for one file, against what its storages can honestly hold."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0


def _materialise(t: _PendingTensor, source: str, budget: _Budget) -> np.ndarray:
    storage = t.storage
    flat = storage.flat(source)
    numel = 1
    for n in t.size:
        numel *= n  # Python ints: no overflow, whatever the file claims
    if numel == 0:
        return np.zeros(t.size, storage.dtype)
    nbytes = numel * flat.itemsize
    if numel > flat.size:
        # Only overlapping views (stride 0, ...) can hold more elements than their storage; torch never
        # saves expanded tensors of parameters, and materialising one could exhaust memory. Refused
        # before allocating.
        raise CheckpointFormatError(
            f"{source}: tensor (offset {t.offset}, size {t.size}, stride {t.stride}) would materialise "
            f"{numel} elements ({nbytes} bytes) from storage '{storage.key}', which holds {flat.size}; "
            "refusing (a tensor cannot honestly hold more elements than its storage)"
        )
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if last >= flat.size:
        # as_strided would read outside the buffer: refuse instead.
        raise CheckpointFormatError(
            f"{source}: tensor (offset {t.offset}, size {t.size}, stride {t.stride}) reaches element "
            f"{last} of storage '{storage.key}', which has {flat.size}"
        )
    if budget.used + nbytes > budget.limit:
        raise CheckpointFormatError(
            f"{source}: its tensors would materialise more than {budget.limit} bytes from "
            f"{budget.limit // 2} bytes of storage (tensor size {t.size}); refusing"
        )
    budget.used += nbytes
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, order="C", copy=True)


def _resolve(obj: Any, source: str, budget: _Budget, seen: dict[int, Any] | None = None) -> Any:
    """Replace pending tensors by numpy arrays throughout dicts, lists and tuples.

    `seen` maps id(object) -> result, so shared and self-referencing objects (memo tricks) are
    resolved once: no exponential walks, no infinite recursion, one array per pending tensor.
    """
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, _PendingTensor):
        out = seen[id(obj)] = _materialise(obj, source, budget)
        return out
    if isinstance(obj, _Storage):
        flat = obj.flat(source)
        if budget.used + flat.nbytes > budget.limit:
            raise CheckpointFormatError(f"{source}: storages referenced too often; refusing")
        budget.used += flat.nbytes
        out = seen[id(obj)] = flat.copy()
        return out
    if isinstance(obj, _Sealed):
        # A builder or storage type left in the structure (e.g. a bare `torch.FloatStorage`).
        raise CheckpointFormatError(f"{source}: the pickle holds a bare {obj!r}, not data")
    if isinstance(obj, dict):
        seen[id(obj)] = obj
        for key in list(obj):
            obj[key] = _resolve(obj[key], source, budget, seen)
        for key, value in getattr(obj, "__dict__", {}).items():  # e.g. a state_dict's _metadata
            obj.__dict__[key] = _resolve(value, source, budget, seen)
        return obj
    if isinstance(obj, list):
        seen[id(obj)] = obj
        obj[:] = [_resolve(v, source, budget, seen) for v in obj]
        return obj
    if isinstance(obj, tuple):
        # A tuple cannot contain itself except through a list/dict, which is already in `seen`.
        out = seen[id(obj)] = tuple(_resolve(v, source, budget, seen) for v in obj)
        return out
    return obj


def _storage_header(pid: Any, source: str, length: int) -> tuple[StorageType, str, int]:
    if not isinstance(pid, tuple) or len(pid) != length or pid[0] != "storage":
        raise CheckpointFormatError(f"{source}: unexpected persistent id {pid!r:.200}")
    _, storage_type, key, _location, numel = pid[:5]
    if not isinstance(storage_type, StorageType):
        raise CheckpointFormatError(f"{source}: persistent id names no storage type: {pid!r:.200}")
    if not _is_int(numel) or numel < 0:
        raise CheckpointFormatError(f"{source}: bad storage size in persistent id {pid!r:.200}")
    if not isinstance(key, str | int) or isinstance(key, bool):
        raise CheckpointFormatError(f"{source}: bad storage key in persistent id {pid!r:.200}")
    return storage_type, str(key), int(numel)


def _new_or_same(storages: dict[str, _Storage], storage_type: StorageType, key: str, numel: int, source: str):
    """The storage `key` of this load (created at its first reference); later references must agree."""
    if key not in storages:
        storages[key] = _Storage(key, storage_type.dtype, numel)
    storage = storages[key]
    if storage.dtype != storage_type.dtype or storage.numel != numel:
        raise CheckpointFormatError(
            f"{source}: storage '{key}' is referenced as {numel} x {storage_type.name} and as "
            f"{storage.numel} x {storage.dtype}"
        )
    return storage


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        names = list(infos)
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
            order = archive.read(prefix + "byteorder")[:16].decode("ascii", "replace").strip()
            if order != "little":
                raise CheckpointFormatError(f"{path}: byte order {order!r} is not supported (only little)")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, numel = _storage_header(pid, path, 5)
            return _new_or_same(storages, storage_type, key, numel, path)

        obj = _safe_load(io.BytesIO(archive.read(pickles[0])), path, persistent_load)
        for key, storage in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in infos:
                raise CheckpointFormatError(f"{path}: storage '{key}' is missing (no entry {entry})")
            expected = storage.numel * storage.dtype.itemsize
            # The entry's size is known from the zip directory: check it before reading (a pickle may
            # claim any element count; a compressed entry may expand to any size).
            if infos[entry].file_size != expected:
                raise _size_error(path, storage, infos[entry].file_size)
            storage.attach(_storage_from_bytes(archive.read(entry), storage, path))
        total = sum(info.file_size for info in infos.values())
    return _resolve(obj, path, _Budget(2 * total + (1 << 20)))


def _size_error(source: str, storage: _Storage, got: int) -> CheckpointFormatError:
    expected = storage.numel * storage.dtype.itemsize
    return CheckpointFormatError(
        f"{source}: storage '{storage.key}' holds {got} bytes, expected {expected} "
        f"({storage.numel} x {storage.dtype}); the file is truncated or damaged"
    )


def _storage_from_bytes(raw: bytes, storage: _Storage, source: str) -> np.ndarray:
    if len(raw) != storage.numel * storage.dtype.itemsize:
        raise _size_error(source, storage, len(raw))
    return np.frombuffer(raw, dtype=storage.dtype)


def _load_legacy(path: str) -> Any:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = _safe_load(f, path)
        if magic != LEGACY_MAGIC_NUMBER or not _is_int(magic):
            raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        version = _safe_load(f, path)
        if version != LEGACY_PROTOCOL_VERSION or not _is_int(version):
            raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {version!r:.100}")
        sys_info = _safe_load(f, path)
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise CheckpointFormatError(f"{path}: only little-endian checkpoints are supported")

        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, numel = _storage_header(pid, path, 6)
            view_metadata = pid[5]
            root = _new_or_same(storages, storage_type, key, numel, path)
            if view_metadata is None:
                return root
            # Pre-1.0 storage views: (view_key, element offset, view size) into the root storage.
            if (
                not isinstance(view_metadata, tuple)
                or len(view_metadata) != 3
                or not all(_is_int(v) and v >= 0 for v in view_metadata[1:])
            ):
                raise CheckpointFormatError(f"{path}: bad storage view metadata {view_metadata!r:.200}")
            view_key, offset, view_size = view_metadata
            view = _Storage(str(view_key), storage_type.dtype, int(view_size))
            view.make_view_of(root, int(offset))
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
            if storage.data is not None:
                raise CheckpointFormatError(f"{path}: storage '{key}' appears twice in the file")
            if numel != storage.numel:
                raise CheckpointFormatError(
                    f"{path}: storage '{key}' has {numel} elements on disk, {storage.numel} in the pickle"
                )
            expected = numel * storage.dtype.itemsize
            left = file_size - f.tell()
            if expected > left:  # check before reading: read(n) allocates n bytes up front
                raise _size_error(path, storage, left)
            storage.attach(_storage_from_bytes(f.read(expected), storage, path))
        absent = [k for k, s in storages.items() if s.data is None]
        if absent:
            raise CheckpointFormatError(f"{path}: storages {absent} have no data in the file")
    return _resolve(obj, path, _Budget(2 * file_size + (1 << 20)))


# Errors the standard library raises on damaged input; the reader turns them into one clear message.
_DAMAGE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    struct.error,
    pickle.UnpicklingError,
    UnicodeDecodeError,
    NotImplementedError,  # zipfile: unsupported compression method
    RuntimeError,  # zipfile: encrypted entry; RecursionError (deep nesting) is a RuntimeError too
    OverflowError,
    ValueError,
)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a `torch.save` file (zip or legacy format) as plain Python containers of numpy arrays.

    Tensors become C-contiguous numpy arrays of the storage dtype (float32, float16, bfloat16 via
    ml_dtypes, int64, ...). Dicts (incl. OrderedDict state dicts), lists and tuples keep their
    structure. Raises FileNotFoundError, CheckpointFormatError (unreadable, damaged, oversized or
    unsupported; the message starts with the path) or UnsafeCheckpointError (a global outside the
    allow-list; nothing from the file is executed).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{path}: not a file (a torch.save checkpoint is one file)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise CheckpointFormatError(f"{path}: the file is empty")
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        if head[:1] == b"\x80":
            return _load_legacy(path)
        if head == b"PK\x03\x04":
            raise CheckpointFormatError(
                f"{path}: a zip archive without its central directory: the file is truncated or damaged; "
                "download it again"
            )
        if _is_tar(path):
            raise CheckpointFormatError(f"{path}: tar-based checkpoints (PyTorch < 0.4) are not supported")
        raise CheckpointFormatError(
            f"{path}: not a PyTorch checkpoint (neither zip nor legacy pickle format)"
        )
    except CheckpointFormatError:
        raise
    except _DAMAGE_ERRORS as err:
        problem = "the zip archive is damaged" if isinstance(err, zipfile.BadZipFile) else "damaged file"
        raise CheckpointFormatError(
            f"{path}: {problem} ({type(err).__name__}: {err}); download it again"
        ) from err
    except OSError as err:
        raise CheckpointFormatError(f"{path}: cannot read the file ({err.strerror or err})") from err


def _is_tar(path: str) -> bool:
    """True for the pre-0.4 tar container format (detected by the ustar magic at byte 257)."""
    with open(path, "rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"
