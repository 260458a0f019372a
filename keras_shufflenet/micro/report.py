"""The export report: built from the stages' results, written as ``report.json`` and ``report.md``."""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Sequence
from typing import Any

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS
from keras_shufflenet.micro import flatbuffer, npu
from keras_shufflenet.micro.compression import describe_clusters, describe_finetune

_COMPACT_NOTE = (
    "TFLM-only flatbuffer: single zero point for symmetric per-channel weights, no bias "
    "quantization, no tensor names; bit-identical in TFLM to the standard int8 model."
)


def build(
    *,
    name: str,
    model: Any,
    input_shape: Sequence[int],
    classes: int | None,
    labels: Sequence[str] | None,
    model_profile: Any,
    quantize: str,
    weight_quantization: str,
    float_tflite: bytes,
    int8_tflite: bytes,
    compact_model: Any,
    stored: Any,
    clustering: dict[str, Any] | None,
    decode: dict[str, Any] | None,
    io: dict[str, Any],
    arena: Any,
    arena_bytes: int,
    float_top1: float | None,
    int8_top1: float | None,
    accuracy: dict[str, Any],
    bit_exact: dict[str, Any],
    float_tflite_max_abs_diff: float,
    instructions: int | None,
    sparsity: dict[str, Any],
    representative_samples: int,
    files: Sequence[str],
) -> dict[str, Any]:
    """The report of one export (everything but ``timings_s``), from what its stages produced.

    Args:
      name: The export's C identifier.
      model: The Keras model exported.
      input_shape: Its ``(H, W, C)``.
      classes: Its classes (`None` if not a classifier).
      labels: The class names written to the firmware.
      model_profile: :func:`keras_shufflenet.profile` of ``model``.
      quantize: ``"ptq"`` or ``"qat"``.
      weight_quantization: ``"per_channel"`` or ``"per_tensor"``.
      float_tflite: The float32 flatbuffer.
      int8_tflite: The standard full-int8 flatbuffer.
      compact_model: The :class:`~keras_shufflenet.micro.compact.CompactModel` (dense weights).
      stored: The :class:`~keras_shufflenet.micro.tflm_compression.CompressedModel`
        the board gets (its model is the compact one when nothing was compressed).
      clustering: The clustering settings and distinct values (`None` without clustering).
      decode: With compressed weights: the dense model's arena search, the
        samples checked lossless, and (when counted) instructions of both
        models and of the DECODE operators.
      io: :func:`~keras_shufflenet.micro.flatbuffer.io_quantization` of the int8 model.
      arena: The :class:`~keras_shufflenet.micro.verify.ArenaSearch`.
      arena_bytes: The arena written to ``model_settings.h``.
      float_top1: Float top-1 on the eval samples (`None` without eval data).
      int8_top1: Int8 top-1 in TFLM.
      accuracy: The accuracy details (samples, drop, agreement).
      bit_exact: :func:`~keras_shufflenet.micro.verify.compare_bit_exact`'s result.
      float_tflite_max_abs_diff: Largest difference of the float ``.tflite`` from Keras.
      instructions: TFLM instructions per inference (`None` if not counted).
      sparsity: The weight sparsity statistics.
      representative_samples: Calibration images used.
      files: The files of the export besides the two reports.

    Returns:
      The report dict (what ``report.json`` holds).
    """
    return {
        "name": name,
        "model_name": model.name,
        "keras": "tf_keras (Keras 2)" if USE_LEGACY_KERAS else "Keras 3",
        "input_shape": list(input_shape),
        "classes": classes,
        "labels": None if labels is None else list(labels),
        "macs": int(model_profile.macs),
        "params": int(model_profile.params),
        "quantize": quantize,
        "weight_quantization": weight_quantization,
        "flash_bytes": len(stored.model),
        "int8_standard_bytes": len(int8_tflite),
        "compact": {
            "saved_bytes": compact_model.saved_bytes,
            "zero_points_collapsed": compact_model.zero_points_collapsed,
            "bias_quantizations_dropped": compact_model.bias_quantizations_dropped,
            "note": _COMPACT_NOTE,
        },
        "int8_zlib_bytes": len(zlib.compress(compact_model.model, 9)),
        "float_tflite_bytes": len(float_tflite),
        "arena_bytes": int(arena_bytes),
        "arena": {
            "min_bytes": arena.min_bytes,
            "recommended_bytes": arena.recommended_bytes,
            "margin": arena.margin,
            "probes": arena.probes,
            "measured_on": "host (64-bit) TFLite Micro from the tflite-micro package",
        },
        "float_top1": float_top1,
        "int8_top1": int8_top1,
        "accuracy": accuracy,
        "tflm_bit_exact": bit_exact,
        "float_tflite_max_abs_diff": float_tflite_max_abs_diff,
        "tflm_instructions_per_inference": instructions,
        "sparsity": sparsity,
        "clustering": clustering,
        "weight_storage": _weight_storage(stored, arena, instructions, decode),
        "ops": flatbuffer.op_histogram(stored.model),
        "io": io,
        "representative_samples": representative_samples,
        "files": [*files, "report.json", "report.md"],
    }


