"""``export``: from a trained Keras ShuffleNet to verified files for a microcontroller.

:func:`export` validates its arguments, then runs named stages, each
returning what the next needs: read the data, compress (prune, QAT),
convert (float, int8, the compact TFLM copy), verify in TFLite Micro (arena,
bit-exactness, accuracy), write the firmware sources, and build the report
(:func:`keras_shufflenet.micro.report.build`). Everything is written in a
staging directory and moved into ``output_dir`` at the end.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from keras_shufflenet import run_dir
from keras_shufflenet.micro import (
    c_sources,
    compact,
    compression,
    convert,
    flatbuffer,
    report,
    samples,
    tflm_compression,
    verify,
)
from keras_shufflenet.micro import npu as ethos_u  # `npu` is export()'s argument.
from keras_shufflenet.micro.export_config import ExportConfig
from keras_shufflenet.micro.options import ExportOptions
from keras_shufflenet.micro.options import validate as validate_options
from keras_shufflenet.profiling import profile

# Samples on which the float .tflite is compared with Keras.
_FLOAT_TFLITE_CHECK_SAMPLES = 8


@dataclasses.dataclass
class _Data:
    """Calibration images and, with ``eval_data``, labeled eval images."""

    calibration: np.ndarray
    eval_images: np.ndarray | None
    eval_labels: np.ndarray | None


@dataclasses.dataclass
class _Compressed:
    """The float model after pruning and clustering, the model to quantize (after QAT), and their statistics."""

    float_model: Any
    quant_model: Any
    sparsity: dict[str, Any]
    clustering: dict[str, Any] | None
    accuracy: dict[str, Any]


@dataclasses.dataclass
class _Converted:
    """The flatbuffers, their operators and int8 I/O, and where they were written.

    ``tflm_path`` is the model the board gets: ``stored.model`` (weights
    compressed, with DECODE operators) when that is smaller, else the compact
    dense model. With compression, ``dense_tflm_path`` is the same model dense.
    """

    float_tflite: bytes
    int8_tflite: bytes
    compact_model: compact.CompactModel
    stored: tflm_compression.CompressedModel
    ops: list[str]
    io: dict[str, Any]
    files: list[str]
    tflm_path: str
    dense_tflm_path: str | None
    dense_arena: verify.ArenaSearch | None

    @property
    def board_model(self) -> bytes:
        return self.stored.model


@dataclasses.dataclass
class _Verified:
    """What TFLite Micro did with the model."""

    arena: verify.ArenaSearch
    arena_bytes: int
    int8_inputs: np.ndarray
    tflm_outputs: np.ndarray
    bit_exact: dict[str, Any]
    float_tflite_max_abs_diff: float
    float_top1: float | None
    int8_top1: float | None
    instructions: int | None
    decode: dict[str, Any] | None


class _Timer:
    """Wall-clock seconds per stage, in order; each finished stage is told to ``progress`` with its time."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._started = time.monotonic()

    def lap(self, phase: str, detail: str = "") -> None:
        now = time.monotonic()
        self.timings[phase] = round(now - self._started, 2)
        self._started = now
        if self._progress is not None:
            self._progress(f"{phase}{': ' + detail if detail else ''} ({self.timings[phase]:.1f} s)")


def _read_data(
    model: Any, representative_data: Iterable[Any], eval_data: Iterable[Any] | None, options: ExportOptions
) -> _Data:
    calibration = samples.representative_samples(
        representative_data, options.input_shape, options.config.representative_samples
    )
    samples.check_input_range(model, calibration, "representative_data")
    if eval_data is None:
        return _Data(calibration, None, None)
    images, labels = samples.collect_labeled(eval_data, options.input_shape, options.classes, options.config.num_eval)
    samples.check_input_range(model, images, "eval_data")
    return _Data(calibration, images, labels)


def _top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(axis=1) == labels))


