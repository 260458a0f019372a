"""The optimizer of a run: the learning-rate schedule and the paper's weight decay."""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.training.config import LR_SCHEDULES, TrainConfig, bad_value


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

    Raises:
      ConfigError: If ``decay`` is not one of those.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, decay: str = "linear") -> None:
        if decay not in LR_SCHEDULES:
            raise bad_value("decay", decay, f"one of {LR_SCHEDULES}")
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
