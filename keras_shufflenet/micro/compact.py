"""A smaller int8 flatbuffer for TensorFlow Lite Micro, with identical arithmetic.

The TFLite converter stores, for every per-channel quantized weight tensor and
its int32 bias, one float scale *and one int64 zero point per output channel*,
plus the bias's own per-channel scale and zero point. With per-channel
quantization a layer therefore carries about 28 bytes of bookkeeping per
output channel besides its weights. ShuffleNet spends its budget on many
narrow channels (a grouped 1x1 conv has few weights per output channel), so
this overhead is a large share of its flash: about 40 % of a 0.25x model.

What TFLM needs of it, and what this module therefore keeps:

* weight scales, one per channel: the kernels requantize with them;
* weight zero points: all 0 (symmetric int8). TFLM's allocator accepts a
  single zero point for a per-channel tensor and repeats it for every channel
  ("zero point arrays for weights can be reduced to a single value");
* per-channel int32 biases: the conv kernels add them as raw int32 and never
  read their quantization, which is ``input_scale * weight_scale`` by
  construction, so it is dropped;
* tensor names and signature definitions: TFLM never reads them.

The result is for TFLM only (the TFLite interpreter insists on one zero
point per scale), so :func:`keras_shufflenet.micro.export` keeps the standard
``*_int8.tflite`` and checks that TFLM running the compact model is
bit-identical to TFLite's reference kernels running the standard one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

# TensorType values of the TFLite schema.
_INT32 = 2


@dataclasses.dataclass(frozen=True)
class CompactModel:
    """A compacted flatbuffer and what was removed.

    Attributes:
      model: The compact ``.tflite`` bytes (for TFLite Micro).
      original_bytes: Size of the standard flatbuffer.
      zero_points_collapsed: Per-channel constant tensors whose zero points
        are now stored once.
      bias_quantizations_dropped: Per-channel int32 biases whose unused
        quantization parameters were removed.
    """

    model: bytes
    original_bytes: int
    zero_points_collapsed: int
    bias_quantizations_dropped: int

    @property
    def saved_bytes(self) -> int:
        return self.original_bytes - len(self.model)


def compact_for_tflm(tflite_model: bytes) -> CompactModel:
    """Removes what TFLite Micro does not read from an int8 flatbuffer.

    Args:
      tflite_model: A standard ``.tflite`` flatbuffer (e.g. full int8 with
        per-channel weights).

    Returns:
      The :class:`CompactModel`. Its arithmetic in TFLM is unchanged; check
      it by comparing outputs, as ``export`` does.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    collapsed = dropped = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            quantization = tensor.quantization
            buffer = model.buffers[tensor.buffer]
            is_constant = buffer.data is not None and len(buffer.data) > 0
            if quantization is None or not is_constant or quantization.scale is None:
                continue
            channels = len(quantization.scale)
            if channels <= 1:
                continue  # Per-tensor parameters: a few bytes, and FULLY_CONNECTED reads the bias scale.
            if tensor.type == _INT32:
                tensor.quantization = None
                dropped += 1
                continue
            zero_points = quantization.zeroPoint
            if zero_points is not None and len(zero_points) == channels and not np.any(np.asarray(zero_points)):
                quantization.zeroPoint = np.zeros(1, np.int64)
                collapsed += 1
    flatbuffer_utils.strip_strings(model)
    compact = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return CompactModel(
        model=compact,
        original_bytes=len(tflite_model),
        zero_points_collapsed=collapsed,
        bias_quantizations_dropped=dropped,
    )