def _weight_storage(stored: Any, arena: Any, instructions: int | None, decode: dict[str, Any] | None) -> dict[str, Any]:
    """Dense against compressed: flash, arena and instructions, and how each weight tensor is stored."""
    result: dict[str, Any] = {
        "compressed": bool(stored.compressed_tensors),
        **stored.summary(),
        "tensors": [dataclasses.asdict(tensor) for tensor in stored.tensors],
    }
    if decode is None:
        return result
    dense_arena = decode["dense_arena"].min_bytes
    result.update(
        dense_arena_min_bytes=dense_arena,
        arena_min_bytes=arena.min_bytes,
        arena_growth_bytes=arena.min_bytes - dense_arena,
        lossless_samples=decode["lossless_samples"],
        note=(
            "Outputs of the compressed model in TFLM equal the dense model's bit for bit on every sample checked. "
            "DECODE runs before each operator that reads a compressed tensor, so the arena grows by about the "
            "largest decoded tensor."
        ),
    )
    if "instructions" in decode:
        dense = decode["dense_instructions"]
        result.update(
            instructions=instructions,
            dense_instructions=dense,
            decode_instructions=decode["decode_instructions"],
            instructions_ratio=round(instructions / dense, 4) if dense else None,
        )
    return result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:,}"


def _agreement(check: dict[str, Any]) -> str:
    if check["bit_exact"]:
        return f"bit-identical on {check['samples']} samples"
    return (
        f"{check['differing_samples']} of {check['samples']} samples differ, "
        f"by up to {check['max_abs_diff_lsb']} LSB (allowed {check['tolerance_lsb']})"
    )


def to_markdown(report: dict[str, Any]) -> str:
    """Renders the report dict as markdown."""
    sparsity = report["sparsity"]
    accuracy = report["accuracy"]
    arena = report["arena"]
    lines = [
        f"# Microcontroller export: {report['name']}",
        "",
        f"Model `{report['model_name']}`, input {'x'.join(map(str, report['input_shape']))}, "
        f"{report['macs']:,} MACs, {report['params']:,} parameters; quantization: {report['quantize']} "
        f"(full int8, {report['weight_quantization'].replace('_', '-')} weights, "
        "int8 input and output).",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| flash: int8 model bytes (`*_int8_tflm.tflite`, in `tflm/model_data.cc`) | {report['flash_bytes']:,} |",
        f"| standard int8 `.tflite` bytes (before dropping what TFLM ignores) | {report['int8_standard_bytes']:,} |",
        f"| int8 model, zlib-compressed (what compression could store) | {report['int8_zlib_bytes']:,} |",
        f"| float32 model bytes | {report['float_tflite_bytes']:,} |",
        f"| tensor arena: smallest that runs (host) | {arena['min_bytes']:,} |",
        f"| tensor arena: recommended (+{100 * arena['margin']:.0f} % margin) | {arena['recommended_bytes']:,} |",
        f"| tensor arena: used in model_settings.h | {report['arena_bytes']:,} |",
        f"| float top-1 ({accuracy['samples']} eval samples) | {_pct(report['float_top1'])} |",
        f"| int8 top-1 in TFLite Micro | {_pct(report['int8_top1'])} |",
        f"| top-1 drop (points) | {_num(accuracy['drop_points'])} |",
        f"| TFLM vs TFLite reference kernels | {_agreement(report['tflm_bit_exact'])} |",
        f"| TFLM instructions per inference (x86, callgrind) | {_num(report['tflm_instructions_per_inference'])} |",
        f"| weight sparsity (all conv/dense kernels) | {_pct(sparsity['overall'])} |",
        f"| weight sparsity (kernels tfmot prunes) | {_pct(sparsity['prunable_overall'])} |",
        f"| zero weights in the int8 model | {_pct(sparsity['int8_zero_fraction'])} |",
        "",
    ]
    if accuracy.get("float_top1_before_pruning") is not None:
        lines += [f"Float top-1 before pruning: {_pct(accuracy['float_top1_before_pruning'])}.", ""]
    if sparsity["target"]:  # Only an export that pruned has a per-layer story to tell.
        lines += [
            "## Pruning",
            "",
            f"Target sparsity {sparsity['target']}. {sparsity['note']}",
            "",
            f"Layers tfmot leaves dense: {', '.join(sparsity['dense_layers']) or 'none'}.",
            "",
            "| layer | type | weights | sparsity |",
            "|---|---|---:|---:|",
        ]
        for name, info in sparsity["layers"].items():
            lines.append(f"| {name} | {info['type']} | {info['weights']:,} | {_pct(info['sparsity'])} |")
    lines += _weight_storage_markdown(report)
    lines += ["", "## Operators (the board's model)", "", "| operator | count |", "|---|---:|"]
    lines += [f"| {op} | {count} |" for op, count in report["ops"].items()]
    lines += ["", "## Files", ""]
    lines += [f"- `{path}`" for path in report["files"]]
    lines += ["", "## Timings (wall clock, approximate)", ""]
    lines += [f"- {phase}: {seconds:.1f} s" for phase, seconds in report["timings_s"].items()]
    lines += firmware_markdown(report.get("firmware", {}))
    lines += npu.markdown(report.get("npu"))
    return "\n".join(lines) + "\n"


