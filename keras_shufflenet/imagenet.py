"""The 1,000 ImageNet (ILSVRC 2012) classes, and ``decode_predictions`` for a model's outputs.

The names and WordNet ids, in class-index order, ship with the package
(``datasets/data/imagenet_class_names.txt``, from torchvision's
``_IMAGENET_CATEGORIES``, BSD-3-Clause; ``datasets/data/imagenet_wnids.txt``,
from TensorFlow Datasets, Apache-2.0), so that decoding needs no download.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np

NUM_CLASSES = 1000
_NAMES_FILE = "imagenet_class_names.txt"
_WNIDS_FILE = "imagenet_wnids.txt"


def _read_lines(filename: str, what: str) -> tuple[str, ...]:
    text = resources.files("keras_shufflenet.datasets").joinpath("data", filename).read_text(encoding="utf-8")
    lines = tuple(line for line in text.splitlines() if line)
    if len(lines) != NUM_CLASSES:
        raise RuntimeError(f"{filename} holds {len(lines)} {what}, not {NUM_CLASSES}: the package is damaged")
    return lines


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, index 0 (``"tench"``) to 999 (``"toilet tissue"``)."""
    return _read_lines(_NAMES_FILE, "class names")


@functools.cache
def wordnet_ids() -> tuple[str, ...]:
    """The WordNet ids of the 1,000 ImageNet classes, index 0 (``"n01440764"``) to 999 (``"n15075141"``)."""
    return _read_lines(_WNIDS_FILE, "WordNet ids")


def decode_predictions(preds: Any, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The ``top`` ImageNet classes of each row of ``preds``, best first, as ``keras.applications`` gives them.

    The class index of a tuple's WordNet id is ``wordnet_ids().index(wnid)``.

    Args:
      preds: Scores (probabilities or logits) of shape ``(batch, 1000)``.
      top: How many classes per row, 1 to 1000. Defaults to `5`.

    Returns:
      One list per row of ``(wordnet_id, class_name, score)`` tuples.

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
    names, wnids = class_names(), wordnet_ids()
    result = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:top]
        result.append([(wnids[i], names[i], float(row[i])) for i in best])
    return result