def _compress(model: Any, train_data: Any, data: _Data, options: ExportOptions, timer: _Timer) -> _Compressed:
    """Prunes (optional) and runs quantization-aware training (optional), each fine-tuning a copy."""
    float_model = model
    accuracy: dict[str, Any] = {"samples": 0 if data.eval_images is None else len(data.eval_images)}
    if options.config.pruning:
        if data.eval_images is not None:
            before = model.predict(data.eval_images, batch_size=64, verbose=0)
            accuracy["float_top1_before_pruning"] = _top1(before, data.eval_labels)
        float_model = compression.prune(
            model, train_data, options.config.prune_sparsity, options.config.prune_epochs, verbose=options.verbose
        )
        timer.lap(
            "prune",
            f"to {options.config.prune_sparsity:.0%} of the prunable weights, "
            f"{options.config.prune_epochs} fine-tuning epoch(s)",
        )
    clustering = None
    settings = options.compression
    if settings.clustering:
        if data.eval_images is not None:
            before = float_model.predict(data.eval_images, batch_size=64, verbose=0)
            accuracy["float_top1_before_clustering"] = _top1(before, data.eval_labels)
        float_model = compression.cluster(
            float_model,
            train_data,
            settings.clusters,
            settings.epochs,
            learning_rate=settings.learning_rate,
            per_channel=settings.per_channel,
            preserve_sparsity=options.config.pruning,
            layer_clusters=settings.layer_clusters,
            verbose=options.verbose,
        )
        clustering = {
            "clusters": settings.clusters,
            "layer_clusters": settings.layer_clusters,
            "per_channel": settings.per_channel,
            "epochs": settings.epochs,
            "learning_rate": settings.learning_rate,
            "distinct": compression.distinct_weights(float_model, settings.per_channel),
        }
        timer.lap(
            "cluster",
            f"{compression.describe_clusters(settings.clusters, settings.layer_clusters, settings.per_channel)}, "
            f"{compression.describe_finetune(settings.epochs, settings.learning_rate)}",
        )
    sparsity = compression.weight_sparsity(float_model)
    sparsity.update(target=options.config.prune_sparsity, note=compression.PRUNING_ON_TFLM)
    quant_model = float_model
    if options.config.quantize == "qat":
        quant_model = compression.quantization_aware_training(
            float_model,
            train_data,
            options.qat_epochs,
            preserve_sparsity=options.config.pruning,
            verbose=options.verbose,
        )
        timer.lap("quantization-aware training", f"{options.qat_epochs} epoch(s)")
    return _Compressed(float_model, quant_model, sparsity, clustering, accuracy)


