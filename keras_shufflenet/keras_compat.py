"""Selects the Keras implementation the package builds on.

Keras 3 is the default. Setting ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is
imported selects Keras 2 (the ``tf_keras`` package), which is what
tensorflow-model-optimization (pruning, quantization-aware training) accepts.
Every module of the package imports ``keras`` from here so that one process
never mixes the two.

Importing this module does not import Keras: the first use of ``keras``
does. So a command line can read :data:`USE_LEGACY_KERAS` and
:func:`legacy_keras_selected` before it decides to restart itself in the other
flavour.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

# The environment variable that selects Keras 2 (read by TensorFlow itself at import).
LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"


def legacy_keras_selected(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``environ`` selects Keras 2 (``TF_USE_LEGACY_KERAS`` is 1, true or yes)."""
    return environ.get(LEGACY_KERAS_ENV, "").lower() in ("1", "true", "yes")


USE_LEGACY_KERAS: bool = legacy_keras_selected()


def __getattr__(name: str) -> Any:
    if name == "keras":
        module = importlib.import_module("tf_keras" if USE_LEGACY_KERAS else "keras")
        globals()["keras"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LEGACY_KERAS_ENV", "USE_LEGACY_KERAS", "keras", "legacy_keras_selected"]  # noqa: F822 (keras: see __getattr__)
