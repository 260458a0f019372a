"""Conversion to TensorFlow Lite: float and full-int8 flatbuffers of the export graph.

Every converter converts :func:`keras_shufflenet.micro.graph.static_batch_model`
of the model, frozen at batch 1. :func:`convert_in_child` runs the converter
in a child process (:mod:`keras_shufflenet.micro.convert_worker`), so that a
crash of TensorFlow's calibrator becomes a :class:`ConversionCrashError`
instead of killing the caller; ``micro.export`` uses it. :func:`convert_float`
and :func:`convert_int8` convert in this process, with the same settings.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from keras_shufflenet.micro import convert_worker, verify
from keras_shufflenet.micro.export_config import WEIGHT_QUANTIZATIONS
from keras_shufflenet.micro.graph import input_shape_of, static_batch_model

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_worker.py")
_WORKER_TIMEOUT_S = 3600


class ConversionCrashError(RuntimeError):
    """TensorFlow's converter killed its (child) process; the message names the model's layers and ops."""


def deployment_model(model: Any) -> Any:
    """The model that :func:`keras_shufflenet.micro.export` converts, for your own converter settings.

    ``tf.lite.TFLiteConverter.from_keras_model(model)`` already converts a
    ShuffleNet's grouped 1x1 convolutions to grouped CONV_2D operators with
    the batch norms folded in. This copy also has what TFLite Micro wants:

    * a static batch of 1 on every tensor (the standard path keeps the
      Keras model's dynamic batch: shape signature ``[-1, H, W, C]``);
    * the classifier as a 1x1 CONV_2D instead of FULLY_CONNECTED (for
      per-channel int8 weights, TFLite Micro's FULLY_CONNECTED rounds 1 LSB
      differently from TFLite's on some inputs);
    * no standalone RELU after a stride-2 unit's concatenation (it moves
      into the convolution before it).

    Same weights, same outputs (within float rounding). Use it as
    ``tf.lite.TFLiteConverter.from_keras_model(deployment_model(model))``.

    Args:
      model: A functional Keras model (Keras 3 or tf_keras) with one image
        input of a static size.

    Returns:
      The copy, a Keras model with input shape ``(1, H, W, C)``.

    Raises:
      ValueError: If the model's input size is not static.
    """
    return static_batch_model(model)


def _frozen_function(model: Any, move_relus: bool = True) -> Any:
    """The inference graph of ``model``'s export form at batch 1, variables folded into constants."""
    model = static_batch_model(model, move_relus)
    height, width, channels = input_shape_of(model)
    spec = tf.TensorSpec((1, height, width, channels), tf.float32, name="image")
    # Freezing the traced function converts in seconds; from_keras_model on a
    # Keras 3 model goes through a SavedModel export that takes ten times longer.
    concrete = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(concrete)


def convert_float(model: Any, move_relus: bool = True) -> bytes:
    """Converts a Keras model to a float32 ``.tflite`` flatbuffer (batch 1, export layers).

    ``move_relus`` is :func:`~keras_shufflenet.micro.graph.static_batch_model`'s.
    """
    return bytes(convert_worker.float_converter(_frozen_function(model, move_relus)).convert())


def check_weight_quantization(weight_quantization: Any) -> None:
    """Raises ``ValueError`` naming the value unless it is one of :data:`WEIGHT_QUANTIZATIONS`."""
    if weight_quantization not in WEIGHT_QUANTIZATIONS:
        raise ValueError(
            f"`weight_quantization` must be one of {WEIGHT_QUANTIZATIONS}. "
            f"Received: weight_quantization={weight_quantization!r}"
        )


def convert_int8(
    model: Any, representative_samples: np.ndarray, weight_quantization: str = "per_channel", move_relus: bool = True
) -> bytes:
    """Converts a Keras model (plain or quantization-aware) to a full-int8 ``.tflite`` flatbuffer.

    Weights are quantized per channel (the converter's default for
    convolutions) or per tensor, activations per tensor from the ranges seen on
    ``representative_samples`` (or learned by QAT), and the input and output
    are int8 so that a microcontroller never touches float.

    Args:
      model: The Keras model (plain or quantization-aware); it is converted
        in its :func:`static_batch_model` form.
      representative_samples: Float array ``(N, H, W, C)`` of preprocessed
        training images that calibrate the activation ranges.
      weight_quantization: ``"per_channel"`` or ``"per_tensor"`` (one
        scale per weight tensor: smaller, usually less accurate, especially
        for depthwise convolutions; measure it). Defaults to `"per_channel"`.
      move_relus: :func:`~keras_shufflenet.micro.graph.static_batch_model`'s. Defaults to `True`.

    Returns:
      The flatbuffer bytes.

    Raises:
      ValueError: If an operator has no int8 kernel, naming the converter's error.
    """
    check_weight_quantization(weight_quantization)
    converter = convert_worker.int8_converter(
        _frozen_function(model, move_relus), representative_samples, weight_quantization
    )
    try:
        return bytes(converter.convert())
    except Exception as error:  # The converter raises ConverterError or RuntimeError.
        raise ValueError(f"Full-int8 conversion failed (an op without an int8 kernel?): {error}") from error


def _describe_graph(model: Any, graph_def: Any) -> str:
    layers = collections.Counter(type(layer).__name__ for layer in model.layers)
    ops = collections.Counter(node.op for node in graph_def.node if node.op not in ("Const", "Placeholder", "Identity"))
    return (
        f"the model {model.name!r} has layers {dict(layers.most_common())} and its frozen graph the ops "
        f"{dict(ops.most_common())}"
    )


def _describe_refusal(message: str, graph_defs: dict[str, tuple[Any, Any]]) -> str:
    """The converter's refusal, led by the TensorFlow ops it could not convert and the layers that hold them."""
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)))
    if not ops:
        return f"Full-int8 conversion failed (an op without an int8 kernel?): {message[:2000]}"
    places = []
    for op in ops:
        layers: set[str] = set()
        for model, graph_def in graph_defs.values():
            names = {layer.name for layer in model.layers}
            for node in graph_def.node:
                if node.op == op:  # node names are scoped by layer, e.g. "model_1/gelu_like_1/Erf"
                    parts = node.name.split("/")
                    layers.update({*parts, *(part.rsplit("_", 1)[0] for part in parts)} & names)
        where = f" (in layer {', '.join(repr(n) for n in sorted(layers))})" if layers else ""
        places.append(f"{op}{where}")
    return (
        f"TFLite conversion failed: these TensorFlow ops have no TFLite builtin kernel: {'; '.join(places)}. "
        "Express those layers with ops TFLite and TFLite Micro support. Converter message (start): "
        f"{message[:300]}"
    )


