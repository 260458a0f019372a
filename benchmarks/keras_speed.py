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
    MOBILENET_050,
    PAIRS_224,
    PEERS_224,
    SHUFFLENET_1X_G3,
    SHUFFLENET_1X_G8,
    ModelSpec,
    interleaved_medians,
    markdown_table,
    ratio_pairs,
    remove_layers,
    swap_layers,
    variant,
    with_change,
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
    training_rounds: int = 7,
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


class _AlwaysLoweredGroupConv2D(PointwiseGroupConv2D):
    """PointwiseGroupConv2D with its training lowering in inference too (as up to 0.1.0), to measure against."""

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return super().call(inputs, training=True)


class _BatchedMatmulGroupConv2D(_AlwaysLoweredGroupConv2D):
    """The previous lowering, kept to measure against: one batched matmul between two transposes."""

    def grouped_matmul(self, inputs: Any, kernel: Any) -> Any:
        groups = self.groups
        in_per_group = inputs.shape[-1] // groups
        out_per_group = kernel.shape[-1] // groups
        x = tf.transpose(tf.reshape(inputs, [-1, groups, in_per_group]), [1, 0, 2])
        w = tf.transpose(tf.reshape(kernel, [in_per_group, groups, out_per_group]), [1, 0, 2])
        y = tf.transpose(tf.matmul(x, w), [1, 0, 2])
        # The benchmark models have a static input size, so the shape is a static list.
        return tf.reshape(y, [-1, *inputs.shape[1:-1], groups * out_per_group])


