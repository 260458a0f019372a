"""Weights stored compressed in the flatbuffer and decoded by TFLite Micro's DECODE operator.

TFLM (built with ``USE_TFLM_COMPRESSION``) runs a custom ``TFLM_DECODE``
operator that expands a compressed constant tensor into the arena right
before the operator that reads it. Two of its encodings serve int8 weights:

* **LUT** (look-up table): per channel, a table of the distinct values and
  ``index_bits``-wide indices into it. Clustered weights have at most
  ``clusters`` distinct values per output channel (the int8 conversion folds
  batch norm into a per-channel scale, which keeps the count), so 16
  clusters store 4 bits per weight.
* **Pruned**: one bit per element (1: stored, 0: the channel's zero point)
  and the stored values in element order. The ``tflite-micro`` package's
  encoder for it is a stub, so :func:`encode_pruned` writes it from the
  format the interpreter's decoder reads
  (``tensorflow/lite/micro/kernels/decode_state_prune.cc``): a 16-byte
  header (decode type 2, version 1, prune version 1 in byte 4), then the
  values; the bitmap is the encoded tensor, most significant bit first.

:func:`compress` picks, per weight tensor, the smallest of dense, LUT and
pruned, keeps a tensor dense when an encoding would not make it smaller,
and inserts the DECODE operators with the package's ``decode_insert``: one
before each consumer, so a decoded tensor lives only while its operator
runs and the arena grows by at most the largest decoded weight tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from typing import Any

import numpy as np

# How weights are stored: "auto" takes the smallest encoding per tensor.
STORE_MODES = ("auto", "lut", "prune", "dense")
# The decoder's widest index (DCM byte 5 holds the width in 3 bits).
MAX_INDEX_BITS = 7
# The DECODE operator as flatbuffer.op_name names it.
DECODE_OP = "CUSTOM(TFLM_DECODE)"
# Operators whose input 1 is a weight tensor (the filter).
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# DECODE header (decode common metadata) and its fields.
_DCM_BYTES = 16
_DCM_TYPE_PRUNE = 2
_DCM_VERSION = 1
_PRUNE_VERSION = 1
# An upper bound on the flatbuffer cost of storing one tensor compressed, besides
# its encoded and ancillary bytes: the ancillary and decoded tensors' tables, the
# DECODE operator, 16-byte alignment of the two buffers, and once per model the
# custom operator's code. Measured 64 (25 tensors), 93 (35) and 122 (3) bytes.
DECODE_OVERHEAD_BYTES = 128


# Clusters need at least 2 centroids; TFLM's LUT indices are at most 7 bits.
MAX_CLUSTERS = 2**MAX_INDEX_BITS


@dataclasses.dataclass(frozen=True)
class Compression:
    """Weight clustering and how the int8 weights are stored for TFLite Micro.

    Attributes:
      clusters: Shared values per kernel (per output channel with
        ``per_channel``) after clustering (:func:`keras_shufflenet.micro.fine_tuning.cluster`),
        in [2, 128]; 0 does not cluster. The int8 weights are then stored as
        LUT indices, ``ceil(log2(clusters))`` bits wide. Defaults to `0`.
      layer_clusters: Cluster counts, in [2, 128], for the layers whose names
        start with a key (the longest matching key wins), e.g.
        ``{"stage4": 4}`` to share fewer values in the stage that holds most
        of the weights; the other layers get ``clusters``. Defaults to `None`.
      per_channel: Cluster each output channel of a convolution on its own,
        for weights quantized per channel (one LUT table per channel).
        Defaults to `False`: one set of centroids per kernel, for
        ``weight_quantization="per_tensor"`` and one table per tensor
        (ShuffleNet's grouped 1x1 convs have few weights per channel, so
        per-channel tables cost about as much as they save).
      epochs: Fine-tuning epochs of clustering, ``>= 1``. Defaults to `2`.
      learning_rate: Adam learning rate at the start of that fine-tune,
        decayed to 0 on a cosine. Defaults to `1e-3` (on the quickstart,
        2e-4 recovered less of the accuracy that clustering costs).
      store: How the weights are stored in the flatbuffer, decoded by TFLM's
        DECODE operator: ``"auto"`` (per tensor the smallest of LUT, pruned
        and dense; dense wherever nothing is smaller), ``"lut"`` (every conv
        and dense kernel as a LUT), ``"prune"`` (every pruned kernel in the
        pruned encoding) or ``"dense"``. Defaults to `"auto"`.
      index_bits: LUT index width in [1, 7] for every LUT. Defaults to
        `None`: each tensor's distinct values decide, which is the width of
        its cluster count or less.
      max_decoded_bytes: The largest tensor stored compressed: DECODE expands
        a tensor into the arena while its operator runs, so a big one (the
        1,000-class classifier of a 224x224 model: 960 KB) would raise the
        arena by about its size. Defaults to `None`: the smallest arena of
        the same model stored dense.
    """

    clusters: int = 0
    per_channel: bool = False
    epochs: int = 2
    learning_rate: float = 1e-3
    store: str = "auto"
    index_bits: int | None = None
    layer_clusters: dict[str, int] | None = None
    max_decoded_bytes: int | None = None

    @property
    def clustering(self) -> bool:
        return self.clusters > 0 or bool(self.layer_clusters)

    @property
    def max_clusters(self) -> int:
        """The largest cluster count of any layer."""
        return max([self.clusters, *(self.layer_clusters or {}).values()])

    def check(self, quantize: str = "ptq", weight_quantization: str = "per_channel") -> None:
        """Refuses settings the decoder or the quantization cannot serve.

        Args:
          quantize: The export's ``quantize`` (``"ptq"`` or ``"qat"``).
          weight_quantization: ``"per_channel"`` or ``"per_tensor"``.

        Raises:
          ValueError: Naming the field, the value received and what is allowed.
        """
        if self.layer_clusters is not None and not (
            isinstance(self.layer_clusters, dict) and all(isinstance(key, str) for key in self.layer_clusters)
        ):
            raise ValueError(
                "`layer_clusters` must map layer-name prefixes (str) to cluster counts, e.g. {'stage4': 4}. "
                f"Received: {self.layer_clusters!r}"
            )
        for name, clusters in [("clusters", self.clusters), *(self.layer_clusters or {}).items()]:
            allowed_zero = name == "clusters"
            if (
                isinstance(clusters, bool)
                or not isinstance(clusters, (int, np.integer))
                or not ((allowed_zero and clusters == 0) or 2 <= clusters <= MAX_CLUSTERS)
            ):
                what = "`clusters`" if allowed_zero else f"`layer_clusters['{name}']`"
                raise ValueError(
                    f"{what} must be {'0 (no clustering) or ' if allowed_zero else ''}an integer in "
                    f"[2, {MAX_CLUSTERS}] (TFLM's LUT indices are at most {MAX_INDEX_BITS} bits). "
                    f"Received: {clusters!r}"
                )
        clusters = self.max_clusters
        if self.store not in STORE_MODES:
            raise ValueError(f"`store` must be one of {STORE_MODES}. Received: store={self.store!r}")
        if self.max_decoded_bytes is not None and (
            isinstance(self.max_decoded_bytes, bool)
            or not isinstance(self.max_decoded_bytes, (int, np.integer))
            or self.max_decoded_bytes < 1
        ):
            raise ValueError(
                "`max_decoded_bytes` must be a positive integer (bytes) or None. "
                f"Received: max_decoded_bytes={self.max_decoded_bytes!r}"
            )
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"`per_channel` must be True or False. Received: {self.per_channel!r}")
        check_index_bits(self.index_bits, int(clusters))
        if self.clustering:
            if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1:
                raise ValueError(f"`epochs` of clustering must be an integer >= 1. Received: epochs={self.epochs!r}")
            if (
                isinstance(self.learning_rate, bool)
                or not isinstance(self.learning_rate, (int, float, np.floating))
                or not 0 < self.learning_rate < float("inf")
            ):
                raise ValueError(
                    "`learning_rate` of clustering must be a positive number. "
                    f"Received: learning_rate={self.learning_rate!r}"
                )
            if quantize != "ptq":
                raise ValueError(
                    f"`clusters`={clusters} works with quantize='ptq' only: quantization-aware training "
                    f"moves the clustered weights off their shared values. Received: quantize={quantize!r}"
                )
            if self.store == "dense":
                raise ValueError(
                    f"`clusters`={clusters} with store='dense' clusters the weights but stores them dense, "
                    "which saves no flash: use store='auto' or 'lut'."
                )
        if self.clustering and self.per_channel and weight_quantization == "per_tensor":
            raise ValueError(
                "`per_channel`=True clusters each output channel on its own, which "
                "weight_quantization='per_tensor' cannot serve: one table per tensor would need every channel's "
                "values. Use per_channel=False (one set of centroids per kernel) or weight_quantization='per_channel'."
            )


class CompressionError(ValueError):
    """A tensor cannot be stored as requested (names the tensor, what it holds and what fits)."""


@dataclasses.dataclass(frozen=True)
class TensorStorage:
    """How one weight tensor is stored.

    Attributes:
      name: The tensor (or, without names, its operator and index).
      shape: The tensor's shape.
      encoding: ``"lut"``, ``"prune"`` or ``"dense"``.
      dense_bytes: Bytes of the dense tensor.
      stored_bytes: Bytes stored: encoded tensor + header and tables (dense: the tensor).
      distinct_per_channel: Most distinct values in one channel.
      zero_fraction: Share of elements equal to their channel's zero point.
      index_bits: LUT index width (LUT only).
      note: Why the tensor stayed dense, if it did.
    """

    name: str
    shape: tuple[int, ...]
    encoding: str
    dense_bytes: int
    stored_bytes: int
    distinct_per_channel: int
    zero_fraction: float
    index_bits: int | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class CompressedModel:
    """A flatbuffer with DECODE operators, and how each weight tensor is stored."""

    model: bytes
    dense_bytes: int
    tensors: list[TensorStorage]

    @property
    def compressed_tensors(self) -> list[TensorStorage]:
        return [t for t in self.tensors if t.encoding != "dense"]

    def summary(self) -> dict[str, Any]:
        """Counts and bytes by encoding, for the report."""
        by_encoding: dict[str, dict[str, int]] = {}
        for tensor in self.tensors:
            entry = by_encoding.setdefault(tensor.encoding, {"tensors": 0, "dense_bytes": 0, "stored_bytes": 0})
            entry["tensors"] += 1
            entry["dense_bytes"] += tensor.dense_bytes
            entry["stored_bytes"] += tensor.stored_bytes
        return {
            "model_bytes": len(self.model),
            "dense_model_bytes": self.dense_bytes,
            "by_encoding": by_encoding,
            "kept_dense": [{"tensor": t.name, "why": t.note} for t in self.tensors if t.note],
        }


def index_bits_for(clusters: int) -> int:
    """The LUT index width that addresses ``clusters`` table entries."""
    return max(1, int(clusters - 1).bit_length())


def check_index_bits(index_bits: int | None, clusters: int = 0) -> None:
    """Refuses an index width the decoder cannot read, or one too narrow for ``clusters``.

    Raises:
      ValueError: Naming the argument, the value and what is allowed.
    """
    if index_bits is None:
        return
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)):
        raise ValueError(
            f"`index_bits` must be an integer in [1, {MAX_INDEX_BITS}]. Received: index_bits={index_bits!r}"
        )
    if not 1 <= index_bits <= MAX_INDEX_BITS:
        raise ValueError(
            f"`index_bits` must be in [1, {MAX_INDEX_BITS}] (TFLM's LUT decoder reads indices of 1 to "
            f"{MAX_INDEX_BITS} bits). Received: index_bits={index_bits}"
        )
    if clusters and clusters > 2**index_bits:
        raise ValueError(
            f"`clusters`={clusters} does not fit `index_bits`={index_bits}: {index_bits}-bit indices address at "
            f"most {2**index_bits} table entries. Use clusters <= {2**index_bits} or index_bits >= "
            f"{index_bits_for(clusters)}."
        )


def _channel_view(values: np.ndarray, axis: int | None) -> np.ndarray:
    """``(channels, elements per channel)``: one row per quantization channel."""
    if axis is None or values.ndim == 0:
        return values.reshape(1, -1)
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def _element_zero_points(shape: tuple[int, ...], zero_points: np.ndarray, axis: int | None) -> np.ndarray:
    """Each element's zero point, in element (C) order."""
    if axis is None or zero_points.size == 1:
        return np.full(int(np.prod(shape)), zero_points.reshape(-1)[0], dtype=np.int64)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(zero_points.reshape(view), shape).reshape(-1)


