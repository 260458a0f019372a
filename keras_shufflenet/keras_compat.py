"""Selects the Keras implementation the package builds on.

Keras 3 is the default. Setting ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is
imported selects Keras 2 (the ``tf_keras`` package), which is what
tensorflow-model-optimization (pruning, quantization-aware training) accepts.
Every module of the package imports ``keras`` from here so that one process
never mixes the two.
"""

import os

USE_LEGACY_KERAS: bool = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in (
    "1",
    "true",
    "yes",
)

if USE_LEGACY_KERAS:
    import tf_keras as keras  # noqa: F401
else:
    import keras  # noqa: F401

KERAS_MAJOR_VERSION: int = int(keras.__version__.split(".")[0])

__all__ = ["keras", "USE_LEGACY_KERAS", "KERAS_MAJOR_VERSION"]
