"""The stages of :func:`keras_shufflenet.micro.export`, each a function that returns a frozen result.

A stage takes the settings (:class:`~keras_shufflenet.micro.options.ExportOptions`)
and the results it needs, and changes none of them; the orchestrator
(:mod:`keras_shufflenet.micro.export`) runs them in order, times them, and
:func:`keras_shufflenet.micro.report.build` reads their results. In order:

1. :func:`read_data`: calibration and eval images;
2. :func:`prune`, :func:`cluster`, :func:`quantization_aware_training`:
   optional fine-tunes, summed up by :func:`compressed`;
3. :func:`convert_model`: float and int8 flatbuffers, the compact TFLM copy;
4. :func:`store_weights`: the board's model, weights stored compressed where smaller;
5. :func:`write_models`: the ``.tflite`` files, in the staging directory;
6. :func:`search_arena`, :func:`run_in_tflm`: the arena, TFLM against the
   reference kernels and the dense model, accuracy, instructions;
7. :func:`write_firmware_sources`: ``tflm/``;
8. :func:`compile_for_npu`: the Ethos-U model and files (optional).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_shufflenet import run_dir
from keras_shufflenet.micro import (
    c_sources,
    compact,
    convert,
    fine_tuning,
    flatbuffer,
    samples,
    verify,
    weight_storage,
)
from keras_shufflenet.micro import npu as ethos_u  # `npu` is a setting of the export.
from keras_shufflenet.micro.options import ExportOptions

# Samples on which the float .tflite is compared with Keras.
_FLOAT_TFLITE_CHECK_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class ExportData:
    """Calibration images and, with ``eval_data``, labeled eval images."""

    calibration: np.ndarray
    eval_images: np.ndarray | None
    eval_labels: np.ndarray | None

    @property
    def verify_images(self) -> np.ndarray:
        """The images TFLM runs: the eval images, or the calibration images without eval data."""
        return self.eval_images if self.eval_images is not None else self.calibration


def read_data(
    model: Any, representative_data: Iterable[Any], eval_data: Iterable[Any] | None, options: ExportOptions
) -> ExportData:
    """Reads the calibration images and the labeled eval images, checked against the model's input."""
    calibration = samples.representative_samples(
        representative_data, options.input_shape, options.config.representative_samples
    )
    samples.check_input_range(model, calibration, "representative_data")
    samples.check_calibration_spread(calibration)
    if eval_data is None:
        return ExportData(calibration, None, None)
    images, labels = samples.collect_labeled(eval_data, options.input_shape, options.classes, options.config.num_eval)
    samples.check_input_range(model, images, "eval_data")
    return ExportData(calibration, images, labels)


def _top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(axis=1) == labels))


def _keras_top1(model: Any, data: ExportData) -> float | None:
    if data.eval_images is None:
        return None
    return _top1(model.predict(data.eval_images, batch_size=64, verbose=0), data.eval_labels)


@dataclasses.dataclass(frozen=True)
class FineTuned:
    """A copy of the model after one fine-tuning step, and the float top-1 of the model before it."""

    model: Any
    top1_before: float | None


def prune(model: Any, train_data: Any, data: ExportData, options: ExportOptions) -> FineTuned:
    """Magnitude pruning to ``prune_sparsity`` (tfmot), fine-tuning a copy."""
    before = _keras_top1(model, data)
    pruned = fine_tuning.prune(
        model, train_data, options.config.prune_sparsity, options.config.prune_epochs, verbose=options.verbose
    )
    return FineTuned(pruned, before)


def cluster(model: Any, train_data: Any, data: ExportData, options: ExportOptions) -> FineTuned:
    """Weight clustering (:func:`keras_shufflenet.micro.fine_tuning.cluster`), fine-tuning a copy."""
    before = _keras_top1(model, data)
    settings = options.compression
    clustered = fine_tuning.cluster(
        model,
        train_data,
        settings.clusters,
        settings.epochs,
        learning_rate=settings.learning_rate,
        per_channel=settings.per_channel,
        preserve_sparsity=options.config.pruning,
        layer_clusters=settings.layer_clusters,
        verbose=options.verbose,
    )
    return FineTuned(clustered, before)


def quantization_aware_training(model: Any, train_data: Any, options: ExportOptions) -> Any:
    """The model with fake quantization, fine-tuned for ``qat_epochs``."""
    return fine_tuning.quantization_aware_training(
        model, train_data, options.qat_epochs, preserve_sparsity=options.config.pruning, verbose=options.verbose
    )


