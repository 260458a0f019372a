"""What every benchmark shares: the models compared, TFLite conversion, timing and markdown.

The models are built with ``weights=None`` (nothing is downloaded): speed and
size do not depend on the values of the weights, only on the architecture.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet import ShuffleNet
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.micro import convert as micro_convert
from keras_shufflenet.micro import graph as micro_graph


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One architecture of the comparison.

    Attributes:
      label: Short name used in the tables, e.g. ``"ShuffleNet 1x g3"``.
      family: ``"shufflenet"``, ``"mobilenet"`` or ``"mobilenet_v2"``.
      width: ShuffleNet's scale factor or the MobileNets' alpha.
      groups: ShuffleNet's groups (unused for the MobileNets).
    """

    label: str
    family: str
    width: float
    groups: int = 1

    @property
    def is_shufflenet(self) -> bool:
        return self.family == "shufflenet"

    def build(
        self, input_shape: tuple[int, int, int] = (224, 224, 3), classes: int = 1000, batch_size: int | None = None
    ) -> Any:
        """Builds the Keras model with random weights.

        Args:
          input_shape: ``(height, width, channels)``.
          classes: Classifier outputs.
          batch_size: A static batch size (1 for export: TFLite Micro aborts
            on the batch arithmetic a dynamic batch leaves in MobileNet's
            top), or `None` for a dynamic batch.

        Returns:
          A `keras.Model`.
        """
        keras.utils.set_random_seed(0)  # The same weights every run, so that instruction counts repeat.
        image = keras.Input(batch_shape=(batch_size, *input_shape), name="image")
        common = {"input_tensor": image, "weights": None, "classes": classes}
        if self.family == "shufflenet":
            return ShuffleNet(groups=self.groups, scale_factor=self.width, **common)
        if self.family == "mobilenet":
            return keras.applications.MobileNet(alpha=self.width, **common)
        if self.family == "mobilenet_v2":
            return keras.applications.MobileNetV2(alpha=self.width, **common)
        raise ValueError(f"Unknown model family {self.family!r}.")


def shufflenet(scale: float, groups: int) -> ModelSpec:
    return ModelSpec(f"ShuffleNet {scale:g}x g{groups}", "shufflenet", scale, groups)


def mobilenet(alpha: float) -> ModelSpec:
    return ModelSpec(f"MobileNet a={alpha:g}", "mobilenet", alpha)


def mobilenet_v2(alpha: float) -> ModelSpec:
    return ModelSpec(f"MobileNetV2 a={alpha:g}", "mobilenet_v2", alpha)


# The paper's Table 5 pairs at about the same MFLOPs: 1x g3 / 1x g8 (137-140)
# against MobileNet 0.5 (149), 0.5x g4 (38) against MobileNet 0.25 (41).
# MobileNetV2 has no width at 140 MMACs in keras.applications; 0.5 (97 M) and
# 0.35 (59 M) are the nearest, so every table also shows MACs.
SHUFFLENET_1X_G3 = shufflenet(1.0, 3)
SHUFFLENET_1X_G8 = shufflenet(1.0, 8)
SHUFFLENET_05X_G4 = shufflenet(0.5, 4)
MOBILENET_050 = mobilenet(0.5)
MOBILENET_025 = mobilenet(0.25)
MOBILENET_V2_050 = mobilenet_v2(0.5)
MOBILENET_V2_035 = mobilenet_v2(0.35)

PEERS_224: tuple[ModelSpec, ...] = (
    SHUFFLENET_1X_G3,
    SHUFFLENET_1X_G8,
    MOBILENET_050,
    MOBILENET_V2_050,
    SHUFFLENET_05X_G4,
    MOBILENET_025,
    MOBILENET_V2_035,
)

# (ShuffleNet, peer) pairs whose ratio each table reports.
PAIRS_224: tuple[tuple[ModelSpec, ModelSpec], ...] = (
    (SHUFFLENET_1X_G3, MOBILENET_050),
    (SHUFFLENET_1X_G8, MOBILENET_050),
    (SHUFFLENET_1X_G3, MOBILENET_V2_050),
    (SHUFFLENET_1X_G8, MOBILENET_V2_050),
    (SHUFFLENET_05X_G4, MOBILENET_025),
    (SHUFFLENET_05X_G4, MOBILENET_V2_035),
)


# --- TFLite conversion ---------------------------------------------------------


