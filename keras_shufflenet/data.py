"""Input pipelines: TensorFlow Datasets by name, image folders, augmentation.

Every source becomes a :class:`DataSource`: two unbatched ``tf.data``
datasets of ``(image, label)`` with uint8 images in [0, 255] and int32
labels, plus what the trainer needs to know about them. The batched
pipelines add the order the tf.data guide recommends: decode and resize once
-> cache (optional) -> seeded shuffle -> parallel augmentation -> batch
(``drop_remainder`` for training) -> prefetch. Train and eval parsing differ.
The model input is always ``preprocess_input`` of the [0, 255] image.

Sources:

* ``dataset="<tfds name>"``: any TensorFlow Datasets dataset with an image
  and a class label (``supervised_keys``), manual-download ones included
  (``data_dir/downloads/manual``). The embedded ``mnist5k`` is one of them.
* ``dataset="folder:PATH"``: ``PATH/train/<class>/*`` and
  ``PATH/{test,val,validation}/<class>/*``; without an eval folder (or
  without ``train/``, with ``PATH/<class>/*``) a seeded, per-class held-out
  fraction of the training images is the eval split. Files that cannot be
  read or decoded are skipped and counted, not a crash.

The pipeline's settings are :class:`~keras_shufflenet.pipeline_config.PipelineConfig`
(defined with the rest of the configuration, TensorFlow-free).

Why one module of over 400 lines: reading a source and the pipelines on it
share the image helpers (decode, resize, crop) and the DataSource contract;
split apart, each half would import the other's private helpers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet import console
from keras_shufflenet.config_fields import ConfigError
from keras_shufflenet.pipeline_config import CHANNELS, PipelineConfig
from keras_shufflenet.shufflenet import preprocess_input

FOLDER_PREFIX = "folder:"
EVAL_FOLDER_NAMES = ("test", "val", "validation")
# TFDS eval splits, in order of preference.
TFDS_EVAL_SPLITS = ("validation", "test")

_AUTOTUNE = tf.data.AUTOTUNE
_log = logging.getLogger(__name__)


class DataError(ConfigError):
    """A dataset argument or the data it points to cannot be used."""


@dataclasses.dataclass
class DataSource:
    """Unbatched train and eval splits of one dataset.

    Attributes:
      name: The ``dataset`` argument it was loaded from.
      train: ``(uint8 image [H, W, channels], int32 label)``, not shuffled.
      eval: Same for the eval split.
      num_classes: Number of classes.
      class_names: Class names, index = label.
      channels: Channels of ``train`` and ``eval`` images (1 or 3).
      num_train: Images in ``train`` (after skipping unreadable ones).
      num_eval: Images in ``eval``.
      eval_split: Where the eval split came from (a split name or "held-out").
      skipped_images: Unreadable or corrupt files that were left out.
      skipped_files: Their paths (folders only).
    """

    name: str
    train: tf.data.Dataset
    eval: tf.data.Dataset
    num_classes: int
    class_names: list[str]
    channels: int
    num_train: int
    num_eval: int
    eval_split: str
    skipped_images: int = 0
    skipped_files: list[str] = dataclasses.field(default_factory=list)


def load_source(
    dataset: str,
    data_dir: str | None = None,
    channels: int = 0,
    holdout_fraction: float = 0.1,
    seed: int = 0,
) -> DataSource:
    """Loads a TFDS dataset by name or an image folder (``"folder:PATH"``).

    Args:
      dataset: A TFDS name (``"mnist5k"``, ``"cifar10"``, ``"imagenet2012"``,
        optionally ``"name:version"``) or ``"folder:PATH"``.
      data_dir: TFDS data directory; must exist when given. `None` uses
        TFDS's default (``~/tensorflow_datasets``).
      channels: 1 or 3 to convert images to; 0 keeps the dataset's.
      holdout_fraction: Fraction of the training images held out per class
        when there is no eval split.
      seed: Seed of the held-out split.

    Returns:
      A :class:`DataSource`.

    Raises:
      DataError: For an unknown dataset, a missing directory, a folder without
        classes, a dataset that is not image classification, or bad values.
    """
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataError(f"dataset must be a TFDS name or 'folder:PATH'. Received: dataset={dataset!r}")
    if channels not in CHANNELS:
        raise DataError(f"channels must be one of {CHANNELS}. Received: channels={channels!r}")
    if not 0 < holdout_fraction < 1:
        raise DataError(f"holdout_fraction must be in (0, 1). Received: holdout_fraction={holdout_fraction!r}")
    if dataset.startswith(FOLDER_PREFIX):
        return _load_folder(dataset, channels, holdout_fraction, seed)
    return _load_tfds(dataset, data_dir, channels, holdout_fraction)


# --------------------------------------------------------------------- TFDS


def _prepare(builder: Any, name: str) -> None:
    """Generates (or downloads) a TFDS dataset's files unless they are there.

    In a quiet console (the trainer's default) TFDS's own messages and
    progress bars, which say "Downloading" even for the embedded mnist5k, are
    replaced by one line before and one after, with the time.
    """
    if builder.is_prepared():
        return
    if not os.environ.get(console.QUIET_ENV):
        builder.download_and_prepare()
        return
    from tensorflow_datasets.core.utils import tqdm_utils  # TFDS: the train extra, imported when used.

    print(f"Preparing the dataset {name} in {builder.data_dir} (first use only)", flush=True)
    started = time.perf_counter()
    bars_shown = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its messages.
            builder.download_and_prepare()
    finally:
        tqdm_utils.display_progress_bar(bars_shown)
    print(f"Prepared the dataset {name} ({time.perf_counter() - started:.1f} s)", flush=True)


def _load_tfds(name: str, data_dir: str | None, channels: int, holdout_fraction: float) -> DataSource:
    import tensorflow_datasets as tfds  # Seconds to import, and only TFDS datasets need it.

    import keras_shufflenet.datasets  # noqa: F401  (registers mnist5k with TFDS)

    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"data_dir does not exist or is not a directory. Received: data_dir={data_dir!r}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"dataset {name!r} is not a TensorFlow Datasets name (see `tfds.list_builders()`) "
            f"nor 'folder:PATH'. Received: dataset={name!r}"
        ) from None
    except Exception as e:  # Bad version or config in the name.
        raise DataError(f"cannot open TFDS dataset {name!r}: {_first_line(e)}") from None
    try:
        _prepare(builder, name)
    except Exception as e:  # Manual-download data missing, no network, ...
        raise DataError(f"cannot prepare TFDS dataset {name!r} in data_dir={data_dir!r}: {_first_line(e)}") from None

    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise DataError(f"dataset {name!r} has no (image, label) supervised keys; it is not image classification.")
    image_key, label_key = info.supervised_keys
    image_feature, label_feature = info.features[image_key], info.features[label_key]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise DataError(f"dataset {name!r}: {label_key!r} is not a class label ({type(label_feature).__name__}).")
    shape = tuple(image_feature.shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise DataError(f"dataset {name!r}: {image_key!r} must be images with 1 or 3 channels; its shape is {shape}.")
    stored_channels = int(shape[-1])

    splits = info.splits
    eval_split = next((s for s in TFDS_EVAL_SPLITS if s in splits), None)
    if "train" not in splits:
        raise DataError(f"dataset {name!r} has no 'train' split; it has {sorted(splits)}.")
    train_split = "train"
    if eval_split is None:  # Hold out the last fraction of train.
        percent = max(1, round(holdout_fraction * 100))
        train_split, eval_split = f"train[:{100 - percent}%]", f"train[{100 - percent}%:]"

    # Images stay encoded until the parallel map, so the shuffle buffer holds
    # small strings, not decoded pixels.
    is_encoded = isinstance(image_feature, tfds.features.Image)
    decoders = {image_key: tfds.decode.SkipDecoding()} if is_encoded else None
    target_channels = channels or stored_channels

    def load(split: str) -> tf.data.Dataset:
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)

        def to_pair(example: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            image = example[image_key]
            if is_encoded:
                image = tf.io.decode_image(image, channels=stored_channels, expand_animations=False)
            image = _convert_channels(tf.cast(image, tf.uint8), stored_channels, target_channels)
            return image, tf.cast(example[label_key], tf.int32)

        return ds.map(to_pair, num_parallel_calls=_AUTOTUNE)

    return DataSource(
        name=name,
        train=load(train_split),
        eval=load(eval_split),
        num_classes=int(label_feature.num_classes),
        class_names=list(label_feature.names),
        channels=target_channels,
        num_train=int(splits[train_split].num_examples),
        num_eval=int(splits[eval_split].num_examples),
        eval_split=eval_split,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _convert_channels(image: tf.Tensor, have: int, want: int) -> tf.Tensor:
    if have == want:
        return image
    if want == 3:
        return tf.image.grayscale_to_rgb(image)
    return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8)


# ------------------------------------------------------------------ folders


def _class_dirs(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _list_files(root: str, class_names: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(root, class_name)
        if not os.path.isdir(class_dir):
            continue
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.is_file() and not entry.name.startswith("."):
                paths.append(entry.path)
                labels.append(label)
    return paths, labels


def scan_images(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decodes every file once, in parallel, to find the unreadable ones.

    Args:
      paths: Image files.

    Returns:
      ``(ok, channels)``: a boolean mask of the files that decode to a
      non-empty image, and each readable file's channel count (0 if not).
    """
    ok = np.zeros(len(paths), dtype=bool)
    channels = np.zeros(len(paths), dtype=np.int32)
    if not paths:
        return ok, channels

    def probe(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        shape = tf.shape(image)
        tf.debugging.assert_positive(shape[0] * shape[1], message="empty image")
        return index, shape[2]

    probes = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        .map(probe, num_parallel_calls=_AUTOTUNE)
        .ignore_errors()  # An unreadable file drops out here and is counted below.
        .batch(1024)
    )
    for indices, counts in probes.as_numpy_iterator():
        ok[indices] = True
        channels[indices] = counts
    return ok, channels


def _load_folder(dataset: str, channels: int, holdout_fraction: float, seed: int) -> DataSource:
    path = dataset[len(FOLDER_PREFIX) :]
    if not path or not os.path.isdir(path):
        raise DataError(f"image folder does not exist or is not a directory. Received: dataset={dataset!r}")
    train_root = os.path.join(path, "train")
    if not os.path.isdir(train_root):
        train_root = path
    eval_root = next(
        (os.path.join(path, n) for n in EVAL_FOLDER_NAMES if os.path.isdir(os.path.join(path, n))),
        None,
    )
    class_names = [c for c in _class_dirs(train_root) if train_root != path or c not in EVAL_FOLDER_NAMES]
    if not class_names:
        raise DataError(f"image folder has no class subdirectories ({train_root}/<class>/*). Received: {dataset!r}")
    train_paths, train_labels = _list_files(train_root, class_names)
    if eval_root is not None:
        unknown = sorted(set(_class_dirs(eval_root)) - set(class_names))
        if unknown:
            raise DataError(f"eval folder {eval_root} has classes that are not in {train_root}: {unknown}")
        eval_paths, eval_labels = _list_files(eval_root, class_names)
    else:
        eval_paths, eval_labels = [], []

    all_paths = train_paths + eval_paths
    ok, file_channels = scan_images(all_paths)
    skipped = [p for p, good in zip(all_paths, ok, strict=True) if not good]
    if skipped:
        _log.warning("Skipping %d unreadable or corrupt image(s), e.g. %s", len(skipped), skipped[:5])
    train_ok, eval_ok = ok[: len(train_paths)], ok[len(train_paths) :]
    train_paths = [p for p, good in zip(train_paths, train_ok, strict=True) if good]
    train_labels = [lab for lab, good in zip(train_labels, train_ok, strict=True) if good]
    eval_paths = [p for p, good in zip(eval_paths, eval_ok, strict=True) if good]
    eval_labels = [lab for lab, good in zip(eval_labels, eval_ok, strict=True) if good]
    if not train_paths:
        raise DataError(f"image folder has no readable training images under {train_root}. Received: {dataset!r}")
    _check_learnable_classes(class_names, train_labels, train_root, dataset)

    if eval_root is None:
        eval_split = "held-out"
        train_paths, train_labels, eval_paths, eval_labels = _hold_out(
            train_paths, train_labels, holdout_fraction, seed
        )
    else:
        eval_split = os.path.basename(eval_root)
    if not eval_paths:
        raise DataError(f"image folder has no readable eval images. Received: {dataset!r}")

    readable_channels = file_channels[ok]
    # Grayscale (with or without alpha) everywhere -> 1 channel; anything else -> RGB.
    target_channels = channels or (1 if np.all(readable_channels <= 2) else 3)

    return DataSource(
        name=dataset,
        train=_folder_images(train_paths, train_labels, target_channels),
        eval=_folder_images(eval_paths, eval_labels, target_channels),
        num_classes=len(class_names),
        class_names=class_names,
        channels=target_channels,
        num_train=len(train_paths),
        num_eval=len(eval_paths),
        eval_split=eval_split,
        skipped_images=len(skipped),
        skipped_files=skipped,
    )


def _check_learnable_classes(class_names: list[str], train_labels: list[int], train_root: str, dataset: str) -> None:
    """Refuses an image folder with one class, or with a class that has no readable training image."""
    # One class trains a model that always answers it and scores top-1 1.0; a class without
    # training images is one the model can never learn.
    if len(class_names) < 2:
        raise DataError(
            f"image folder has only one class ({class_names[0]!r} in {train_root}); a classifier needs at least "
            f"two class subdirectories. Received: {dataset!r}"
        )
    learnable = set(train_labels)
    unlearnable = [name for label, name in enumerate(class_names) if label not in learnable]
    if unlearnable:
        raise DataError(
            f"image folder classes without a readable training image under {train_root}: {unlearnable}. "
            f"Add images or remove the folders. Received: {dataset!r}"
        )


def _folder_images(paths: list[str], labels: list[int], target_channels: int) -> tf.data.Dataset:
    """The images of ``paths`` with their labels, decoded to ``target_channels``."""

    def read(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Every format decodes to RGB (GIF has no 1-channel mode), then converts.
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return _convert_channels(image, 3, target_channels), label

    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, dtype=np.int32)))
    # A file that changed since the scan is dropped instead of ending the run.
    return ds.map(read, num_parallel_calls=_AUTOTUNE).ignore_errors()


