"""``export``: from a trained Keras ShuffleNet to verified files for a microcontroller."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS
from keras_shufflenet.micro import c_sources, compact, compression, convert, report, verify
from keras_shufflenet.profiling import profile

QUANTIZE_MODES = ("ptq", "qat")
# Samples on which the float .tflite is compared with Keras.
_FLOAT_TFLITE_CHECK_SAMPLES = 8
# Default allowed TFLM-vs-reference difference per quantization mode: none.
# (The classifier is exported as a 1x1 CONV_2D, see convert.DenseAsPointwiseConv:
# TFLM's FULLY_CONNECTED rounds differently from the reference kernel on some inputs.)
DEFAULT_TOLERANCE_LSB = {"ptq": 0, "qat": 0}


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _collect_labeled(
    eval_data: Iterable[Any], input_shape: tuple[int, int, int], classes: int, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` (image, label) pairs from batches of (images, int labels or one-hot)."""
    images, labels = [], []
    count = 0
    for index, element in enumerate(eval_data):
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise ValueError(f"`eval_data` must yield (images, labels) batches. Batch {index} is a {type(element)}.")
        batch_images = convert.representative_samples([element[0]], input_shape, limit - count)
        batch_labels = element[1].numpy() if hasattr(element[1], "numpy") else np.asarray(element[1])
        if batch_labels.ndim == 2 and batch_labels.shape[1] == classes and classes > 1:
            batch_labels = batch_labels.argmax(axis=1)  # One-hot.
        batch_labels = batch_labels.reshape(-1)[: len(batch_images)]
        if len(batch_labels) != len(batch_images) or not np.issubdtype(batch_labels.dtype, np.number):
            raise ValueError(
                f"`eval_data` batch {index}: expected one numeric label per image. Received labels of shape "
                f"{tuple(np.shape(element[1]))} and dtype {batch_labels.dtype} for {len(batch_images)} images."
            )
        if batch_labels.min() < 0 or batch_labels.max() >= classes:
            raise ValueError(
                f"`eval_data` batch {index}: labels must be in [0, {classes}). "
                f"Received range [{batch_labels.min()}, {batch_labels.max()}]."
            )
        images.append(batch_images)
        labels.append(batch_labels.astype(np.int64))
        count += len(batch_images)
        if count >= limit:
            break
    if count == 0:
        raise ValueError("`eval_data` yielded no images.")
    return np.concatenate(images), np.concatenate(labels)


