"""The images the micro export reads and writes: calibration data, labeled eval data, firmware samples."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

# A ShuffleNet built by keras_shufflenet takes preprocess_input's [-1, 1]; a
# little slack for interpolation and augmentation overshoot.
SHUFFLENET_INPUT_RANGE = (-1.0, 1.0)
_RANGE_SLACK = 0.05
_SHUFFLENET_UNIT = re.compile(r"^stage\d+_unit\d+_gconv1$")


def takes_preprocessed_input(model: Any) -> bool:
    """Whether ``model`` is a :func:`keras_shufflenet.ShuffleNet` (whose input is ``preprocess_input``'s [-1, 1]).

    Not one of ``convention="official"`` (its ``conv1_pad`` layer): those
    take the official checkpoints' BGR pixels in 0..255 as well.
    """
    names = [layer.name for layer in getattr(model, "layers", [])]
    return "conv1_pad" not in names and any(_SHUFFLENET_UNIT.match(name) for name in names)


def check_input_range(model: Any, images: np.ndarray, argument: str) -> None:
    """Refuses images outside a ShuffleNet's [-1, 1] input range (pixels that were not preprocessed).

    Raw 0..255 pixels calibrate the int8 input to scale 1.0, and the firmware
    built from them is wrong while every check inside the export agrees with
    itself, so they are refused, not quantized.

    Raises:
      ValueError: Naming ``argument``, the range received and the range allowed.
    """
    if not takes_preprocessed_input(model) or images.size == 0:
        return
    low, high = float(images.min()), float(images.max())
    allowed_low, allowed_high = SHUFFLENET_INPUT_RANGE
    if low < allowed_low - _RANGE_SLACK or high > allowed_high + _RANGE_SLACK:
        raise ValueError(
            f"`{argument}` holds values from {low:g} to {high:g}, but a ShuffleNet takes images scaled to "
            f"[{allowed_low:g}, {allowed_high:g}] by keras_shufflenet.preprocess_input (pixels / 127.5 - 1). "
            f"Pass preprocess_input(images)."
        )


def check_calibration_spread(images: np.ndarray) -> None:
    """Refuses calibration images with no spread in a channel: int8 ranges calibrated on them fit no real input.

    Raises:
      ValueError: Naming ``representative_data`` and the channels whose values are all one number.
    """
    flat = images.reshape(-1, images.shape[-1])
    constant = [int(c) for c in np.flatnonzero(flat.max(axis=0) == flat.min(axis=0))]
    if constant:
        raise ValueError(
            f"`representative_data` has no spread in channel(s) {constant}: every value there is "
            f"{float(flat[0, constant[0]]):g}, so int8 quantization calibrated on it fits no real image. Pass "
            "real training images, preprocessed as the model was trained."
        )


def representative_samples(
    representative_data: Iterable[Any], input_shape: tuple[int, int, int], limit: int
) -> np.ndarray:
    """Collects up to ``limit`` single images from an iterable of preprocessed batches.

    Args:
      representative_data: Iterable of float batches ``(N, H, W, C)`` (numpy
        arrays or tensors; a ``tf.data.Dataset`` works), or one such batch.
        Elements that are ``(images, labels)`` tuples contribute their images.
      input_shape: The model's ``(H, W, C)``.
      limit: The number of images to collect, ``>= 1``.

    Returns:
      A float32 array ``(n, H, W, C)`` with ``1 <= n <= limit``.

    Raises:
      ValueError: If a batch has the wrong rank, image shape or dtype (for
        example raw uint8 pixels that were not preprocessed), holds
        non-finite values, or the data holds no image at all.
    """
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"`num_representative` must be an integer >= 1. Received: num_representative={limit!r}")
    if hasattr(representative_data, "shape") and len(representative_data.shape) == 4:
        representative_data = [representative_data]  # One array of images is one batch.
    collected: list[np.ndarray] = []
    count = 0
    for index, element in enumerate(representative_data):
        batch = element[0] if isinstance(element, (tuple, list)) else element
        batch = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        where = f"`representative_data` batch {index}"
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(input_shape):
            raise ValueError(
                f"{where} must have shape (batch, {', '.join(map(str, input_shape))}) to match the model input. "
                f"Received shape: {tuple(batch.shape)}"
            )
        if not np.issubdtype(batch.dtype, np.floating):
            raise ValueError(
                f"{where} must be float images preprocessed like the training data "
                f"(keras_shufflenet.preprocess_input). Received dtype: {batch.dtype}"
            )
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"{where} contains NaN or infinite values.")
        take = batch[: limit - count].astype(np.float32)
        collected.append(take)
        count += len(take)
        if count >= limit:
            break
    if count == 0:
        raise ValueError("`representative_data` yielded no images; int8 calibration needs at least one.")
    return np.concatenate(collected)


def collect_labeled(
    eval_data: Iterable[Any], input_shape: tuple[int, int, int], classes: int, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` (image, label) pairs from batches of (images, int labels or one-hot).

    Raises:
      ValueError: Naming ``eval_data`` and the batch, for a batch that is not
        (images, labels), labels that do not match the images or fall outside
        ``[0, classes)``, or no image at all.
    """
    images, labels = [], []
    count = 0
    for index, element in enumerate(eval_data):
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise ValueError(f"`eval_data` must yield (images, labels) batches. Batch {index} is a {type(element)}.")
        batch_images = representative_samples([element[0]], input_shape, limit - count)
        batch_labels = element[1].numpy() if hasattr(element[1], "numpy") else np.asarray(element[1])
        if batch_labels.ndim == 2 and batch_labels.shape[1] == classes and classes > 1:
            batch_labels = batch_labels.argmax(axis=1)  # One-hot.
        batch_labels = batch_labels.reshape(-1)[: len(batch_images)]
        if len(batch_labels) != len(batch_images) or not np.issubdtype(batch_labels.dtype, np.number):
            raise ValueError(
                f"`eval_data` batch {index}: expected one numeric label per image. Received labels of shape "
                f"{tuple(np.shape(element[1]))} and dtype {batch_labels.dtype} for {len(batch_images)} images."
            )
        if batch_labels.min() < 0 or batch_labels.max() >= classes:
            raise ValueError(
                f"`eval_data` batch {index}: labels must be in [0, {classes}). "
                f"Received range [{batch_labels.min()}, {batch_labels.max()}]."
            )
        images.append(batch_images)
        labels.append(batch_labels.astype(np.int64))
        count += len(batch_images)
        if count >= limit:
            break
    if count == 0:
        raise ValueError("`eval_data` yielded no images.")
    return np.concatenate(images), np.concatenate(labels)


# The samples written into the firmware: enough to check a port on several
# images without crowding a small board's flash.
_FIRMWARE_SAMPLE_BYTES = 96 * 1024
_FIRMWARE_SAMPLES_MAX = 10


def firmware_samples(int8_inputs: np.ndarray, tflm_outputs: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Chooses the evaluation samples written into ``sample_input_data.cc``.

    With labels: one image per class, in class order, each one the int8 model
    classifies correctly (so the first answer a user sees on a board is a right
    one); then, if classes are fewer than the budget, further images in order.
    Without labels: the first images. The budget is at most 10 images and
    96 KiB, and never fewer than 2 images where there are 2.
    """
    image_bytes = int(np.prod(int8_inputs.shape[1:]))
    budget = max(2, min(_FIRMWARE_SAMPLES_MAX, _FIRMWARE_SAMPLE_BYTES // image_bytes))
    budget = min(budget, len(int8_inputs))
    if labels is None:
        chosen = list(range(budget))
    else:
        predicted = tflm_outputs.reshape(len(tflm_outputs), -1).argmax(axis=1)
        chosen = []
        for cls in sorted(set(int(label) for label in labels)):
            right = np.flatnonzero((labels == cls) & (predicted == cls))
            if len(right) and len(chosen) < budget:
                chosen.append(int(right[0]))
        chosen += [i for i in range(len(labels)) if i not in chosen][: budget - len(chosen)]
    return {
        "samples": int8_inputs[chosen],
        "expected_outputs": tflm_outputs[chosen],
        "sample_labels": [None if labels is None else int(labels[i]) for i in chosen],
    }
