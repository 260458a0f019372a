"""One trained quickstart-like model and its exports, shared by every test session and cached on disk.

The model is ShuffleNet 0.5x g3 on 56x56 digits with the paper's stem (the
full 4, 8, 4 units and all of the stem's operators, where the demo's own
model is the shallow one at 24x24), trained for 2 epochs on the embedded
digits so that its activations are those of a real model, then exported as
``make demo`` exports: densely, and once more with
pruned, shared-value kernels that the board model stores compressed.

Training and exporting take minutes, so the result is kept under
``$KERAS_SHUFFLENET_TEST_CACHE`` (default ``~/.cache/keras-shufflenet/
test-fixtures``), keyed by a hash of the package's code and data, this file
and the versions of TensorFlow, NumPy and tflite-micro: both tiers, the Keras 3
and tf_keras passes, and later runs on the same code reuse it (the model's
weights load into either Keras); any change to what made it makes a new one. An entry is written under a temporary
name and renamed when complete, so an interrupted run never leaves one that
a later run would take. Tests get a fresh copy of an export's folder, which
they may write into.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

INPUT_SIZE = 56
_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "keras_shufflenet")


def cache_root() -> str:
    """Where entries live: ``$KERAS_SHUFFLENET_TEST_CACHE``, else the user's cache, else Bazel's scratch."""
    root = os.environ.get("KERAS_SHUFFLENET_TEST_CACHE")
    if not root and os.environ.get("TEST_TMPDIR"):
        root = os.path.join(os.environ["TEST_TMPDIR"], "test-fixtures")  # Bazel: HOME is read-only.
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "keras-shufflenet", "test-fixtures")
    os.makedirs(root, exist_ok=True)
    return root


def code_key() -> str:
    """A hash of what makes the entry: the package's sources and data, this file, and the versions it ran with."""
    from importlib import metadata

    versions = [metadata.version(name) for name in ("tensorflow", "numpy", "tflite-micro")]
    digest = hashlib.sha256(" ".join(versions).encode())
    paths = sorted(glob.glob(os.path.join(_PACKAGE, "**", "*.py"), recursive=True))
    paths += sorted(glob.glob(os.path.join(_PACKAGE, "datasets", "data", "*"))) + [os.path.abspath(__file__)]
    for path in paths:
        digest.update(os.path.relpath(path, os.path.dirname(_PACKAGE)).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def _digits(indices: np.ndarray, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    from keras_shufflenet import preprocess_input

    resized = tf.image.resize(images[indices].astype("float32"), (INPUT_SIZE, INPUT_SIZE)).numpy()
    return preprocess_input(resized)


def data() -> dict[str, np.ndarray]:
    """The calibration images (320 training digits) and the evaluation digits (every fifth test image)."""
    from keras_shufflenet.datasets import mnist5k

    images, labels = mnist5k.read_csv()
    split = mnist5k.split_indices(labels)
    train_x = _digits(split["train"], images)
    return {
        "train_x": train_x,
        "train_y": labels[split["train"]],
        # Every fifth test image: the splits are sorted by digit.
        "eval_x": _digits(split["test"][::5], images),
        "eval_y": labels[split["test"][::5]],
        "calibration": train_x[np.random.default_rng(0).permutation(len(train_x))[:320]],
    }


def build_model():
    from keras_shufflenet import ShuffleNet

    return ShuffleNet(input_shape=(INPUT_SIZE, INPUT_SIZE, 1), classes=10, groups=3, scale_factor=0.5)


def _export(model, digits: dict[str, np.ndarray], run_dir: str) -> dict:
    """Exports as `make demo` does, with 320 calibration images and the eval digits."""
    import tensorflow as tf

    from keras_shufflenet.micro import export

    calibration = digits["calibration"]
    return export(
        model,
        [calibration[i : i + 32] for i in range(0, 320, 32)],
        run_dir,
        name="quickstart",
        eval_data=tf.data.Dataset.from_tensor_slices((digits["eval_x"], digits["eval_y"])).batch(50),
        labels=[str(i) for i in range(10)],
    )


def _sparse_and_shared(kernel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """60 % zeros and 4 shared values per kernel: what pruning and clustering leave, made by hand."""
    centroids = np.quantile(kernel, [0.05, 0.35, 0.65, 0.95])
    shared = centroids[np.abs(kernel[..., None] - centroids).argmin(-1)]
    return np.where(rng.random(kernel.shape) < 0.6, 0.0, shared).astype(np.float32)


def _make_entry(path: str) -> None:
    """Trains the model and writes ``weights.npz``, ``dense/`` and ``compressed/`` into ``path``."""
    import tensorflow as tf

    digits = data()
    tf.keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(digits["train_x"], digits["train_y"], batch_size=32, epochs=2, verbose=0)
    np.savez(os.path.join(path, "weights.npz"), *model.get_weights())
    _export(model, digits, os.path.join(path, "dense"))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ in ("Conv2D", "PointwiseGroupConv2D") and layer.kernel.shape[-2] > 1:
            weights = layer.get_weights()
            layer.set_weights([_sparse_and_shared(weights[0], rng), *weights[1:]])
    _export(model, digits, os.path.join(path, "compressed"))


def entry() -> str:
    """The cache entry's folder for the current code, made if absent."""
    root = cache_root()
    path = os.path.join(root, code_key())
    if not os.path.isfile(os.path.join(path, "complete")):
        building = tempfile.mkdtemp(prefix=os.path.basename(path) + ".partial.", dir=root)
        try:
            _make_entry(building)
            open(os.path.join(building, "complete"), "w").close()
            os.rename(building, path)
        except OSError:
            if not os.path.isfile(os.path.join(path, "complete")):  # Not another session that won the race.
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return path


def copy_export(which: str, destination: str) -> dict:
    """A fresh copy of the ``dense`` or ``compressed`` export in ``destination``, with its report."""
    shutil.copytree(os.path.join(entry(), which), destination)
    with open(os.path.join(destination, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def trained_model():
    """The trained model, rebuilt and given the cached weights (under Keras 3 or tf_keras alike)."""
    weights = np.load(os.path.join(entry(), "weights.npz"))
    model = build_model()
    model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
    return model
