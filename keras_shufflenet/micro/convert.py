"""Conversion to TensorFlow Lite: float and full-int8 flatbuffers of the export graph.

Both converters convert :func:`keras_shufflenet.micro.graph.static_batch_model`
of the model, frozen at batch 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet.micro.graph import input_shape_of, static_batch_model
from keras_shufflenet.training.config import WEIGHT_QUANTIZATIONS


def _frozen_function(model: Any, move_relus: bool = True) -> Any:
    """The inference graph of ``model``'s export form at batch 1, variables folded into constants."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

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
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen_function(model, move_relus)])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return bytes(converter.convert())


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
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen_function(model, move_relus)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter's only switch for this (no public equivalent).
    converter._experimental_disable_per_channel = weight_quantization == "per_tensor"
    converter.representative_dataset = lambda: ([sample[None]] for sample in representative_samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        return bytes(converter.convert())
    except Exception as error:  # The converter raises ConverterError or RuntimeError.
        raise ValueError(f"Full-int8 conversion failed (an op without an int8 kernel?): {error}") from error


def quantize_input(images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float images to the int8 input of the quantized model, rounding like TFLite (half away from zero)."""
    scaled = np.asarray(images, np.float32) / np.float32(scale)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + zero_point, -128, 127).astype(np.int8)