def _make_staging_dir(output_dir: str) -> str:
    """A scratch directory next to ``output_dir`` (same filesystem, so os.replace is atomic)."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise NotADirectoryError(f"{output_dir!r} exists and is not a directory")
        if os.path.isdir(output_dir) and not os.access(output_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{output_dir!r} is not writable")
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.export-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; it may become output_dir itself.
        return staging
    except OSError as error:
        raise OSError(f"`output_dir` {output_dir!r} cannot be written: {error}") from error


def _commit(staging: str, output_dir: str, artifacts: Sequence[str]) -> None:
    """Moves the finished artifacts into ``output_dir``, each with an atomic rename.

    ``output_dir`` may hold other files (training checkpoints): only the
    export's own artifacts are replaced, ``report.json`` last, so its presence
    means the export is complete.
    """
    if not os.path.exists(output_dir):
        os.replace(staging, output_dir)  # The whole export appears at once.
        return
    for artifact in artifacts:
        source, target = os.path.join(staging, artifact), os.path.join(output_dir, artifact)
        if os.path.isdir(source):
            if os.path.isdir(target):
                # A directory cannot be renamed over a non-empty one: swap the old one out first.
                os.replace(target, os.path.join(staging, f".old-{artifact}"))
            os.replace(source, target)
        else:
            os.replace(source, target)


def _top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(axis=1) == labels))


# The samples written into the firmware: enough to check a port on several
# images without crowding a small board's flash.
_FIRMWARE_SAMPLE_BYTES = 96 * 1024
_FIRMWARE_SAMPLES_MAX = 10


def firmware_samples(int8_inputs: np.ndarray, tflm_outputs: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Chooses the evaluation samples written into ``sample_input_data.cc``.

    With labels: one image per class, in class order, each one the int8 model
    classifies correctly (so the first answer a user sees on a board is a right
    one); then, if classes are fewer than the budget, further images in order.
    Without labels: the first images. The budget is at most 10 images and
    96 KiB, and never fewer than 2 images where there are 2.
    """
    image_bytes = int(np.prod(int8_inputs.shape[1:]))
    budget = max(2, min(_FIRMWARE_SAMPLES_MAX, _FIRMWARE_SAMPLE_BYTES // image_bytes))
    budget = min(budget, len(int8_inputs))
    if labels is None:
        chosen = list(range(budget))
    else:
        predicted = tflm_outputs.reshape(len(tflm_outputs), -1).argmax(axis=1)
        chosen = []
        for cls in sorted(set(int(label) for label in labels)):
            right = np.flatnonzero((labels == cls) & (predicted == cls))
            if len(right) and len(chosen) < budget:
                chosen.append(int(right[0]))
        chosen += [i for i in range(len(labels)) if i not in chosen][: budget - len(chosen)]
    return {
        "samples": int8_inputs[chosen],
        "expected_outputs": tflm_outputs[chosen],
        "sample_labels": [None if labels is None else int(labels[i]) for i in chosen],
    }


def export(
    model: Any,
    representative_data: Iterable[Any],
    output_dir: str,
    *,
    eval_data: Iterable[Any] | None = None,
    train_data: Any = None,
    prune_sparsity: float = 0.0,
    prune_epochs: int = 0,
    quantize: str = "ptq",
    weight_quantization: str = "per_channel",
    labels: Sequence[str] | None = None,
    num_representative: int = 200,
    num_verify: int = 100,
    num_eval: int = 1000,
    name: str = "model",
    qat_epochs: int | None = None,
    arena_margin: float = 0.1,
    arena_bytes: int | None = None,
    count_instructions: bool = False,
    tolerance_lsb: int | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Prunes, quantizes to int8, converts, verifies in TFLite Micro and writes the firmware files.

    Steps: optional magnitude pruning (fine-tuning on ``train_data``), full
    int8 quantization (post-training, or quantization-aware training),
    conversion of a static batch-1 graph to ``<name>_float.tflite`` and
    ``<name>_int8.tflite``, a check of the operators against TFLite Micro,
    verification in the TFLM interpreter (bit-identical to TFLite's reference
    kernels, int8 vs float top-1, the smallest tensor arena by search in child
    processes), then ``tflm/`` firmware sources and ``report.json`` /
    ``report.md``.

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
      eval_data: Iterable of ``(images, int labels)`` batches for top-1
        accuracy; without it, accuracy is not reported and the bit-exactness
        check uses representative images. Defaults to `None`.
      train_data: Finite ``tf.data.Dataset`` of ``(images, int labels)``
        batches for pruning/QAT fine-tuning. Defaults to `None`.
      prune_sparsity: Target fraction of zero weights in conv/dense kernels,
        in [0, 1); 0 disables pruning. Defaults to `0.0`.
      prune_epochs: Fine-tuning epochs of pruning (>= 1 when pruning).
        Defaults to `0`.
      quantize: ``"ptq"`` (post-training) or ``"qat"`` (quantization-aware
        training). Defaults to `"ptq"`.
      weight_quantization: ``"per_channel"`` or ``"per_tensor"`` (one scale
        per weight tensor: 4 bytes of flash less per output channel, at an
        accuracy cost to measure; post-training quantization only).
        Defaults to `"per_channel"`.
      labels: Class names, one per output class, written to
        ``model_settings.h``. Defaults to `None` (the class indices).
      num_representative: Images that calibrate the int8 ranges. Defaults to `200`.
      num_verify: Samples on which TFLM must be bit-identical to the
        reference kernels. Defaults to `100`.
      num_eval: Eval samples for float and int8 top-1. Defaults to `1000`.
      name: C identifier in file and symbol names (``g_<name>_model_data``).
        Defaults to `"model"`.
      qat_epochs: QAT fine-tuning epochs. Defaults to ``prune_epochs`` or 1.
      arena_margin: Fraction added to the smallest measured arena, in
        [0, 0.25). Defaults to `0.1`.
      arena_bytes: A fixed arena size (e.g. the RAM the board can spare);
        the export fails if the model needs more. Defaults to `None` (the
        recommended size).
      count_instructions: Count TFLM instructions per inference with
        valgrind's callgrind (slow: about half a minute). Defaults to `False`.
      tolerance_lsb: Largest allowed difference between TFLM and TFLite's
        reference kernels. Defaults to `None`: 0 (bit-identical; see
        ``DEFAULT_TOLERANCE_LSB``).
      verbose: Keras ``fit`` verbosity during fine-tuning. Defaults to `0`.

    Returns:
      The report (also written as ``report.json``), with ``float_top1``,
      ``int8_top1``, ``flash_bytes``, ``arena_bytes``, ``macs``, ``params``,
      ``sparsity``, ``ops`` and more.

    Raises:
      ValueError: For invalid arguments or data (naming the argument and the
        value), unsupported TFLM operators, or an ``arena_bytes`` that is too small.
      OSError: If ``output_dir`` cannot be written.
      keras_shufflenet.micro.verify.TFLMError: If TFLM cannot run the model.
      keras_shufflenet.micro.verify.VerificationError: If TFLM's outputs are
        not bit-identical to the reference kernels.
    """
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal started
        now = time.monotonic()
        timings[phase] = round(now - started, 2)
        started = now

    # Validate everything cheap before any slow step.
    c_sources.check_c_identifier(name)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"`quantize` must be one of {QUANTIZE_MODES}. Received: quantize={quantize!r}")
    if isinstance(prune_sparsity, bool) or not isinstance(prune_sparsity, (int, float)) or not 0 <= prune_sparsity < 1:
        raise ValueError(f"`prune_sparsity` must be a number in [0, 1). Received: prune_sparsity={prune_sparsity!r}")
    convert.check_weight_quantization(weight_quantization)
    if weight_quantization == "per_tensor" and quantize == "qat":
        raise ValueError(
            "`weight_quantization='per_tensor'` works with quantize='ptq' only: "
            "quantization-aware training learns per-channel weight ranges. Received: quantize='qat'"
        )
    prune_epochs = _check_count("prune_epochs", prune_epochs, 0)
    num_verify = _check_count("num_verify", num_verify, 1)
    num_eval = _check_count("num_eval", num_eval, 1)
    if not 0 <= arena_margin < verify.MAX_ARENA_MARGIN:
        raise ValueError(f"`arena_margin` must be in [0, {verify.MAX_ARENA_MARGIN}). Received: {arena_margin!r}")
    if arena_bytes is not None:
        arena_bytes = _check_count("arena_bytes", arena_bytes, 1)
    if tolerance_lsb is None:
        tolerance_lsb = DEFAULT_TOLERANCE_LSB.get(quantize, 0)
    tolerance_lsb = _check_count("tolerance_lsb", tolerance_lsb, 0)
    pruning = prune_sparsity > 0
    if pruning:
        compression.require_legacy_keras(model, "prune_sparsity", prune_sparsity)
        if prune_epochs < 1:
            raise ValueError(f"`prune_epochs` must be >= 1 when pruning. Received: prune_epochs={prune_epochs}")
    if quantize == "qat":
        compression.require_legacy_keras(model, "quantize", quantize)
        qat_epochs = _check_count("qat_epochs", qat_epochs if qat_epochs is not None else max(prune_epochs, 1), 1)
    if (pruning or quantize == "qat") and train_data is None:
        raise ValueError("`train_data` is required for pruning or QAT (both fine-tune the model).")
    input_shape = convert.input_shape_of(model)
    output_shape = tuple(model.outputs[0].shape[1:])
    classes = int(output_shape[0]) if len(output_shape) == 1 else None
    if eval_data is not None and classes is None:
        raise ValueError(
            f"`eval_data` needs a classifier (output shape (batch, classes)); the model outputs {output_shape}."
        )
    if labels is not None:
        labels = [str(label) for label in labels]
        if classes is None or len(labels) != classes:
            raise ValueError(f"`labels` must name each of the {classes} output classes. Received {len(labels)} labels.")
    elif classes is not None:
        labels = [str(index) for index in range(classes)]

    staging = _make_staging_dir(output_dir)
    try:
        calibration = convert.representative_samples(representative_data, input_shape, num_representative)
        eval_images = eval_labels = None
        if eval_data is not None:
            eval_images, eval_labels = _collect_labeled(eval_data, input_shape, classes, num_eval)
        lap("read data")
        model_profile = profile(model)
        lap("profile")

        float_model = model
        accuracy: dict[str, Any] = {"samples": 0 if eval_images is None else len(eval_images)}
        if pruning:
            if eval_images is not None:
                before = model.predict(eval_images, batch_size=64, verbose=0)
                accuracy["float_top1_before_pruning"] = _top1(before, eval_labels)
            float_model = compression.prune(model, train_data, prune_sparsity, prune_epochs, verbose=verbose)
            lap("prune")
        sparsity = compression.weight_sparsity(float_model)
        sparsity.update(target=float(prune_sparsity), note=compression.PRUNING_ON_TFLM)
        quant_model = float_model
        if quantize == "qat":
            quant_model = compression.quantization_aware_training(
                float_model, train_data, qat_epochs, preserve_sparsity=pruning, verbose=verbose
            )
            lap("quantization-aware training")

        float_tflite = convert.convert_float(float_model)
        int8_tflite = convert.convert_int8(quant_model, calibration, weight_quantization)
        convert.check_static_shapes(int8_tflite)
        ops = convert.check_tflm_ops(int8_tflite)
        io = convert.io_quantization(int8_tflite)
        if io["input"]["dtype"] != "int8" or io["output"]["dtype"] != "int8":
            raise ValueError(f"The converted model is not full int8: input/output types {io}.")
        # What the board gets: the same int8 model without the bookkeeping TFLM
        # never reads (see compact.py); verified below against the standard file.
        compact_model = compact.compact_for_tflm(int8_tflite)
        tflm_tflite = compact_model.model
        float_path = os.path.join(staging, f"{name}_float.tflite")
        standard_int8_path = os.path.join(staging, f"{name}_int8.tflite")
        int8_path = os.path.join(staging, f"{name}_int8_tflm.tflite")
        for path, data in ((float_path, float_tflite), (standard_int8_path, int8_tflite), (int8_path, tflm_tflite)):
            with open(path, "wb") as handle:
                handle.write(data)
        lap("convert")

        search = verify.find_min_arena(int8_path, margin=arena_margin)
        if arena_bytes is not None and arena_bytes < search.min_bytes:
            raise ValueError(
                f"`arena_bytes`={arena_bytes:,} is too small: the model needs at least {search.min_bytes:,} bytes "
                f"of tensor arena in TFLite Micro ({search.recommended_bytes:,} recommended)."
            )
        final_arena = arena_bytes if arena_bytes is not None else search.recommended_bytes
        lap("arena search")

        verify_images = eval_images if eval_images is not None else calibration
        scale, zero_point = io["input"]["scale"], io["input"]["zero_point"]
        int8_inputs = convert.quantize_input(verify_images, scale, zero_point)
        tflm_outputs = verify.run_tflm(int8_path, final_arena, int8_inputs)
        reference = verify.run_reference(int8_tflite, int8_inputs[:num_verify])
        bit_exact = verify.compare_bit_exact(tflm_outputs[:num_verify], reference, tolerance_lsb)
        float_check = verify.run_tflite(float_tflite, verify_images[:_FLOAT_TFLITE_CHECK_SAMPLES])
        keras_check = np.asarray(float_model.predict(verify_images[:_FLOAT_TFLITE_CHECK_SAMPLES], verbose=0))
        float_tflite_max_abs_diff = float(np.max(np.abs(float_check.reshape(keras_check.shape) - keras_check)))
        float_top1 = int8_top1 = None
        if eval_images is not None:
            float_outputs = float_model.predict(eval_images, batch_size=64, verbose=0)
            float_top1 = _top1(float_outputs, eval_labels)
            int8_top1 = _top1(tflm_outputs, eval_labels)
            accuracy["drop_points"] = round(100 * (float_top1 - int8_top1), 2)
            accuracy["top1_agreement"] = float(
                np.mean(float_outputs.argmax(axis=1) == tflm_outputs.reshape(len(tflm_outputs), -1).argmax(axis=1))
            )
        else:
            accuracy["drop_points"] = None
        lap("verify in TFLM")

        instructions = None
        if count_instructions:
            instructions = verify.count_instructions(int8_path, final_arena, int8_inputs[0])
            lap("count instructions")

        tflm_dir = os.path.join(staging, "tflm")
        os.mkdir(tflm_dir)
        firmware_files = c_sources.write_firmware(
            tflm_dir,
            tflm_tflite,
            name,
            io,
            ops,
            labels,
            final_arena,
            search.min_bytes,
            **firmware_samples(int8_inputs, tflm_outputs, eval_labels),
        )
        int8_weights = convert.int8_weight_zero_fraction(int8_tflite)
        sparsity["int8_zero_fraction"] = int8_weights
        lap("firmware files")

        result: dict[str, Any] = {
            "name": name,
            "model_name": model.name,
            "keras": "tf_keras (Keras 2)" if USE_LEGACY_KERAS else "Keras 3",
            "input_shape": list(input_shape),
            "classes": classes,
            "labels": labels,
            "macs": int(model_profile.macs),
            "params": int(model_profile.params),
            "quantize": quantize,
            "weight_quantization": weight_quantization,
            "flash_bytes": len(tflm_tflite),
            "int8_standard_bytes": len(int8_tflite),
            "compact": {
                "saved_bytes": compact_model.saved_bytes,
                "zero_points_collapsed": compact_model.zero_points_collapsed,
                "bias_quantizations_dropped": compact_model.bias_quantizations_dropped,
                "note": "TFLM-only flatbuffer: single zero point for symmetric per-channel weights, no bias "
                "quantization, no tensor names; bit-identical in TFLM to the standard int8 model.",
            },
            "int8_zlib_bytes": len(zlib.compress(tflm_tflite, 9)),
            "float_tflite_bytes": len(float_tflite),
            "arena_bytes": int(final_arena),
            "arena": {
                "min_bytes": search.min_bytes,
                "recommended_bytes": search.recommended_bytes,
                "margin": search.margin,
                "probes": search.probes,
                "measured_on": "host (64-bit) TFLite Micro from the tflite-micro package",
            },
            "float_top1": float_top1,
            "int8_top1": int8_top1,
            "accuracy": accuracy,
            "tflm_bit_exact": bit_exact,
            "float_tflite_max_abs_diff": float_tflite_max_abs_diff,
            "tflm_instructions_per_inference": instructions,
            "sparsity": sparsity,
            "ops": convert.op_histogram(int8_tflite),
            "io": io,
            "representative_samples": len(calibration),
            "files": [os.path.basename(p) for p in (float_path, standard_int8_path, int8_path)]
            + [f"tflm/{f}" for f in firmware_files]
            + ["report.json", "report.md"],
        }
        lap("report")
        result["timings_s"] = timings
        report.write_report(staging, result)
        artifacts = [os.path.basename(p) for p in (float_path, standard_int8_path, int8_path)]
        artifacts += ["tflm", "report.md", "report.json"]
        _commit(staging, output_dir, artifacts)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
