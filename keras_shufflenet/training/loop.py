"""Training and evaluation of ShuffleNet with Keras ``fit`` on tf.data.

:func:`train` runs one training job from a
:class:`~keras_shufflenet.training.config.TrainConfig`; a job that was killed
(even with SIGKILL) and is started again with the same ``model_dir``
continues from its last completed epoch. :func:`evaluate` reports
top-1/top-5 of a saved model. Both work with Keras 3 and with Keras 2
(``TF_USE_LEGACY_KERAS=1``), on any ``tf.distribute`` strategy. What a run
writes is listed in :mod:`keras_shufflenet.run_dir`; the micro export of a
trained run is :mod:`keras_shufflenet.export_job`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
import warnings
from typing import Any

import tensorflow as tf

from keras_shufflenet import architecture, data, portable_weights, run_dir, weights
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.shufflenet import ShuffleNet
from keras_shufflenet.training import checkpointing, distribute, optimization
from keras_shufflenet.training.config import ConfigError, TrainConfig
from keras_shufflenet.training.plotting import plot_curves

_log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN, infinite or exploded, or the validation loss NaN; the last good checkpoint was kept."""


def describe_configuration(config: TrainConfig) -> str:
    """One line: the stem the run uses for its input size, and whether it was chosen automatically."""
    size, stride = config.data.input_size, config.resolved_output_stride
    final = -(-size // stride)
    how = "set by --output_stride" if config.output_stride else "chosen for the input size; --output_stride overrides"
    return (
        f"Input {size}x{size}: output stride {stride} ({architecture.describe_stem(stride)}), "
        f"final feature map {final}x{final} ({how})."
    )


# The flags a checkpoint must have been trained with to be resumed: they change
# the network (some, like output_stride, without changing any weight's shape).
_RESUME_FLAGS = (
    "optimizer",
    "groups",
    "scale_factor",
    "output_stride",
    "shallow",
    "squeeze_excite",
    "input_size",
    "convention",
    "preprocessing",
)


def _resume_state(config: TrainConfig, source: data.DataSource) -> dict[str, Any]:
    flat = config.flat()
    state = {name: flat[name] for name in _RESUME_FLAGS}
    state["output_stride"] = config.resolved_output_stride
    # What the data gives the network: the classifier's width and the input's channels.
    state["num_classes"], state["channels"] = source.num_classes, source.channels
    return state


def _check_resume(config: TrainConfig, source: data.DataSource, state: dict[str, Any]) -> None:
    """Refuses to resume a checkpoint trained with other network flags or data, naming them."""
    expected = _resume_state(config, source)
    for name in _RESUME_FLAGS:  # Checkpoints of older versions lack some of them.
        if name in state and state[name] != expected[name]:
            raise ConfigError(
                f"the checkpoint in model_dir={config.model_dir!r} was trained with {name}={state[name]!r}, "
                f"not {expected[name]!r}; resume with --{name}={state[name]} or use a new model_dir."
            )
    for name in ("num_classes", "channels"):
        if name in state and state[name] != expected[name]:
            raise ConfigError(
                f"the checkpoint in model_dir={config.model_dir!r} was trained on data with {name}={state[name]}, "
                f"but dataset={config.dataset!r} gives {name}={expected[name]}; use a new model_dir for other data."
            )


def build_model(config: TrainConfig, num_classes: int, channels: int) -> keras.Model:
    """Builds the ShuffleNet of ``config`` for ``num_classes`` and ``channels``."""
    return ShuffleNet(
        input_shape=(config.data.input_size, config.data.input_size, channels),
        classes=num_classes,
        groups=config.groups,
        scale_factor=config.scale_factor,
        output_stride=config.resolved_output_stride,
        shallow=config.shallow,
        squeeze_excite=config.squeeze_excite,
        convention=config.convention,
    )


def load_init_weights(model: keras.Model, config: TrainConfig) -> None:
    """Loads ``config.init_weights`` into ``model``'s backbone; the classifier stays as built (new classes).

    An official checkpoint must be of ``config``'s groups and scale and
    ``convention="official"``; a Keras weights file of the same architecture
    loads every layer whose shapes match (all but a classifier for other
    classes).

    Raises:
      ConfigError: Naming the flag and what the checkpoint needs.
    """
    path = config.init_weights
    if not os.path.isfile(path):
        raise ConfigError(f"init_weights must be an existing file. Received: init_weights={path!r}")
    if weights.is_torch_checkpoint(path):
        try:
            checkpoint = weights.read_official_checkpoint(path)
        except weights.CheckpointError as error:
            raise ConfigError(f"init_weights: {error}") from None
        needed = {"groups": checkpoint.groups, "scale_factor": checkpoint.scale_factor, "convention": "official"}
        for flag, value in needed.items():
            if getattr(config, flag) != value:
                raise ConfigError(
                    f"init_weights={path!r} is ShuffleNet v1 {checkpoint.describe()} (official convention) and "
                    f"needs --{flag}={value}. Received: {flag}={getattr(config, flag)!r}"
                )
        weights.load_official_weights(model, checkpoint, classifier=False)
        _log.info("Backbone initialized from %s (%s).", path, checkpoint.describe())
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns at length about the classifier it skips.
            if USE_LEGACY_KERAS:
                model.load_weights(path, by_name=True, skip_mismatch=True)
            else:
                model.load_weights(path, skip_mismatch=True)
    except Exception as error:  # noqa: BLE001  (h5py, Keras and TensorFlow raise different types)
        raise ConfigError(f"init_weights={path!r} does not load into the model: {str(error)[:300]}") from None
    _log.info("Backbone initialized from %s.", path)


def load_eval_model(path: str, config: TrainConfig) -> keras.Model:
    """The model for ``--mode=eval``: a saved ``.keras`` model, or an official checkpoint at ``--input_size``."""
    if os.path.isfile(path) and weights.is_torch_checkpoint(path):
        try:
            size = config.data.input_size
            classes = weights.read_official_checkpoint(path).classes
            return ShuffleNet(weights=path, input_shape=(size, size, 3), classes=classes)
        except ValueError as error:  # CheckpointError is a ValueError.
            raise ConfigError(f"eval_model: {error}") from None
    return load_saved_model(path)


def load_source(config: TrainConfig) -> data.DataSource:
    """The dataset of ``config`` (:func:`keras_shufflenet.data.load_source`)."""
    return data.load_source(
        config.dataset,
        data_dir=config.data_dir,
        channels=config.data.channels,
        holdout_fraction=config.holdout_fraction,
        seed=config.data.seed,
    )


def save_model_files(model: keras.Model, output_dir: str) -> dict[str, str]:
    """Saves ``model`` as ``model.keras``, as a TensorFlow SavedModel and as portable weights, atomically."""
    keras_path = os.path.join(output_dir, run_dir.MODEL_FILE)
    with run_dir.atomic_path(keras_path) as tmp:
        model.save(tmp)
    saved_model_path = os.path.join(output_dir, run_dir.SAVED_MODEL_DIR)
    with run_dir.atomic_path(saved_model_path) as tmp:
        if USE_LEGACY_KERAS:
            tf.saved_model.save(model, tmp)
        else:
            model.export(tmp, format="tf_saved_model", verbose=False)
    weights_path = os.path.join(output_dir, run_dir.WEIGHTS_FILE)
    portable_weights.save(model, weights_path)
    return {"keras": keras_path, "saved_model": saved_model_path, "weights": weights_path}


def load_saved_model(path: str) -> keras.Model:
    """Loads a ``.keras`` model saved by :func:`train` (without compiling it)."""
    if not os.path.exists(path):
        raise ConfigError(f"no saved model at {path!r}; train first or pass --eval_model.")
    if not path.endswith((".keras", ".h5")) or path.endswith(".weights.h5"):
        raise ConfigError(
            f"--eval_model must be a saved model (.keras, as training writes model.keras), not weights alone. "
            f"Received: eval_model={path!r}"
        )
    import keras_shufflenet.layers  # noqa: F401  (registers the custom layers)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001  (zipfile, h5py and Keras raise many types on a damaged file)
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path!r} is not a readable saved model ({type(error).__name__}: {message})") from None


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def _setup_determinism(config: TrainConfig) -> None:
    keras.utils.set_random_seed(config.data.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


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


def _top_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(results[name]) for key, name in (("eval_top1", "top1"), ("eval_top5", "top5"), ("eval_loss", "loss"))
    }


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
    strategy = strategy or distribute.make_strategy(config.strategy, config.tpu)
    _setup_determinism(config)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"batch_size={config.batch_size} is not divisible by the {replicas} replicas of strategy={config.strategy}."
        )
    is_chief, task_id = distribute.worker_identity(strategy)
    # Workers other than the chief write to private directories so that
    # nothing collides on a shared file system; all read the chief's state.
    output_dir = run_dir.worker_dir(config.model_dir, is_chief, task_id)

    source = load_source(config)
    steps = data.steps_per_epoch(source.num_train, config.batch_size)
    epochs = math.ceil(config.train_steps / steps) if config.train_steps else config.epochs
    train_ds, eval_ds = _make_datasets(config, source)

    print(describe_configuration(config), flush=True)
    checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    state = checkpointing.read_state(checkpoint_dir)
    if state:
        _check_resume(config, source, state)
    resumed_from = int(state["epoch"]) if state else 0
    # The run is accepted: record how the model is trained (a refused run writes nothing).
    os.makedirs(output_dir, exist_ok=True)
    run_dir.write_json(os.path.join(output_dir, run_dir.CONFIG_FILE), config.flat())
    run_dir.write_flags(output_dir, "train", config.flat())
    with distribute.precision_policy(config):
        with strategy.scope():
            model = build_model(config, source.num_classes, source.channels)
            if config.init_weights and not state:
                load_init_weights(model, config)  # A resumed run restores its own weights below.
            optimization.add_kernel_weight_decay(model, config.weight_decay)
            optimizer = optimization.make_optimizer(config, epochs * steps, steps)
            _compile(model, config, source.num_classes, optimizer)
            optimizer.build(model.trainable_variables)  # Slots exist before a restore.
            checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        if state:
            prefix = os.path.join(checkpoint_dir, state["checkpoint"])
            checkpoint.read(prefix).expect_partial()
            _log.info("Resuming from epoch %d (%s).", resumed_from, prefix)

        history: dict[str, list[Any]] = state["history"] if state else {}
        own_checkpoint_dir = os.path.join(output_dir, run_dir.CHECKPOINT_DIR)
        saver = checkpointing.EpochCheckpoint(
            checkpoint, own_checkpoint_dir, history, extra_state=_resume_state(config, source)
        )
        callbacks = [saver]
        if _tensorboard_available():
            callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(output_dir, run_dir.LOGS_DIR)))
        else:
            _log.warning("The tensorboard package is not installed; no TensorBoard logs are written.")
        if resumed_from < epochs:
            model.fit(
                train_ds,
                epochs=epochs,
                initial_epoch=resumed_from,
                steps_per_epoch=steps,
                validation_data=eval_ds,
                validation_steps=data.eval_steps(source.num_eval, config.eval_batch),
                validation_freq=config.validation_freq,
                callbacks=callbacks,
                verbose=min(config.verbose, 2),
            )
        _raise_if_diverged(saver, resumed_from, own_checkpoint_dir)
        results = model.evaluate(
            eval_ds, steps=data.eval_steps(source.num_eval, config.eval_batch), verbose=0, return_dict=True
        )

    # The saved model is a clean float32 copy: no regularizers, no optimizer.
    saved_model = build_model(config, source.num_classes, source.channels)
    saved_model.set_weights(model.get_weights())
    files = save_model_files(saved_model, output_dir)
    metrics = _run_metrics(results, saver, config, source, steps, epochs, resumed_from, saved_model, files, start)
    if history.get("epoch"):
        plot_curves(history, os.path.join(output_dir, run_dir.CURVES_FILE))
    run_dir.write_json(os.path.join(output_dir, run_dir.METRICS_FILE), metrics)
    return metrics


