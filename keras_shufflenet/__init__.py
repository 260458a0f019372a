"""ShuffleNet v1 for Keras, with a TensorFlow Lite for Microcontrollers path.

Reference: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018 (arXiv:1707.01083).

The public names below are imported on first use, so that importing a
TensorFlow-free module of the package (``keras_shufflenet.training.config``,
``keras_shufflenet.run_dir``) does not import TensorFlow: the command line
reads the configuration before it chooses which Keras the process runs.
The layers still register with Keras as soon as Keras is imported
(:mod:`keras_shufflenet.registration`), so ``keras.models.load_model`` reads
a saved model after ``import keras_shufflenet`` alone.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "ChannelShuffle": "keras_shufflenet.layers",
    "ShuffleUnit": "keras_shufflenet.layers",
    "decode_predictions": "keras_shufflenet.imagenet",
    "ShuffleNet": "keras_shufflenet.shufflenet",
    "preprocess_input": "keras_shufflenet.shufflenet",
    "profile": "keras_shufflenet.profiling",
}

__all__ = ["ChannelShuffle", "ShuffleNet", "ShuffleUnit", "decode_predictions", "preprocess_input", "profile"]


def lazy_attributes(module_name: str, public: dict[str, str]) -> tuple[Any, Any]:
    """A module's ``__getattr__`` and ``__dir__`` that import each of ``public`` (name -> module) on first use."""
    module_globals = vars(importlib.import_module(module_name))

    def get_attribute(name: str) -> Any:
        if name in public:
            value = getattr(importlib.import_module(public[name]), name)
            module_globals[name] = value
            return value
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def list_attributes() -> list[str]:
        return sorted([*module_globals, *public])

    return get_attribute, list_attributes


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

from keras_shufflenet import registration  # noqa: E402 (after lazy_attributes, which its imports use)

registration.install()
