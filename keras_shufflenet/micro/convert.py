"""Conversion to TensorFlow Lite: a static batch-1 graph, float and full-int8 models, the TFLM op check.

TFLite Micro plans its memory ahead of time and can abort the whole process on
a dynamic shape, so the model is re-instantiated on a ``(1, H, W, C)`` input
and traced with that exact signature: every tensor of the converted graph has
a static shape and no SHAPE/STRIDED_SLICE/PACK arithmetic on the batch size
is left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from keras_shufflenet.keras_compat import keras
from keras_shufflenet.layers import PointwiseGroupConv2D

# Builtin operators that TFLite Micro implements, with the MicroMutableOpResolver
# method that registers each one (tensorflow/lite/micro/micro_mutable_op_resolver.h).
TFLM_OP_RESOLVER_METHODS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MAXIMUM": "AddMaximum",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}

_BUILTIN_NAMES: dict[int, str] = {
    code: name for name, code in vars(schema_fb.BuiltinOperator).items() if not name.startswith("_")
}


class UnsupportedOpError(ValueError):
    """The converted model uses an operator that TFLite Micro does not implement."""


def input_shape_of(model: Any) -> tuple[int, int, int]:
    """The static ``(height, width, channels)`` of a single-input image model.

    Raises:
      ValueError: If the model does not have exactly one rank-4 input with
        known height, width and channels.
    """
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ValueError(f"`model` must have exactly one input. Received a model with {len(inputs)} inputs.")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            "`model` must take images of a static size (batch, height, width, channels) for a microcontroller "
            f"export; build it with a full input_shape such as (96, 96, 3). Received input shape: {shape}"
        )
    return tuple(int(d) for d in shape[1:])  # type: ignore[return-value]


def _clone_scope(model: Any) -> Any:
    """Custom objects needed to clone the model (tfmot wrappers after QAT)."""
    if any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        from keras_shufflenet.micro.compression import qat_scope

        return qat_scope()
    return contextlib.nullcontext()


class DenseAsPointwiseConv(keras.layers.Dense):
    """A Dense layer on ``(batch, features)`` computed as a 1x1 convolution.

    The same arithmetic, lowered to TFLite's CONV_2D instead of
    FULLY_CONNECTED: for per-channel int8 weights, TFLite Micro's
    FULLY_CONNECTED rounds differently from TFLite's reference kernel on some
    inputs (1 LSB), while their CONV_2D kernels agree bit for bit.
    """

    def call(self, inputs: Any) -> Any:
        features = inputs.shape[-1]
        x = tf.reshape(inputs, [-1, 1, 1, features])
        kernel = tf.reshape(self.kernel, [1, 1, features, self.units])
        y = tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        y = tf.reshape(y, [-1, self.units])
        return self.activation(y) if self.activation is not None else y


class PassThrough(keras.layers.Layer):
    """Returns its input: stands, under the same name, for a layer whose work the export moved elsewhere."""

    def call(self, inputs: Any, mask: Any = None, training: Any = None) -> Any:
        return inputs


class BatchNormalizationReLU(keras.layers.BatchNormalization):
    """``BatchNormalization`` followed by a ReLU; TFLite folds both into the preceding convolution."""

    def call(self, inputs: Any, training: Any = None, **kwargs: Any) -> Any:
        return tf.nn.relu(super().call(inputs, training=training, **kwargs))


def _producer(tensor: Any) -> Any:
    return tensor._keras_history[0]


def _input_list(layer: Any) -> list[Any]:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _is_plain_relu(layer: Any) -> bool:
    return (
        type(layer) is keras.layers.ReLU
        and layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def _is_non_negative(layer: Any) -> bool:
    """Whether ``layer``'s output is never negative: a ReLU's, or a pool of such an output."""
    if _is_plain_relu(layer):
        return True
    if isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)):
        return _is_non_negative(_producer(layer.input))
    return False


def relus_through_concats(model: Any) -> tuple[set[str], set[str]]:
    """The ReLUs after a concatenation that the export moves onto the concatenation's inputs.

    ``relu(concat(a, b)) == concat(relu(a), relu(b))``. On an input that is
    already non-negative (a ReLU's output, or a pool of one: the average-pooled
    shortcut of a stride-2 ShuffleNet unit) the ReLU is the identity; after a
    batch norm it joins the batch norm, and TFLite fuses it into the
    convolution before. The converted model then has no standalone RELU:
    TFLite's int8 RELU requantizes element by element outside XNNPACK, and
    costs TFLite Micro instructions for nothing.

    Args:
      model: A functional Keras model.

    Returns:
      ``(names of the ReLU layers to drop, names of the batch norms that take
      their ReLU)``; both empty after quantization-aware training (whose
      fake-quant placement must stay as trained) and for models with shared
      layers.
    """
    if any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        return set(), set()
    if any(len(layer._inbound_nodes) > 1 for layer in model.layers):
        return set(), set()  # A shared layer: its inputs are not one tensor each; leave the graph as it is.
    consumers: dict[str, int] = {}
    for layer in model.layers:
        for tensor in _input_list(layer) if layer._inbound_nodes else []:
            name = _producer(tensor).name
            consumers[name] = consumers.get(name, 0) + 1
    for tensor in model.outputs:
        consumers[_producer(tensor).name] = consumers.get(_producer(tensor).name, 0) + 1
    dropped: set[str] = set()
    fused: set[str] = set()
    for relu in model.layers:
        if not _is_plain_relu(relu):
            continue
        concat = _producer(relu.input)
        if not isinstance(concat, keras.layers.Concatenate) or consumers.get(concat.name) != 1:
            continue
        takers = []
        for tensor in _input_list(concat):
            source = _producer(tensor)
            if _is_non_negative(source):
                continue
            if isinstance(source, keras.layers.BatchNormalization) and consumers.get(source.name) == 1:
                takers.append(source.name)
                continue
            break
        else:
            dropped.add(relu.name)
            fused.update(takers)
    return dropped, fused


def _export_layer(layer: Any, dropped_relus: set[str] = frozenset(), relu_batch_norms: set[str] = frozenset()) -> Any:
    """The layer of the export graph standing for ``layer`` (same config and name)."""
    if isinstance(layer, keras.layers.Lambda):
        return layer  # Stateless; Keras refuses to rebuild a Python lambda from its config.
    config = layer.get_config()
    if layer.name in dropped_relus:
        return PassThrough(name=layer.name)
    if layer.name in relu_batch_norms:
        return BatchNormalizationReLU.from_config(config)
    if type(layer) is PointwiseGroupConv2D:
        # TFLite's grouped CONV_2D, not the training-time matmul lowering.
        return keras.layers.Conv2D.from_config(config)
    inputs = layer.input
    on_features = not isinstance(inputs, (list, tuple)) and len(inputs.shape) == 2
    if type(layer) is keras.layers.Dense and on_features:
        return DenseAsPointwiseConv.from_config(config)
    inner = getattr(layer, "layer", None)
    if type(inner) is keras.layers.Dense and on_features and type(layer).__name__.startswith("QuantizeWrapper"):
        # After QAT: the same fake-quantized kernel, fed to a 1x1 convolution.
        conv = DenseAsPointwiseConv.from_config(inner.get_config())
        return type(layer)(conv, quantize_config=layer.quantize_config, name=layer.name)
    return layer.__class__.from_config(config)


def static_batch_model(model: Any) -> Any:
    """Re-instantiates ``model`` on a ``(1, H, W, C)`` input and copies its weights layer by layer.

    The layers TFLite should see replace those that are faster in Keras, with
    identical math: Dense classifiers become :class:`DenseAsPointwiseConv`
    and :class:`~keras_shufflenet.layers.PointwiseGroupConv2D` becomes a
    grouped ``Conv2D`` (TFLite's grouped CONV_2D). A ReLU after a
    concatenation moves onto its inputs (:func:`relus_through_concats`).

    Args:
      model: A functional Keras model (Keras 3 or tf_keras) with one image input.

    Returns:
      A model with the same layers, names and weights whose every tensor has a
      static shape with batch 1.
    """
    height, width, channels = input_shape_of(model)
    input_name = model.inputs[0].name.split(":")[0]

    def input_tensors() -> Any:
        image = keras.Input(batch_shape=(1, height, width, channels), name=input_name)
        # Models built on an `input_tensor` take a list of one input.
        return [image] if isinstance(model.input, (list, tuple)) else image

    with _clone_scope(model):
        static = keras.models.clone_model(model, input_tensors=input_tensors(), clone_function=_export_layer)
        # Read the graph on the fresh copy: there every layer has one inbound node, even
        # where the caller's layers were reused by another model (tfmot's clone_model does that).
        dropped_relus, relu_batch_norms = relus_through_concats(static)
        if dropped_relus:
            static = keras.models.clone_model(
                static,
                input_tensors=input_tensors(),
                clone_function=lambda layer: _export_layer(layer, dropped_relus, relu_batch_norms),
            )
    for layer in static.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return static


def _frozen_function(model: Any) -> Any:
    """The inference graph of ``model``'s export form at batch 1, variables folded into constants."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = static_batch_model(model)
    height, width, channels = input_shape_of(model)
    spec = tf.TensorSpec((1, height, width, channels), tf.float32, name="image")
    # Freezing the traced function converts in seconds; from_keras_model on a
    # Keras 3 model goes through a SavedModel export that takes ten times longer.
    concrete = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(concrete)


def convert_float(model: Any) -> bytes:
    """Converts a Keras model to a float32 ``.tflite`` flatbuffer (batch 1, export layers)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen_function(model)])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return bytes(converter.convert())


# How convolution weights are quantized: one scale per output channel (the
# converter's default) or one per tensor (4 bytes less per output channel).
WEIGHT_QUANTIZATIONS = ("per_channel", "per_tensor")


def check_weight_quantization(weight_quantization: Any) -> None:
    """Raises ``ValueError`` naming the value unless it is one of :data:`WEIGHT_QUANTIZATIONS`."""
    if weight_quantization not in WEIGHT_QUANTIZATIONS:
        raise ValueError(
            f"`weight_quantization` must be one of {WEIGHT_QUANTIZATIONS}. "
            f"Received: weight_quantization={weight_quantization!r}"
        )


def convert_int8(model: Any, representative_samples: np.ndarray, weight_quantization: str = "per_channel") -> bytes:
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

    Returns:
      The flatbuffer bytes.

    Raises:
      ValueError: If an operator has no int8 kernel, naming the converter's error.
    """
    check_weight_quantization(weight_quantization)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen_function(model)])
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