def encode_pruned(values: np.ndarray, zero_points: Any = 0, axis: int | None = None) -> tuple[bytes, bytes]:
    """Encodes a tensor in TFLM's pruned format.

    The decoder walks the elements in memory order and, for each, reads one
    bit (most significant first): 1 takes the next stored value, 0 writes
    the zero point of the element's channel. The channel axis (0 or the
    last, as the tensor's quantization says) therefore only decides which
    zero point each element is compared with.

    Args:
      values: The tensor's values (any integer or float dtype the decoder
        supports; floats are compared with 0).
      zero_points: One zero point, or one per channel along ``axis``.
      axis: The quantized dimension; ``None`` for one zero point.

    Returns:
      ``(bitmap, ancillary)``: the encoded tensor and the ancillary tensor
      (header, then the stored values in element order).
    """
    values = np.asarray(values)
    zero_points = np.asarray(zero_points, dtype=np.int64).reshape(-1)
    if axis is not None and zero_points.size not in (1, values.shape[axis]):
        raise ValueError(
            f"`zero_points` must hold 1 or {values.shape[axis]} values (the size of axis {axis}). "
            f"Received {zero_points.size}."
        )
    flat = values.reshape(-1)
    keep = flat != _element_zero_points(values.shape, zero_points, axis).astype(flat.dtype)
    header = bytearray(_DCM_BYTES)
    header[0] = _DCM_TYPE_PRUNE
    header[1] = _DCM_VERSION
    header[4] = _PRUNE_VERSION
    stored = np.ascontiguousarray(flat[keep])
    return np.packbits(keep).tobytes(), bytes(header) + stored.astype(stored.dtype.newbyteorder("<")).tobytes()


