"""The export report: built from the stages' results, written as ``report.json`` and ``report.md``."""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Sequence
from typing import Any

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS
from keras_shufflenet.micro import export_stages as stages
from keras_shufflenet.micro import flatbuffer, npu
from keras_shufflenet.micro.fine_tuning import describe_clusters, describe_finetune
from keras_shufflenet.micro.options import ExportOptions

_COMPACT_NOTE = (
    "TFLM-only flatbuffer: single zero point for symmetric per-channel weights, no bias "
    "quantization, no tensor names; bit-identical in TFLM to the standard int8 model."
)


def build(
    *,
    model: Any,
    model_profile: Any,
    options: ExportOptions,
    data: stages.ExportData,
    compressed: stages.Compressed,
    converted: stages.Converted,
    stored: stages.Stored,
    arena: stages.Arena,
    verified: stages.Verified,
    instructions: stages.Instructions | None,
    files: Sequence[str],
    npu: stages.NpuExport | None = None,
) -> dict[str, Any]:
    """The report of one export (everything but ``timings_s``), from the results of its stages.

    Args:
      model: The Keras model exported.
      model_profile: :func:`keras_shufflenet.profile` of ``model``.
      options: The export's settings and what they resolved to.
      data: The calibration and eval images read.
      compressed: The fine-tuning steps' models and statistics.
      converted: The float and int8 flatbuffers and the compact copy.
      stored: The board's model, weights stored compressed where smaller.
      arena: The arena searches and the arena written to the firmware.
      verified: What TFLM did: exactness, accuracy, the lossless check.
      instructions: The instruction counts (`None` when not counted).
      files: The files of the export besides the two reports.
      npu: The Ethos-U compilation (`None` without an NPU).

    Returns:
      The report dict (what ``report.json`` holds).
    """
    search = arena.search
    result = {
        "name": options.config.name,
        "model_name": model.name,
        "keras": "tf_keras (Keras 2)" if USE_LEGACY_KERAS else "Keras 3",
        "input_shape": list(options.input_shape),
        "classes": options.classes,
        "labels": None if options.labels is None else list(options.labels),
        "macs": int(model_profile.macs),
        "params": int(model_profile.params),
        "quantize": options.config.quantize,
        "weight_quantization": options.config.weight_quantization,
        "flash_bytes": len(stored.stored.model),
        "int8_standard_bytes": len(converted.int8_tflite),
        "compact": {
            "saved_bytes": converted.compact_model.saved_bytes,
            "zero_points_collapsed": converted.compact_model.zero_points_collapsed,
            "bias_quantizations_dropped": converted.compact_model.bias_quantizations_dropped,
            "note": _COMPACT_NOTE,
        },
        "int8_zlib_bytes": len(zlib.compress(converted.compact_model.model, 9)),
        "float_tflite_bytes": len(converted.float_tflite),
        "arena_bytes": int(arena.bytes),
        "arena": {
            "min_bytes": search.min_bytes,
            "recommended_bytes": search.recommended_bytes,
            "margin": search.margin,
            "probes": search.probes,
            "measured_on": "host (64-bit) TFLite Micro from the tflite-micro package",
        },
        "float_top1": verified.float_top1,
        "int8_top1": verified.int8_top1,
        "accuracy": {**compressed.accuracy_before, **verified.accuracy},
        "tflm_bit_exact": verified.bit_exact,
        "float_tflite_max_abs_diff": verified.float_tflite_max_abs_diff,
        "tflm_instructions_per_inference": None if instructions is None else instructions.total,
        "sparsity": {
            **compressed.sparsity,
            "int8_zero_fraction": flatbuffer.int8_weight_zero_fraction(converted.int8_tflite),
        },
        "clustering": compressed.clustering,
        "weight_storage": _weight_storage(stored.stored, search, instructions, verified.decode),
        "ops": flatbuffer.op_histogram(stored.stored.model),
        "io": converted.io,
        "representative_samples": len(data.calibration),
        "files": [*files, "report.json", "report.md"],
    }
    if npu is not None:
        result["npu"] = npu.section
    return result


def _weight_storage(
    stored: Any, arena: Any, instructions: stages.Instructions | None, decode: dict[str, Any] | None
) -> dict[str, Any]:
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
    if instructions is not None and instructions.total is not None:
        dense = instructions.dense
        result.update(
            instructions=instructions.total,
            dense_instructions=dense,
            decode_instructions=instructions.decode,
            instructions_ratio=round(instructions.total / dense, 4) if dense else None,
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
    if not accuracy["samples"]:
        lines += [
            "**Accuracy not measured:** the export had no `eval_data`. The int8 model is bit-identical to "
            "TFLite's reference kernels, which says nothing of how well it classifies.",
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
