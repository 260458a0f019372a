"""Builds the TFLM application with an export's files, runs it on a host or an emulated Cortex-M, and measures it.

The application is ``tflm/`` (``main.cc``, ``main_functions.cc``,
``markers.cc``); ``tflm/Makefile`` compiles it with the files that
:func:`keras_shufflenet.micro.export` wrote into ``<run>/tflm/`` against a
TFLM source tree made by TFLM's ``create_tflm_tree.py`` (never downloaded).
Cortex-M builds use Debian's ``arm-none-eabi-gcc`` (newlib, semihosting) and
run in ``qemu-arm -cpu cortex-m4|cortex-m7|cortex-m55``.

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
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_shufflenet.micro import c_sources, report

TARGETS = ("host", "cortex-m4", "cortex-m7", "cortex-m55")
KERNELS = ("reference", "cmsis_nn")

# The application sources and their Makefile, beside the package in a checkout.
APP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tflm")
# The trees this project builds against when TFLM_TREE is unset.
DEFAULT_TREE = os.path.join(os.path.dirname(os.path.dirname(APP_DIR)), "shared", "tflm")

_INSTALL_HINT = {
    "arm-none-eabi-g++": "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib",
    "qemu-arm": (
        "qemu-user 7.2 (Debian 12) aborts on Cortex-M CPUs; install qemu-user >= 8 "
        "(Debian 12: add bookworm-backports, then apt-get install -t bookworm-backports qemu-user)"
    ),
    "g++": "apt-get install g++",
    "make": "apt-get install make",
}
_MARKERS = ("ks_marker_invoke_begin", "ks_marker_invoke_end", "ks_marker_op_begin", "ks_marker_op_end")


class FirmwareError(RuntimeError):
    """The firmware could not be built or run, or its output is not what the host computed."""


@dataclass
class RunOutput:
    """What one run of the application printed, parsed."""

    arena_used_bytes: int | None = None
    arena_bytes: int | None = None
    stack_bytes: int | None = None
    ops: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(allowed)}. Received: {name}={value!r}")
    return value


def _require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise FirmwareError(
            f"`{tool}` is not installed; it is needed to build or run the firmware. Install: "
            f"{_INSTALL_HINT.get(tool, tool)}."
        )
    return path


def default_tflm_tree() -> str | None:
    """``$TFLM_TREE`` if set, else the project's shared trees when present, else None."""
    tree = os.environ.get("TFLM_TREE")
    if tree:
        return tree
    return DEFAULT_TREE if os.path.isdir(DEFAULT_TREE) else None


def resolve_tree(tflm_tree: str | None, kernels: str) -> str:
    """The TFLM source tree for ``kernels``: ``tflm_tree`` itself or its ``<kernels>/`` folder.

    Raises:
      FirmwareError: No tree given or found, or the tree is not a TFLM tree, or
        it lacks the requested kernels.
    """
    _check_choice("kernels", kernels, KERNELS)
    if tflm_tree is None:
        tflm_tree = default_tflm_tree()
    if tflm_tree is None:
        raise FirmwareError(
            "No TFLM source tree: set TFLM_TREE (or --tflm_tree) to a tree made by tflite-micro's "
            "tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py, or to a folder holding one "
            f"per kernel set as reference/ and cmsis_nn/. (The default, {DEFAULT_TREE}, does not exist.)"
        )
    interpreter = os.path.join("tensorflow", "lite", "micro", "micro_interpreter.h")
    for candidate in (os.path.join(tflm_tree, kernels), tflm_tree):
        if os.path.isfile(os.path.join(candidate, interpreter)):
            tree = os.path.abspath(candidate)
            break
    else:
        raise FirmwareError(
            f"TFLM_TREE={tflm_tree!r} is not a TFLM source tree: neither it nor its {kernels}/ folder holds "
            f"{interpreter}. Make one with create_tflm_tree.py."
        )
    kernels_dir = os.path.join(tree, "tensorflow", "lite", "micro", "kernels")
    if kernels == "cmsis_nn" and not os.path.isfile(os.path.join(kernels_dir, "cmsis_nn", "conv.cc")):
        raise FirmwareError(
            f"KERNELS=cmsis_nn, but the tree {tree} has no CMSIS-NN kernels (tensorflow/lite/micro/kernels/"
            "cmsis_nn/): make it with create_tflm_tree.py OPTIMIZED_KERNEL_DIR=cmsis_nn."
        )
    if kernels == "reference" and not os.path.isfile(os.path.join(kernels_dir, "conv.cc")):
        raise FirmwareError(f"KERNELS=reference, but the tree {tree} has no reference kernels (kernels/conv.cc).")
    return tree


