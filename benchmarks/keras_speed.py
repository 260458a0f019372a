"""Keras fp32 on the CPU: inference images/s at batch 1 and 32, and training images/s.

Every model runs its graph through ``tf.function`` (inference) or Keras'
compiled train step (``train_on_batch``: forward, backward and an SGD
update), so Python overhead per layer does not count. All models are
measured in interleaved rounds; the tables give the median over the rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from benchmarks.common import (
    PAIRS_224,
    PEERS_224,
    SHUFFLENET_1X_G3,
    ModelSpec,
    interleaved_medians,
    markdown_table,
    ratio_pairs,
)
from keras_shufflenet import ChannelShuffle
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.profiling import profile

INPUT_SHAPE = (224, 224, 3)
CLASSES = 1000
MODES = ("inference, batch 1", "inference, batch 32", "training, batch 32")
_BATCH = {"inference, batch 1": 1, "inference, batch 32": 32, "training, batch 32": 32}


def _callables(model: Any, rng: np.random.Generator) -> dict[str, Any]:
    """One zero-argument callable per mode, already traced and run once."""
    infer = tf.function(lambda images: model(images, training=False))
    batch1 = tf.constant(rng.uniform(-1, 1, (1, *INPUT_SHAPE)).astype(np.float32))
    batch32 = tf.constant(rng.uniform(-1, 1, (32, *INPUT_SHAPE)).astype(np.float32))
    labels = rng.integers(0, CLASSES, size=(32,))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3), loss="sparse_categorical_crossentropy")
    calls = {
        "inference, batch 1": lambda: infer(batch1).numpy(),
        "inference, batch 32": lambda: infer(batch32).numpy(),
        "training, batch 32": lambda: model.train_on_batch(batch32, labels),
    }
    for call in calls.values():  # Traces every graph outside the timed rounds.
        call()
    return calls


def measure(
    models: tuple[ModelSpec, ...] = PEERS_224,
    inference_rounds: int = 5,
    training_rounds: int = 3,
    min_seconds: float = 1.0,
) -> dict[ModelSpec, dict[str, Any]]:
    """Images per second of every model and mode (median of interleaved rounds).

    Args:
      models: The models to measure.
      inference_rounds: Rounds of the interleaved inference measurement.
      training_rounds: Rounds of the interleaved training measurement (one
        step each: a step at 224x224 takes seconds on a small CPU).
      min_seconds: Shortest timed inference stretch per model, mode and round.

    Returns:
      Per model: ``"mmacs"``, ``"params"`` and images/s per mode.
    """
    rng = np.random.default_rng(0)
    inference: dict[tuple[ModelSpec, str], Any] = {}
    training: dict[tuple[ModelSpec, str], Any] = {}
    results: dict[ModelSpec, dict[str, Any]] = {}
    for spec in models:
        model = spec.build(INPUT_SHAPE, CLASSES)
        cost = profile(model)
        results[spec] = {"mmacs": cost.macs / 1e6, "params": cost.params}
        for mode, call in _callables(model, rng).items():
            (training if mode.startswith("training") else inference)[(spec, mode)] = call
    seconds = interleaved_medians(inference, rounds=inference_rounds, min_seconds=min_seconds, warmup_calls=1)
    seconds.update(interleaved_medians(training, rounds=training_rounds, min_seconds=0.0))
    for (spec, mode), per_call in seconds.items():
        results[spec][mode] = _BATCH[mode] / per_call
    return results


def report(
    results: dict[ModelSpec, dict[str, Any]], inference_rounds: int, training_rounds: int, min_seconds: float
) -> str:
    """The markdown section: images/s per model and the ShuffleNet / peer ratios."""
    rows = [[spec.label, f"{r['mmacs']:.1f}", *(f"{r[mode]:.1f}" for mode in MODES)] for spec, r in results.items()]
    ratio_rows = [
        [
            label,
            f"{s['mmacs'] / p['mmacs']:.2f}",
            *(f"{s[mode] / p[mode]:.2f}" for mode in MODES),
        ]
        for label, s, p in ratio_pairs(results, PAIRS_224)
    ]
    return "\n\n".join(
        [
            f"224×224×3, 1000 classes, float32, random weights. Images per second, median over interleaved "
            f"rounds: inference {inference_rounds} rounds of at least {min_seconds:g} s per model and mode "
            f"(after one untimed call), training {training_rounds} rounds of one step. Inference calls the "
            "model in a `tf.function`; training is `train_on_batch` (forward, backward, SGD update).",
            markdown_table(["model", "MMACs", *(f"{mode} (img/s)" for mode in MODES)], rows),
            "Ratios ShuffleNet / peer: images/s (> 1: ShuffleNet is faster) and MACs.",
            markdown_table(["pair", "MACs ratio", *MODES], ratio_rows),
        ]
    )


class _Skip(keras.layers.Layer):
    """Passes its input through: stands for a removed layer in the breakdown."""

    def call(self, inputs: Any, mask: Any = None, training: Any = None) -> Any:
        return inputs


def _variant(model: Any, replace: Any) -> Any:
    """``model`` with every layer for which ``replace(layer)`` returns a layer swapped for that layer."""

    def clone(layer: Any) -> Any:
        return replace(layer) or layer.__class__.from_config(layer.get_config())

    variant = keras.models.clone_model(model, clone_function=clone)
    for layer in variant.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return variant


# What the breakdown removes or swaps, one layer kind at a time.
BREAKDOWN = {
    "as built (grouped 1x1 as PointwiseGroupConv2D)": lambda layer: None,
    "grouped 1x1 as Conv2D(groups=g) (before)": lambda layer: (
        keras.layers.Conv2D.from_config(layer.get_config()) if type(layer) is PointwiseGroupConv2D else None
    ),
    "without the channel shuffles": lambda layer: _Skip(name=layer.name) if isinstance(layer, ChannelShuffle) else None,
    "without batch norm": lambda layer: (
        _Skip(name=layer.name) if isinstance(layer, keras.layers.BatchNormalization) else None
    ),
    "without the stride-1 depthwise convs": lambda layer: (
        _Skip(name=layer.name)
        if isinstance(layer, keras.layers.DepthwiseConv2D) and tuple(layer.strides) == (1, 1)
        else None
    ),
}


def breakdown(spec: ModelSpec = SHUFFLENET_1X_G3, rounds: int = 3, min_seconds: float = 1.0) -> dict[str, Any]:
    """Seconds per batch of ``spec`` with one kind of layer removed or swapped at a time (Keras 3).

    Returns:
      Per variant of :data:`BREAKDOWN`: seconds per call per mode.
    """
    rng = np.random.default_rng(0)
    model = spec.build(INPUT_SHAPE, CLASSES)
    calls: dict[tuple[str, str], Any] = {}
    for label, replace in BREAKDOWN.items():
        for mode, call in _callables(_variant(model, replace), rng).items():
            calls[(label, mode)] = call
    inference = {key: call for key, call in calls.items() if not key[1].startswith("training")}
    training = {key: call for key, call in calls.items() if key[1].startswith("training")}
    seconds = interleaved_medians(inference, rounds=rounds, min_seconds=min_seconds, warmup_calls=1)
    seconds.update(interleaved_medians(training, rounds=rounds, min_seconds=0.0))
    results: dict[str, Any] = {label: {} for label in BREAKDOWN}
    for (label, mode), value in seconds.items():
        results[label][mode] = value
    return results


def breakdown_report(results: dict[str, Any], spec: ModelSpec = SHUFFLENET_1X_G3) -> str:
    """The markdown of :func:`breakdown`: milliseconds per batch and the change against the model as built."""
    built = results[next(iter(BREAKDOWN))]
    rows = []
    for label, seconds in results.items():
        cells = []
        for mode in MODES:
            change = seconds[mode] / built[mode] - 1
            cells.append(f"{1000 * seconds[mode]:.1f}" + ("" if seconds is built else f" ({100 * change:+.0f} %)"))
        rows.append([label, *cells])
    return "\n\n".join(
        [
            f"**Where {spec.label}'s Keras time goes.** Milliseconds per call (batch 1 and 32 inference, one "
            "training step at batch 32), median of interleaved rounds, with one kind of layer swapped or removed "
            "at a time (a removed layer passes its input through; the numbers are costs, not a working model). "
            "The first two rows are the grouped 1×1 convolution's lowering before and after.",
            markdown_table(["variant", *(f"{mode} (ms)" for mode in MODES)], rows),
        ]
    )


def run(
    inference_rounds: int = 5, training_rounds: int = 3, min_seconds: float = 1.0
) -> tuple[str, dict[ModelSpec, dict[str, Any]]]:
    results = measure(inference_rounds=inference_rounds, training_rounds=training_rounds, min_seconds=min_seconds)
    text = report(results, inference_rounds, training_rounds, min_seconds)
    return text + "\n\n" + breakdown_report(breakdown(min_seconds=min_seconds)), results
