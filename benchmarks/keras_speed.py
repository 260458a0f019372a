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

from benchmarks.common import PAIRS_224, PEERS_224, ModelSpec, interleaved_medians, markdown_table, ratio_pairs
from keras_shufflenet.keras_compat import keras
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


def run(
    inference_rounds: int = 5, training_rounds: int = 3, min_seconds: float = 1.0
) -> tuple[str, dict[ModelSpec, dict[str, Any]]]:
    results = measure(inference_rounds=inference_rounds, training_rounds=training_rounds, min_seconds=min_seconds)
    return report(results, inference_rounds, training_rounds, min_seconds), results