def _weight_storage_markdown(report: dict[str, Any]) -> list[str]:
    storage = report["weight_storage"]
    clustering = report.get("clustering")
    lines = ["", "## Weight storage (TFLM DECODE)", ""]
    if clustering:
        unit = "output channel" if clustering["per_channel"] else "kernel"
        lines += [
            "Clustered to "
            + describe_clusters(clustering["clusters"], clustering.get("layer_clusters"), clustering["per_channel"])
            + f" ({describe_finetune(clustering['epochs'], clustering['learning_rate'])}, "
            f"batch norms folded first); at most {clustering['distinct']['max']} distinct float weights per {unit}.",
            "",
        ]
    if not storage["compressed"]:
        return [*lines, "All weights are stored dense: no encoding made a tensor smaller.", ""]
    lines += [
        "| | dense | compressed |",
        "|---|---:|---:|",
        f"| flash: model bytes | {storage['dense_model_bytes']:,} | {storage['model_bytes']:,} |",
    ]
    if "dense_arena_min_bytes" in storage:
        lines.append(
            f"| tensor arena: smallest (host) | {storage['dense_arena_min_bytes']:,} | {storage['arena_min_bytes']:,} |"
        )
    if storage.get("dense_instructions"):
        lines.append(
            f"| TFLM instructions per inference (x86) | {storage['dense_instructions']:,} | "
            f"{storage['instructions']:,} (DECODE: {storage['decode_instructions']:,}) |"
        )
    lines += ["", "| encoding | tensors | dense bytes | stored bytes |", "|---|---:|---:|---:|"]
    for encoding, entry in storage["by_encoding"].items():
        lines.append(f"| {encoding} | {entry['tensors']} | {entry['dense_bytes']:,} | {entry['stored_bytes']:,} |")
    lines += ["", storage.get("note", "")]
    if storage["kept_dense"]:
        lines += ["", "Kept dense:", *[f"- {item['tensor']}: {item['why']}" for item in storage["kept_dense"]]]
    return lines


def firmware_markdown(results: dict[str, dict[str, Any]]) -> list[str]:
    """The firmware section: one row per target and kernel set that ``micro.firmware`` built and ran."""
    if not results:
        return []
    lines = [
        "",
        "## Firmware (built and run by keras_shufflenet.micro.firmware)",
        "",
        "Instructions are counted in qemu for one `Invoke()` (emulated instructions, not cycles). Flash is the "
        "ELF's code, constants and initialized data; RAM is data + bss (the arena included) + the measured stack.",
        "",
        "| target | kernels | output vs host TFLM | instructions / invoke | flash | of which model | RAM "
        "| arena used | stack |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results.values():
        match = (
            f"bit-identical on {result['samples']} samples"
            if result["output_matches_host"]
            else f"up to {result['max_int8_diff']} LSB on {result['samples']} samples"
        )
        lines.append(
            f"| {result['target']} | {result['kernels']} | {match} | {_num(result['instructions_per_invoke'])} "
            f"| {_num(result['flash_bytes'])} | {_num(result['model_bytes'])} | {_num(result['ram_bytes'])} "
            f"| {_num(result['arena_used_bytes'])} | {_num(result['stack_bytes'])} |"
        )
    return lines


def write_report(directory: str, report: dict[str, Any]) -> list[str]:
    """Writes ``report.json`` and ``report.md`` into ``directory``; returns the file names."""
    with open(os.path.join(directory, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(to_markdown(report))
    return ["report.json", "report.md"]