def _hold_out(
    paths: list[str], labels: list[int], fraction: float, seed: int
) -> tuple[list[str], list[int], list[str], list[int]]:
    """Splits off a seeded ``fraction`` of every class (at least one image)."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    eval_mask = np.zeros(len(paths), dtype=bool)
    for label in np.unique(labels_array):
        rows = np.flatnonzero(labels_array == label)
        if len(rows) < 2:
            continue  # A class with one image stays in training.
        count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        eval_mask[rng.choice(rows, size=count, replace=False)] = True
    keep = [(p, lab) for p, lab, e in zip(paths, labels, eval_mask, strict=True) if not e]
    held = [(p, lab) for p, lab, e in zip(paths, labels, eval_mask, strict=True) if e]
    return [p for p, _ in keep], [lab for _, lab in keep], [p for p, _ in held], [lab for _, lab in held]


# -------------------------------------------------------------- parsing


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes to ``size`` x ``size`` (uint8 in, uint8 out); no-op if already."""
    shape = tf.shape(image)

    def do_resize() -> tf.Tensor:
        resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    return tf.cond(tf.logical_and(shape[0] == size, shape[1] == size), lambda: image, do_resize)


def _center_crop(image: tf.Tensor, size: int, fraction: float) -> tf.Tensor:
    """Resizes the shorter side to ``size / fraction`` and crops the center ``size``."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = (size / fraction) / tf.minimum(height, width)
    new_h = tf.maximum(size, tf.cast(tf.round(height * scale), tf.int32))
    new_w = tf.maximum(size, tf.cast(tf.round(width * scale), tf.int32))
    resized = tf.image.resize(image, (new_h, new_w), method="bilinear", antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)


def _random_area_crop(image: tf.Tensor, size: int, min_area: float, seed: tf.Tensor) -> tf.Tensor:
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return _resize(crop, size)


def make_base_parser(config: PipelineConfig, training: bool) -> Callable[..., Any]:
    """The deterministic part of parsing (resizing), applied before the cache.

    ``"scale"`` augmentation crops from the full image, so training keeps it
    and evaluation center-crops; the other modes resize to ``input_size``.
    """
    size = config.input_size

    def parse(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if config.augment == "scale":
            if not training:
                image = _center_crop(image, size, config.eval_crop_fraction)
        else:
            image = _resize(image, size)
        return image, label

    return parse


def affine_transform(size: int, angle: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """The projective transform (output pixel -> input pixel) that rotates by ``angle`` (radians) and
    scales by ``scale`` about the image's center, then translates by ``shift`` (x, y pixels).

    Returns:
      The 8 coefficients ``[a0, a1, a2, b0, b1, b2, 0, 0]`` of
      ``tf.raw_ops.ImageProjectiveTransformV3``: output ``(x, y)`` reads input
      ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``.
    """
    center = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # The inverse map: undo the translation, then rotate by -angle and divide by the scale.
    x0, y0 = center + shift[0], center + shift[1]
    return tf.stack([cos, sin, center - cos * x0 - sin * y0, -sin, cos, center + sin * x0 - cos * y0, 0.0, 0.0])


def _random_affine(image: tf.Tensor, config: PipelineConfig, seed: tf.Tensor) -> tf.Tensor:
    size = config.input_size
    uniform = tf.random.stateless_uniform([4], seed, minval=-1.0, maxval=1.0)
    angle = uniform[0] * config.max_rotation * (3.141592653589793 / 180.0)
    scale = 1.0 + uniform[1] * config.max_zoom
    shift = uniform[2:] * (config.shift_fraction * size)
    transformed = transform_image(image, affine_transform(size, angle, scale, shift), size)
    if image.dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(transformed), 0, 255), tf.uint8)
    return tf.cast(transformed, image.dtype)


def transform_image(image: tf.Tensor, transform: tf.Tensor, size: int, interpolation: str = "BILINEAR") -> tf.Tensor:
    """``image`` (``size`` x ``size`` x C) under ``transform`` (8 coefficients, :func:`affine_transform`), as float32.

    Pixels that come from outside the image are background (0), as for ``--augment=shift``.
    """
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform[None],
        output_shape=[size, size],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    return transformed[0]


def make_train_augmenter(config: PipelineConfig) -> Callable[..., Any]:
    """Random augmentation and ``preprocess_input`` of one ``(seed, (image, label))``."""
    size = config.input_size
    pad = int(round(config.shift_fraction * size))
    to_input = model_input(config)

    def augment(seed: tf.Tensor, example: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = example
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        if config.augment == "scale":
            image = _random_area_crop(image, size, config.min_crop_area, seeds[0])
        elif config.augment == "shift" and pad > 0:
            # Translation by up to `pad` pixels; the border is background (0).
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seeds[0])
        elif config.augment == "affine":
            image = _random_affine(image, config, seeds[0])
        if config.random_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        image = tf.ensure_shape(image, (size, size, None))
        return to_input(image), label

    return augment


def model_input(config: PipelineConfig) -> Callable[[tf.Tensor], tf.Tensor]:
    """The function from [0, 255] images to the model's input for ``config.preprocessing``.

    ``"unit"``: :func:`keras_shufflenet.preprocess_input` ([-1, 1]).
    ``"official"``: BGR pixels in 0..255 as float32, the input of the official
    ShuffleNet v1 checkpoints (:func:`keras_shufflenet.weights.official_preprocess_input`;
    grayscale images stay as they are).
    """
    if config.preprocessing == "unit":
        return preprocess_input

    def official(image: tf.Tensor) -> tf.Tensor:
        image = tf.cast(image, tf.float32)
        return tf.reverse(image, axis=[-1]) if image.shape[-1] == 3 else image

    return official


def _eval_finisher(config: PipelineConfig) -> Callable[..., Any]:
    to_input = model_input(config)

    def finish(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return to_input(image), label

    return finish


def _with_options(ds: tf.data.Dataset, deterministic: bool = True) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = deterministic
    # Shards by element, so small single-file datasets still split across workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def make_train_dataset(
    source: DataSource, config: PipelineConfig, batch_size: int, repeat: bool = True
) -> tf.data.Dataset:
    """Batched training pipeline: ``(preprocessed float32 images, int32 labels)``.

    Args:
      source: The data.
      config: Resizing, augmentation and caching.
      batch_size: Global batch size; the last partial batch is dropped.
      repeat: Repeat forever (for ``fit(steps_per_epoch=...)``).

    Returns:
      A ``tf.data.Dataset`` of ``[batch, size, size, channels]`` images in
      [-1, 1] and labels.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    if batch_size > source.num_train:
        raise DataError(f"batch_size={batch_size} is larger than the {source.num_train} training images.")
    ds = source.train.map(make_base_parser(config, training=True), num_parallel_calls=_AUTOTUNE)
    if config.cache:
        ds = ds.cache()
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # Stateless augmentation with one seed per element: reproducible for a seed.
    seeds = tf.data.Dataset.random(seed=config.seed).batch(2)
    ds = tf.data.Dataset.zip((seeds, ds)).map(make_train_augmenter(config), num_parallel_calls=_AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(_AUTOTUNE)
    return _with_options(ds)


def make_eval_dataset(
    source: DataSource, config: PipelineConfig, batch_size: int, split: str = "eval"
) -> tf.data.Dataset:
    """Batched evaluation pipeline, in a fixed order, keeping the last partial batch.

    Args:
      source: The data.
      config: Resizing and caching.
      batch_size: Batch size.
      split: ``"eval"``, or ``"train"`` for the training images parsed as
        for evaluation (e.g. representative data for quantization).

    Returns:
      A ``tf.data.Dataset`` of ``(preprocessed images, int32 labels)``.
    """
    if split not in ("eval", "train"):
        raise DataError(f"split must be 'eval' or 'train'. Received: split={split!r}")
    ds = source.eval if split == "eval" else source.train
    ds = ds.map(make_base_parser(config, training=False), num_parallel_calls=_AUTOTUNE)
    if config.cache:
        ds = ds.cache()
    ds = ds.map(_eval_finisher(config), num_parallel_calls=_AUTOTUNE).batch(batch_size).prefetch(_AUTOTUNE)
    return _with_options(ds)


def representative_batches(
    source: DataSource, config: PipelineConfig, num_samples: int, batch_size: int = 1
) -> Iterator[np.ndarray]:
    """Yields preprocessed training images (eval parsing) for quantization calibration.

    Args:
      source: The data.
      config: Resizing.
      num_samples: Images to yield in total.
      batch_size: Images per yielded batch.

    Yields:
      float32 arrays ``[batch, size, size, channels]``.
    """
    # A few images drawn from the whole split: caching them all would cost memory for nothing.
    uncached = dataclasses.replace(config, cache=False)
    ds = make_eval_dataset(source, uncached, batch_size, split="train").unbatch()
    ds = ds.shuffle(min(10 * num_samples, 10_000), seed=config.seed).take(num_samples).batch(batch_size)
    for images, _ in ds.as_numpy_iterator():
        yield images


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (training drops the remainder)."""
    return max(1, num_examples // batch_size)


def eval_steps(num_examples: int, batch_size: int) -> int:
    """Batches of one pass over the eval split (the last one partial).

    Given to Keras as ``validation_steps``/``steps``: an image folder's
    dataset skips unreadable files, so its length is unknown to tf.data, and
    Keras 3 then warns "Your input ran out of data" at the end of every pass.
    """
    return max(1, -(-num_examples // batch_size))