def _all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, those of nested models included (keras.applications nests none, Keras 3 may)."""
    layers = []
    for layer in model.layers:
        layers += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return layers


def set_batch_norm_statistics(model: Any, seed: int = 0) -> None:
    """Sets every batch norm's moving statistics to those of its input on one random image.

    With freshly initialised statistics (mean 0, variance 1) a random-weight
    network's activations collapse towards zero or blow up layer after layer:
    MobileNet's logits end up near 0, int8 calibration then gives them a scale
    of ~1e-8, and TFLite Micro's softmax aborts the process on it. Statistics
    measured on an input give every layer unit-scale activations, as a trained
    network has; the cost of an inference does not depend on the values.
    """
    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0  # The moving statistics become this batch's.
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    batch = model.inputs[0].shape[0] or 1
    images = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(batch, *input_shape)).astype(np.float32)
    try:
        model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


def convert_float(model: Any, move_relus: bool = True) -> bytes:
    """A float32 ``.tflite`` flatbuffer of a static batch-1 Keras model (the export's converter).

    ``move_relus=False`` keeps each ReLU after its concatenation (the export before the ReLU move).
    """
    return micro_convert.convert_float(model, move_relus)


def convert_int8(
    model: Any, num_samples: int = 4, seed: int = 0, weight_quantization: str = "per_channel", move_relus: bool = True
) -> bytes:
    """A full-int8 ``.tflite`` flatbuffer (int8 input and output), calibrated on random images.

    The export's converter, fed random images in [-1, 1] (the range of
    ``preprocess_input``): enough for latency, instruction counts and size,
    which do not depend on the quantization ranges.
    """
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    samples = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(num_samples, *input_shape)).astype(np.float32)
    return micro_convert.convert_int8(model, samples, weight_quantization, move_relus)


def ratio_pairs(results: dict[ModelSpec, Any], pairs: Any) -> list[tuple[str, Any, Any]]:
    """``(label, shufflenet result, peer result)`` for each measured pair."""
    return [
        (f"{shufflenet.label} / {peer.label}", results[shufflenet], results[peer])
        for shufflenet, peer in pairs
        if shufflenet in results and peer in results
    ]


# --- Model variants (what a breakdown swaps or removes) -------------------------


def variant(model: Any, replace: Any) -> Any:
    """``model`` with every layer for which ``replace(layer)`` returns a layer swapped for that layer."""

    return micro_graph.clone_with_weights(
        model, lambda layer: replace(layer) or layer.__class__.from_config(layer.get_config())
    )


def swap_layers(old: type, new: type) -> Any:
    """A ``replace`` for :func:`variant`: layers of exactly class ``old`` become ``new`` with their config."""
    return lambda layer: new.from_config(layer.get_config()) if type(layer) is old else None


def remove_layers(kind: type, where: Any = lambda layer: True) -> Any:
    """A ``replace`` for :func:`variant`: layers of ``kind`` (for which ``where`` holds) pass their input on."""
    return lambda layer: micro_graph.PassThrough(name=layer.name) if isinstance(layer, kind) and where(layer) else None


# --- Timing --------------------------------------------------------------------


def time_calls(call: Callable[[], Any], min_seconds: float, min_calls: int = 1, warmup_calls: int = 0) -> float:
    """Seconds per call of ``call``, averaged over at least ``min_seconds`` and ``min_calls``.

    ``warmup_calls`` untimed calls come first, so that a stretch does not pay
    for caches that the previous model evicted.
    """
    for _ in range(warmup_calls):
        call()
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while calls < min_calls or elapsed < min_seconds:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
    return elapsed / calls


def interleaved_medians(
    calls: dict[Any, Callable[[], Any]], rounds: int, min_seconds: float, min_calls: int = 1, warmup_calls: int = 0
) -> dict[Any, float]:
    """Median seconds per call of every callable, measured in interleaved rounds.

    Each round times every callable once, in turn, so that a slow period of
    the shared machine hits all of them alike rather than one model.
    """
    samples: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            samples[key].append(time_calls(call, min_seconds, min_calls, warmup_calls))
    return {key: statistics.median(values) for key, values in samples.items()}


# --- Reporting -----------------------------------------------------------------


def with_change(value: float, reference: float | None, digits: int) -> str:
    """``value`` and its change against ``reference`` in percent, e.g. ``"12.3 (+5 %)"``; bare if no reference."""
    text = f"{value:.{digits}f}"
    return text if reference is None else f"{text} ({100 * (value / reference - 1):+.0f} %)"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` has one ``l``/``r`` per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _valgrind_version() -> str:
    try:
        return subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not installed"


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> str:
    """A markdown list: CPU, cores, load, OS and the versions that the numbers depend on."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    items = [
        ("CPU", f"{_cpu_model()} ({platform.machine()}), {os.cpu_count()} logical cores visible"),
        ("Load average at start (1, 5, 15 min)", load),
        ("OS", platform.platform()),
        ("Python", sys.version.split()[0]),
        ("TensorFlow", tf.__version__),
        ("Keras", keras.__version__),
        ("NumPy", np.__version__),
        ("tflite-micro", _package_version("tflite-micro")),
        ("valgrind", _valgrind_version()),
    ]
    return "\n".join(f"- {name}: {value}" for name, value in items)


# The section of docs/benchmarks.md that benchmarks.compression writes.
COMPRESSION_BLOCK = "compression"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def marked_block(text: str, name: str) -> str | None:
    """The block between ``<!-- name: start -->`` and ``<!-- name: end -->`` (markers included), if any."""
    start, end = _markers(name)
    if start not in text or end not in text:
        return None
    return text[text.index(start) : text.index(end) + len(end)]


def with_marked_block(text: str, name: str, body: str) -> str:
    """``text`` with the marked block ``name`` holding ``body``: replaced where it is, else appended."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    old = marked_block(text, name)
    return text.replace(old, block) if old else text.rstrip("\n") + "\n\n" + block + "\n"