def convert_in_child(
    float_model: Any, quant_model: Any, representative_samples: np.ndarray, weight_quantization: str = "per_channel"
) -> tuple[bytes, bytes]:
    """Float and full-int8 flatbuffers (as :func:`convert_float` and :func:`convert_int8`), converted in a child.

    The export graphs are frozen here and converted by
    :mod:`~keras_shufflenet.micro.convert_worker` in a child process.

    Args:
      float_model: The model to convert to float32.
      quant_model: The model to convert to int8 (the same, or its
        quantization-aware copy).
      representative_samples: Calibration images ``(N, H, W, C)``.
      weight_quantization: ``"per_channel"`` or ``"per_tensor"``.

    Returns:
      ``(float flatbuffer, int8 flatbuffer)``.

    Raises:
      ValueError: If the converter refused the model (e.g. an op without an
        int8 kernel), with its message.
      ConversionCrashError: If the converter killed the child (a signal), naming
        the model's layer types and graph ops. Nothing is left behind.
    """
    check_weight_quantization(weight_quantization)
    with tempfile.TemporaryDirectory(prefix="keras-shufflenet-convert-") as work:
        jobs, graph_defs, frozen_by_model = [], {}, {}
        for mode, model in (("float", float_model), ("int8", quant_model)):
            if id(model) not in frozen_by_model:  # After post-training quantization both are one model.
                frozen = _frozen_function(model)
                graph_path = os.path.join(work, f"{mode}.pb")
                with open(graph_path, "wb") as handle:
                    handle.write(frozen.graph.as_graph_def().SerializeToString())
                frozen_by_model[id(model)] = (frozen, graph_path)
            frozen, graph_path = frozen_by_model[id(model)]
            graph_defs[mode] = (model, frozen.graph.as_graph_def())
            jobs.append(
                {
                    "graph": graph_path,
                    "inputs": [t.name for t in frozen.inputs],
                    "outputs": [t.name for t in frozen.outputs],
                    "mode": mode,
                    "weight_quantization": weight_quantization,
                    "output": os.path.join(work, f"{mode}.tflite"),
                }
            )
        samples_path = os.path.join(work, "samples.npy")
        np.save(samples_path, np.asarray(representative_samples, np.float32))
        spec_path = os.path.join(work, "jobs.json")
        with open(spec_path, "w", encoding="utf-8") as handle:
            json.dump({"samples": samples_path, "jobs": jobs}, handle)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run(
            [sys.executable, _WORKER, spec_path],
            capture_output=True,
            text=True,
            timeout=_WORKER_TIMEOUT_S,
            env=env,
            check=False,
        )
        if result.returncode < 0:
            name = verify.signal_name(result.returncode)
            done = [job["mode"] for job in jobs if os.path.exists(job["output"])]
            stage = "int8 calibration and conversion" if "float" in done else "float conversion"
            model, graph_def = graph_defs["int8" if "float" in done else "float"]
            raise ConversionCrashError(
                f"TFLite conversion crashed ({name}) during the {stage} in a child process; "
                f"{_describe_graph(model, graph_def)}. Nothing was written."
            )
        if result.returncode:
            lines = result.stderr.strip().splitlines()
            message = lines[-1] if lines else f"exit status {result.returncode}"
            raise ValueError(_describe_refusal(message, graph_defs))
        contents = []
        for job in jobs:
            with open(job["output"], "rb") as handle:
                contents.append(handle.read())
    return contents[0], contents[1]


def quantize_input(images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float images to the int8 input of the quantized model, rounding like TFLite (half away from zero)."""
    scaled = np.asarray(images, np.float32) / np.float32(scale)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + zero_point, -128, 127).astype(np.int8)