def _convert(
    compressed: _Compressed, calibration: np.ndarray, options: ExportOptions, staging: str, timer: _Timer
) -> _Converted:
    """Float and full-int8 flatbuffers, checked for TFLM, and the compact copy the board gets."""
    # In a child process: TensorFlow's calibrator can crash its process (SIGSEGV).
    float_tflite, int8_tflite = convert.convert_in_child(
        compressed.float_model, compressed.quant_model, calibration, options.config.weight_quantization
    )
    timer.lap(
        "convert",
        f"float and int8 ({options.config.weight_quantization.replace('_', '-')} weights) .tflite, calibrated on "
        f"{len(calibration):,} images",
    )
    flatbuffer.check_static_shapes(int8_tflite)
    flatbuffer.check_tflm_ops(int8_tflite)
    io = flatbuffer.io_quantization(int8_tflite)
    if io["input"]["dtype"] != "int8" or io["output"]["dtype"] != "int8":
        raise ValueError(f"The converted model is not full int8: input/output types {io}.")
    # What the board gets: the same int8 model without the bookkeeping TFLM
    # never reads (see compact.py); verified against the standard file.
    compact_model = compact.compact_for_tflm(int8_tflite)
    # Weights stored compressed where that is smaller (see tflm_compression.py);
    # verified below to give the dense model's outputs bit for bit.
    settings = options.compression
    dense_tflm_path = os.path.join(staging, f"{options.config.name}_int8_tflm_dense.tflite")
    with open(dense_tflm_path, "wb") as handle:
        handle.write(compact_model.model)
    # The dense model's arena bounds what a decoded tensor may take (see tflm_compression.Compression).
    dense_arena = None
    max_decoded = settings.max_decoded_bytes
    if settings.store != "dense" and max_decoded is None:
        dense_arena = verify.find_min_arena(dense_tflm_path, margin=options.config.arena_margin)
        max_decoded = dense_arena.min_bytes
    stored = tflm_compression.compress(compact_model.model, settings.store, settings.index_bits, max_decoded)
    if stored.compressed_tensors:
        timer.lap(
            "store weights compressed",
            f"{len(stored.compressed_tensors)} tensors, {len(compact_model.model):,} -> {len(stored.model):,} bytes",
        )
    contents = {
        f"{options.config.name}_float.tflite": float_tflite,
        f"{options.config.name}_int8.tflite": int8_tflite,
        f"{options.config.name}_int8_tflm.tflite": stored.model,
    }
    if stored.compressed_tensors:
        contents[f"{options.config.name}_int8_tflm_dense.tflite"] = compact_model.model
    else:
        os.remove(dense_tflm_path)
        dense_tflm_path = None
    for filename, content in contents.items():
        with open(os.path.join(staging, filename), "wb") as handle:
            handle.write(content)
    tflm_path = os.path.join(staging, f"{options.config.name}_int8_tflm.tflite")
    board_ops = sorted(flatbuffer.op_histogram(stored.model))
    return _Converted(
        float_tflite,
        int8_tflite,
        compact_model,
        stored,
        board_ops,
        io,
        list(contents),
        tflm_path,
        dense_tflm_path,
        dense_arena,
    )