@dataclasses.dataclass(frozen=True)
class Compressed:
    """The float model after pruning and clustering, the model to quantize (after QAT), and their statistics."""

    float_model: Any
    quant_model: Any
    sparsity: dict[str, Any]
    clustering: dict[str, Any] | None
    accuracy_before: dict[str, Any]


def compressed(
    model: Any,
    data: ExportData,
    options: ExportOptions,
    pruned: FineTuned | None,
    clustered: FineTuned | None,
    qat_model: Any | None,
) -> Compressed:
    """What the fine-tuning steps made of ``model``: the models to convert, sparsity and clustering statistics."""
    float_model = (clustered or pruned or FineTuned(model, None)).model
    accuracy: dict[str, Any] = {"samples": 0 if data.eval_images is None else len(data.eval_images)}
    if pruned is not None and pruned.top1_before is not None:
        accuracy["float_top1_before_pruning"] = pruned.top1_before
    if clustered is not None and clustered.top1_before is not None:
        accuracy["float_top1_before_clustering"] = clustered.top1_before
    clustering = None
    if clustered is not None:
        settings = options.compression
        clustering = {
            "clusters": settings.clusters,
            "layer_clusters": settings.layer_clusters,
            "per_channel": settings.per_channel,
            "epochs": settings.epochs,
            "learning_rate": settings.learning_rate,
            "distinct": fine_tuning.distinct_weights(float_model, settings.per_channel),
        }
    sparsity = fine_tuning.weight_sparsity(float_model)
    sparsity.update(target=options.config.prune_sparsity, note=fine_tuning.PRUNING_ON_TFLM)
    quant_model = float_model if qat_model is None else qat_model
    return Compressed(float_model, quant_model, sparsity, clustering, accuracy)


@dataclasses.dataclass(frozen=True)
class Converted:
    """The float and int8 flatbuffers, the int8 model's I/O quantization, and its compact TFLM copy."""

    float_tflite: bytes
    int8_tflite: bytes
    compact_model: compact.CompactModel
    io: dict[str, Any]


def convert_model(compressed_models: Compressed, calibration: np.ndarray, options: ExportOptions) -> Converted:
    """Float and full-int8 flatbuffers, checked for TFLM, and the compact copy the board gets."""
    # In a child process: TensorFlow's calibrator can crash its process (SIGSEGV).
    float_tflite, int8_tflite = convert.convert_in_child(
        compressed_models.float_model, compressed_models.quant_model, calibration, options.config.weight_quantization
    )
    flatbuffer.check_static_shapes(int8_tflite)
    flatbuffer.check_tflm_ops(int8_tflite)
    io = flatbuffer.io_quantization(int8_tflite)
    if io["input"]["dtype"] != "int8" or io["output"]["dtype"] != "int8":
        raise ValueError(f"The converted model is not full int8: input/output types {io}.")
    # What the board gets: the same int8 model without the bookkeeping TFLM
    # never reads (see compact.py); verified against the standard file.
    return Converted(float_tflite, int8_tflite, compact.compact_for_tflm(int8_tflite), io)


@dataclasses.dataclass(frozen=True)
class Stored:
    """The board's model (weights stored compressed where smaller) and, if searched, the dense model's arena."""

    stored: weight_storage.CompressedModel
    dense_arena: verify.ArenaSearch | None

    @property
    def compressed(self) -> bool:
        return bool(self.stored.compressed_tensors)