def _pruned_bytes(values: np.ndarray, zeros: int) -> int:
    return (values.size + 7) // 8 + _DCM_BYTES + (values.size - zeros) * values.itemsize


def _lut_bytes(values: np.ndarray, channels: int, stride: int, index_bits: int) -> int:
    return (values.size * index_bits + 7) // 8 + _DCM_BYTES + channels * stride * values.itemsize


def _quantization(tensor: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, int | None, int]:
    """Zero points, the quantized axis (None for per-tensor) and the channel count."""
    quantization = tensor.quantization
    if quantization is None:
        return np.zeros(1, np.int64), None, 1
    scales = np.atleast_1d(np.asarray(quantization.scales))
    zero_points = np.atleast_1d(np.asarray(quantization.zero_points, dtype=np.int64))
    if scales.size <= 1:
        return zero_points[:1], None, 1
    return zero_points, int(quantization.axis or 0), int(scales.size)


def _weight_tensors(subgraph: Any) -> list[tuple[int, str, str, Any]]:
    """(index, name, operator, tensor) of each constant filter read by a conv or fully connected operator, once each."""
    index_of = {id(tensor): index for index, tensor in enumerate(subgraph.tensors)}
    found: dict[int, tuple[int, str, str, Any]] = {}
    for position, op in enumerate(subgraph.operators):
        if op.opcode_name not in _WEIGHT_OPS or len(op.inputs) < 2:
            continue
        tensor = op.inputs[1]
        if tensor is None or tensor.buffer is None or not tensor.buffer.data or id(tensor) in found:
            continue
        name = tensor.name or f"op{position}_{op.opcode_name.lower()}_filter"
        found[id(tensor)] = (index_of[id(tensor)], name, op.opcode_name, tensor)
    return list(found.values())


