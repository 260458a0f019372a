"""Reading a ``.tflite`` flatbuffer: its operators, tensors and bytes, and the operators TFLite Micro implements.

:data:`TFLM_OP_RESOLVER_METHODS` is the table of TFLM's builtin operators
with the ``MicroMutableOpResolver`` method that registers each one; the
firmware's op resolver (:mod:`keras_shufflenet.micro.c_sources`) is written
from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from keras_shufflenet.micro import litert

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
    # A custom operator: decodes weights stored compressed (TFLM built with USE_TFLM_COMPRESSION).
    "CUSTOM(TFLM_DECODE)": "AddDecode",
}

_BUILTIN_NAMES: dict[int, str] = {
    code: name for name, code in vars(schema_fb.BuiltinOperator).items() if not name.startswith("_")
}


class UnsupportedOpError(ValueError):
    """The converted model uses an operator that TFLite Micro does not implement."""


def model_object(tflite_model: bytes) -> Any:
    return schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(tflite_model, 0))


def op_name(opcode: Any) -> str:
    code = max(opcode.builtinCode, opcode.deprecatedBuiltinCode)
    if code == schema_fb.BuiltinOperator.CUSTOM:
        custom = opcode.customCode.decode() if isinstance(opcode.customCode, bytes) else opcode.customCode
        return f"CUSTOM({custom})"
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def op_histogram(tflite_model: bytes) -> dict[str, int]:
    """Counts the operators of a ``.tflite`` model, in order of first use."""
    model = model_object(tflite_model)
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            name = op_name(model.operatorCodes[op.opcodeIndex])
            counts[name] = counts.get(name, 0) + 1
    return counts


def output_elements_by_op(tflite_model: bytes) -> dict[str, int]:
    """Elements written by each operator type, summed over the graph (batch 1).

    For CONV_2D, DEPTHWISE_CONV_2D and ADD every one of them is a
    requantization (a 32-bit accumulator or sum scaled back to int8), which on
    a microcontroller costs tens of instructions however few MACs led to it.
    """
    model = model_object(tflite_model)
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            name = op_name(model.operatorCodes[op.opcodeIndex])
            shape = subgraph.tensors[op.outputs[0]].shape
            if shape is not None:
                counts[name] = counts.get(name, 0) + int(np.prod(shape))
    return counts


def int8_weight_zero_fraction(tflite_model: bytes) -> float:
    """Fraction of zeros among the int8 filters of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED."""
    model = model_object(tflite_model)
    zeros = total = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            if op_name(model.operatorCodes[op.opcodeIndex]) not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
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
    model = model_object(tflite_model)
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
    interpreter = litert.interpreter(tflite_model)
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


def flash_breakdown(tflite_model: bytes) -> dict[str, int]:
    """Bytes of a ``.tflite`` file by what they hold.

    Returns:
      ``"int8 weights"`` and ``"int32 biases and shapes"`` (constant tensor data),
      ``"quantization"`` (per-channel and per-tensor scales and zero points,
      stored as float32 and int64), ``"tensor names"``, and ``"graph"``: the
      rest (tensor shapes and headers, operators, flatbuffer padding).
    """
    model = model_object(tflite_model)
    parts = {"int8 weights": 0, "int32 biases and shapes": 0, "quantization": 0, "tensor names": 0}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data):
                key = "int8 weights" if tensor.type == schema_fb.TensorType.INT8 else "int32 biases and shapes"
                parts[key] += len(data)
            quantization = tensor.quantization
            if quantization is not None and quantization.scale is not None:
                parts["quantization"] += 4 * len(quantization.scale) + 8 * len(quantization.zeroPoint)
            parts["tensor names"] += len(tensor.name or b"")
    parts["graph"] = len(tflite_model) - sum(parts.values())
    return parts
