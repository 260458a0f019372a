"""The firmware step: build the TFLM application with an export's files, run it, check it and measure it.

Building and running are :mod:`~keras_shufflenet.micro.firmware.tflm_app`, flash and
RAM :mod:`~keras_shufflenet.micro.firmware.elf_size`, instructions
:mod:`~keras_shufflenet.micro.firmware.instruction_count`; this module puts them
together for one target and kernel set, and records the results in the run.

What a run measures, written to ``<run>/firmware/<target>_<kernels>/result.json``:

* whether every sample's int8 output equals the host TFLM output written at
  export (``output_matches_host``, ``max_int8_diff``, the top classes);
* instructions per ``Invoke()``, counted in qemu's execution trace between
  the markers of ``tflm/markers.cc`` (start-up excluded), and per operator;
* flash (the ELF's loadable contents: code, constants, initialized data) split
  into the model array, the sample images and the rest (TFLM, kernels, libc), and RAM (data + bss + measured stack);
* the arena the target really uses (``arena_used_bytes()``), checked to be
  the smallest that works (rounded up to TFLM's 16-byte alignment) by
  rebuilding with exactly that size.

Command line (``make firmware`` calls it)::

    python -m keras_shufflenet.micro.firmware --run_dir=runs/quickstart --target=cortex-m4 --kernels=cmsis_nn
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from keras_shufflenet import run_dir as run_files
from keras_shufflenet.micro import c_sources, report
from keras_shufflenet.micro.firmware.elf_size import elf_sizes
from keras_shufflenet.micro.firmware.instruction_count import count_instructions
from keras_shufflenet.micro.firmware.tflm_app import (
    DEFAULT_TREE,
    KERNELS,
    TARGETS,
    FirmwareError,
    build,
    default_kernels,
    default_tflm_tree,
    parse_output,
    resolve_tree,
    run,
)

__all__ = [
    "DEFAULT_TREE",
    "KERNELS",
    "TARGETS",
    "FirmwareError",
    "build",
    "build_and_measure",
    "count_instructions",
    "default_kernels",
    "default_tflm_tree",
    "elf_sizes",
    "firmware_dir",
    "instructions_by_op_type",
    "parse_output",
    "record_in_run",
    "resolve_tree",
    "run",
]


def firmware_dir(run_dir: str, target: str, kernels: str) -> str:
    """``<run_dir>/firmware/<target>_<kernels>``, where a run's result goes."""
    return os.path.join(run_dir, "firmware", f"{target}_{kernels}")


