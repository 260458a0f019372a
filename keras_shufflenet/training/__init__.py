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

from keras_shufflenet import lazy_attributes

_PUBLIC = {
    "ConfigError": "keras_shufflenet.training.config",
    "TrainConfig": "keras_shufflenet.training.config",
    "TrainingDivergedError": "keras_shufflenet.training.loop",
    "build_model": "keras_shufflenet.training.loop",
    "describe_configuration": "keras_shufflenet.training.loop",
    "evaluate": "keras_shufflenet.training.loop",
    "load_saved_model": "keras_shufflenet.training.loop",
    "train": "keras_shufflenet.training.loop",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
