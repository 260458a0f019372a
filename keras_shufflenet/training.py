"""Training and evaluation of ShuffleNet with Keras ``fit`` on tf.data.

:func:`train` runs one training job from a :class:`TrainConfig`; a job that
was killed (even with SIGKILL) and is started again with the same
``model_dir`` continues from its last completed epoch. :func:`evaluate`
reports top-1/top-5 of a saved model. Both work with Keras 3 and with Keras 2
(``TF_USE_LEGACY_KERAS=1``, needed by pruning and quantization-aware
training), on any ``tf.distribute`` strategy.

``model_dir`` layout after training (the chief worker's; other workers write
the same under ``model_dir/workers/worker_<id>``):

* ``config.json``: the resolved :class:`TrainConfig`.
* ``checkpoints/state.json`` + ``checkpoints/epoch-NNNN.*``: the last
  completed epoch (weights and optimizer state) and the history so far.
  ``state.json`` is replaced atomically after the checkpoint files are
  complete, so it always names a whole checkpoint.
* ``logs/``: TensorBoard.
* ``model.keras`` and ``saved_model/``: the trained float32 model.
* ``metrics.json``, ``curves.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet import architecture, data, portable_weights
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.shufflenet import ShuffleNet

MODES = ("train", "eval", "export")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("linear", "cosine", "constant")
QUANTIZE_MODES = ("none", "ptq", "qat")
# keras_shufflenet.micro.convert.WEIGHT_QUANTIZATIONS (not imported: the micro
# extra is optional for training).
WEIGHT_QUANTIZATIONS = ("per_channel", "per_tensor")

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
METRICS_FILE = "metrics.json"
EVAL_METRICS_FILE = "eval_metrics.json"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.npz"  # Portable between Keras 3 and tf_keras (see portable_weights).
KEEP_CHECKPOINTS = 2

_log = logging.getLogger(__name__)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class ConfigError(ValueError):
    """A configuration value is not allowed."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training or evaluation run needs (one field per flag).

    Attributes:
      dataset: A TFDS name or ``"folder:PATH"`` (see :mod:`keras_shufflenet.data`).
      data_dir: TFDS data directory; `None` for TFDS's default.
      model_dir: Where checkpoints, logs, the model and metrics go.
      mode: ``"train"``, ``"eval"``, or ``"export"`` (the micro export of a
        trained ``model_dir``, from its portable weights).
      epochs: Training epochs (ignored when ``train_steps > 0``).
      train_steps: Total training steps; rounded up to whole epochs.
      batch_size: Global batch size (all replicas together).
      eval_batch_size: Eval batch size; 0 uses ``batch_size``.
      input_size: Model input height and width; images are resized.
      channels: Model input channels; 0 takes the dataset's.
      groups: ShuffleNet groups (1, 2, 3, 4, 8).
      scale_factor: ShuffleNet width multiplier.
      optimizer: ``"sgd"`` (momentum) or ``"adam"``.
      learning_rate: Peak learning rate.
      lr_schedule: ``"linear"`` or ``"cosine"`` decay to 0, or ``"constant"``.
      warmup_epochs: Linear warmup from 0, in epochs.
      momentum: SGD momentum.
      weight_decay: L2 weight decay on conv and dense kernels, in the
        SGD/Caffe sense (gradient += weight_decay * kernel).
      label_smoothing: Label smoothing of the cross-entropy.
      augment: ``"none"``, ``"shift"`` or ``"scale"`` (see :class:`data.PipelineConfig`).
      random_flip: Random horizontal flips in training.
      min_crop_area: Smallest crop area of ``"scale"`` augmentation.
      eval_crop_fraction: Center-crop fraction of ``"scale"`` evaluation.
      cache: Cache decoded images in memory.
      shuffle_buffer: Shuffle buffer size.
      holdout_fraction: Held-out eval fraction when the data has no eval split.
      strategy: ``"default"``, ``"mirrored"``, ``"multi_worker"`` (reads
        ``TF_CONFIG``) or ``"tpu"``.
      tpu: TPU name or address for ``strategy="tpu"``.
      mixed_precision: float16 (bfloat16 on TPU) compute, float32 variables.
      deterministic: Deterministic ops (slower); the seed is always set.
      seed: Seed of initialization, shuffling and augmentation.
      jit_compile: Compile the train step with XLA.
      steps_per_execution: Steps per ``tf.function`` call.
      validation_freq: Evaluate every this many epochs during training.
      verbose: Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.
      eval_model: Model file for ``mode="eval"``; empty uses ``model_dir/model.keras``.
      prune_sparsity: Target sparsity of magnitude pruning in the micro export.
      prune_epochs: Fine-tuning epochs of pruning (and QAT) in the micro export.
      quantize: ``"none"``, ``"ptq"`` or ``"qat"``: run the micro export.
      weight_quantization: ``"per_channel"`` or ``"per_tensor"`` int8 weights.
      representative_samples: Calibration images for quantization.
      export_dir: Directory of the micro export; empty uses ``model_dir``.
    """

    dataset: str = "mnist5k"
    data_dir: str | None = None
    model_dir: str = "runs/default"
    mode: str = "train"
    epochs: int = 10
    train_steps: int = 0
    batch_size: int = 128
    eval_batch_size: int = 0
    input_size: int = 32
    channels: int = 0
    groups: int = 3
    scale_factor: float = 0.5
    optimizer: str = "adam"
    learning_rate: float = 0.005
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.0
    augment: str = "shift"
    random_flip: bool = False
    min_crop_area: float = 0.25
    eval_crop_fraction: float = 0.875
    cache: bool = True
    shuffle_buffer: int = 10_000
    holdout_fraction: float = 0.1
    strategy: str = "default"
    tpu: str = ""
    mixed_precision: bool = False
    deterministic: bool = False
    seed: int = 0
    jit_compile: bool = False
    steps_per_execution: int = 1
    validation_freq: int = 1
    verbose: int = 1
    eval_model: str = ""
    prune_sparsity: float = 0.0
    prune_epochs: int = 2
    quantize: str = "none"
    weight_quantization: str = "per_channel"
    representative_samples: int = 200
    export_dir: str = ""

    def validate(self) -> None:
        """Checks every value; raises :class:`ConfigError` naming the first bad one."""

        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"{name} must be {allowed}. Received: {name}={getattr(self, name)!r}")

        choices = {
            "mode": MODES,
            "strategy": STRATEGIES,
            "optimizer": OPTIMIZERS,
            "lr_schedule": LR_SCHEDULES,
            "augment": data.AUGMENTATIONS,
            "quantize": QUANTIZE_MODES,
            "weight_quantization": WEIGHT_QUANTIZATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"one of {allowed}")
        if not self.dataset:
            raise bad("dataset", "a TFDS name or 'folder:PATH'")
        if not self.model_dir:
            raise bad("model_dir", "a directory path")
        for name in ("epochs", "batch_size", "input_size", "steps_per_execution", "validation_freq"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "an integer >= 1")
        for name in ("train_steps", "eval_batch_size", "prune_epochs", "representative_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "an integer >= 0")
        if self.input_size < architecture.MIN_INPUT_SIZE:
            raise bad("input_size", f">= {architecture.MIN_INPUT_SIZE}")
        if self.channels not in (0, 1, 3):
            raise bad("channels", "0 (the dataset's), 1 or 3")
        if self.groups not in architecture.ALLOWED_GROUPS:
            raise bad("groups", f"one of {architecture.ALLOWED_GROUPS}")
        positive = ("scale_factor", "learning_rate")
        for name in positive:
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        ranges = {
            "weight_decay": (0.0, 1.0),
            "label_smoothing": (0.0, 0.999),
            "momentum": (0.0, 0.999),
            "prune_sparsity": (0.0, 0.99),
        }
        for name, (low, high) in ranges.items():
            if not low <= getattr(self, name) <= high:
                raise bad(name, f"in [{low}, {high}]")
        if self.warmup_epochs < 0:
            raise bad("warmup_epochs", ">= 0")
        if not 0 < self.holdout_fraction < 1:
            raise bad("holdout_fraction", "in (0, 1)")
        if self.verbose not in (0, 1, 2):
            raise bad("verbose", "0, 1 or 2")
        if self.weight_quantization == "per_tensor" and self.quantize == "qat":
            raise bad("weight_quantization", "'per_channel' with quantize='qat' (QAT learns per-channel ranges)")
        if self.strategy == "tpu" and self.mixed_precision is None:
            raise bad("mixed_precision", "True or False")
        try:
            self.pipeline_config()
        except data.DataError as e:
            raise ConfigError(str(e)) from None

    def pipeline_config(self) -> data.PipelineConfig:
        """The input-pipeline part of the configuration."""
        return data.PipelineConfig(
            input_size=self.input_size,
            channels=self.channels,
            augment=self.augment,
            random_flip=self.random_flip,
            min_crop_area=self.min_crop_area,
            eval_crop_fraction=self.eval_crop_fraction,
            cache=self.cache,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
        )


# ------------------------------------------------------------ model pieces


def build_model(config: TrainConfig, num_classes: int, channels: int) -> keras.Model:
    """Builds the ShuffleNet of ``config`` for ``num_classes`` and ``channels``."""
    return ShuffleNet(
        input_shape=(config.input_size, config.input_size, channels),
        classes=num_classes,
        groups=config.groups,
        scale_factor=config.scale_factor,
    )


def decayed_kernels(model: keras.Model) -> list[Any]:
    """The kernels that get weight decay: every conv (depthwise too) and dense kernel."""
    kernels = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # Keras 2 names it `depthwise_kernel`, Keras 3 `kernel`.
            kernel = getattr(layer, "depthwise_kernel", None)
            kernels.append(kernel if kernel is not None else layer.kernel)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels.append(layer.kernel)
    return kernels


def add_kernel_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """Adds L2 weight decay on conv and dense kernels to ``model.losses``.

    The loss term is ``weight_decay / 2 * sum(kernel ** 2)``, whose gradient
    is ``weight_decay * kernel``: the paper's (Caffe/SGD) weight decay. Biases,
    batch-norm parameters are not decayed. The regularizer is attached to the
    variables (Keras 3) or as a callable loss (Keras 2), not to the layer
    configs, so saved models carry no training-only settings.

    Args:
      model: A built model.
      weight_decay: The decay coefficient; 0 adds nothing.
    """
    if weight_decay <= 0:
        return
    regularizer = keras.regularizers.L2(weight_decay / 2)
    for kernel in decayed_kernels(model):
        if USE_LEGACY_KERAS:
            model.add_loss(lambda kernel=kernel: regularizer(kernel))
        else:
            kernel.regularizer = regularizer


@keras.saving.register_keras_serializable(package="keras_shufflenet")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak``, then linear or cosine decay to 0 (or constant).

    Args:
      peak: Peak learning rate.
      total_steps: Steps of the whole run; the rate reaches 0 there.
      warmup_steps: Steps of the linear warmup.
      decay: ``"linear"``, ``"cosine"`` or ``"constant"``.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, decay: str = "linear") -> None:
        if decay not in LR_SCHEDULES:
            raise ConfigError(f"decay must be one of {LR_SCHEDULES}. Received: decay={decay!r}")
        self.peak = float(peak)
        self.total_steps = int(max(1, total_steps))
        self.warmup_steps = int(min(max(0, warmup_steps), self.total_steps - 1))
        self.decay = decay

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(self.warmup_steps, tf.float32)
        warm = self.peak * (step + 1.0) / tf.maximum(warmup, 1.0)
        progress = tf.clip_by_value((step - warmup) / float(self.total_steps - self.warmup_steps), 0.0, 1.0)
        if self.decay == "linear":
            decayed = self.peak * (1.0 - progress)
        elif self.decay == "cosine":
            decayed = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            decayed = tf.constant(self.peak, tf.float32)
        return tf.where(step < warmup, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
        }


def make_optimizer(config: TrainConfig, total_steps: int, steps_per_epoch: int) -> Any:
    """The optimizer of ``config`` with its warmup/decay schedule over ``total_steps``."""
    schedule = WarmupDecaySchedule(
        config.learning_rate,
        total_steps,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        decay=config.lr_schedule,
    )
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    return keras.optimizers.Adam(learning_rate=schedule)


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """Creates the ``tf.distribute`` strategy called ``name``.

    ``"multi_worker"`` reads the cluster from ``TF_CONFIG``; it must be
    created before any other TensorFlow op runs in the process, and it needs
    Keras 2 (``TF_USE_LEGACY_KERAS=1``).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not USE_LEGACY_KERAS:
            raise ConfigError(
                "strategy=multi_worker needs Keras 2: Keras 3's fit does not run under MultiWorkerMirroredStrategy "
                "(keras-team/keras#20585). Set TF_USE_LEGACY_KERAS=1 (train/main.py does so itself)."
            )
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("strategy=multi_worker needs the TF_CONFIG environment variable (cluster and task).")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise ConfigError(f"strategy=tpu: no TPU found (tpu={tpu!r}): {data._first_line(e)}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")


