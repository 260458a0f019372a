"""Tests of the input pipelines and the embedded mnist5k TFDS dataset."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import data
from keras_shufflenet.datasets import DATA_FILE
from keras_shufflenet.training.config import ConfigError


def write_png(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


def make_folder(root: str, classes: dict[str, int], per_class: int, channels: int = 3, test: int = 0) -> None:
    """Images whose pixels all equal the class value, so a label can be read off its image."""
    for split, count in (("train", per_class), ("test", test)):
        for name, value in classes.items():
            for i in range(count):
                image = np.full((20 + i, 24, channels), value, dtype=np.uint8)
                write_png(os.path.join(root, split, name, f"{i:03d}.png"), image)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def mnist5k(tfds_dir: str) -> data.DataSource:
    return data.load_source("mnist5k", data_dir=tfds_dir)


def read_csv_reference() -> tuple[np.ndarray, np.ndarray]:
    """The shipped file read with the csv module, independently of the builder."""
    with gzip.open(DATA_FILE, "rt") as f:
        rows = np.array([[int(v) for v in row] for row in csv.reader(f)], dtype=np.int64)
    return rows[:, :784], rows[:, 784]


def split_pixels_and_labels(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*ds.as_numpy_iterator(), strict=True)
    return np.stack(images), np.array(labels)


def test_mnist5k_is_a_tfds_dataset_with_a_fixed_balanced_split(mnist5k: data.DataSource) -> None:
    assert (mnist5k.num_train, mnist5k.num_eval, mnist5k.eval_split) == (4000, 1000, "test")
    assert mnist5k.class_names == [str(d) for d in range(10)] and mnist5k.channels == 1
    pixels, labels = read_csv_reference()
    assert pixels.shape == (5000, 784)
    train_images, train_labels = split_pixels_and_labels(mnist5k.train)
    test_images, test_labels = split_pixels_and_labels(mnist5k.eval)
    assert train_images.shape == (4000, 28, 28, 1) and train_images.dtype == np.uint8
    assert np.bincount(train_labels, minlength=10).tolist() == [400] * 10
    assert np.bincount(test_labels, minlength=10).tolist() == [100] * 10
    # Per digit, the last 100 rows of the file are the test images (order within a split is TFDS's).
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        expected = np.sort(pixels[rows[400:]].sum(axis=1))
        got = np.sort(test_images[test_labels == digit].reshape(100, -1).sum(axis=1))
        np.testing.assert_array_equal(got, expected)


def test_eval_pipeline_resizes_converts_channels_and_preprocesses(mnist5k: data.DataSource, tfds_dir: str) -> None:
    config = data.PipelineConfig(input_size=28, cache=False)
    images, labels = next(iter(data.make_eval_dataset(mnist5k, config, batch_size=8)))
    raw_images, raw_labels = next(iter(mnist5k.eval.batch(8)))
    np.testing.assert_allclose(images.numpy(), raw_images.numpy() / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), raw_labels.numpy())

    rgb = data.load_source("mnist5k", data_dir=tfds_dir, channels=3)
    big = data.make_eval_dataset(rgb, data.PipelineConfig(input_size=40), batch_size=4)
    images, _ = next(iter(big))
    assert images.shape == (4, 40, 40, 3) and images.dtype == tf.float32
    assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    np.testing.assert_array_equal(images[..., 0].numpy(), images[..., 2].numpy())  # Gray copied to RGB.


def test_a_quiet_console_prepares_a_dataset_in_two_lines(tmp_path: os.PathLike, monkeypatch, capfd) -> None:
    from keras_shufflenet import console

    monkeypatch.setenv(console.QUIET_ENV, "1")
    source = data.load_source("mnist5k", data_dir=str(tmp_path))
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Preparing the dataset mnist5k in ") and str(tmp_path) in lines[0]
    assert lines[1].startswith("Prepared the dataset mnist5k (") and lines[1].endswith(" s)")
    assert "Downloading" not in out + err and "examples/s" not in err  # TFDS's message and progress bars
    assert source.num_train == 4000
    data.load_source("mnist5k", data_dir=str(tmp_path))  # Prepared: nothing more to say.
    assert capfd.readouterr().out == ""


def test_train_pipeline_shifts_within_the_pad_and_is_seeded() -> None:
    image = np.zeros((32, 32, 1), np.uint8)
    image[10:20, 12:18, 0] = np.arange(60, dtype=np.uint8).reshape(10, 6) + 100  # A unique pattern.
    source = data.DataSource(
        name="one",
        train=tf.data.Dataset.from_tensors((image, np.int32(3))).repeat(64),
        eval=tf.data.Dataset.from_tensors((image, np.int32(3))),
        num_classes=4,
        class_names=list("abcd"),
        channels=1,
        num_train=64,
        num_eval=1,
        eval_split="test",
    )
    config = data.PipelineConfig(input_size=32, augment="shift", shift_fraction=0.125, seed=7)
    images, labels = next(iter(data.make_train_dataset(source, config, batch_size=16)))
    assert images.shape == (16, 32, 32, 1) and labels.numpy().tolist() == [3] * 16
    pixels = np.round((images.numpy() + 1.0) * 127.5).astype(np.int64)
    shifts = set()
    for out in pixels:
        found = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if np.array_equal(out, np.roll(image.astype(np.int64), (dy, dx), axis=(0, 1)))
        ]
        assert len(found) == 1, "every augmented image is the input shifted by at most 4 pixels"
        shifts.add(found[0])
    assert len(shifts) > 3
    again, _ = next(iter(data.make_train_dataset(source, config, batch_size=16)))
    np.testing.assert_array_equal(again.numpy(), images.numpy())
    other = dataclasses.replace(config, seed=8)
    different, _ = next(iter(data.make_train_dataset(source, other, batch_size=16)))
    assert not np.array_equal(different.numpy(), images.numpy())


def _transformed(image: np.ndarray, transform: tf.Tensor) -> np.ndarray:
    return data.transform_image(tf.constant(image), transform, image.shape[0], interpolation="NEAREST").numpy()


def test_affine_transform_rotates_and_scales_about_the_center_then_shifts() -> None:
    image = np.zeros((9, 9, 1), np.float32)
    image[2, 6] = 1.0  # Row 2, column 6: (x, y) = (6, 2), (2, -2) from the center (4, 4).
    identity = data.affine_transform(9, tf.constant(0.0), tf.constant(1.0), tf.constant([0.0, 0.0]))
    np.testing.assert_array_equal(_transformed(image, identity), image)
    # A quarter turn (x, y) -> (-y, x) in image coordinates: (2, -2) -> (2, 2), then 1 pixel right: (7, 6).
    turn = data.affine_transform(9, tf.constant(np.pi / 2), tf.constant(1.0), tf.constant([1.0, 0.0]))
    assert np.argwhere(_transformed(image, turn)[..., 0] > 0.5).tolist() == [[6, 7]]
    # Twice the size: (2, -2) -> (4, -4), i.e. (x, y) = (8, 0).
    double = data.affine_transform(9, tf.constant(0.0), tf.constant(2.0), tf.constant([0.0, 0.0]))
    assert [0, 8] in np.argwhere(_transformed(image, double)[..., 0] > 0.5).tolist()


def test_affine_augmentation_keeps_the_ink_near_and_is_seeded() -> None:
    image = np.zeros((28, 28, 1), np.uint8)
    image[8:20, 12:16] = 255  # A bar, as in a "1".
    config = data.PipelineConfig(input_size=28, augment="affine", max_rotation=15.0, max_zoom=0.1, seed=3)
    augment = data.make_train_augmenter(config)
    outputs = [augment(tf.constant([seed, 0], tf.int64), (tf.constant(image), 1))[0].numpy() for seed in range(8)]
    ink = [(out > 0).sum() for out in outputs]
    # Scaled by at most 10 %: the bar's area (48 pixels) changes by at most about 21 % (plus blur at the edges).
    assert all(30 < count < 110 for count in ink), ink
    assert len({out.tobytes() for out in outputs}) == 8
    again = augment(tf.constant([0, 0], tf.int64), (tf.constant(image), 1))[0].numpy()
    np.testing.assert_array_equal(again, outputs[0])


def test_scale_augmentation_and_center_crop_shapes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    source = data.DataSource(
        name="x",
        train=tf.data.Dataset.from_tensors((image, np.int32(0))).repeat(8),
        eval=tf.data.Dataset.from_tensors((image, np.int32(0))),
        num_classes=1,
        class_names=["x"],
        channels=3,
        num_train=8,
        num_eval=1,
        eval_split="test",
    )
    config = data.PipelineConfig(input_size=32, augment="scale", random_flip=True, eval_crop_fraction=0.5)
    train_images, _ = next(iter(data.make_train_dataset(source, config, batch_size=4)))
    assert train_images.shape == (4, 32, 32, 3)
    eval_images, _ = next(iter(data.make_eval_dataset(source, config, batch_size=1)))
    # Shorter side 48 -> 64 (32 / 0.5), width 64 -> 85; the center 32x32 of that resize.
    resized = tf.image.resize(image, (64, 85), antialias=True)
    expected = tf.round(resized[16:48, 26:58]) / 127.5 - 1.0
    np.testing.assert_allclose(eval_images[0].numpy(), expected.numpy(), atol=1e-5)


def test_folder_dataset_skips_and_counts_corrupt_images(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    make_folder(root, {"cat": 50, "dog": 200}, per_class=5, channels=3, test=2)
    write_png(os.path.join(root, "train", "cat", "gray.png"), np.full((16, 16, 1), 50, np.uint8))
    with open(os.path.join(root, "train", "dog", "random.jpg"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(300))
    open(os.path.join(root, "train", "dog", "empty.png"), "wb").close()
    good = tf.io.encode_png(np.full((30, 30, 3), 200, np.uint8)).numpy()
    with open(os.path.join(root, "test", "dog", "truncated.png"), "wb") as f:
        f.write(good[: len(good) // 2])

    source = data.load_source(f"folder:{root}")
    assert source.skipped_images == 3
    assert sorted(os.path.basename(p) for p in source.skipped_files) == ["empty.png", "random.jpg", "truncated.png"]
    assert (source.num_train, source.num_eval, source.eval_split) == (11, 4, "test")
    assert source.class_names == ["cat", "dog"] and source.channels == 3
    images, labels = next(iter(data.make_eval_dataset(source, data.PipelineConfig(input_size=32), batch_size=64)))
    assert images.shape == (4, 32, 32, 3)
    means = np.round((images.numpy().mean(axis=(1, 2, 3)) + 1) * 127.5)
    np.testing.assert_array_equal(means, np.where(labels.numpy() == 0, 50, 200))
    train_images, train_labels = next(
        iter(data.make_train_dataset(source, data.PipelineConfig(input_size=32, augment="none"), batch_size=11))
    )
    assert sorted(train_labels.numpy().tolist()) == [0] * 6 + [1] * 5
    assert train_images.shape == (11, 32, 32, 3)


def test_folder_without_eval_split_holds_out_a_seeded_fraction(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    make_folder(root, {"a": 10, "b": 20, "c": 30}, per_class=10, channels=1)
    os.rename(os.path.join(root, "train"), os.path.join(root, "all"))
    source = data.load_source(f"folder:{os.path.join(root, 'all')}", holdout_fraction=0.2, seed=3)
    assert (source.num_train, source.num_eval, source.eval_split, source.channels) == (24, 6, "held-out", 1)
    eval_labels = [int(label) for _, label in source.eval.as_numpy_iterator()]
    assert np.bincount(eval_labels).tolist() == [2, 2, 2]
    shapes = lambda s: sorted(img.shape[0] for img, _ in s.eval.as_numpy_iterator())  # noqa: E731
    same = data.load_source(f"folder:{os.path.join(root, 'all')}", holdout_fraction=0.2, seed=3)
    other = data.load_source(f"folder:{os.path.join(root, 'all')}", holdout_fraction=0.2, seed=4)
    assert shapes(same) == shapes(source) and shapes(other) != shapes(source)


@pytest.mark.parametrize(
    "dataset, data_dir, message",
    [
        ("no_such_dataset_xyz", None, "not a TensorFlow Datasets name"),
        ("mnist5k", "/nonexistent/tfds", "data_dir does not exist"),
        ("folder:/nonexistent/images", None, "does not exist"),
        ("folder:{empty}", None, "no class subdirectories"),
    ],
)
def test_bad_datasets_are_refused_with_a_clear_error(
    tmp_path: os.PathLike, dataset: str, data_dir: str | None, message: str
) -> None:
    with pytest.raises(data.DataError, match=message):
        data.load_source(dataset.format(empty=tmp_path), data_dir=data_dir)


def test_a_one_class_folder_is_refused(tmp_path: os.PathLike) -> None:
    make_folder(str(tmp_path), {"cat": 0}, per_class=4, test=2)
    with pytest.raises(data.DataError, match="only one class \\('cat' in .*at least two class subdirectories"):
        data.load_source(f"folder:{tmp_path}")


def test_a_class_without_training_images_is_refused(tmp_path: os.PathLike) -> None:
    make_folder(str(tmp_path), {"cat": 0, "dog": 1}, per_class=4)
    os.makedirs(os.path.join(tmp_path, "train", "bird"))
    with open(os.path.join(tmp_path, "train", "bird", "broken.png"), "wb") as handle:
        handle.write(b"not an image")
    with pytest.raises(data.DataError, match=r"classes without a readable training image .*\['bird'\]"):
        data.load_source(f"folder:{tmp_path}")


def test_pipeline_config_names_bad_values() -> None:
    with pytest.raises(ConfigError, match="augment must be one of .* Received: augment='crop'"):
        data.PipelineConfig(augment="crop")
    with pytest.raises(ConfigError, match="channels"):
        data.PipelineConfig(channels=2)
