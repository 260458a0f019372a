"""Rewrites of the int8 flatbuffer for the Arm Ethos-U NPU, each with the same integer arithmetic.

Vela (Arm's compiler for Ethos-U) runs a grouped ``CONV_2D`` as one
convolution per group, but when the convolution has a fused ReLU it writes
the groups' raw outputs first and applies the activation in a separate
elementwise pass over the whole output tensor: in ShuffleNet 0.5x g3 at
96x96 that pass costs about a tenth of the network's NPU cycles (see
``docs/npu.md``). :func:`split_grouped_convs` writes each grouped
convolution as ``SPLIT`` + one ``CONV_2D`` per group + ``CONCATENATION``:
every group's convolution fuses its own activation and writes its slice of
the output directly.

The rewrite works on the quantized flatbuffer, not on the Keras model, so
that the quantization is the one the CPU model has: each group's
convolution keeps its output channels' int8 weights, int32 biases and
per-channel scales, reads the same int8 input values (a split copies them)
and writes with the output tensor's scale and zero point (a concatenation
whose inputs share its quantization copies them). The rewritten model is
therefore bit-identical to the original in TFLite Micro, which
:func:`keras_shufflenet.micro.npu.export_npu` checks on every sample.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

# The rewrites :func:`rewrite` knows, in the order they are applied.
REWRITES = ("split_grouped_convs", "flatten_concatenations")

_INT32 = schema_fb.TensorType.INT32


def opcode_index(model: Any, builtin: int) -> int:
    """The index of ``builtin``'s operator code in ``model``, added if missing."""
    for index, opcode in enumerate(model.operatorCodes):
        if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == builtin:
            return index
    opcode = schema_fb.OperatorCodeT()
    opcode.builtinCode = builtin
    opcode.deprecatedBuiltinCode = min(builtin, schema_fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    opcode.version = 1
    model.operatorCodes.append(opcode)
    return len(model.operatorCodes) - 1


def _add_buffer(model: Any, data: np.ndarray | None) -> int:
    buffer = schema_fb.BufferT()
    buffer.data = None if data is None else np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def add_tensor(model: Any, subgraph: Any, like: Any, name: str, shape: list[int], data: np.ndarray | None) -> int:
    """A new tensor of ``like``'s type and quantization (copied), with ``shape`` and constant ``data``."""
    tensor = schema_fb.TensorT()
    tensor.type = like.type
    tensor.shape = np.asarray(shape, np.int32)
    tensor.name = name
    tensor.quantization = copy.deepcopy(like.quantization)
    tensor.buffer = _add_buffer(model, data)
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def constant(model: Any, tensor: Any, dtype: Any) -> np.ndarray:
    """The constant data of ``tensor`` (a ``TensorT`` of ``model``) as an array of ``dtype`` in its shape."""
    data = model.buffers[tensor.buffer].data
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(tuple(tensor.shape))


def _channel_quantization(quantization: Any, start: int, stop: int) -> Any:
    """``quantization`` restricted to the output channels ``[start, stop)`` (per-tensor parameters are kept)."""
    if quantization is None or quantization.scale is None or len(quantization.scale) <= 1:
        return copy.deepcopy(quantization)
    part = copy.deepcopy(quantization)
    part.scale = np.asarray(quantization.scale)[start:stop]
    zero_points = np.asarray(quantization.zeroPoint)
    part.zeroPoint = zero_points if len(zero_points) <= 1 else zero_points[start:stop]
    return part


def _conv_groups(model: Any, subgraph: Any, op: Any) -> int:
    """How many groups a ``CONV_2D`` has (1 for a dense convolution)."""
    if max(
        model.operatorCodes[op.opcodeIndex].builtinCode, model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode
    ) != (schema_fb.BuiltinOperator.CONV_2D):
        return 1
    input_channels = int(subgraph.tensors[op.inputs[0]].shape[-1])
    filter_channels = int(subgraph.tensors[op.inputs[1]].shape[-1])
    return input_channels // filter_channels if filter_channels and input_channels != filter_channels else 1


def _name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name or "")


