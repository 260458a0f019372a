"""Datasets shipped with keras-shufflenet, as TensorFlow Datasets builders.

Importing this package registers the builders with TFDS, so
``tfds.builder("mnist5k", data_dir=...)`` finds them like any TFDS dataset.
"""

from keras_shufflenet.datasets.mnist5k import DATA_FILE, Mnist5k

__all__ = ["DATA_FILE", "Mnist5k"]