def _plan(
    name: str,
    values: np.ndarray,
    zero_points: np.ndarray,
    axis: int | None,
    channels: int,
    store: str,
    bits: int | None,
) -> TensorStorage:
    """The encoding of one tensor under ``store``, by its stored size."""
    rows = _channel_view(values, axis if channels > 1 else None)
    distinct = max(len(np.unique(row)) for row in rows)
    zeros = int(np.count_nonzero(values.reshape(-1) == _element_zero_points(values.shape, zero_points, axis)))
    dense = values.nbytes
    common = dict(
        name=name,
        shape=tuple(values.shape),
        dense_bytes=dense,
        distinct_per_channel=distinct,
        zero_fraction=round(zeros / values.size, 4),
    )
    index_bits = max(bits or 1, index_bits_for(distinct))
    lut_ok = values.dtype == np.int8 and distinct <= 2**MAX_INDEX_BITS
    if store == "lut" and (not lut_ok or (bits is not None and distinct > 2**bits)):
        width = bits or MAX_INDEX_BITS
        raise CompressionError(
            f"Tensor '{name}' {tuple(values.shape)} has {distinct} distinct values in one channel; a LUT with "
            f"{width}-bit indices holds at most {2**width}. Cluster the weights (`clusters` <= {2**width}), or "
            "store it with store='auto' (which keeps such tensors dense or pruned)."
        )
    sizes = {"dense": dense}
    if lut_ok and store in ("auto", "lut"):
        sizes["lut"] = _lut_bytes(values, channels, distinct, index_bits)
    if zeros and store in ("auto", "prune"):
        sizes["prune"] = _pruned_bytes(values, zeros)
    candidates = {k: v for k, v in sizes.items() if k != "dense"}
    if not candidates:
        return TensorStorage(encoding="dense", stored_bytes=dense, **common)
    encoding = min(candidates, key=candidates.get)
    if candidates[encoding] + DECODE_OVERHEAD_BYTES >= dense:
        note = (
            f"kept dense: {encoding} would store {candidates[encoding] + DECODE_OVERHEAD_BYTES:,} bytes "
            f"(with the DECODE operator) for {dense:,} dense"
        )
        return TensorStorage(encoding="dense", stored_bytes=dense, note=note, **common)
    return TensorStorage(
        encoding=encoding,
        stored_bytes=candidates[encoding],
        index_bits=index_bits if encoding == "lut" else None,
        **common,
    )


