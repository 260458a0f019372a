"""Registers the package's saveable Keras objects with Keras, without importing Keras first.

``keras.models.load_model`` finds a custom layer only if the class was
registered (``keras.saving.register_keras_serializable``), which happens when
its module is imported. ``import keras_shufflenet`` must not import
TensorFlow itself: the command line reads its configuration before it
chooses Keras 3 or Keras 2 (``TF_USE_LEGACY_KERAS``), which TensorFlow reads
once, at import. So :func:`install` registers the objects now if the
process's Keras is already imported, and otherwise as soon as it is: a
finder on ``sys.meta_path`` wraps the loader of that one module and imports
the package's modules that register objects right after Keras has run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Any

from keras_shufflenet import keras_compat

# The modules whose import registers every object a saved model of the package can hold.
SERIALIZABLE_MODULES = ("keras_shufflenet.layers", "keras_shufflenet.training.optimization")

_lock = threading.Lock()


def keras_module_name() -> str:
    """The Keras module of this process: ``"tf_keras"`` under ``TF_USE_LEGACY_KERAS=1``, else ``"keras"``."""
    return "tf_keras" if keras_compat.USE_LEGACY_KERAS else "keras"


def register() -> None:
    """Imports the modules that register the package's objects (imports Keras and TensorFlow)."""
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


class _RegisterAfter(importlib.abc.Loader):
    """Runs the real loader of the Keras module, then :func:`register`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _uninstall()
        register()


class _KerasImportFinder(importlib.abc.MetaPathFinder):
    """Finds the Keras module with the other finders and wraps its loader in :class:`_RegisterAfter`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != keras_module_name():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfter(spec.loader)
                return spec
        return None


_finder = _KerasImportFinder()


def _uninstall() -> None:
    with _lock:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)


def install() -> None:
    """Registers the package's objects now if the process's Keras is imported, else once it is."""
    if keras_module_name() in sys.modules:
        register()
        return
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