def store_weights(converted: Converted, options: ExportOptions) -> Stored:
    """Stores each weight tensor in the smallest of dense, LUT and pruned (see weight_storage.py).

    A decoded tensor lives in the arena while its operator runs, so the
    dense model's smallest arena bounds what one may take (unless
    ``max_decoded_bytes`` is set): that arena is searched here.
    """
    settings = options.compression
    dense_arena = None
    max_decoded = settings.max_decoded_bytes
    if settings.store != "dense" and max_decoded is None:
        with tempfile.TemporaryDirectory(prefix="dense_model_") as scratch:
            dense_path = os.path.join(scratch, "dense.tflite")
            with open(dense_path, "wb") as handle:
                handle.write(converted.compact_model.model)
            dense_arena = verify.find_min_arena(dense_path, margin=options.config.arena_margin)
        max_decoded = dense_arena.min_bytes
    stored = weight_storage.compress(converted.compact_model.model, settings.store, settings.index_bits, max_decoded)
    return Stored(stored, dense_arena)


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The ``.tflite`` files written (names relative to the export), and the paths TFLM runs."""

    files: list[str]
    tflm_path: str
    dense_tflm_path: str | None


def write_models(staging: str, converted: Converted, stored: Stored, options: ExportOptions) -> ModelFiles:
    """Writes the float, int8 and board ``.tflite`` files (and the board's model dense, when it is compressed)."""
    name = options.config.name
    contents = {
        f"{name}_float.tflite": converted.float_tflite,
        f"{name}_int8.tflite": converted.int8_tflite,
        f"{name}_int8_tflm.tflite": stored.stored.model,
    }
    if stored.compressed:
        contents[f"{name}_int8_tflm_dense.tflite"] = converted.compact_model.model
    for filename, content in contents.items():
        with open(os.path.join(staging, filename), "wb") as handle:
            handle.write(content)
    dense_path = os.path.join(staging, f"{name}_int8_tflm_dense.tflite") if stored.compressed else None
    return ModelFiles(list(contents), os.path.join(staging, f"{name}_int8_tflm.tflite"), dense_path)


@dataclasses.dataclass(frozen=True)
class Arena:
    """The board model's arena search, the arena written to the firmware, and the dense model's (when compressed)."""

    search: verify.ArenaSearch
    bytes: int
    dense: verify.ArenaSearch | None


def search_arena(files: ModelFiles, stored: Stored, options: ExportOptions) -> Arena:
    """The smallest arena of the board's model (and of the same model dense, when its weights are compressed)."""
    search = stored.dense_arena  # Searched already when the board's model is the dense one.
    if search is None or files.dense_tflm_path is not None:
        search = verify.find_min_arena(files.tflm_path, margin=options.config.arena_margin)
    if options.arena_bytes is not None and options.arena_bytes < search.min_bytes:
        raise ValueError(
            f"`arena_bytes`={options.arena_bytes:,} is too small: the model needs at least {search.min_bytes:,} "
            f"bytes of tensor arena in TFLite Micro ({search.recommended_bytes:,} recommended)."
        )
    dense = None
    if files.dense_tflm_path is not None:
        dense = stored.dense_arena or verify.find_min_arena(files.dense_tflm_path, margin=options.config.arena_margin)
    arena_bytes = options.arena_bytes if options.arena_bytes is not None else search.recommended_bytes
    return Arena(search, arena_bytes, dense)


@dataclasses.dataclass(frozen=True)
class Verified:
    """What TFLite Micro did with the model: outputs, exactness, accuracy; compressed, the lossless check."""

    int8_inputs: np.ndarray
    tflm_outputs: np.ndarray
    bit_exact: dict[str, Any]
    float_tflite_max_abs_diff: float
    float_top1: float | None
    int8_top1: float | None
    accuracy: dict[str, Any]
    decode: dict[str, Any] | None


def run_in_tflm(
    files: ModelFiles,
    arena: Arena,
    converted: Converted,
    float_model: Any,
    data: ExportData,
    options: ExportOptions,
) -> Verified:
    """TFLM against the reference kernels (and, compressed, against the dense model); float and int8 top-1."""
    images = data.verify_images
    io_input = converted.io["input"]
    int8_inputs = convert.quantize_input(images, io_input["scale"], io_input["zero_point"])
    num_verify = options.config.num_verify
    # Each TFLM run is a single-threaded child: the board's model, the same model dense (when the board's
    # stores its weights compressed) and the reference kernels (here) run side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        board_run = pool.submit(verify.run_tflm, files.tflm_path, arena.bytes, int8_inputs)
        dense_run = None
        if arena.dense is not None:
            dense_run = pool.submit(verify.run_tflm, files.dense_tflm_path, arena.dense.recommended_bytes, int8_inputs)
        reference = verify.run_reference(converted.int8_tflite, int8_inputs[:num_verify])
        tflm_outputs = board_run.result()
        decode = None if dense_run is None else _check_lossless(arena.dense, dense_run.result(), tflm_outputs)
    bit_exact = verify.compare_bit_exact(tflm_outputs[:num_verify], reference, options.config.tolerance_lsb)
    float_check = verify.run_tflite(converted.float_tflite, images[:_FLOAT_TFLITE_CHECK_SAMPLES])
    keras_check = np.asarray(float_model.predict(images[:_FLOAT_TFLITE_CHECK_SAMPLES], verbose=0))
    float_tflite_max_abs_diff = float(np.max(np.abs(float_check.reshape(keras_check.shape) - keras_check)))
    float_top1 = int8_top1 = None
    accuracy: dict[str, Any] = {"drop_points": None}
    if data.eval_images is not None:
        float_outputs = float_model.predict(data.eval_images, batch_size=64, verbose=0)
        float_top1 = _top1(float_outputs, data.eval_labels)
        int8_top1 = _top1(tflm_outputs, data.eval_labels)
        predicted = tflm_outputs.reshape(len(tflm_outputs), -1).argmax(axis=1)
        accuracy = {
            "drop_points": round(100 * (float_top1 - int8_top1), 2),
            "top1_agreement": float(np.mean(float_outputs.argmax(axis=1) == predicted)),
        }
    return Verified(
        int8_inputs,
        tflm_outputs,
        bit_exact,
        float_tflite_max_abs_diff,
        float_top1,
        int8_top1,
        accuracy,
        decode,
    )


def _check_lossless(dense_arena: verify.ArenaSearch, dense_outputs: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
    """The model with compressed weights must give the dense model's TFLM outputs bit for bit."""
    differing = int(
        np.count_nonzero(np.any(dense_outputs.reshape(len(outputs), -1) != outputs.reshape(len(outputs), -1), axis=1))
    )
    if differing:
        raise verify.VerificationError(
            f"The model with compressed weights gives different TFLM outputs from the same model dense on "
            f"{differing} of {len(outputs)} samples: the encoding is not lossless. Export with "
            "weight_storage='dense' to store the weights dense."
        )
    return {"dense_arena": dense_arena, "lossless_samples": len(outputs)}


@dataclasses.dataclass(frozen=True)
class Instructions:
    """TFLM instructions per inference (x86 callgrind) of the board's model; compressed, the dense model's too."""

    total: int | None
    by_op: dict[str, int]
    dense: int | None = None

    @property
    def decode(self) -> int:
        """The instructions of the DECODE operators (0 when nothing is stored compressed)."""
        return self.by_op.get(weight_storage.DECODE_OP, 0)


def count_instructions(files: ModelFiles, arena: Arena, verified: Verified) -> Instructions:
    """Counts the instructions of one inference of the board's model (and of the same model dense)."""
    sample = verified.int8_inputs[0]
    counted = verify.count_instructions_by_op(files.tflm_path, arena.bytes, sample)
    if counted is None:
        return Instructions(None, {})
    dense = None
    if arena.dense is not None:
        dense = verify.count_instructions(files.dense_tflm_path, arena.dense.recommended_bytes, sample)
    return Instructions(counted.total, dict(counted.by_op), dense)


def write_firmware_sources(
    staging: str,
    stored: Stored,
    converted: Converted,
    arena: Arena,
    verified: Verified,
    data: ExportData,
    options: ExportOptions,
) -> list[str]:
    """Writes ``tflm/``: the model, its settings and op resolver, and the samples with their expected outputs."""
    tflm_dir = os.path.join(staging, run_dir.FIRMWARE_DIR)
    os.mkdir(tflm_dir)
    written = c_sources.write_firmware(
        tflm_dir,
        stored.stored.model,
        options.config.name,
        converted.io,
        sorted(flatbuffer.op_histogram(stored.stored.model)),
        options.labels,
        arena.bytes,
        arena.search.min_bytes,
        **samples.firmware_samples(verified.int8_inputs, verified.tflm_outputs, data.eval_labels),
    )
    return [f"{run_dir.FIRMWARE_DIR}/{name}" for name in written]


@dataclasses.dataclass(frozen=True)
class NpuExport:
    """The report's ``npu`` section (Vela's estimates) and the files written for the Ethos-U target."""

    section: dict[str, Any]
    files: list[str]


def compile_for_npu(staging: str, converted: Converted, verified: Verified, options: ExportOptions) -> NpuExport:
    """Rewrites the int8 model for the NPU (checked bit-identical in TFLM), compiles it with Vela, writes ethos_u/."""
    section, files = ethos_u.export_npu(
        staging,
        options.config.name,
        converted.int8_tflite,
        options.npu,
        verified.int8_inputs,
        verified.tflm_outputs,
        options.config.arena_margin,
    )
    return NpuExport(section, files)
