"""Where training runs: ``tf.distribute`` strategies, the worker's role, mixed precision."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import tensorflow as tf

from keras_shufflenet.keras_compat import LEGACY_KERAS_ENV, USE_LEGACY_KERAS, keras
from keras_shufflenet.training.config import STRATEGIES, ConfigError, TrainConfig, bad_value


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """Creates the ``tf.distribute`` strategy called ``name``.

    ``"multi_worker"`` reads the cluster from ``TF_CONFIG``; it must be
    created before any other TensorFlow op runs in the process, and it needs
    Keras 2 (``TF_USE_LEGACY_KERAS=1``).

    Raises:
      ConfigError: For an unknown name, or a strategy this process cannot create.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not USE_LEGACY_KERAS:
            raise ConfigError(
                "strategy=multi_worker needs Keras 2: Keras 3's fit does not run under MultiWorkerMirroredStrategy "
                f"(keras-team/keras#20585). Set {LEGACY_KERAS_ENV}=1 (train/main.py does so itself)."
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
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"strategy=tpu: no TPU found (tpu={tpu!r}): {first_line}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise bad_value("strategy", name, f"one of {STRATEGIES}")


def worker_identity(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """``(is_chief, task_id)`` of this process (single-worker: ``(True, 0)``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    cluster = resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return is_chief, task_id


@contextlib.contextmanager
def precision_policy(config: TrainConfig) -> Iterator[None]:
    """Mixed precision inside the block when ``config.mixed_precision`` (bfloat16 on TPU, else float16)."""
    if not config.mixed_precision:
        yield
        return
    policy = "mixed_bfloat16" if config.strategy == "tpu" else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