# What the breakdown removes or swaps, one layer kind at a time. The first
# rows are the lowerings before and after (as built: the lowering in training,
# the grouped convolution in inference); the removals are costs, not models.
BREAKDOWN = {
    "as built (grouped 1x1 as PointwiseGroupConv2D)": lambda layer: None,
    "grouped 1x1 lowered in inference too (0.1.0)": swap_layers(PointwiseGroupConv2D, _AlwaysLoweredGroupConv2D),
    "grouped 1x1 as one batched matmul between transposes (previous)": swap_layers(
        PointwiseGroupConv2D, _BatchedMatmulGroupConv2D
    ),
    "grouped 1x1 as Conv2D(groups=g) (first)": swap_layers(PointwiseGroupConv2D, keras.layers.Conv2D),
    "without the channel shuffles": remove_layers(ChannelShuffle),
    "without batch norm": remove_layers(keras.layers.BatchNormalization),
    "without the stride-1 depthwise convs": remove_layers(
        keras.layers.DepthwiseConv2D, lambda layer: tuple(layer.strides) == (1, 1)
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
        for mode, call in _callables(variant(model, replace), rng).items():
            calls[(label, mode)] = call
    inference = {key: call for key, call in calls.items() if not key[1].startswith("training")}
    training = {key: call for key, call in calls.items() if key[1].startswith("training")}
    seconds = interleaved_medians(inference, rounds=rounds, min_seconds=min_seconds, warmup_calls=1)
    seconds.update(interleaved_medians(training, rounds=rounds, min_seconds=0.0))
    results: dict[str, Any] = {label: {} for label in BREAKDOWN}
    for (label, mode), value in seconds.items():
        results[label][mode] = value
    return results


# Ops that move no data (or only a handle): not counted as work in graph_stats.
_FREE_OPS = {"Const", "Identity", "NoOp", "Placeholder", "ReadVariableOp", "Reshape", "Shape", "VarHandleOp"}


def graph_stats(model: Any) -> dict[str, Any]:
    """What one batch-1 inference executes: ops of the traced graph and the activation bytes they write.

    Returns:
      ``"ops"`` (ops that compute or copy data, per type too), ``"activation_mb"``
      (float32 megabytes written by them) and ``"macs"``.
    """
    spec = tf.TensorSpec((1, *(int(d) for d in model.inputs[0].shape[1:])), tf.float32)
    graph = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec).graph
    ops = [op for op in graph.get_operations() if op.type not in _FREE_OPS]
    written = sum(int(np.prod(out.shape)) * 4 for op in ops for out in op.outputs if out.shape.is_fully_defined())
    types: dict[str, int] = {}
    for op in ops:
        types[op.type] = types.get(op.type, 0) + 1
    return {"ops": len(ops), "op_types": types, "activation_mb": written / 1e6, "macs": profile(model).macs}


def graph_stats_report(models: tuple[ModelSpec, ...] = (SHUFFLENET_1X_G3, SHUFFLENET_1X_G8, MOBILENET_050)) -> str:
    """The markdown of :func:`graph_stats` for ``models``."""
    rows = []
    stats = {spec: graph_stats(spec.build(INPUT_SHAPE, CLASSES)) for spec in models}
    for spec in models:
        top = sorted(stats[spec]["op_types"].items(), key=lambda item: -item[1])[:6]
        rows.append(
            [
                spec.label,
                f"{stats[spec]['macs'] / 1e6:.0f}",
                str(stats[spec]["ops"]),
                f"{stats[spec]['activation_mb']:.1f}",
                f"{stats[spec]['macs'] / (stats[spec]['activation_mb'] * 1e6):.1f}",
                ", ".join(f"{name} {count}" for name, count in top),
            ]
        )
    shufflenet, peer = stats[SHUFFLENET_1X_G3], stats[MOBILENET_050]
    summary = (
        f"{SHUFFLENET_1X_G3.label} runs {shufflenet['ops'] / peer['ops']:.1f}× the ops of {MOBILENET_050.label} and "
        f"writes {shufflenet['activation_mb'] / peer['activation_mb']:.1f}× the activation bytes for "
        f"{shufflenet['macs'] / peer['macs']:.2f}× the MACs: its grouped 1×1 convolutions are g small matrix "
        "multiplies with a split and a concat around them, and every unit adds a shuffle and three batch norms on "
        "wide, thin activations. At batch 1 each op is a dispatch of a few microseconds; at batch 32 and in "
        "training the batch norms, shuffles, splits and concats are memory passes over those activations, while "
        "the peer's fewer, larger matrix multiplies do more MACs per byte. These are the costs ShuffleNet pays in "
        "Keras beyond its MACs (the removal rows above bound what any one layer kind could give back)."
    )
    return "\n\n".join(
        [
            "**What one inference executes** (the traced Keras graph at batch 1, before TensorFlow's graph "
            "optimizer; ops that move no data, such as reshapes and variable reads, are not counted). Every op "
            "is one kernel dispatch; activation bytes are the float32 outputs those ops write.",
            markdown_table(
                ["model", "MMACs", "ops", "activations written (MB)", "MACs per activation byte", "most frequent ops"],
                rows,
            ),
            summary,
        ]
    )


def breakdown_report(results: dict[str, Any], spec: ModelSpec = SHUFFLENET_1X_G3) -> str:
    """The markdown of :func:`breakdown`: milliseconds per call and the change against the model as built."""
    built = results[next(iter(BREAKDOWN))]
    rows = [
        [
            label,
            *(with_change(1000 * seconds[mode], None if seconds is built else 1000 * built[mode], 1) for mode in MODES),
        ]
        for label, seconds in results.items()
    ]
    return "\n\n".join(
        [
            f"**Where {spec.label}'s Keras time goes.** Milliseconds per call (batch 1 and 32 inference, one "
            "training step at batch 32), median of interleaved rounds, and the change against the first row. One "
            "kind of layer is swapped or removed at a time (a removed layer passes its input through: those rows "
            "are costs, not working models). Rows 2 to 4 are the lowerings this package replaced.",
            markdown_table(["variant", *(f"{mode} (ms)" for mode in MODES)], rows),
        ]
    )


def run(
    inference_rounds: int = 5, training_rounds: int = 7, min_seconds: float = 1.0
) -> tuple[str, dict[ModelSpec, dict[str, Any]]]:
    results = measure(inference_rounds=inference_rounds, training_rounds=training_rounds, min_seconds=min_seconds)
    sections = [
        report(results, inference_rounds, training_rounds, min_seconds),
        breakdown_report(breakdown(min_seconds=min_seconds)),
        graph_stats_report(),
    ]
    return "\n\n".join(sections), results
