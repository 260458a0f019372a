"""ShuffleNet v1 for Keras, with a TensorFlow Lite for Microcontrollers path.

Reference: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018 (arXiv:1707.01083).

The public names below are imported on first use, so that importing a
TensorFlow-free module of the package (``keras_shufflenet.training.config``,
``keras_shufflenet.run_dir``) does not import TensorFlow: the command line
reads the configuration before it chooses which Keras the process runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "ChannelShuffle": "keras_shufflenet.layers",
    "ShuffleUnit": "keras_shufflenet.layers",
    "ShuffleNet": "keras_shufflenet.shufflenet",
    "preprocess_input": "keras_shufflenet.shufflenet",
    "profile": "keras_shufflenet.profiling",
}

__all__ = ["ChannelShuffle", "ShuffleNet", "ShuffleUnit", "preprocess_input", "profile"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
