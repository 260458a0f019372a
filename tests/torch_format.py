"""Writes state dicts in torch.save's two file layouts without PyTorch, for the reader's tests.

The files are what ``torch.save`` writes: a pickle whose tensors are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
OrderedDict())`` and whose storages are persistent ids ``('storage',
torch.FloatStorage, key, 'cpu', numel)``. Python's pickler names a global
by importing it, so the writer stands in two modules ``torch`` and
``torch._utils`` for the time of the write (only when PyTorch is not
importable). tests/test_weights.py checks the reader on torch's own files too.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Iterator

import numpy as np

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


@contextlib.contextmanager
def _torch_names() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    if importlib.util.find_spec("torch") is not None:
        import torch
        import torch._utils

        yield torch, torch._utils
        return
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called, only named
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _STORAGE_NAMES.values():
        storage_class = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_class)
    torch._utils = utils
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch, utils
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Storage:
    def __init__(self, key: str, array: np.ndarray) -> None:
        self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape


def _pickle_state(state: dict, legacy: bool) -> tuple[bytes, list[_Storage]]:
    storages: list[_Storage] = []
    tensors = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            storage = _Storage(str(len(storages)), value)
            storages.append(storage)
            tensors[key] = _Tensor(storage, value.shape)
        else:
            tensors[key] = value
    with _torch_names() as (torch, utils):

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _Storage):
                    storage_type = getattr(torch, _STORAGE_NAMES[obj.array.dtype])
                    numel = obj.array.size
                    if legacy:
                        return ("storage", storage_type, obj.key, "cpu", numel, None)
                    return ("storage", storage_type, obj.key, "cpu", numel)
                return None

            def reducer_override(self, obj):
                if isinstance(obj, _Tensor):
                    shape = tuple(obj.shape)
                    stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
                    args = (obj.storage, 0, shape, stride, False, collections.OrderedDict())
                    return utils._rebuild_tensor_v2, args
                return NotImplemented

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump({"state_dict": collections.OrderedDict(tensors)})
    return buffer.getvalue(), storages


def save_legacy(path: str, state: dict) -> None:
    """Writes ``{'state_dict': state}`` (numpy arrays as tensors) in torch's legacy (< 1.6) layout."""
    payload, storages = _pickle_state(state, legacy=True)
    with open(path, "wb") as handle:
        for header in (LEGACY_MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        handle.write(payload)
        pickle.dump([s.key for s in storages], handle, protocol=2)
        for storage in storages:
            handle.write(struct.pack("<q", storage.array.size))
            handle.write(storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes())


def save_zip(path: str, state: dict) -> None:
    """Writes ``{'state_dict': state}`` in torch's zip layout (PyTorch >= 1.6)."""
    payload, storages = _pickle_state(state, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", payload)
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")


class CraftedTensor:
    """A tensor with any shape, stride and offset (impossible ones too) on float32 storage ``key``."""

    def __init__(self, key: str, numel: int, size: tuple, stride: tuple, offset: int = 0) -> None:
        self.storage = _CraftedStorage(key, numel)
        self.size, self.stride, self.offset = size, stride, offset


class _CraftedStorage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


def save_zip_crafted(
    path: str, obj: object, members: dict[str, object] | None = None, compression: int = zipfile.ZIP_STORED
) -> None:
    """Writes ``obj`` (with :class:`CraftedTensor` anywhere in it) as a zip-layout checkpoint, members as given.

    ``members`` maps storage keys to their raw bytes, or to an iterable of byte chunks written one by one
    (absent: zeros of the declared size, up to 1 MiB). Shared objects stay shared in the pickle (its memo),
    as torch.save writes them.
    """
    storages: dict[str, _CraftedStorage] = {}
    with _torch_names() as (torch, utils):

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _CraftedStorage):
                    storages[obj.key] = obj
                    return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
                return None

            def reducer_override(self, obj):
                if isinstance(obj, CraftedTensor):
                    args = (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict())
                    return utils._rebuild_tensor_v2, args
                return NotImplemented

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(obj)
    members = dict(members or {})
    for key, storage in storages.items():
        members.setdefault(key, bytes(min(4 * max(storage.numel, 0), 1 << 20)))
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for key, data in members.items():
            if isinstance(data, bytes):
                archive.writestr(f"archive/data/{key}", data)
                continue
            with archive.open(f"archive/data/{key}", "w", force_zip64=True) as member:
                for chunk in data:
                    member.write(chunk)
