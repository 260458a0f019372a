"""Pretrained ImageNet weights: the official ShuffleNet v1 checkpoints, loaded exactly.

The official implementation (megvii-model/ShuffleNet-Series) publishes
PyTorch checkpoints for 0.5x/1.0x/1.5x/2.0x with 3 and 8 groups. Download
one yourself, then either build the model from it::

    model = keras_shufflenet.ShuffleNet(weights="snetv1_group3_1.0x.pth.tar")

or convert it once to a Keras weights file::

    python -m keras_shufflenet.weights convert CHECKPOINT OUT.weights.h5

The checkpoint is read by :mod:`keras_shufflenet.weights.reader`, which
loads tensors only and never runs pickled code (no PyTorch needed); the
configuration (scale, groups, classes) comes from its shapes
(:mod:`keras_shufflenet.weights.official`). The model is built with
``convention="official"``, which computes the official network's function:
logits agree with PyTorch's within 1e-4 (tests/test_weights.py). Its input
is the official one: BGR pixels in [0, 255], not normalized
(:func:`official_preprocess_input`).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any

import numpy as np

from keras_shufflenet import architecture
from keras_shufflenet.weights import official
from keras_shufflenet.weights.reader import CheckpointError, checkpoint_layout, read_checkpoint

__all__ = [
    "CONVENTION_ATTRIBUTE",
    "CheckpointError",
    "OfficialCheckpoint",
    "is_torch_checkpoint",
    "load_official_weights",
    "official_preprocess_input",
    "read_official_checkpoint",
    "recorded_convention",
]

# The HDF5 attribute of a converted weights file (keras_shufflenet.checkpoint_conversion) that names its
# convention: the official and paper conventions compute different functions with the same shapes.
CONVENTION_ATTRIBUTE = "keras_shufflenet_convention"


@dataclasses.dataclass(frozen=True)
class OfficialCheckpoint:
    """An official ShuffleNet v1 checkpoint, read and checked.

    Attributes:
      path: The file it was read from.
      scale_factor: Its width multiplier (0.5, 1.0, 1.5 or 2.0 for the release).
      groups: Its groups (3 or 8 for the release).
      classes: Its classifier's outputs (1000 for ImageNet).
      tensors: Its tensors by official name, without the ``module.`` prefix.
    """

    path: str
    scale_factor: float
    groups: int
    classes: int
    tensors: dict[str, np.ndarray]

    def describe(self) -> str:
        return official.describe(self.scale_factor, self.groups)


def is_torch_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that starts like a ``torch.save`` file (zip with ``data.pkl``, or legacy pickle)."""
    if not os.path.isfile(path):
        return False
    layout = checkpoint_layout(path)
    if layout != "zip":
        return layout == "legacy"
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") and name.count("/") == 1 for name in archive.namelist())
    except zipfile.BadZipFile:
        return True  # A damaged zip: let the reader say what is wrong with it.


def read_official_checkpoint(path: str | os.PathLike[str], reader: str = "builtin") -> OfficialCheckpoint:
    """Reads an official ShuffleNet v1 checkpoint and infers its configuration from its shapes.

    Args:
      path: A ``.pth.tar`` of megvii-model/ShuffleNet-Series (or any
        ``torch.save`` of the same state dict, with or without ``module.``).
      reader: ``"builtin"`` (no PyTorch, the default) or ``"torch"``
        (:func:`keras_shufflenet.weights.reader.read_checkpoint`).

    Returns:
      The :class:`OfficialCheckpoint`.

    Raises:
      CheckpointError: If the file is not a PyTorch checkpoint, is truncated,
        asks to run code, or is not a ShuffleNet v1 of a consistent
        configuration; the message names the file and what is wrong.
    """
    path = os.fspath(path)
    tensors = official.state_dict_of(read_checkpoint(path, reader), path)
    scale_factor, groups, classes = official.infer_configuration(tensors, path)
    check_values(tensors, path)
    return OfficialCheckpoint(path, scale_factor, groups, classes, tensors)