def build_and_measure(
    model_dir: str,
    target: str,
    kernels: str,
    output_dir: str,
    tflm_tree: str | None = None,
    count: bool = True,
    check_arena: bool = True,
    tolerance_lsb: int = 0,
) -> dict[str, Any]:
    """Builds, runs and measures the application; writes and returns ``output_dir/result.json``.

    Args:
      model_dir: The ``tflm/`` folder an export wrote.
      target: One of ``TARGETS``.
      kernels: One of ``KERNELS``.
      output_dir: Gets ``result.json``, the ELF, its linker map and the run's output.
      tflm_tree: See :func:`build`.
      count: Count instructions per ``Invoke()`` (Cortex-M targets; slow with
        the reference kernels, about a minute per 100 M instructions).
      check_arena: Rebuild with the arena the target used, rounded up to 16
        bytes (``arena_min_bytes``), and run once: an error if that
        smallest arena does not work.
      tolerance_lsb: The largest difference from the host's output allowed,
        in int8 steps. Defaults to `0`: any difference is a failure (the
        record is still written).

    Raises:
      FirmwareError: The build or run failed, or an output differs from the
        host's by more than ``tolerance_lsb`` or in its top class.
    """
    os.makedirs(output_dir, exist_ok=True)
    build_dir = os.path.join(output_dir, "build")
    result_path = os.path.join(output_dir, "result.json")
    try:
        built = build(model_dir, target, kernels, build_dir, tflm_tree)
    except FirmwareError as err:
        run_files.write_json(result_path, {"target": target, "kernels": kernels, "built": False, "error": str(err)})
        raise
    start = time.monotonic()
    out = run(built["elf"], target)
    run_seconds = round(time.monotonic() - start, 1)
    sizes = elf_sizes(built["elf"], target)
    diffs = [s["max_int8_diff"] for s in out.samples]
    top_matches = all(s["top_class"] == s["host_top_class"] for s in out.samples)
    # TFLM aligns both ends of the arena to 16 bytes, so the smallest arena
    # that works is the used bytes rounded up to 16 (check_arena shows it).
    arena_min = -(-out.arena_used_bytes // 16) * 16
    result: dict[str, Any] = {
        "target": target,
        "kernels": kernels,
        "tflm_tree": built["tree"],
        "built": True,
        "build_seconds": built["seconds"],
        "run_seconds": run_seconds,
        "samples": len(out.samples),
        "output_matches_host": max(diffs) == 0,
        "max_int8_diff": max(diffs),
        "top_class_matches_host": top_matches,
        "per_sample": [
            {k: s[k] for k in ("index", "label", "top_class", "host_top_class", "max_int8_diff")} for s in out.samples
        ],
        **sizes,
        "arena_bytes": out.arena_bytes,
        "arena_used_bytes": out.arena_used_bytes,
        "stack_bytes": out.stack_bytes,
        "arena_min_bytes": arena_min,
        # RAM with the arena at that size: data + bss (whose arena is the
        # built one) less the built arena plus the smallest, plus the measured
        # stack. It does not depend on the kTensorArenaSize of the build.
        "ram_bytes": sizes["data_bytes"] + sizes["bss_bytes"] - out.arena_bytes + arena_min + (out.stack_bytes or 0),
        "instructions_per_invoke": None,
        "ops": len(out.ops),
    }
    if check_arena:
        exact = build(model_dir, target, kernels, os.path.join(output_dir, "arena_check"), tflm_tree,
                      arena_size=result["arena_min_bytes"])  # fmt: skip
        run(exact["elf"], target, inferences=1)
        result["arena_min_bytes_checked"] = True
    if count and target != "host":
        start = time.monotonic()
        counted = count_instructions(built["elf"], target)
        result["count_seconds"] = round(time.monotonic() - start, 1)
        result["instructions_per_invoke"] = counted["instructions_per_invoke"]
        result["per_op"] = _per_op_table(out.ops, counted["per_op"])
    for name in ("shufflenet", "shufflenet.map"):
        shutil.copy(os.path.join(build_dir, name), os.path.join(output_dir, name))
    run_files.write_text(os.path.join(output_dir, "output.txt"), out.text)
    run_files.write_json(result_path, result)
    if max(diffs) > tolerance_lsb or not top_matches:
        raise FirmwareError(
            f"{target} with {kernels} kernels: the output differs from the host TFLM output by up to {max(diffs)} LSB"
            f"{'' if top_matches else ', and the top class changes'} (allowed: {tolerance_lsb}; "
            f"see {output_dir}/result.json)."
        )
    return result


def _per_op_table(ops: Sequence[str], counts: Sequence[int]) -> list[dict[str, Any]]:
    if len(ops) != len(counts):
        raise FirmwareError(f"The trace shows {len(counts)} operators, the application printed {len(ops)}.")
    return [{"index": i, "op": op, "instructions": n} for i, (op, n) in enumerate(zip(ops, counts, strict=True))]


def instructions_by_op_type(per_op: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Sums a per-operator table by operator type, largest first."""
    totals: dict[str, int] = {}
    for row in per_op:
        totals[row["op"]] = totals.get(row["op"], 0) + row["instructions"]
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def record_in_run(run_dir: str) -> dict[str, Any]:
    """Writes the firmware results of a run into its export: arena size for 32-bit cores, and the report.

    Reads every ``<run_dir>/firmware/*/result.json``. ``kTensorArenaSize32``
    in ``tflm/model_settings.h`` becomes the largest arena used on the
    Cortex-M builds plus a small margin (see
    :func:`keras_shufflenet.micro.c_sources.set_32bit_arena`); ``report.json``
    and ``report.md`` get a firmware section with every result.

    Returns:
      The results by ``<target>_<kernels>``.
    """
    results = {}
    base = os.path.join(run_dir, "firmware")
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name, "result.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                results[name] = json.load(handle)
    cortex_m = {name: r for name, r in results.items() if r["target"] != "host" and r.get("arena_used_bytes")}
    results = {name: r for name, r in results.items() if r.get("built")}
    settings_path = os.path.join(run_dir, "tflm", "model_settings.h")
    if cortex_m and os.path.isfile(settings_path):
        with open(settings_path, encoding="utf-8") as handle:
            text = handle.read()
        used = max(r["arena_used_bytes"] for r in cortex_m.values())
        new_text, _ = c_sources.set_32bit_arena(text, used, sorted(cortex_m))
        if new_text != text:
            run_files.write_text(settings_path, new_text)
    report_path = os.path.join(run_dir, "report.json")
    if results and os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as handle:
            export_report = json.load(handle)
        export_report["firmware"] = {name: _report_entry(r) for name, r in results.items()}
        run_files.write_text(report_path, json.dumps(export_report, indent=2) + "\n")
        run_files.write_text(os.path.join(run_dir, "report.md"), report.to_markdown(export_report))
    return results


def _report_entry(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its per-sample and per-operator rows, plus the instructions by operator type."""
    entry = {k: v for k, v in result.items() if k not in ("per_op", "per_sample")}
    if result.get("per_op"):
        entry["instructions_by_op"] = instructions_by_op_type(result["per_op"])
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_shufflenet.micro.firmware",
        description="Build the TFLM application with an export's files, run it and measure it.",
    )
    parser.add_argument("--run_dir", required=True, help="A run or export folder that holds tflm/ (from an export).")
    parser.add_argument("--target", default="host", choices=TARGETS)
    parser.add_argument(
        "--kernels",
        default=None,
        choices=KERNELS,
        help="reference, cmsis_nn, or shufflenet: CMSIS-NN plus the project's kernels "
        "(default: shufflenet on Cortex-M, reference on the host)",
    )
    parser.add_argument("--tflm_tree", default=None, help="A TFLM tree (default: $TFLM_TREE, else ../shared/tflm).")
    parser.add_argument("--no_count", action="store_true", help="Skip counting instructions (Cortex-M).")
    parser.add_argument(
        "--tolerance_lsb",
        type=int,
        default=0,
        help="Largest difference from the host's output allowed, in int8 steps (default 0: bit-identical).",
    )
    args = parser.parse_args(argv)
    args.kernels = args.kernels or default_kernels(args.target)
    model_dir = os.path.join(args.run_dir, "tflm")
    output_dir = firmware_dir(args.run_dir, args.target, args.kernels)
    try:
        result = build_and_measure(
            model_dir,
            args.target,
            args.kernels,
            output_dir,
            args.tflm_tree,
            not args.no_count,
            tolerance_lsb=args.tolerance_lsb,
        )
    except (FirmwareError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        record_in_run(args.run_dir)
    shown = ("built", "samples", "output_matches_host", "max_int8_diff", "instructions_per_invoke", "flash_bytes",
             "model_bytes", "ram_bytes", "arena_used_bytes", "stack_bytes")  # fmt: skip
    for key in shown:
        print(f"{key}: {result[key]}")
    print(f"result: {os.path.join(output_dir, 'result.json')}")
    return 0


if __name__ == "__main__":  # Also `python -m keras_shufflenet.micro.firmware` (firmware/__main__.py).
    sys.exit(main())