def representative_samples(
    representative_data: Iterable[Any], input_shape: tuple[int, int, int], limit: int
) -> np.ndarray:
    """Collects up to ``limit`` single images from an iterable of preprocessed batches.

    Args:
      representative_data: Iterable of float batches ``(N, H, W, C)`` (numpy
        arrays or tensors; a ``tf.data.Dataset`` works). Elements that are
        ``(images, labels)`` tuples contribute their images.
      input_shape: The model's ``(H, W, C)``.
      limit: The number of images to collect, ``>= 1``.

    Returns:
      A float32 array ``(n, H, W, C)`` with ``1 <= n <= limit``.

    Raises:
      ValueError: If a batch has the wrong rank, image shape or dtype (for
        example raw uint8 pixels that were not preprocessed), holds
        non-finite values, or the data holds no image at all.
    """
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"`num_representative` must be an integer >= 1. Received: num_representative={limit!r}")
    collected: list[np.ndarray] = []
    count = 0
    for index, element in enumerate(representative_data):
        batch = element[0] if isinstance(element, (tuple, list)) else element
        batch = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        where = f"`representative_data` batch {index}"
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(input_shape):
            raise ValueError(
                f"{where} must have shape (batch, {', '.join(map(str, input_shape))}) to match the model input. "
                f"Received shape: {tuple(batch.shape)}"
            )
        if not np.issubdtype(batch.dtype, np.floating):
            raise ValueError(
                f"{where} must be float images preprocessed like the training data "
                f"(keras_shufflenet.preprocess_input). Received dtype: {batch.dtype}"
            )
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"{where} contains NaN or infinite values.")
        take = batch[: limit - count].astype(np.float32)
        collected.append(take)
        count += len(take)
        if count >= limit:
            break
    if count == 0:
        raise ValueError("`representative_data` yielded no images; int8 calibration needs at least one.")
    return np.concatenate(collected)


