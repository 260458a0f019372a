"""Weights by layer name, portable between Keras 3 and Keras 2 (tf_keras).

Keras 3 and tf_keras write different weight files, but a ShuffleNet has the
same deterministic layer names and per-layer weight order in both. Training
runs in Keras 3; pruning and quantization-aware training need tf_keras
(tensorflow-model-optimization), so the trained weights cross over as an
``.npz`` of ``"<layer name>/<index>"`` arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_shufflenet import run_dir


def save(model: Any, path: str) -> None:
    """Writes every layer's weights to ``path`` (``.npz``), atomically."""
    arrays = {}
    for layer in model.layers:
        for index, value in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{index}"] = value
    with run_dir.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load(model: Any, path: str) -> None:
    """Sets every layer's weights from a file written by :func:`save`.

    Raises:
      ValueError: If a layer's weights are missing from the file, the file
        has weights of layers the model lacks, or a shape differs.
    """
    with np.load(path) as stored:
        remaining = set(stored.files)
        for layer in model.layers:
            current = layer.get_weights()
            if not current:
                continue
            keys = [f"{layer.name}/{index}" for index in range(len(current))]
            missing = [key for key in keys if key not in stored.files]
            if missing:
                raise ValueError(f"{path} has no weights for layer {layer.name!r} (missing {missing}).")
            values = [stored[key] for key in keys]
            for key, old, new in zip(keys, current, values, strict=True):
                if old.shape != new.shape:
                    raise ValueError(f"{path}: {key} has shape {new.shape}; the model expects {old.shape}.")
            layer.set_weights(values)
            remaining -= set(keys)
        if remaining:
            raise ValueError(f"{path} holds weights of layers the model lacks: {sorted(remaining)[:5]}")