def _aligned(model_bytes: bytes) -> bytes:
    """Re-serializes with the C++ flatbuffer library, which honours the schema's buffer alignment."""
    # tflite-micro (the micro extra) is imported when used: the training config reads this module.
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    with tempfile.TemporaryDirectory() as scratch:
        source, target = os.path.join(scratch, "in.tflite"), os.path.join(scratch, "out.tflite")
        with open(source, "wb") as handle:
            handle.write(model_bytes)
        tflite_flatbuffer_align_wrapper.align_tflite_model(source, target)
        with open(target, "rb") as handle:
            return handle.read()


def compress(
    tflite_model: bytes, store: str = "auto", index_bits: int | None = None, max_decoded_bytes: int | None = None
) -> CompressedModel:
    """Stores the weight tensors of an int8 model compressed, with DECODE operators before their consumers.

    Args:
      tflite_model: An int8 ``.tflite`` flatbuffer (e.g. the compact TFLM copy).
      store: ``"auto"`` (per tensor the smallest of LUT, pruned and dense),
        ``"lut"`` (every conv and fully connected filter as a LUT; refuses
        a tensor with too many distinct values), ``"prune"`` (those filters
        in the pruned encoding), or ``"dense"`` (nothing compressed).
        Depthwise filters, which are neither clustered nor pruned, are
        stored as with ``"auto"``. Any tensor that an encoding would not
        make smaller stays dense, with a note. Defaults to `"auto"`.
      index_bits: LUT index width (1-7); at least what each tensor's distinct
        values need. Defaults to `None`: what each tensor needs.
      max_decoded_bytes: Keep dense every tensor larger than this: a decoded
        tensor takes its dense size of arena while its operator runs.
        Defaults to `None` (no limit).

    Returns:
      The :class:`CompressedModel`. With nothing worth compressing its model
      is ``tflite_model`` unchanged.

    Raises:
      ValueError: For an unknown ``store`` or a bad ``index_bits``.
      CompressionError: For ``store="lut"`` on a tensor with too many
        distinct values for its table.
    """
    if store not in STORE_MODES:
        raise ValueError(f"`store` must be one of {STORE_MODES}. Received: store={store!r}")
    check_index_bits(index_bits)
    # tflite-micro (the micro extra) is imported when used: the training config reads this module.
    from tflite_micro.tensorflow.lite.micro.compression import (
        compressor,
        decode_insert,
        lut,
        model_editor,
        spec,
    )

    model = model_editor.read(bytes(tflite_model))
    tensors: list[TensorStorage] = []
    results: dict[tuple[int, int], Any] = {}
    for subgraph_index, subgraph in enumerate(model.subgraphs):
        for tensor_index, name, op, tensor in _weight_tensors(subgraph):
            values = tensor.array
            zero_points, axis, channels = _quantization(tensor, tuple(values.shape))
            # Depthwise kernels are neither clustered nor pruned: "lut" and "prune" leave them to "auto".
            tensor_store = "auto" if op == "DEPTHWISE_CONV_2D" and store != "dense" else store
            storage = (
                TensorStorage(name, tuple(values.shape), "dense", values.nbytes, values.nbytes, 0, 0.0)
                if store == "dense"
                else _plan(name, values, zero_points, axis, channels, tensor_store, index_bits)
            )
            if storage.encoding != "dense" and max_decoded_bytes is not None and values.nbytes > max_decoded_bytes:
                note = (
                    f"kept dense: decoding it would take {values.nbytes:,} bytes of arena, more than the "
                    f"{max_decoded_bytes:,} allowed (the dense model's whole arena unless set)"
                )
                storage = dataclasses.replace(storage, encoding="dense", stored_bytes=values.nbytes, note=note)
            tensors.append(storage)
            if storage.encoding == "lut":
                mode = spec.PerChannel(axis=axis) if channels > 1 else spec.PerTensor()
                # The package's LUT encoder notes on stderr when the width exceeds the need.
                with contextlib.redirect_stderr(io.StringIO()):
                    result = lut.LutCompressor().compress(tensor, spec.LookUpTableCompression(storage.index_bits, mode))
            elif storage.encoding == "prune":
                encoded, ancillary = encode_pruned(values, zero_points, axis)
                result = compressor.CompressionResult(encoded_data=encoded, ancillary_data=ancillary)
            else:
                continue
            results[(subgraph_index, tensor_index)] = result
    if not results:
        return CompressedModel(bytes(tflite_model), len(tflite_model), tensors)
    decode_insert.insert_decode_operators(model, results)
    for subgraph_index, tensor_index in results:
        encoded = model.subgraphs[subgraph_index].tensors[tensor_index]
        # The encoded tensor is raw bytes; its scales and zero points now belong to the DECODE output.
        # The package's writer keeps the original flatbuffer quantization when the wrapper's is None,
        # which would store them twice (12 bytes per channel).
        if encoded.quantization is None and getattr(encoded, "_fb", None) is not None:
            encoded._fb.quantization = None
    return CompressedModel(_aligned(bytes(model.build())), len(tflite_model), tensors)
