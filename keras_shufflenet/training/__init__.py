"""Training of ShuffleNet: one module per concern.

* :mod:`~keras_shufflenet.training.config`: :class:`TrainConfig` (and the
  nested pipeline and micro-export configs), defined once with help text and
  allowed values; TensorFlow-free.
* :mod:`~keras_shufflenet.training.optimization`: the learning-rate schedule
  and weight decay.
* :mod:`~keras_shufflenet.training.distribute`: ``tf.distribute``
  strategies, the worker's role, mixed precision.
* :mod:`~keras_shufflenet.training.checkpointing`: per-epoch checkpoints,
  resume state, the NaN guard.
* :mod:`~keras_shufflenet.training.loop`: :func:`train` and :func:`evaluate`.
* :mod:`~keras_shufflenet.training.plotting`: the training curves.

The names below are imported on first use, so that ``training.config`` can
be read without importing TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ConfigError": "keras_shufflenet.training.config",
    "TrainConfig": "keras_shufflenet.training.config",
    "TrainingDivergedError": "keras_shufflenet.training.loop",
    "build_model": "keras_shufflenet.training.loop",
    "evaluate": "keras_shufflenet.training.loop",
    "load_saved_model": "keras_shufflenet.training.loop",
    "train": "keras_shufflenet.training.loop",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
