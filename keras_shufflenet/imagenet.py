"""The 1,000 ImageNet (ILSVRC 2012) classes, and ``decode_predictions`` for a model's outputs.

The names, in class-index order, ship with the package
(``datasets/data/imagenet_class_names.txt``, from torchvision's
``_IMAGENET_CATEGORIES``, BSD-3-Clause), so that decoding needs no download.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np

NUM_CLASSES = 1000
_NAMES_FILE = "imagenet_class_names.txt"


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, index 0 (``"tench"``) to 999 (``"toilet tissue"``)."""
    text = resources.files("keras_shufflenet.datasets").joinpath("data", _NAMES_FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"{_NAMES_FILE} holds {len(names)} class names, not {NUM_CLASSES}: the package is damaged")
    return names


def decode_predictions(preds: Any, top: int = 5) -> list[list[tuple[int, str, float]]]:
    """The ``top`` ImageNet classes of each row of ``preds``, best first.

    Like ``keras.applications``' ``decode_predictions``, with the class index
    where Keras gives the WordNet id.

    Args:
      preds: Scores (probabilities or logits) of shape ``(batch, 1000)``.
      top: How many classes per row, 1 to 1000. Defaults to `5`.

    Returns:
      One list per row of ``(class_index, class_name, score)`` tuples.

    Raises:
      ValueError: If ``preds`` is not ``(batch, 1000)`` or ``top`` is out of range.
    """
    scores = np.asarray(preds)
    if scores.ndim != 2 or scores.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"`preds` must have shape (batch, {NUM_CLASSES}) (ImageNet scores). Received: preds.shape={scores.shape}"
        )
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= NUM_CLASSES:
        raise ValueError(f"`top` must be an integer in [1, {NUM_CLASSES}]. Received: top={top!r}")
    names = class_names()
    result = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:top]
        result.append([(int(i), names[i], float(row[i])) for i in best])
    return result