def check_values(tensors: dict[str, np.ndarray], path: str) -> None:
    """Refuses weights a network cannot use: a non-finite value anywhere, a negative batch-norm variance.

    Raises:
      CheckpointError: Naming the file, the tensor and how many values are wrong.
    """
    for name, value in tensors.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = int(np.count_nonzero(~np.isfinite(value)))
        if bad:
            raise CheckpointError(f"{path!r}: tensor {name!r} holds {bad} non-finite value(s) (NaN or infinity)")
        if name.endswith("running_var") and (value < 0).any():
            negative = int(np.count_nonzero(value < 0))
            raise CheckpointError(
                f"{path!r}: tensor {name!r} holds {negative} negative batch-norm variance(s), which no "
                "training produces: the file is corrupt or crafted"
            )


def load_official_weights(model: Any, checkpoint: OfficialCheckpoint, classifier: bool = True) -> None:
    """Sets ``model``'s weights from ``checkpoint``: all of them or, on any mismatch, none.

    ``model`` must be a :func:`keras_shufflenet.ShuffleNet` of the
    checkpoint's configuration built with ``convention="official"``; its
    classifier loads when it has one (``include_top=True``) with the
    checkpoint's class count and ``classifier`` is true, else only the
    backbone (transfer learning: the model's own classifier is kept).

    Raises:
      ValueError: If a layer is missing or a shape differs, before any weight is set.
    """
    spec = architecture.network_spec(checkpoint.groups, checkpoint.scale_factor)
    layer_names = {layer.name for layer in model.layers}
    include_top = classifier and "predictions" in layer_names
    weights = official.layer_weights(checkpoint.tensors, spec, include_top)
    pairs = []
    for layer_name, arrays in weights.items():
        if layer_name not in layer_names:
            raise ValueError(
                f"model {model.name!r} has no layer {layer_name!r} for checkpoint {checkpoint.path!r} "
                f"({checkpoint.describe()}); build it with ShuffleNet(weights=...) or the checkpoint's configuration"
            )
        layer = model.get_layer(layer_name)
        current = layer.get_weights()
        shapes = [tuple(w.shape) for w in current]
        if shapes != [a.shape for a in arrays]:
            raise ValueError(
                f"layer {layer_name!r} of model {model.name!r} has weights of shapes {shapes}, checkpoint "
                f"{checkpoint.path!r} ({checkpoint.describe()}, {checkpoint.classes} classes) gives "
                f"{[a.shape for a in arrays]}"
            )
        pairs.append((layer, arrays))
    for layer, arrays in pairs:  # Every shape checked: nothing is half-loaded.
        layer.set_weights(arrays)


def official_preprocess_input(images: Any) -> Any:
    """The official network's input from RGB images in [0, 255]: BGR, float32, not normalized.

    The official evaluation (``ToBGRTensor`` in its train.py) feeds OpenCV's
    BGR pixels as floats in 0..255. Resize to 256 and center-crop to 224
    before (``keras_shufflenet.data`` does for ``--preprocessing=official``).

    Args:
      images: An array or tensor ``(..., H, W, 3)`` of RGB values in [0, 255].

    Returns:
      The same images with the channels reversed, as float32.
    """
    if isinstance(images, np.ndarray):
        return images[..., ::-1].astype(np.float32)
    import tensorflow as tf  # Tensors only: the reader and numpy input need no TensorFlow.

    return tf.reverse(tf.cast(images, tf.float32), axis=[-1])


def recorded_convention(path: str | os.PathLike[str]) -> str | None:
    """The convention a converted weights file records, or `None` (any other file, or not HDF5)."""
    path = os.fspath(path)
    import h5py  # Keras's own dependency; only weights files need it.

    if not os.path.isfile(path) or not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as handle:
        value = handle.attrs.get(CONVENTION_ATTRIBUTE)
    return None if value is None else str(value.decode() if isinstance(value, bytes) else value)