def _make_datasets(config: TrainConfig, source: data.DataSource) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training and eval pipelines, labels one-hot (for label smoothing)."""
    one_hot = _one_hot(source.num_classes)
    train_ds = data.make_train_dataset(source, config.data, config.batch_size).map(one_hot)
    eval_ds = data.make_eval_dataset(source, config.data, config.eval_batch).map(one_hot)
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
    return train_ds, eval_ds


def _raise_if_diverged(saver: checkpointing.EpochCheckpoint, resumed_from: int, own_checkpoint_dir: str) -> None:
    """Raises :class:`TrainingDivergedError` if the loss became NaN, naming the last good checkpoint."""
    if saver.diverged_at is None:
        return
    epoch, step = saver.diverged_at
    kept = saver.last_saved_epoch or resumed_from
    where = f"epoch {kept} in {own_checkpoint_dir}" if kept else "none (first epoch)"
    where_in_epoch = f"step {step}" if step else "its end"
    raise TrainingDivergedError(
        f"{saver.divergence} at epoch {epoch}, {where_in_epoch}; training stopped. "
        f"Last good checkpoint: {where}. Lower --learning_rate or check the data."
    )


def _run_metrics(
    results: dict[str, Any],
    saver: checkpointing.EpochCheckpoint,
    config: TrainConfig,
    source: data.DataSource,
    steps: int,
    epochs: int,
    resumed_from: int,
    saved_model: Any,
    files: dict[str, str],
    start: float,
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the eval metrics, speed, the data's counts and the files written."""
    # The first epoch of a process includes tracing; leave it out when there are more.
    timed = saver.epoch_seconds[1:] if len(saver.epoch_seconds) > 1 else saver.epoch_seconds
    images_per_sec = steps * config.batch_size * len(timed) / sum(timed) if timed and sum(timed) > 0 else None
    return {
        **_top_metrics(results),
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
        "params": int(saved_model.count_params()),
        "keras": keras.__version__,
        "files": files,
    }


