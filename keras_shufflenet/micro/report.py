"""The export report: ``report.json`` (machine-readable) and ``report.md`` (for people)."""

from __future__ import annotations

import json
import os
from typing import Any


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
    lines += ["", "## Operators (int8 model)", "", "| operator | count |", "|---|---:|"]
    lines += [f"| {op} | {count} |" for op, count in report["ops"].items()]
    lines += ["", "## Files", ""]
    lines += [f"- `{path}`" for path in report["files"]]
    lines += ["", "## Timings (wall clock, approximate)", ""]
    lines += [f"- {phase}: {seconds:.1f} s" for phase, seconds in report["timings_s"].items()]
    lines += firmware_markdown(report.get("firmware", {}))
    return "\n".join(lines) + "\n"


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
