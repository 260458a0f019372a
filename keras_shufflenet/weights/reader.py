"""A safe reader of PyTorch checkpoints: tensors only, no code run, no torch import.

``torch.save`` writes a pickle whose tensors point at raw storages. Two file
layouts exist:

* the zip layout, the default since PyTorch 1.6: ``<archive>/data.pkl`` plus
  one member ``<archive>/data/<key>`` per storage;
* the legacy layout of PyTorch < 1.6 (the official ShuffleNet v1 release
  dates from 2019): five pickles in a row (magic number, protocol version,
  system info, the object, the storage keys), then each storage as an int64
  element count followed by its bytes.

Unpickling can call any importable function, so the unpickler here accepts
only the globals that a saved state dict needs (:data:`ALLOWED_GLOBALS`:
``collections.OrderedDict``, torch's tensor rebuild functions and storage
types) and refuses everything else, before anything runs. Tensors come back
as NumPy arrays. Every malformed or truncated file raises
:class:`CheckpointError`, naming the file and, where there is one, the tensor.

Reading is bounded by the checkpoint's own declared tensors: element counts,
shapes and strides are checked (as Python integers, which do not overflow)
before anything is allocated or inflated, a storage may declare at most
:data:`MAX_STORAGE_BYTES`, only the declared bytes of a storage are inflated,
objects the pickle shares stay shared (never copied), and nesting deeper than
:data:`MAX_NESTING` (or an object that contains itself) is an error.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, BinaryIO

import numpy as np

# The most bytes one storage may declare, and all storages together: the largest official ShuffleNet v1
# checkpoint holds about 30 MB of tensors, so a declared gigabyte is a damaged or crafted file.
MAX_STORAGE_BYTES = 1 << 30
# The deepest nesting of dicts, lists and tuples in a checkpoint (a state dict nests 2 or 3 levels).
MAX_NESTING = 64
# torch.serialization.MAGIC_NUMBER: the first pickle of a legacy file.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# Storage type (a torch global) -> NumPy dtype, little-endian as torch writes them.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_REBUILD_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")
# Every global the unpickler may resolve; anything else is refused.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("collections", "OrderedDict")]
    + [("torch._utils", name) for name in _REBUILD_FUNCTIONS]
    + [("torch", name) for name in STORAGE_DTYPES]
)


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint this reader accepts; the message says why."""