def _model_object(tflite_model: bytes) -> Any:
    return schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(tflite_model, 0))


def _op_name(opcode: Any) -> str:
    code = max(opcode.builtinCode, opcode.deprecatedBuiltinCode)
    if code == schema_fb.BuiltinOperator.CUSTOM:
        custom = opcode.customCode.decode() if isinstance(opcode.customCode, bytes) else opcode.customCode
        return f"CUSTOM({custom})"
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def op_histogram(tflite_model: bytes) -> dict[str, int]:
    """Counts the operators of a ``.tflite`` model, in order of first use."""
    model = _model_object(tflite_model)
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            name = _op_name(model.operatorCodes[op.opcodeIndex])
            counts[name] = counts.get(name, 0) + 1
    return counts


def int8_weight_zero_fraction(tflite_model: bytes) -> float:
    """Fraction of zeros among the int8 filters of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED."""
    model = _model_object(tflite_model)
    zeros = total = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            if _op_name(model.operatorCodes[op.opcodeIndex]) not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema_fb.TensorType.INT8 or data is None:
                continue
            values = np.asarray(data, dtype=np.uint8)
            zeros += int(np.count_nonzero(values == 0))
            total += values.size
    return round(zeros / total, 4) if total else 0.0


def check_tflm_ops(tflite_model: bytes) -> list[str]:
    """Checks every operator against the set TFLite Micro implements.

    Returns:
      The model's operator names, sorted.

    Raises:
      UnsupportedOpError: Naming the operators TFLite Micro lacks.
    """
    ops = sorted(op_histogram(tflite_model))
    missing = [op for op in ops if op not in TFLM_OP_RESOLVER_METHODS]
    if missing:
        raise UnsupportedOpError(
            f"The converted model uses operators that TFLite Micro does not implement: {', '.join(missing)}. "
            f"Supported operators: {', '.join(sorted(TFLM_OP_RESOLVER_METHODS))}."
        )
    return ops


def check_static_shapes(tflite_model: bytes) -> None:
    """Refuses a model whose tensors have dynamic (-1) dimensions, which TFLite Micro cannot plan."""
    model = _model_object(tflite_model)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            signature = tensor.shapeSignature
            if signature is not None and any(int(d) < 0 for d in signature):
                name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
                raise ValueError(
                    f"Tensor '{name}' has a dynamic shape {list(signature)}; TFLite Micro needs static shapes."
                )


def io_quantization(tflite_model: bytes) -> dict[str, Any]:
    """Shapes, dtypes and (scale, zero point) of the single input and output of a ``.tflite`` model."""
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    details = {}
    for role, (info,) in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        scale, zero_point = info["quantization"]
        details[role] = {
            "shape": [int(d) for d in info["shape"]],
            "dtype": np.dtype(info["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero_point),
        }
    return details


def quantize_input(images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float images to the int8 input of the quantized model, rounding like TFLite (half away from zero)."""
    scaled = np.asarray(images, np.float32) / np.float32(scale)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + zero_point, -128, 127).astype(np.int8)