def worker_identity(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """``(is_chief, task_id)`` of this process (single-worker: ``(True, 0)``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    cluster = resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return is_chief, task_id


# ------------------------------------------------------------ atomic files


def write_json_atomic(path: str, payload: Any) -> None:
    """Writes JSON to ``path`` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes files private; results are meant to be read.
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to ``path``; on success moves it into place.

    Works for files and directories; an existing target is only replaced
    once the new one is complete.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
    tmp = os.path.join(scratch, os.path.basename(path))
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            old = os.path.join(scratch, ".old")
            os.replace(path, old)  # Directories cannot be replaced in one step.
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save_model_files(model: keras.Model, output_dir: str) -> dict[str, str]:
    """Saves ``model`` as ``model.keras`` and as a TensorFlow SavedModel, atomically."""
    keras_path = os.path.join(output_dir, MODEL_FILE)
    with atomic_path(keras_path) as tmp:
        model.save(tmp)
    saved_model_path = os.path.join(output_dir, SAVED_MODEL_DIR)
    with atomic_path(saved_model_path) as tmp:
        if USE_LEGACY_KERAS:
            tf.saved_model.save(model, tmp)
        else:
            model.export(tmp, format="tf_saved_model", verbose=False)
    weights_path = os.path.join(output_dir, WEIGHTS_FILE)
    portable_weights.save(model, weights_path)
    return {"keras": keras_path, "saved_model": saved_model_path, "weights": weights_path}


def plot_curves(history: dict[str, list[float]], path: str) -> None:
    """Plots loss and top-1 (train and eval) per epoch to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = history.get("epoch", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "top1"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "eval")):
            points = [(e, v) for e, v in zip(epochs, history.get(key, []), strict=False) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 accuracy" if metric == "top1" else "loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------- callbacks


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch; guards against NaN.

    The checkpoint files are written first, then ``state.json`` is replaced
    atomically, so a run killed at any moment resumes from a whole epoch. A
    NaN or infinite loss stops training before anything is saved for that
    epoch, so the last good checkpoint stays in place.

    Args:
      checkpoint: A ``tf.train.Checkpoint`` of the model and optimizer.
      directory: Where this worker writes checkpoints.
      history: Metrics of earlier epochs (from a resumed state); extended in place.
      keep: Checkpoints kept on disk.
      extra_state: More entries for ``state.json`` (e.g. the optimizer name).
    """

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        directory: str,
        history: dict[str, list[Any]],
        keep: int = 2,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.extra_state = dict(extra_state or {})
        self.checkpoint = checkpoint
        self.directory = directory
        self.history = history
        self.keep = keep
        self.diverged_at: tuple[int, int] | None = None
        self.last_saved_epoch: int | None = None
        self._epoch = 0
        self._epoch_start = 0.0
        self._last_batch_time = 0.0
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._epoch_start = self._last_batch_time = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._last_batch_time = time.perf_counter()
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = (self._epoch + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        if self.diverged_at is not None or not math.isfinite(float(logs.get("loss", 0.0))):
            self.diverged_at = self.diverged_at or (epoch + 1, 0)
            self.model.stop_training = True
            return
        # Training time of the epoch, without validation.
        self.epoch_seconds.append(self._last_batch_time - self._epoch_start)
        self.history.setdefault("epoch", []).append(epoch + 1)
        known = set(self.history) - {"epoch"}
        for key in sorted(known | set(logs)):
            value = logs.get(key)
            column = self.history.setdefault(key, [None] * (len(self.history["epoch"]) - 1))
            column.append(None if value is None else float(value))
        self.save(epoch + 1)

    def save(self, epoch: int) -> None:
        os.makedirs(self.directory, exist_ok=True)
        prefix = os.path.join(self.directory, f"epoch-{epoch:04d}")
        self.checkpoint.write(prefix)
        write_json_atomic(
            os.path.join(self.directory, STATE_FILE),
            {**self.extra_state, "epoch": epoch, "checkpoint": os.path.basename(prefix), "history": self.history},
        )
        self.last_saved_epoch = epoch
        self._remove_old(epoch)

    def _remove_old(self, epoch: int) -> None:
        for name in os.listdir(self.directory):
            if name.startswith("epoch-"):
                with contextlib.suppress(ValueError, OSError):
                    if int(name[len("epoch-") :].split(".")[0]) <= epoch - self.keep:
                        os.remove(os.path.join(self.directory, name))


def read_state(directory: str) -> dict[str, Any] | None:
    """The last completed epoch's state in a checkpoint directory, or `None`."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if not isinstance(state, dict) or "epoch" not in state or "checkpoint" not in state:
        raise ConfigError(f"{path} is not a checkpoint state file; remove it to start over.")
    return state


# --------------------------------------------------------------- train/eval


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _setup_determinism(config: TrainConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def _precision_policy(config: TrainConfig) -> Iterator[None]:
    if not config.mixed_precision:
        yield
        return
    policy = "mixed_bfloat16" if config.strategy == "tpu" else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _one_hot(num_classes: int) -> Any:
    def convert(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return images, tf.one_hot(labels, num_classes)

    return convert


def _compile(model: keras.Model, config: TrainConfig, num_classes: int, optimizer: Any = None) -> None:
    top_k = min(5, num_classes)
    model.compile(
        optimizer=optimizer if optimizer is not None else "adam",
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=top_k, name="top5"),
        ],
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )


def _load_source(config: TrainConfig) -> data.DataSource:
    try:
        return data.load_source(
            config.dataset,
            data_dir=config.data_dir,
            channels=config.channels,
            holdout_fraction=config.holdout_fraction,
            seed=config.seed,
        )
    except data.DataError as e:
        raise ConfigError(str(e)) from None


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
    """Trains, evaluates and saves a ShuffleNet; resumes an interrupted run.

    Args:
      config: The run's configuration (validated here).
      strategy: A ready strategy; `None` creates ``config.strategy``.

    Returns:
      The metrics written to ``metrics.json``.

    Raises:
      ConfigError: For a bad value, dataset or batch size.
      TrainingDivergedError: If the loss became NaN; the last good checkpoint is kept.
    """
    start = time.perf_counter()
    config.validate()
    strategy = strategy or make_strategy(config.strategy, config.tpu)
    _setup_determinism(config)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"batch_size={config.batch_size} is not divisible by the {replicas} replicas of strategy={config.strategy}."
        )
    is_chief, task_id = worker_identity(strategy)
    # Workers other than the chief write to private directories so that
    # nothing collides on a shared file system; all read the chief's state.
    output_dir = config.model_dir if is_chief else os.path.join(config.model_dir, "workers", f"worker_{task_id}")
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic(os.path.join(output_dir, CONFIG_FILE), dataclasses.asdict(config))

    source = _load_source(config)
    pipeline = config.pipeline_config()
    if config.batch_size > source.num_train:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the {source.num_train} training images.")
    eval_batch = config.eval_batch_size or config.batch_size
    steps = data.steps_per_epoch(source.num_train, config.batch_size)
    epochs = math.ceil(config.train_steps / steps) if config.train_steps else config.epochs
    one_hot = _one_hot(source.num_classes)
    train_ds = data.make_train_dataset(source, pipeline, config.batch_size).map(one_hot)
    eval_ds = data.make_eval_dataset(source, pipeline, eval_batch).map(one_hot)
    _log.info(
        "Data %s: %d train / %d eval (%s) images, %d classes, %d channels, %d skipped.",
        source.name,
        source.num_train,
        source.num_eval,
        source.eval_split,
        source.num_classes,
        source.channels,
        source.skipped_images,
    )

    state = read_state(os.path.join(config.model_dir, CHECKPOINT_DIR))
    resumed_from = int(state["epoch"]) if state else 0
    with _precision_policy(config):
        with strategy.scope():
            model = build_model(config, source.num_classes, source.channels)
            add_kernel_weight_decay(model, config.weight_decay)
            optimizer = make_optimizer(config, epochs * steps, steps)
            _compile(model, config, source.num_classes, optimizer)
            optimizer.build(model.trainable_variables)  # Slots exist before a restore.
            checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        if state:
            prefix = os.path.join(config.model_dir, CHECKPOINT_DIR, state["checkpoint"])
            if state.get("optimizer", config.optimizer) != config.optimizer:
                raise ConfigError(
                    f"the checkpoint in model_dir={config.model_dir!r} was trained with optimizer="
                    f"{state['optimizer']}; resume with --optimizer={state['optimizer']} or use a new model_dir."
                )
            checkpoint.read(prefix).expect_partial()
            _log.info("Resuming from epoch %d (%s).", resumed_from, prefix)

        history: dict[str, list[Any]] = state["history"] if state else {}
        saver = EpochCheckpoint(
            checkpoint,
            os.path.join(output_dir, CHECKPOINT_DIR),
            history,
            KEEP_CHECKPOINTS,
            extra_state={"optimizer": config.optimizer},
        )
        callbacks = [saver]
        if _tensorboard_available():
            callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(output_dir, "logs")))
        else:
            _log.warning("The tensorboard package is not installed; no TensorBoard logs are written.")
        if resumed_from < epochs:
            model.fit(
                train_ds,
                epochs=epochs,
                initial_epoch=resumed_from,
                steps_per_epoch=steps,
                validation_data=eval_ds,
                validation_freq=config.validation_freq,
                callbacks=callbacks,
                verbose=config.verbose,
            )
        if saver.diverged_at is not None:
            epoch, step = saver.diverged_at
            kept = saver.last_saved_epoch or resumed_from
            where = f"epoch {kept} in {os.path.join(output_dir, CHECKPOINT_DIR)}" if kept else "none (first epoch)"
            raise TrainingDivergedError(
                f"loss became NaN or infinite at epoch {epoch}, step {step}; training stopped. "
                f"Last good checkpoint: {where}. Lower --learning_rate or check the data."
            )
        results = model.evaluate(eval_ds, verbose=0, return_dict=True)

    # The exported model is a clean float32 copy: no regularizers, no optimizer.
    export_model = build_model(config, source.num_classes, source.channels)
    export_model.set_weights(model.get_weights())
    files = save_model_files(export_model, output_dir)
    # The first epoch of a process includes tracing; leave it out when there are more.
    timed = saver.epoch_seconds[1:] if len(saver.epoch_seconds) > 1 else saver.epoch_seconds
    images_per_sec = steps * config.batch_size * len(timed) / sum(timed) if timed and sum(timed) > 0 else None
    metrics = {
        "eval_top1": float(results["top1"]),
        "eval_top5": float(results["top5"]),
        "eval_loss": float(results["loss"]),
        "train_images_per_sec": images_per_sec,
        "wall_seconds": time.perf_counter() - start,
        "resumed_from_epoch": resumed_from,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "skipped_images": source.skipped_images,
        "skipped_files": source.skipped_files[:100],
        "num_train_images": source.num_train,
        "num_eval_images": source.num_eval,
        "eval_split": source.eval_split,
        "num_classes": source.num_classes,
        "params": int(export_model.count_params()),
        "keras": keras.__version__,
        "files": files,
    }
    if history.get("epoch"):
        plot_curves(history, os.path.join(output_dir, CURVES_FILE))
    write_json_atomic(os.path.join(output_dir, METRICS_FILE), metrics)
    if config.quantize != "none" and is_chief:
        if needs_tfmot(config) and not USE_LEGACY_KERAS:
            # Training ran in Keras 3 (faster); tfmot needs tf_keras, which a
            # process selects before importing TensorFlow: export in a child.
            metrics["micro"] = _export_in_legacy_keras_process(config)
        else:
            metrics["micro"] = run_micro_export(config, export_model, source, pipeline)
        write_json_atomic(os.path.join(output_dir, METRICS_FILE), metrics)
    return metrics


def needs_tfmot(config: TrainConfig) -> bool:
    """Whether the micro export prunes or runs QAT (tensorflow-model-optimization, Keras 2 only)."""
    return config.quantize != "none" and (config.prune_sparsity > 0 or config.quantize == "qat")


def _export_in_legacy_keras_process(config: TrainConfig) -> Any:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    command = [sys.executable, "-m", "keras_shufflenet.export_job", config.model_dir]
    _log.info("Micro export under Keras 2 (tf_keras): %s", " ".join(command))
    result = subprocess.run(command, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"the micro export failed (exit code {result.returncode}); see the messages above.")
    with open(os.path.join(config.export_dir or config.model_dir, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def micro_summary(report: dict[str, Any], output_dir: str) -> str:
    """A few lines on a micro export report, for the end of a run."""

    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    exact = report.get("tflm_bit_exact", {})
    return "\n".join(
        [
            f"Microcontroller export in {output_dir}:",
            f"  top-1: float {pct(report.get('float_top1'))}, int8 in TFLite Micro {pct(report.get('int8_top1'))}",
            f"  flash: {report['flash_bytes']:,} bytes (model); tensor arena: {report['arena_bytes']:,} bytes",
            f"  TFLM vs TFLite reference kernels: {'bit-identical' if exact.get('bit_exact') else 'DIFFERENT'}"
            f" on {exact.get('samples', 0)} samples",
            f"  sparsity of pruned kernels: {pct(report.get('sparsity', {}).get('prunable_overall'))}",
            f"  firmware files: {os.path.join(output_dir, 'tflm')}/",
        ]
    )


def export_trained(config: TrainConfig) -> dict[str, Any]:
    """Runs the micro export of a model trained in ``config.model_dir``.

    The model is rebuilt from ``config`` and takes the portable weights that
    :func:`train` saved, so a model trained in Keras 3 can be pruned or
    quantization-aware trained in tf_keras.

    Returns:
      The export report.
    """
    config.validate()
    if config.quantize == "none":
        raise ConfigError("mode=export needs --quantize=ptq or --quantize=qat.")
    weights_path = os.path.join(config.model_dir, WEIGHTS_FILE)
    if not os.path.exists(weights_path):
        raise ConfigError(f"no trained weights at {weights_path!r}; train first.")
    source = _load_source(config)
    pipeline = config.pipeline_config()
    model = build_model(config, source.num_classes, source.channels)
    portable_weights.load(model, weights_path)
    report = run_micro_export(config, model, source, pipeline)
    metrics_path = os.path.join(config.model_dir, METRICS_FILE)
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as handle:
            metrics = json.load(handle)
        metrics["micro"] = report
        write_json_atomic(metrics_path, metrics)
    return report


def run_micro_export(
    config: TrainConfig, model: keras.Model, source: data.DataSource, pipeline: data.PipelineConfig
) -> Any:
    """Calls ``keras_shufflenet.micro.export`` (imported only when asked for)."""
    from keras_shufflenet import micro

    eval_batch = config.eval_batch_size or config.batch_size
    return micro.export(
        model,
        data.representative_batches(source, pipeline, config.representative_samples),
        config.export_dir or config.model_dir,
        eval_data=data.make_eval_dataset(source, pipeline, eval_batch),
        train_data=data.make_train_dataset(source, pipeline, config.batch_size, repeat=False),
        prune_sparsity=config.prune_sparsity,
        prune_epochs=config.prune_epochs,
        quantize=config.quantize,
        weight_quantization=config.weight_quantization,
        labels=source.class_names,
        num_representative=config.representative_samples,
    )


def load_saved_model(path: str) -> keras.Model:
    """Loads a ``.keras`` model saved by :func:`train` (without compiling it)."""
    if not os.path.exists(path):
        raise ConfigError(f"no saved model at {path!r}; train first or pass --eval_model.")
    import keras_shufflenet.layers  # noqa: F401  (registers the custom layers)

    return keras.models.load_model(path, compile=False)


def evaluate(config: TrainConfig) -> dict[str, Any]:
    """Loads the saved model and reports top-1/top-5 on the eval split.

    The input size and channels come from the saved model. Writes
    ``eval_metrics.json`` into ``model_dir``.

    Returns:
      ``{"eval_top1", "eval_top5", "eval_loss", "num_eval_images", "model"}``.
    """
    config.validate()
    path = config.eval_model or os.path.join(config.model_dir, MODEL_FILE)
    model = load_saved_model(path)
    _, height, width, channels = model.input_shape
    if height != width or height is None:
        raise ConfigError(f"{path}: expected a square, fixed input size; the model takes {model.input_shape}.")
    config = dataclasses.replace(config, input_size=int(height), channels=int(channels))
    source = _load_source(config)
    num_classes = int(model.output_shape[-1])
    if num_classes != source.num_classes:
        raise ConfigError(
            f"{path} predicts {num_classes} classes; dataset {config.dataset!r} has {source.num_classes}."
        )
    _compile(model, config, num_classes)
    eval_ds = data.make_eval_dataset(source, config.pipeline_config(), config.eval_batch_size or config.batch_size)
    results = model.evaluate(eval_ds.map(_one_hot(num_classes)), verbose=0, return_dict=True)
    metrics = {
        "eval_top1": float(results["top1"]),
        "eval_top5": float(results["top5"]),
        "eval_loss": float(results["loss"]),
        "num_eval_images": source.num_eval,
        "skipped_images": source.skipped_images,
        "model": path,
    }
    write_json_atomic(os.path.join(config.model_dir, EVAL_METRICS_FILE), metrics)
    return metrics