def split_grouped_convs(model: Any) -> int:
    """Replaces each grouped ``CONV_2D`` of ``model`` (a ``ModelT``, changed in place) by split, convs, concatenation.

    Returns:
      How many convolutions were split.
    """
    split_code = opcode_index(model, schema_fb.BuiltinOperator.SPLIT)
    concat_code = opcode_index(model, schema_fb.BuiltinOperator.CONCATENATION)
    rewritten = 0
    replaced: list[int] = []
    for subgraph in model.subgraphs:
        operators = []
        for op in subgraph.operators:
            groups = _conv_groups(model, subgraph, op)
            if groups == 1:
                operators.append(op)
                continue
            rewritten += 1
            tensors = subgraph.tensors
            source, kernel, output = (tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
            has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
            weights = constant(model, kernel, np.int8)
            bias = constant(model, tensors[op.inputs[2]], np.int32) if has_bias else None
            replaced += [kernel.buffer, *([tensors[op.inputs[2]].buffer] if has_bias else [])]
            out_per_group = int(output.shape[-1]) // groups
            in_per_group = int(source.shape[-1]) // groups
            base = _name(output)
            axis = add_tensor(model, subgraph, tensors[op.inputs[1]], f"{base}/split_axis", [], np.int32(3))
            tensors[axis].type, tensors[axis].quantization = _INT32, None
            parts = [
                add_tensor(model, subgraph, source, f"{base}/group{k}_input", [*source.shape[:-1], in_per_group], None)
                for k in range(groups)
            ]
            split = schema_fb.OperatorT()
            split.opcodeIndex = split_code
            split.inputs = np.asarray([axis, op.inputs[0]], np.int32)
            split.outputs = np.asarray(parts, np.int32)
            split.builtinOptionsType = schema_fb.BuiltinOptions.SplitOptions
            split.builtinOptions = schema_fb.SplitOptionsT()
            split.builtinOptions.numSplits = groups
            operators.append(split)
            outputs = []
            for k in range(groups):
                start, stop = k * out_per_group, (k + 1) * out_per_group
                kernel_k = add_tensor(
                    model,
                    subgraph,
                    kernel,
                    f"{base}/group{k}_kernel",
                    [out_per_group, *kernel.shape[1:]],
                    weights[start:stop],
                )
                tensors[kernel_k].quantization = _channel_quantization(kernel.quantization, start, stop)
                inputs = [parts[k], kernel_k]
                if bias is not None:
                    bias_tensor = tensors[op.inputs[2]]
                    bias_k = add_tensor(
                        model, subgraph, bias_tensor, f"{base}/group{k}_bias", [out_per_group], bias[start:stop]
                    )
                    tensors[bias_k].quantization = _channel_quantization(bias_tensor.quantization, start, stop)
                    inputs.append(bias_k)
                out_k = add_tensor(
                    model, subgraph, output, f"{base}/group{k}", [*output.shape[:-1], out_per_group], None
                )
                conv = copy.deepcopy(op)
                conv.inputs = np.asarray(inputs, np.int32)
                conv.outputs = np.asarray([out_k], np.int32)
                operators.append(conv)
                outputs.append(out_k)
            operators.append(_channel_concatenation(concat_code, outputs, op.outputs[0]))
        subgraph.operators = operators
    _drop_unread_buffers(model, replaced)
    return rewritten


def _channel_concatenation(opcode_index: int, inputs: list[int], output: int) -> Any:
    """A CONCATENATION operator of ``inputs`` along the channels into ``output``."""
    concat = schema_fb.OperatorT()
    concat.opcodeIndex = opcode_index
    concat.inputs = np.asarray(inputs, np.int32)
    concat.outputs = np.asarray([output], np.int32)
    concat.builtinOptionsType = schema_fb.BuiltinOptions.ConcatenationOptions
    concat.builtinOptions = schema_fb.ConcatenationOptionsT()
    concat.builtinOptions.axis = 3
    return concat


def _drop_unread_buffers(model: Any, buffers: list[int]) -> None:
    """Empties ``buffers`` that no tensor reads any more (a buffer another tensor shares keeps its bytes)."""
    users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    for buffer in buffers:
        if users.get(buffer) == 1:
            model.buffers[buffer].data = None


def _same_quantization(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return np.array_equal(np.asarray(a.scale), np.asarray(b.scale)) and np.array_equal(
        np.asarray(a.zeroPoint), np.asarray(b.zeroPoint)
    )


def is_op(model: Any, op: Any, builtin: int) -> bool:
    """Whether ``op`` (an ``OperatorT`` of ``model``) is the builtin operator ``builtin``."""
    opcode = model.operatorCodes[op.opcodeIndex]
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == builtin


def flatten_concatenations(model: Any) -> int:
    """Merges a ``CONCATENATION`` that only feeds another along the same axis into it.

    ``concat(a, concat(b, c)) == concat(a, b, c)``; merged only where both
    have no fused activation and the inner one's inputs and output share the
    outer one's quantization, so every value is copied unchanged. Vela writes
    the inputs of one concatenation straight into their slices of its output,
    but copies a concatenation that feeds another (a ``MemoryCopy``): after
    :func:`split_grouped_convs`, the branch of a stride-2 ShuffleNet unit is
    such a concatenation inside the unit's own.

    Returns:
      How many concatenations were merged away.
    """
    merged = 0
    concat_code = schema_fb.BuiltinOperator.CONCATENATION
    for subgraph in model.subgraphs:
        readers: dict[int, int] = {}
        for op in subgraph.operators:
            for index in op.inputs:
                readers[int(index)] = readers.get(int(index), 0) + 1
        for index in subgraph.outputs:
            readers[int(index)] = readers.get(int(index), 0) + 1
        producer = {int(op.outputs[0]): op for op in subgraph.operators if len(op.outputs) == 1}
        removed = set()
        for op in subgraph.operators:
            if not is_op(model, op, concat_code) or op.builtinOptions.fusedActivationFunction:
                continue
            output = subgraph.tensors[op.outputs[0]]
            rank = len(output.shape)
            inputs: list[int] = []
            for index in op.inputs:
                inner = producer.get(int(index))
                if (
                    inner is not None
                    and is_op(model, inner, concat_code)
                    and id(inner) not in removed
                    and readers.get(int(index)) == 1
                    and not inner.builtinOptions.fusedActivationFunction
                    and inner.builtinOptions.axis % rank == op.builtinOptions.axis % rank
                    and all(
                        _same_quantization(subgraph.tensors[i].quantization, output.quantization)
                        for i in [*inner.inputs, index]
                    )
                ):
                    inputs.extend(int(i) for i in inner.inputs)
                    removed.add(id(inner))
                    merged += 1
                else:
                    inputs.append(int(index))
            op.inputs = np.asarray(inputs, np.int32)
        subgraph.operators = [op for op in subgraph.operators if id(op) not in removed]
    return merged


def rewrite(tflite_model: bytes, rewrites: tuple[str, ...] = REWRITES) -> tuple[bytes, dict[str, int]]:
    """Applies ``rewrites`` (names from :data:`REWRITES`) to an int8 flatbuffer.

    Returns:
      The rewritten flatbuffer and, per rewrite, how many places it changed.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    counts = {}
    for name in rewrites:
        if name not in REWRITES:
            raise ValueError(f"Unknown NPU rewrite {name!r}; allowed: {list(REWRITES)}.")
        counts[name] = globals()[name](model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), counts
