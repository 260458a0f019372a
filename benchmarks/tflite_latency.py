"""TFLite on the CPU: latency of float32 and full-int8 models at 224x224, one thread, default kernels.

LiteRT's interpreter (``ai_edge_litert``, ``num_threads=1``) with its default op resolver, which
delegates the supported ops to XNNPACK. All interpreters are timed in
interleaved rounds; the tables give the median over the rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import (
    MOBILENET_050,
    PAIRS_224,
    PEERS_224,
    SHUFFLENET_1X_G8,
    ModelSpec,
    convert_float,
    convert_int8,
    interleaved_medians,
    markdown_table,
    ratio_pairs,
    remove_layers,
    set_batch_norm_statistics,
    variant,
    with_change,
)
from keras_shufflenet import ChannelShuffle
from keras_shufflenet.micro import litert
from keras_shufflenet.profiling import profile

INPUT_SHAPE = (224, 224, 3)
CLASSES = 1000
PRECISIONS = ("float32", "int8")


def _invoker(tflite_model: bytes, seed: int) -> Any:
    """A zero-argument callable that runs one inference on a fixed random input."""
    interpreter = litert.interpreter(tflite_model, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(seed)
    if np.issubdtype(detail["dtype"], np.integer):
        sample = rng.integers(-128, 128, size=detail["shape"]).astype(detail["dtype"])
    else:
        sample = rng.uniform(-1, 1, size=detail["shape"]).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], sample)
    interpreter.invoke()  # The first invoke prepares the delegate.
    return interpreter.invoke


def measure(
    models: tuple[ModelSpec, ...] = PEERS_224, rounds: int = 5, min_seconds: float = 0.5
) -> dict[ModelSpec, dict[str, Any]]:
    """Milliseconds per inference of every model in float32 and int8.

    Returns:
      Per model: ``"mmacs"``, the ``.tflite`` sizes (``"<precision> bytes"``)
      and the latency (``"<precision> ms"``).
    """
    invokers: dict[tuple[ModelSpec, str], Any] = {}
    results: dict[ModelSpec, dict[str, Any]] = {}
    for index, spec in enumerate(models):
        model = spec.build(INPUT_SHAPE, CLASSES, batch_size=1)
        set_batch_norm_statistics(model)
        results[spec] = {"mmacs": profile(model).macs / 1e6}
        for precision, tflite_model in (("float32", convert_float(model)), ("int8", convert_int8(model))):
            results[spec][f"{precision} bytes"] = len(tflite_model)
            invokers[(spec, precision)] = _invoker(tflite_model, seed=index)
        print(f"  TFLite {spec.label}: converted", flush=True)
    seconds = interleaved_medians(invokers, rounds=rounds, min_seconds=min_seconds, min_calls=3, warmup_calls=1)
    for (spec, precision), per_call in seconds.items():
        results[spec][f"{precision} ms"] = 1e3 * per_call
    return results


def report(results: dict[ModelSpec, dict[str, Any]], rounds: int, min_seconds: float) -> str:
    """The markdown section: latency per model and the ShuffleNet / peer ratios."""
    rows = [
        [
            spec.label,
            f"{r['mmacs']:.1f}",
            f"{r['float32 ms']:.2f}",
            f"{r['int8 ms']:.2f}",
            f"{r['float32 ms'] / r['int8 ms']:.2f}",
            f"{r['int8 ms'] / r['mmacs']:.3f}",  # ms per MMAC = ns per MAC.
        ]
        for spec, r in results.items()
    ]
    ratio_rows = [
        [
            label,
            f"{s['mmacs'] / p['mmacs']:.2f}",
            *(f"{s[f'{precision} ms'] / p[f'{precision} ms']:.2f}" for precision in PRECISIONS),
            f"{(s['int8 ms'] / s['mmacs']) / (p['int8 ms'] / p['mmacs']):.2f}",
        ]
        for label, s, p in ratio_pairs(results, PAIRS_224)
    ]
    return "\n\n".join(
        [
            f"224×224×3, 1000 classes, static batch of 1, LiteRT's interpreter (`num_threads=1`) with the default "
            f"kernels (XNNPACK). Int8 is full-integer (int8 input and output). Median of {rounds} interleaved "
            f"rounds of at least {min_seconds:g} s and 3 invokes per model and precision, after one untimed "
            "invoke.",
            markdown_table(
                ["model", "MMACs", "float32 ms", "int8 ms", "int8 speed-up", "int8 ns / MAC"],
                rows,
            ),
            "Ratios ShuffleNet / peer (< 1: ShuffleNet is faster).",
            markdown_table(["pair", "MACs", "float32 latency", "int8 latency", "int8 latency per MAC"], ratio_rows),
        ]
    )


def breakdown(
    spec: ModelSpec = SHUFFLENET_1X_G8, rounds: int = 5, min_seconds: float = 0.5
) -> dict[str, dict[str, float]]:
    """Milliseconds per inference of ``spec`` exported as before and after, and with its shuffles removed.

    The peer MobileNet runs in the same interleaved rounds, for the ratio.

    Returns:
      Per variant: ``"float32 ms"`` and ``"int8 ms"``.
    """
    model = spec.build(INPUT_SHAPE, CLASSES, batch_size=1)
    set_batch_norm_statistics(model)
    unshuffled = variant(model, remove_layers(ChannelShuffle))
    peer = MOBILENET_050.build(INPUT_SHAPE, CLASSES, batch_size=1)
    set_batch_norm_statistics(peer)
    converted = {
        "as exported": (convert_float(model), convert_int8(model)),
        "ReLU after each concatenation (before)": (
            convert_float(model, move_relus=False),
            convert_int8(model, move_relus=False),
        ),
        "without the channel shuffles": (convert_float(unshuffled), convert_int8(unshuffled)),
        f"{MOBILENET_050.label} (for reference)": (convert_float(peer), convert_int8(peer)),
    }
    invokers = {
        (label, precision): _invoker(tflite_model, seed=0)
        for label, models in converted.items()
        for precision, tflite_model in zip(PRECISIONS, models, strict=True)
    }
    seconds = interleaved_medians(invokers, rounds=rounds, min_seconds=min_seconds, min_calls=3, warmup_calls=1)
    results: dict[str, dict[str, float]] = {label: {} for label in converted}
    for (label, precision), per_call in seconds.items():
        results[label][f"{precision} ms"] = 1e3 * per_call
    return results


def breakdown_report(results: dict[str, dict[str, float]], spec: ModelSpec = SHUFFLENET_1X_G8) -> str:
    """The markdown of :func:`breakdown`."""
    built = next(iter(results.values()))
    rows = [
        [
            label,
            *(with_change(r[f"{p} ms"], None if r is built else built[f"{p} ms"], 2) for p in PRECISIONS),
        ]
        for label, r in results.items()
    ]
    return "\n\n".join(
        [
            f"**Where {spec.label}'s TFLite time goes.** Milliseconds per inference, median of interleaved rounds, "
            "and the change against the export as it is. Before, the ReLU of each stride-2 unit followed the "
            "concatenation and stayed a standalone RELU op, which int8 runs outside XNNPACK, requantizing "
            "element by element; the export now moves it onto the concatenation's inputs (the pooled shortcut "
            "is non-negative already; on the branch it fuses into the convolution). Removing the shuffles "
            "measures their cost (not a working model).",
            markdown_table(["variant", "float32 ms", "int8 ms"], rows),
        ]
    )


def run(rounds: int = 5, min_seconds: float = 0.5) -> tuple[str, dict[ModelSpec, dict[str, Any]]]:
    results = measure(rounds=rounds, min_seconds=min_seconds)
    text = report(results, rounds, min_seconds)
    return text + "\n\n" + breakdown_report(breakdown(rounds=rounds, min_seconds=min_seconds)), results