class _StorageType:
    """Stands for a torch storage class (``torch.FloatStorage``): its dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Tensor:
    """A tensor waiting for its storage's bytes (legacy layout: they follow the pickle)."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _LazyStorage:
    """A storage by key; ``array`` is set once its bytes are read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def _declared_storage(path: str, key: str, dtype: np.dtype, numel: Any, total: int) -> _LazyStorage:
    """A storage of ``numel`` elements, refused before any allocation if the count is not a plausible size."""
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"{path!r}: storage {key!r} declares {numel!r} elements, not a count")
    storage = _LazyStorage(key, dtype, numel)
    if storage.nbytes > MAX_STORAGE_BYTES or total + storage.nbytes > MAX_STORAGE_BYTES:
        raise CheckpointError(
            f"{path!r}: storage {key!r} declares {numel:,} elements ({storage.nbytes:,} bytes; the storages "
            f"together {total + storage.nbytes:,}), above this reader's limit of {MAX_STORAGE_BYTES:,} bytes: "
            "not a ShuffleNet checkpoint"
        )
    return storage


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_ignored: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data  # A saved nn.Parameter: its tensor.


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; storages come from ``storage_for``."""

    def __init__(self, file: BinaryIO, storage_for: Any) -> None:
        super().__init__(file)
        self._storage_for = storage_for

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise CheckpointError(
                f"the checkpoint's pickle asks for {module}.{name}, which this reader refuses: a checkpoint "
                "holds tensors only, and loading it must not run code. Allowed: "
                + ", ".join(sorted(f"{m}.{n}" for m, n in ALLOWED_GLOBALS))
            )
        if module == "collections":
            return collections.OrderedDict
        if module == "torch._utils":
            return _rebuild_parameter if name == "_rebuild_parameter" else _rebuild_tensor
        return _StorageType(name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"the checkpoint's pickle has an unknown persistent id {str(pid)[:80]!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"the checkpoint's storage {key!r} has no storage type: {storage_type!r}")
        return self._storage_for(key, storage_type.dtype, pid)


def _load_pickle(data: BinaryIO, storage_for: Any) -> Any:
    try:
        return _RestrictedUnpickler(data, storage_for).load()
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as error:
        raise CheckpointError(
            f"the checkpoint's pickle is malformed or truncated ({type(error).__name__}: {str(error)[:200]})"
        ) from None


class _Materializer:
    """Replaces every ``_Tensor`` in a checkpoint's object (dicts, lists, tuples) with a NumPy array.

    An object the pickle shares is materialized once and stays shared, so a
    pickle of ``x = [x, x]`` nested 40 deep costs 40 steps, not 2**40; an
    object nested deeper than :data:`MAX_NESTING` (or containing itself) is
    refused.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._done: dict[int, Any] = {}
        self._in_progress: set[int] = set()

    def __call__(self, value: Any, where: str = "", depth: int = 0) -> Any:
        if not isinstance(value, (_Tensor, dict, list, tuple)):
            return value
        if id(value) in self._done:
            return self._done[id(value)]
        if depth > MAX_NESTING or id(value) in self._in_progress:
            what = "contains itself" if id(value) in self._in_progress else f"nests deeper than {MAX_NESTING} levels"
            raise CheckpointError(f"{self._path!r}: the checkpoint's object at {where or 'the top'!r} {what}")
        self._in_progress.add(id(value))
        if isinstance(value, _Tensor):
            result = self._tensor(value, where)
        elif isinstance(value, dict):
            result = type(value)() if isinstance(value, collections.OrderedDict) else {}
            for key, item in value.items():
                result[key] = self(item, f"{where}/{key}" if where else str(key), depth + 1)
        else:
            result = type(value)(self(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        self._in_progress.discard(id(value))
        self._done[id(value)] = result
        return result

    def _tensor(self, tensor: _Tensor, where: str) -> np.ndarray:
        storage = tensor.storage
        name = f"tensor {where!r} (storage {getattr(storage, 'key', '?')!r})"
        if not isinstance(storage, _LazyStorage):
            raise CheckpointError(f"{self._path!r}: {name} has no storage")
        size, stride, offset = tensor.size, tensor.stride, tensor.offset
        if (
            not (_int_tuple(size) and _int_tuple(stride) and len(size) == len(stride) and _count(offset))
            or any(n < 0 for n in size)
            or any(s < 0 for s in stride)
        ):
            raise CheckpointError(
                f"{self._path!r}: {name} has a malformed shape {size!r}, stride {stride!r} or offset {offset!r}"
            )
        count = math.prod(size)  # Python integers: no overflow.
        if count == 0:
            return np.zeros(size, storage.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if count > storage.numel or last >= storage.numel:
            raise CheckpointError(
                f"{self._path!r}: {name} of shape {size} reads past the end of its storage ({storage.numel:,} "
                "elements): the file is truncated, corrupt or crafted"
            )
        array = storage.array
        if array is None:
            raise CheckpointError(f"{self._path!r}: {name}'s storage has no data")
        strides = tuple(s * array.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(array[offset:], size, strides, writeable=False)
        return np.array(view, dtype=array.dtype.newbyteorder("="))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _read_zip(path: str) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{path!r} is not a readable zip file ({error}); is it truncated?") from None
    with archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{path!r} is a zip file but not a PyTorch checkpoint (no <archive>/data.pkl member; a Keras "
                "'.keras' file or another archive?)"
            )
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointError(f"{path!r} was saved big-endian, which this reader does not read")
        storages: dict[str, _LazyStorage] = {}

        def storage_for(key: str, dtype: np.dtype, pid: tuple[Any, ...]) -> _LazyStorage:
            if key not in storages:
                total = sum(storage.nbytes for storage in storages.values())
                storages[key] = _declared_storage(path, key, dtype, pid[4], total)
            return storages[key]

        try:
            pickle_info = archive.getinfo(pickles[0])
            if pickle_info.file_size > MAX_STORAGE_BYTES:
                raise CheckpointError(f"{path!r}: its pickle inflates to {pickle_info.file_size:,} bytes")
            obj = _load_pickle(io.BytesIO(archive.read(pickles[0])), storage_for)
            for key, storage in storages.items():
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise CheckpointError(f"{path!r} lacks the storage member {member!r}: the file is incomplete")
                # Sizes before inflating: the member must hold the declared elements; only those are read.
                if archive.getinfo(member).file_size < storage.nbytes:
                    raise CheckpointError(f"{path!r}: storage {key!r} is shorter than its {storage.numel:,} elements")
                with archive.open(member) as handle:
                    raw = handle.read(storage.nbytes)
                if len(raw) < storage.nbytes:
                    raise CheckpointError(f"{path!r}: storage {key!r} is shorter than its {storage.numel:,} elements")
                storage.array = np.frombuffer(raw, storage.dtype, count=storage.numel)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
            raise CheckpointError(f"{path!r} is a damaged zip file ({type(error).__name__}: {error})") from None
    return _Materializer(path)(obj)


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as file:
        header = []
        for what in ("magic number", "protocol version", "system info"):
            try:
                header.append(_RestrictedUnpickler(file, None).load())
            except CheckpointError:
                raise
            except Exception as error:  # noqa: BLE001  (pickle raises many types on garbage)
                raise CheckpointError(
                    f"{path!r} is not a PyTorch checkpoint: its {what} does not unpickle ({type(error).__name__})"
                ) from None
        if header[0] != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path!r} is a pickle but not a PyTorch checkpoint (wrong magic number)")
        if not isinstance(header[2], dict) or not header[2].get("little_endian", True):
            raise CheckpointError(f"{path!r} was saved big-endian, which this reader does not read")
        storages: dict[str, _LazyStorage] = {}

        def storage_for(key: str, dtype: np.dtype, pid: tuple[Any, ...]) -> Any:
            # ('storage', type, root_key, location, numel, view_metadata)
            if key not in storages:
                total = sum(storage.nbytes for storage in storages.values())
                storages[key] = _declared_storage(path, key, dtype, pid[4], total)
            view = pid[5] if len(pid) > 5 else None
            if view is not None:
                raise CheckpointError(f"{path!r} holds a storage view ({key!r}), which this reader does not read")
            return storages[key]

        obj = _load_pickle(file, storage_for)
        keys = _load_pickle(file, None)
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise CheckpointError(f"{path!r}: the list of storages does not match the tensors (corrupt file)")
        for key in map(str, keys):
            storage = storages[key]
            count_bytes = file.read(8)
            if len(count_bytes) < 8:
                raise CheckpointError(f"{path!r} is truncated: storage {key!r} is missing")
            (count,) = struct.unpack("<q", count_bytes)
            if count != storage.numel:
                raise CheckpointError(
                    f"{path!r}: storage {key!r} has {count} elements, its tensors say {storage.numel}"
                )
            raw = file.read(storage.nbytes)  # The count equals the declared one, checked against the limit.
            if len(raw) < storage.nbytes:
                raise CheckpointError(f"{path!r} is truncated inside storage {key!r}")
            storage.array = np.frombuffer(raw, storage.dtype, count=count)
    return _Materializer(path)(obj)


def checkpoint_layout(path: str | os.PathLike[str]) -> str | None:
    """``"zip"`` or ``"legacy"`` when ``path`` starts like a PyTorch checkpoint of that layout, else `None`.

    Looks at the first bytes only (zip's ``PK`` or a pickle's protocol
    opcode), so a Keras ``.weights.h5`` (HDF5) gives `None`. A ``.keras``
    file is a zip too; :func:`read_checkpoint` tells it apart.
    """
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2-5.
        return "legacy"
    return None


READERS = ("builtin", "torch")


def _read_with_torch(path: str) -> Any:
    try:
        import torch  # Optional (the convert extra): gigabytes, for --reader=torch only.
    except ImportError:
        raise CheckpointError(
            "reader='torch' needs PyTorch (pip install 'keras-shufflenet[convert]'); the built-in reader does not"
        ) from None
    try:
        # weights_only: torch's own restricted unpickler (PyTorch >= 1.13).
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many types on bad files)
        raise CheckpointError(f"{path!r} does not load with torch.load ({type(error).__name__}: {error})") from None

    def to_numpy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().numpy().copy()
        if isinstance(value, dict):
            return type(value)((k, to_numpy(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(to_numpy(v) for v in value)
        return value

    return to_numpy(obj)


def read_checkpoint(path: str | os.PathLike[str], reader: str = "builtin") -> Any:
    """Reads a file written by ``torch.save`` into NumPy arrays, without running pickled code.

    Args:
      path: A checkpoint in torch's zip layout (PyTorch >= 1.6) or legacy
        layout (PyTorch < 1.6).
      reader: ``"builtin"`` (this module; no PyTorch) or ``"torch"``
        (``torch.load(..., weights_only=True)``, from the ``convert`` extra).
        Defaults to `"builtin"`.

    Returns:
      The saved object, every tensor a NumPy array (dicts stay dicts).

    Raises:
      CheckpointError: If the file is not such a checkpoint, is truncated or
        corrupt, or its pickle asks for anything but tensors and dicts.
    """
    path = os.fspath(path)
    if reader not in READERS:
        raise ValueError(f"`reader` must be one of {READERS}. Received: reader={reader!r}")
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    if reader == "torch":
        return _read_with_torch(path)
    layout = checkpoint_layout(path)
    if layout == "zip":
        return _read_zip(path)
    if layout == "legacy":
        return _read_legacy(path)
    raise CheckpointError(
        f"{path!r} is not a PyTorch checkpoint: it starts neither like torch's zip layout nor like its legacy "
        "pickle layout"
    )