def _verify(
    converted: _Converted, compressed: _Compressed, data: _Data, options: ExportOptions, timer: _Timer
) -> _Verified:
    """Arena search, TFLM vs the reference kernels, float vs int8 accuracy, and (optional) instruction count."""
    search = converted.dense_arena  # Searched already when the board's model is the dense one.
    if search is None or converted.dense_tflm_path is not None:
        search = verify.find_min_arena(converted.tflm_path, margin=options.config.arena_margin)
    if options.arena_bytes is not None and options.arena_bytes < search.min_bytes:
        raise ValueError(
            f"`arena_bytes`={options.arena_bytes:,} is too small: the model needs at least {search.min_bytes:,} "
            f"bytes of tensor arena in TFLite Micro ({search.recommended_bytes:,} recommended)."
        )
    arena_bytes = options.arena_bytes if options.arena_bytes is not None else search.recommended_bytes
    timer.lap("arena search", f"{search.min_bytes:,} bytes at least, {arena_bytes:,} set")

    images = data.eval_images if data.eval_images is not None else data.calibration
    io_input = converted.io["input"]
    int8_inputs = convert.quantize_input(images, io_input["scale"], io_input["zero_point"])
    dense_arena = None
    if converted.dense_tflm_path is not None:
        dense_arena = converted.dense_arena or verify.find_min_arena(
            converted.dense_tflm_path, margin=options.config.arena_margin
        )
    # Each TFLM run is a single-threaded child: the board's model, the same model dense (when the board's
    # stores its weights compressed) and the reference kernels (here) run side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        board_run = pool.submit(verify.run_tflm, converted.tflm_path, arena_bytes, int8_inputs)
        dense_run = None
        if dense_arena is not None:
            dense_run = pool.submit(
                verify.run_tflm, converted.dense_tflm_path, dense_arena.recommended_bytes, int8_inputs
            )
        reference = verify.run_reference(converted.int8_tflite, int8_inputs[: options.config.num_verify])
        tflm_outputs = board_run.result()
        dense_outputs = None if dense_run is None else dense_run.result()
    bit_exact = verify.compare_bit_exact(
        tflm_outputs[: options.config.num_verify], reference, options.config.tolerance_lsb
    )
    float_model = compressed.float_model
    float_check = verify.run_tflite(converted.float_tflite, images[:_FLOAT_TFLITE_CHECK_SAMPLES])
    keras_check = np.asarray(float_model.predict(images[:_FLOAT_TFLITE_CHECK_SAMPLES], verbose=0))
    float_tflite_max_abs_diff = float(np.max(np.abs(float_check.reshape(keras_check.shape) - keras_check)))
    float_top1 = int8_top1 = None
    accuracy = compressed.accuracy
    accuracy["drop_points"] = None
    if data.eval_images is not None:
        float_outputs = float_model.predict(data.eval_images, batch_size=64, verbose=0)
        float_top1 = _top1(float_outputs, data.eval_labels)
        int8_top1 = _top1(tflm_outputs, data.eval_labels)
        accuracy["drop_points"] = round(100 * (float_top1 - int8_top1), 2)
        predicted = tflm_outputs.reshape(len(tflm_outputs), -1).argmax(axis=1)
        accuracy["top1_agreement"] = float(np.mean(float_outputs.argmax(axis=1) == predicted))
    agreement = "bit-identical" if bit_exact["bit_exact"] else f"at most {bit_exact['max_abs_diff_lsb']} LSB apart"
    compared = min(options.config.num_verify, len(tflm_outputs))
    timer.lap(
        "verify in TFLM", f"{len(tflm_outputs):,} samples, {compared:,} against the reference kernels: {agreement}"
    )

    decode = None
    if dense_arena is not None:
        decode = _check_lossless(dense_arena, dense_outputs, tflm_outputs)
        timer.lap("verify compressed weights", f"outputs equal to the dense model's on {len(int8_inputs):,} samples")
    instructions = None
    if options.config.count_instructions:
        counted = verify.count_instructions_by_op(converted.tflm_path, arena_bytes, int8_inputs[0])
        instructions = None if counted is None else counted.total
        if decode is not None and counted is not None:
            dense = verify.count_instructions(
                converted.dense_tflm_path, decode["dense_arena"].recommended_bytes, int8_inputs[0]
            )
            decode.update(
                instructions=counted.total,
                dense_instructions=dense,
                decode_instructions=counted.by_op.get(tflm_compression.DECODE_OP, 0),
            )
        timer.lap("count instructions", "n/a" if instructions is None else f"{instructions:,} per inference")
    return _Verified(
        search,
        arena_bytes,
        int8_inputs,
        tflm_outputs,
        bit_exact,
        float_tflite_max_abs_diff,
        float_top1,
        int8_top1,
        instructions,
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


def _write_firmware_sources(
    staging: str, converted: _Converted, verified: _Verified, data: _Data, options: ExportOptions
) -> list[str]:
    """Writes ``tflm/``: the model, its settings and op resolver, and the samples with their expected outputs."""
    tflm_dir = os.path.join(staging, run_dir.FIRMWARE_DIR)
    os.mkdir(tflm_dir)
    return c_sources.write_firmware(
        tflm_dir,
        converted.board_model,
        options.config.name,
        converted.io,
        converted.ops,
        options.labels,
        verified.arena_bytes,
        verified.arena.min_bytes,
        **samples.firmware_samples(verified.int8_inputs, verified.tflm_outputs, data.eval_labels),
    )


def export(
    model: Any,
    representative_data: Iterable[Any],
    output_dir: str,
    config: ExportConfig | None = None,
    *,
    eval_data: Iterable[Any] | None = None,
    train_data: Any = None,
    labels: Sequence[str] | None = None,
    verbose: int = 0,
    progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Prunes, quantizes to int8, converts, verifies in TFLite Micro and writes the firmware files.

    Steps: optional magnitude pruning and weight clustering (each
    fine-tuning on ``train_data``), full
    int8 quantization (post-training, or quantization-aware training),
    conversion of a static batch-1 graph to ``<name>_float.tflite`` and
    ``<name>_int8.tflite``, a check of the operators against TFLite Micro,
    verification in the TFLM interpreter (bit-identical to TFLite's reference
    kernels, int8 vs float top-1, the smallest tensor arena by search in child
    processes), then ``tflm/`` firmware sources and ``report.json`` /
    ``report.md``.

    The board's model stores its weights compressed where that is smaller
    (``compression.store``, default ``"auto"``): pruned kernels in TFLM's
    pruned encoding, clustered ones as LUT indices, decoded at run time by
    TFLM's DECODE operator (firmware built with ``USE_TFLM_COMPRESSION``).
    Its TFLM outputs must equal the dense model's bit for bit on every eval
    sample; the report gives both models' flash, arena and (with
    ``count_instructions``) instructions.

    Everything is produced and verified in a scratch directory next to
    ``output_dir`` and only then moved in, artifact by artifact, with atomic
    renames: a failed export leaves no partial file and never replaces a good
    one. Other files in ``output_dir`` are left alone.

    Pruning and QAT use tensorflow-model-optimization, which needs Keras 2:
    the process must run with ``TF_USE_LEGACY_KERAS=1`` (set before
    TensorFlow is imported). Post-training quantization works with Keras 3
    and tf_keras models.

    Args:
      model: A trained Keras ShuffleNet (any functional model with one image
        input of static size). It is not modified.
      representative_data: Iterable of preprocessed float batches
        ``(N, H, W, C)`` from the training split (numpy arrays or a
        ``tf.data.Dataset``; ``(images, labels)`` elements are accepted) that
        calibrate int8 quantization.
      output_dir: Directory of the artifacts; created if missing.
      config: The export's settings, an
        :class:`~keras_shufflenet.micro.ExportConfig` (each field documented
        there, and a flag of ``train/main.py`` under the same name). Defaults
        to `None`: its defaults (post-training int8, per-channel weight
        scales, no pruning or clustering, each weight tensor stored in the
        smallest of dense, LUT and pruned).
      eval_data: Iterable of ``(images, int labels)`` batches for top-1
        accuracy; without it, accuracy is not reported and the bit-exactness
        check uses representative images. Defaults to `None`.
      train_data: Finite ``tf.data.Dataset`` of ``(images, int labels)``
        batches for pruning/QAT fine-tuning. Defaults to `None`.
      labels: Class names, one per output class, written to
        ``model_settings.h``. Defaults to `None` (the class indices).
      verbose: Keras ``fit`` verbosity during fine-tuning. Defaults to `0`.
      progress: Called with one line as each stage ends (what it did, its
        seconds), e.g. ``print``. Defaults to `None` (silent).
      **settings: Fields of ``config`` to change, by name (e.g.
        ``quantize="qat"``, ``clusters=16``; None keeps the value), and
        ``compression``, a :class:`~keras_shufflenet.micro.Compression` or a
        dict of its fields, for the clustering and storage fields together.

    With ``npu`` (one of :data:`keras_shufflenet.micro.npu.ACCELERATORS`,
    e.g. ``"ethos-u55-128"``; needs Arm's Vela, ``pip install
    ethos-u-vela``), the int8 model is also rewritten for the NPU (grouped
    convolutions split per group; checked bit-identical in TFLM on every
    sample), compiled to ``<name>_vela.tflite`` and written as
    ``ethos_u/model_data.cc`` with ``ethos_u/ethos_u_settings.h``; the
    report's ``npu`` section holds Vela's estimates (cycles, SRAM, flash, per
    operator, operators left to the CPU). The ``tflm/`` CPU files are
    unchanged.

    Returns:
      The report (also written as ``report.json``), with ``float_top1``,
      ``int8_top1``, ``flash_bytes``, ``arena_bytes``, ``macs``, ``params``,
      ``sparsity``, ``ops`` and more.

    Raises:
      ValueError: For invalid arguments or data (naming the argument and the
        value), unsupported TFLM operators, an ``arena_bytes`` that is too
        small, or (``compression.store="lut"``) a weight tensor with too
        many distinct values for its table.
      OSError: If ``output_dir`` cannot be written.
      keras_shufflenet.micro.verify.TFLMError: If TFLM cannot run the model.
      keras_shufflenet.micro.verify.VerificationError: If TFLM's outputs are
        not bit-identical to the reference kernels (or, with ``npu``, the
        NPU rewrites changed an output).
      keras_shufflenet.micro.npu.VelaNotInstalledError: With ``npu``, if
        Vela is not installed (before any work).
    """
    if isinstance(output_dir, bool) or not isinstance(output_dir, (str, os.PathLike)) or not os.fspath(output_dir):
        raise ValueError(f"`output_dir` must be a directory path. Received: output_dir={output_dir!r}")
    options = validate_options(
        model,
        train_data,
        eval_data,
        ExportConfig.from_settings(config, **settings),
        labels=labels,
        verbose=verbose,
    )
    timer = _Timer(progress)
    staging = run_dir.make_staging_dir(output_dir)
    try:
        data = _read_data(model, representative_data, eval_data, options)
        evaluated = "" if data.eval_images is None else f" and {len(data.eval_images):,} evaluation"
        timer.lap("read data", f"{len(data.calibration):,} calibration{evaluated} images")
        model_profile = profile(model)
        timer.lap("profile")
        compressed = _compress(model, train_data, data, options, timer)
        converted = _convert(compressed, data.calibration, options, staging, timer)
        verified = _verify(converted, compressed, data, options, timer)
        firmware_files = _write_firmware_sources(staging, converted, verified, data, options)
        compressed.sparsity["int8_zero_fraction"] = flatbuffer.int8_weight_zero_fraction(converted.int8_tflite)
        timer.lap("firmware files", "tflm/: the model, its settings, op resolver and samples as C sources")
        npu_section, npu_files = None, []
        if options.npu is not None:
            npu_section, npu_files = ethos_u.export_npu(
                staging,
                options.config.name,
                converted.int8_tflite,
                options.npu,
                verified.int8_inputs,
                verified.tflm_outputs,
                options.config.arena_margin,
            )
            timer.lap("NPU (Vela)", f"compiled for {options.npu}")
        result = report.build(
            name=options.config.name,
            model=model,
            input_shape=options.input_shape,
            classes=options.classes,
            labels=options.labels,
            model_profile=model_profile,
            quantize=options.config.quantize,
            weight_quantization=options.config.weight_quantization,
            float_tflite=converted.float_tflite,
            int8_tflite=converted.int8_tflite,
            compact_model=converted.compact_model,
            stored=converted.stored,
            clustering=compressed.clustering,
            decode=verified.decode,
            io=converted.io,
            arena=verified.arena,
            arena_bytes=verified.arena_bytes,
            float_top1=verified.float_top1,
            int8_top1=verified.int8_top1,
            accuracy=compressed.accuracy,
            bit_exact=verified.bit_exact,
            float_tflite_max_abs_diff=verified.float_tflite_max_abs_diff,
            instructions=verified.instructions,
            sparsity=compressed.sparsity,
            representative_samples=len(data.calibration),
            files=converted.files + [f"{run_dir.FIRMWARE_DIR}/{f}" for f in firmware_files],
        )
        if npu_section is not None:
            result["npu"] = npu_section
            result["files"] += npu_files
        timer.lap("report", "report.json, report.md")
        result["timings_s"] = timer.timings
        report.write_report(staging, result)
        # report.json last: its presence means the export is complete.
        artifacts = [*converted.files, run_dir.FIRMWARE_DIR, run_dir.REPORT_MARKDOWN, run_dir.REPORT_JSON]
        if npu_section is not None:
            artifacts[-2:-2] = [*npu_files[:2], ethos_u.ETHOS_U_DIR]
        run_dir.commit_staged(staging, output_dir, artifacts)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
