"""An official ShuffleNet v1 checkpoint converted once into a Keras weights file (``.weights.h5``).

Here rather than in :mod:`keras_shufflenet.weights`, which the model builder
imports: the conversion builds a model, so it sits above both. The command
line is ``python -m keras_shufflenet.weights convert CHECKPOINT OUT.weights.h5``.
"""

from __future__ import annotations

import os

import h5py

from keras_shufflenet import run_dir
from keras_shufflenet.shufflenet import ShuffleNet
from keras_shufflenet.weights import (
    CONVENTION_ATTRIBUTE,
    OfficialCheckpoint,
    load_official_weights,
    read_official_checkpoint,
)


def convert(checkpoint_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> OfficialCheckpoint:
    """Converts an official checkpoint into a Keras weights file (``.weights.h5``), written atomically.

    The file loads with ``ShuffleNet(weights=output_path, scale_factor=...,
    groups=..., convention="official")`` of the checkpoint's configuration.

    Args:
      checkpoint_path: The official checkpoint.
      output_path: The Keras weights file to write; must end in ``.weights.h5``.

    Returns:
      The checkpoint that was read.

    Raises:
      CheckpointError: As :func:`read_official_checkpoint`.
      ValueError: If ``output_path`` does not end in ``.weights.h5``.
    """
    output_path = os.fspath(output_path)
    if not output_path.endswith(".weights.h5"):
        raise ValueError(f"`output_path` must end in '.weights.h5'. Received: output_path={output_path!r}")
    checkpoint = read_official_checkpoint(checkpoint_path)
    model = ShuffleNet(
        weights=None,
        classes=checkpoint.classes,
        scale_factor=checkpoint.scale_factor,
        groups=checkpoint.groups,
        convention="official",
    )
    load_official_weights(model, checkpoint)
    with run_dir.atomic_path(output_path) as tmp:  # Same base name: Keras 3 checks the suffix.
        model.save_weights(tmp)
        # The convention computes another function with the same shapes: recorded, so that a model of the
        # other convention refuses the file (ShuffleNet(weights=...)).
        with h5py.File(tmp, "a") as handle:
            handle.attrs[CONVENTION_ATTRIBUTE] = "official"
    return checkpoint