def _compiler(target: str) -> str:
    return "g++" if target == "host" else "arm-none-eabi-g++"


def _binutil(target: str, tool: str) -> str:
    return tool if target == "host" else f"arm-none-eabi-{tool}"


def _explain_build_failure(log: str, model_dir: str) -> str:
    """A one-paragraph reason for a failed build, from the compiler's messages."""
    missing_op = re.search(r"has no member named '(Add\w+)'", log)
    if missing_op:
        return (
            f"The TFLM tree has no kernel registration `{missing_op.group(1)}()` that {model_dir}/op_resolver.h "
            "calls: the model uses an operator this TFLM version lacks. Use a newer TFLM tree."
        )
    api = re.search(r"^(\S*(?:main_functions|markers|main)\.cc:\d+:\d+: error: .*)$", log, re.M)
    if api:
        return f"The application does not compile against this TFLM tree (an API that differs): {api.group(1)}"
    errors = re.findall(r"^.*(?:error:|Error \d|No rule to make).*$", log, re.M)
    return "The build failed: " + ("\n".join(errors[:5]) if errors else log[-2000:])


def build(
    model_dir: str,
    target: str = "host",
    kernels: str = "reference",
    build_dir: str | None = None,
    tflm_tree: str | None = None,
    arena_size: int | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Builds ``tflm/`` with the export's ``model_dir`` files; returns ``{"elf", "map", "seconds", "tree"}``.

    TFLM itself is compiled once per tree, compiler and flags into a cache
    (``$XDG_CACHE_HOME/keras-shufflenet/tflm``); later builds only compile the
    application and link.

    Args:
      model_dir: The ``tflm/`` folder an export wrote.
      target: One of ``TARGETS``.
      kernels: ``"reference"`` or ``"cmsis_nn"`` (Arm's CMSIS-NN kernels).
      build_dir: Where to build. Defaults to ``<model_dir>/../firmware/<target>_<kernels>/build``.
      tflm_tree: A TFLM tree, or a folder with ``reference/`` and ``cmsis_nn/`` trees.
        Defaults to ``$TFLM_TREE``, else the project's shared trees.
      arena_size: Builds with this tensor arena instead of ``kTensorArenaSize``.
      jobs: Parallel compile jobs. Defaults to the CPU count.

    Raises:
      FirmwareError: A missing compiler or tree, an operator the tree lacks, or
        another build failure, named.
    """
    _check_choice("target", target, TARGETS)
    tree = resolve_tree(tflm_tree, kernels)
    if not os.path.isfile(os.path.join(model_dir, "model_data.cc")):
        raise FirmwareError(f"`model_dir`={model_dir!r} holds no model_data.cc: give the tflm/ folder an export wrote.")
    if not os.path.isfile(os.path.join(APP_DIR, "Makefile")):
        raise FirmwareError(f"The application sources are not at {APP_DIR}: run from a checkout of the project.")
    _require_tool("make")
    _require_tool(_compiler(target))
    model_dir = os.path.abspath(model_dir)
    if build_dir is None:
        build_dir = os.path.join(os.path.dirname(model_dir), "firmware", f"{target}_{kernels}", "build")
    build_dir = os.path.abspath(build_dir)
    args = [
        "make", "-C", APP_DIR, f"-j{jobs or os.cpu_count() or 1}", f"MODEL_DIR={model_dir}", f"TARGET={target}",
        f"KERNELS={kernels}", f"TFLM_TREE={tree}", f"BUILD_DIR={build_dir}",
    ]  # fmt: skip
    if arena_size is not None:
        args.append(f"ARENA_SIZE={int(arena_size)}")
    start = time.monotonic()
    # The C locale keeps the compiler's messages in ASCII quotes, which the
    # explanation of a failure parses.
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        raise FirmwareError(_explain_build_failure(proc.stdout + proc.stderr, model_dir))
    elf = os.path.join(build_dir, "shufflenet")
    return {"elf": elf, "map": elf + ".map", "seconds": round(time.monotonic() - start, 1), "tree": tree}


def _run_command(elf: str, target: str, inferences: int | None) -> list[str]:
    args = [elf] if target == "host" else [_require_tool("qemu-arm"), "-cpu", target, elf]
    return args + ([str(inferences)] if inferences is not None else [])


_SAMPLE_LINE = re.compile(
    r"^Sample (\d+): top class (-?\d+) .*?; true class (-?\d+); host top class (-?\d+); "
    r"output .*? \(largest difference (\d+)\)\.$"
)
_OUTPUT_LINE = re.compile(r"^Sample (\d+) output (\d+):((?: -?\d+)*)$")


def parse_output(text: str) -> RunOutput:
    """Parses what the application printed (see ``tflm/main_functions.cc``)."""
    out = RunOutput(text=text)
    samples: dict[int, dict[str, Any]] = {}
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if match := re.match(r"^Arena: (\d+) of (\d+) bytes used\.$", line):
            out.arena_used_bytes, out.arena_bytes = int(match.group(1)), int(match.group(2))
        elif match := re.match(r"^Stack: (\d+) bytes used\.$", line):
            out.stack_bytes = int(match.group(1))
        elif match := re.match(r"^  op (\d+) (\S+)$", line):
            out.ops.append(match.group(2))
        elif match := _SAMPLE_LINE.match(line):
            index, top, label, host_top, diff = (int(g) for g in match.groups())
            samples.setdefault(index, {"output": []}).update(
                index=index, top_class=top, label=label, host_top_class=host_top, max_int8_diff=diff
            )
        elif match := _OUTPUT_LINE.match(line):
            samples.setdefault(int(match.group(1)), {"output": []})["output"] += [
                int(v) for v in match.group(3).split()
            ]
    out.samples = [samples[i] for i in sorted(samples)]
    return out


def run(elf: str, target: str, inferences: int | None = None, timeout: float = 1200) -> RunOutput:
    """Runs the application (on the host, or in qemu for Cortex-M) and parses its output.

    Raises:
      FirmwareError: qemu missing, a crash, a timeout, or an application that
        did not get to run its inferences (for example an arena too small).
    """
    args = _run_command(elf, target, inferences)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise FirmwareError(f"The firmware did not finish within {timeout:.0f} s: {' '.join(args)}") from err
    text = proc.stdout + proc.stderr
    out = parse_output(text)
    if proc.returncode != 0:
        raise FirmwareError(f"The firmware exited with status {proc.returncode}: {' '.join(args)}\n{text[-2000:]}")
    if "AllocateTensors() failed" in text:
        raise FirmwareError(
            "The tensor arena is too small on this target: "
            + text.strip().splitlines()[-1][:300]
            + " Re-export with a larger `arena_bytes`, or build with a larger ARENA_SIZE."
        )
    if not out.samples:
        raise FirmwareError(f"The firmware ran no inference:\n{text[-2000:]}")
    return out


def _symbols(elf: str, target: str) -> dict[str, tuple[int, int]]:
    """Symbol -> (address, size) for the defined symbols of ``elf``."""
    proc = subprocess.run(
        [_require_tool(_binutil(target, "nm")), "-S", "-C", "--defined-only", elf],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    symbols = {}
    for line in proc.stdout.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4:
            symbols[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        elif len(parts) == 3:
            symbols[parts[2]] = (int(parts[0], 16), 0)
    return symbols


def elf_sizes(elf: str, target: str) -> dict[str, int]:
    """Flash and static RAM of an ELF from its section headers.

    Flash is every allocated section with contents (code, read-only data,
    the initial values of ``.data``); static RAM is ``.data`` plus every
    allocated section without contents (``.bss``, which holds the arena).
    """
    proc = subprocess.run(
        [_require_tool(_binutil(target, "readelf")), "-S", "-W", elf], capture_output=True, text=True, check=True
    )
    flash = data = bss = 0
    for line in proc.stdout.splitlines():
        match = re.match(r"^\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if not match or "A" not in match.group(4):
            continue
        name, kind, size = match.group(1), match.group(2), int(match.group(3), 16)
        if kind == "NOBITS":
            bss += size
            continue
        flash += size
        if name.startswith(".data") or name.startswith(".tdata"):
            data += size
    symbols = _symbols(elf, target)
    model = next((size for name, (_, size) in symbols.items() if re.fullmatch(r"g_\w+_model_data", name)), 0)
    # The test images and their expected outputs are the demo's, not the product's.
    samples = sum(symbols.get(name, (0, 0))[1] for name in ("g_sample_input_data", "g_sample_expected_output"))
    return {
        "flash_bytes": flash,
        "model_bytes": model,
        "sample_bytes": samples,
        "code_bytes": flash - model - samples,
        "data_bytes": data,
        "bss_bytes": bss,
    }


def _trace_counter() -> str:
    """``tflm/tools/trace_count.c`` compiled for the host, once per source version, in the build cache."""
    source = os.path.join(APP_DIR, "tools", "trace_count.c")
    with open(source, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "keras-shufflenet")
    binary = os.path.join(cache, f"trace_count_{digest}")
    if not os.path.isfile(binary):
        os.makedirs(cache, exist_ok=True)
        tmp = f"{binary}.{os.getpid()}.tmp"
        subprocess.run([_require_tool("gcc"), "-O2", "-o", tmp, source], check=True, capture_output=True)
        os.replace(tmp, binary)
    return binary


def count_instructions(elf: str, target: str, timeout: float = 3600) -> dict[str, Any]:
    """Instructions of the first ``Invoke()`` on an emulated Cortex-M, in total and per operator.

    qemu translates code into blocks; with ``-d in_asm,exec,nochain`` it logs
    each block's instructions once and every execution of a block. The log
    streams through a FIFO into ``tflm/tools/trace_count.c``, so nothing
    large is written to disk. The count is exact for the emulated instruction
    set (not cycles) and repeats exactly for the same binary and input. It
    takes about a minute per 80 M instructions.

    Returns:
      ``{"instructions_per_invoke": int, "per_op": [int, ...]}``, ``per_op``
      in execution order (the operator names come from the run's output).
    """
    if target == "host":
        raise ValueError("`target`='host': instructions are counted on an emulated Cortex-M only.")
    symbols = _symbols(elf, target)
    missing = [name for name in _MARKERS if name not in symbols]
    if missing:
        raise FirmwareError(f"The ELF has no markers {missing}: build it with MARKERS=1 (tflm/Makefile's default).")
    # Thumb function symbols may carry bit 0; qemu logs the even address.
    markers = {name: symbols[name][0] & ~1 for name in _MARKERS}
    counter = _trace_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # qemu writes the log into a FIFO that the counter reads: a
        # reference-kernel trace is gigabytes and never touches the disk.
        fifo = os.path.join(tmp, "trace")
        os.mkfifo(fifo)
        args = _run_command(elf, target, 1)
        args[1:1] = ["-d", "in_asm,exec,nochain", "-D", fifo]
        with open(os.path.join(tmp, "out"), "w") as program_output:
            qemu = subprocess.Popen(args, stdout=program_output, stderr=subprocess.STDOUT)
            marker_args = [f"{markers[name]:x}" for name in _MARKERS]
            try:
                with open(fifo, "rb") as log:
                    counted = subprocess.run(
                        [counter, *marker_args], stdin=log, capture_output=True, text=True, timeout=timeout
                    )
                qemu.wait(timeout=60)
            except subprocess.TimeoutExpired as err:
                raise FirmwareError(f"Counting instructions took over {timeout:.0f} s: {' '.join(args)}") from err
            finally:
                if qemu.poll() is None:
                    qemu.kill()
    if qemu.returncode != 0 or counted.returncode != 0:
        raise FirmwareError(
            f"Counting instructions failed (qemu status {qemu.returncode}): {counted.stderr.strip()[:500]}"
        )
    total, per_op = 0, []
    for line in counted.stdout.splitlines():
        kind, *values = line.split()
        if kind == "invoke":
            total = int(values[0])
        elif kind == "op":
            per_op.append(int(values[1]))
    return {"instructions_per_invoke": total, "per_op": per_op}


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
        bytes, and run once: it is the smallest that works
        (``arena_min_bytes``); an error if it does not run.

    Raises:
      FirmwareError: The build or run failed, or an output differs from the
        host's by more than 1 LSB or in its top class.
    """
    os.makedirs(output_dir, exist_ok=True)
    build_dir = os.path.join(output_dir, "build")
    result_path = os.path.join(output_dir, "result.json")
    try:
        built = build(model_dir, target, kernels, build_dir, tflm_tree)
    except FirmwareError as err:
        _write_json_atomically(result_path, {"target": target, "kernels": kernels, "built": False, "error": str(err)})
        raise
    start = time.monotonic()
    out = run(built["elf"], target)
    run_seconds = round(time.monotonic() - start, 1)
    sizes = elf_sizes(built["elf"], target)
    diffs = [s["max_int8_diff"] for s in out.samples]
    top_matches = all(s["top_class"] == s["host_top_class"] for s in out.samples)
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
        # Static RAM (data + bss, the arena inside bss) plus the measured stack.
        "ram_bytes": sizes["data_bytes"] + sizes["bss_bytes"] + (out.stack_bytes or 0),
        "instructions_per_invoke": None,
        "ops": len(out.ops),
    }
    if check_arena and out.arena_used_bytes:
        # TFLM aligns both ends of the arena to 16 bytes, so the smallest arena
        # that works is the used bytes rounded up to 16.
        smallest = -(-out.arena_used_bytes // 16) * 16
        exact = build(model_dir, target, kernels, os.path.join(output_dir, "arena_check"), tflm_tree,
                      arena_size=smallest)  # fmt: skip
        run(exact["elf"], target, inferences=1)
        result["arena_min_bytes"] = smallest
    if count and target != "host":
        start = time.monotonic()
        counted = count_instructions(built["elf"], target)
        result["count_seconds"] = round(time.monotonic() - start, 1)
        result["instructions_per_invoke"] = counted["instructions_per_invoke"]
        result["per_op"] = _per_op_table(out.ops, counted["per_op"])
    for name in ("shufflenet", "shufflenet.map"):
        shutil.copy(os.path.join(build_dir, name), os.path.join(output_dir, name))
    with open(os.path.join(output_dir, "output.txt"), "w", encoding="utf-8") as handle:
        handle.write(out.text)
    _write_json_atomically(result_path, result)
    if max(diffs) > 1 or not top_matches:
        raise FirmwareError(
            f"{target} with {kernels} kernels: the output differs from the host TFLM output by up to {max(diffs)} LSB"
            f"{'' if top_matches else ', and the top class changes'} (see {output_dir}/result.json)."
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


def _write_text_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _write_json_atomically(path: str, data: Any) -> None:
    _write_text_atomically(path, json.dumps(data, indent=2) + "\n")


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
            _write_text_atomically(settings_path, new_text)
    report_path = os.path.join(run_dir, "report.json")
    if results and os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as handle:
            export_report = json.load(handle)
        export_report["firmware"] = {name: _report_entry(r) for name, r in results.items()}
        _write_text_atomically(report_path, json.dumps(export_report, indent=2) + "\n")
        _write_text_atomically(os.path.join(run_dir, "report.md"), report.to_markdown(export_report))
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
    parser.add_argument("--kernels", default="reference", choices=KERNELS)
    parser.add_argument("--tflm_tree", default=None, help="A TFLM tree (default: $TFLM_TREE, else ../shared/tflm).")
    parser.add_argument("--no_count", action="store_true", help="Skip counting instructions (Cortex-M).")
    args = parser.parse_args(argv)
    model_dir = os.path.join(args.run_dir, "tflm")
    output_dir = firmware_dir(args.run_dir, args.target, args.kernels)
    try:
        result = build_and_measure(model_dir, args.target, args.kernels, output_dir, args.tflm_tree, not args.no_count)
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


if __name__ == "__main__":
    sys.exit(main())