def evaluate(config: TrainConfig) -> dict[str, Any]:
    """Loads the saved model and reports top-1/top-5 on the eval split.

    The input size and channels come from the saved model. Writes
    ``eval_metrics.json`` into ``model_dir``.

    Returns:
      ``{"eval_top1", "eval_top5", "eval_loss", "num_eval_images", "skipped_images", "model"}``.

    Raises:
      ConfigError: For a bad value, a missing model or a model that does not fit the dataset.
    """
    config.validate()
    path = config.eval_model or os.path.join(config.model_dir, run_dir.MODEL_FILE)
    model = load_eval_model(path, config)
    _, height, width, channels = model.input_shape
    if height != width or height is None:
        raise ConfigError(f"{path}: expected a square, fixed input size; the model takes {model.input_shape}.")
    config = config.replace(input_size=int(height), channels=int(channels))
    source = load_source(config)
    num_classes = int(model.output_shape[-1])
    if num_classes != source.num_classes:
        raise ConfigError(
            f"{path} predicts {num_classes} classes; dataset {config.dataset!r} has {source.num_classes}."
        )
    _compile(model, config, num_classes)
    eval_ds = data.make_eval_dataset(source, config.data, config.eval_batch)
    results = model.evaluate(
        eval_ds.map(_one_hot(num_classes)),
        steps=data.eval_steps(source.num_eval, config.eval_batch),
        verbose=0,
        return_dict=True,
    )
    metrics = {
        **_top_metrics(results),
        "num_eval_images": source.num_eval,
        "skipped_images": source.skipped_images,
        "model": path,
    }
    run_dir.write_json(os.path.join(config.model_dir, run_dir.EVAL_METRICS_FILE), metrics)
    return metrics


__all__ = [
    "TrainingDivergedError",
    "build_model",
    "describe_configuration",
    "evaluate",
    "load_saved_model",
    "load_source",
    "save_model_files",
    "train",
]
