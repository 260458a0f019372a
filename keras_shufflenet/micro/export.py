"""``export``: from a trained Keras ShuffleNet to verified files for a microcontroller.

:func:`export` checks its settings, then runs the stages of
:mod:`keras_shufflenet.micro.export_stages` in order, each returning a frozen
result that the next ones read: read the data, fine-tune (prune, cluster,
QAT), convert, store the weights, write the models, search the arena, run in
TFLite Micro, write the firmware sources, compile for an NPU (optional); then
:func:`keras_shufflenet.micro.report.build` reads the results. Everything is
written in a staging directory and moved into ``output_dir`` at the end.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from keras_shufflenet import run_dir
from keras_shufflenet.micro import export_stages as stages
from keras_shufflenet.micro import fine_tuning, report
from keras_shufflenet.micro import npu as ethos_u  # `npu` is a setting of the export.
from keras_shufflenet.micro.export_config import ExportConfig
from keras_shufflenet.micro.options import ExportOptions
from keras_shufflenet.micro.options import validate as validate_options
from keras_shufflenet.profiling import profile


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
        model, train_data, eval_data, ExportConfig.from_settings(config, **settings), labels=labels, verbose=verbose
    )
    timer = _Timer(progress)
    staging = run_dir.make_staging_dir(output_dir)
    try:
        result, artifacts = _run_stages(model, representative_data, eval_data, train_data, options, staging, timer)
        result["timings_s"] = timer.timings
        report.write_report(staging, result)
        # report.json last: its presence means the export is complete.
        run_dir.commit_staged(staging, output_dir, [*artifacts, run_dir.REPORT_MARKDOWN, run_dir.REPORT_JSON])
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run_stages(
    model: Any,
    representative_data: Iterable[Any],
    eval_data: Iterable[Any] | None,
    train_data: Any,
    options: ExportOptions,
    staging: str,
    timer: _Timer,
) -> tuple[dict[str, Any], list[str]]:
    """Runs the stages in order into ``staging``; returns the report and the artifacts to move into place."""
    config = options.config
    data = stages.read_data(model, representative_data, eval_data, options)
    if data.eval_images is None:
        read = f"{len(data.calibration):,} calibration images; no eval_data: ACCURACY NOT MEASURED"
    else:
        read = f"{len(data.calibration):,} calibration and {len(data.eval_images):,} evaluation images"
    timer.lap("read data", read)
    model_profile = profile(model)
    timer.lap("profile")

    compressed = _fine_tune(model, train_data, data, options, timer)

    converted = stages.convert_model(compressed, data.calibration, options)
    timer.lap(
        "convert",
        f"float and int8 ({config.weight_quantization.replace('_', '-')} weights) .tflite, calibrated on "
        f"{len(data.calibration):,} images",
    )
    stored = stages.store_weights(converted, options)
    if stored.compressed:
        dense_bytes, stored_bytes = len(converted.compact_model.model), len(stored.stored.model)
        tensors = len(stored.stored.compressed_tensors)
        timer.lap("store weights compressed", f"{tensors} tensors, {dense_bytes:,} -> {stored_bytes:,} bytes")
    files = stages.write_models(staging, converted, stored, options)
    arena = stages.search_arena(files, stored, options)
    timer.lap("arena search", f"{arena.search.min_bytes:,} bytes at least, {arena.bytes:,} set")

    verified = stages.run_in_tflm(files, arena, converted, compressed.float_model, data, options)
    check = verified.bit_exact
    agreement = "bit-identical" if check["bit_exact"] else f"at most {check['max_abs_diff_lsb']} LSB apart"
    lossless = "" if verified.decode is None else "; compressed weights: outputs equal to the dense model's"
    timer.lap(
        "verify in TFLM",
        f"{len(verified.tflm_outputs):,} samples, {check['samples']:,} against the reference kernels: "
        f"{agreement}{lossless}",
    )
    instructions = None
    if config.count_instructions:
        instructions = stages.count_instructions(files, arena, verified)
        counted = "n/a" if instructions.total is None else f"{instructions.total:,} per inference"
        timer.lap("count instructions", counted)
    firmware_files = stages.write_firmware_sources(staging, stored, converted, arena, verified, data, options)
    timer.lap("firmware files", "tflm/: the model, its settings, op resolver and samples as C sources")

    npu = None
    if options.npu is not None:
        npu = stages.compile_for_npu(staging, converted, verified, options)
        timer.lap("NPU (Vela)", f"compiled for {options.npu}")
    result = report.build(
        model=model,
        model_profile=model_profile,
        options=options,
        data=data,
        compressed=compressed,
        converted=converted,
        stored=stored,
        arena=arena,
        verified=verified,
        instructions=instructions,
        files=[*files.files, *firmware_files, *(npu.files if npu else [])],
        npu=npu,
    )
    timer.lap("report", "report.json, report.md")
    artifacts = [*files.files, run_dir.FIRMWARE_DIR]
    if npu is not None:
        artifacts += [*npu.files[:2], ethos_u.ETHOS_U_DIR]
    return result, artifacts


def _fine_tune(
    model: Any, train_data: Any, data: stages.ExportData, options: ExportOptions, timer: _Timer
) -> stages.Compressed:
    """The optional fine-tuning stages, in order: pruning, clustering, quantization-aware training."""
    config = options.config
    pruned = clustered = qat_model = None
    if config.pruning:
        pruned = stages.prune(model, train_data, data, options)
        timer.lap(
            "prune",
            f"to {config.prune_sparsity:.0%} of the prunable weights, {config.prune_epochs} fine-tuning epoch(s)",
        )
    if options.compression.clustering:
        clustered = stages.cluster(pruned.model if pruned else model, train_data, data, options)
        settings = options.compression
        timer.lap(
            "cluster",
            f"{fine_tuning.describe_clusters(settings.clusters, settings.layer_clusters, settings.per_channel)}, "
            f"{fine_tuning.describe_finetune(settings.epochs, settings.learning_rate)}",
        )
    if config.quantize == "qat":
        tuned = clustered or pruned
        qat_model = stages.quantization_aware_training(tuned.model if tuned else model, train_data, options)
        timer.lap("quantization-aware training", f"{options.qat_epochs} epoch(s)")
    return stages.compressed(model, data, options, pruned, clustered, qat_model)
