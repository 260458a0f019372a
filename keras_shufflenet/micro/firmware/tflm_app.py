"""Builds the TFLM application ``tflm/`` with an export's files and runs it, on a host or in qemu.

``tflm/Makefile`` compiles ``tflm/`` (``main.cc``, ``main_functions.cc``,
``markers.cc``) with the files that :func:`keras_shufflenet.micro.export`
wrote into ``<run>/tflm/``, against a TFLM source tree made by TFLM's
``create_tflm_tree.py`` (never downloaded). Cortex-M builds use Debian's
``arm-none-eabi-gcc`` (newlib, semihosting) and run in
``qemu-arm -cpu cortex-m4|cortex-m7|cortex-m55``. Every failure is a
:class:`FirmwareError` that names its cause.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TARGETS = ("host", "cortex-m4", "cortex-m7", "cortex-m55")
# reference: TFLM's reference kernels; cmsis_nn: Arm's CMSIS-NN kernels;
# shufflenet: CMSIS-NN plus the project's kernels (tflm/kernels/), built on the
# CMSIS-NN tree.
KERNELS = ("reference", "cmsis_nn", "shufflenet")


def default_kernels(target: str) -> str:
    """The kernel set a build takes when none is named: the fastest exact one on Cortex-M, the reference on a host."""
    return "reference" if target == "host" else "shufflenet"


def tree_kernels(kernels: str) -> str:
    """The kernel set of the TFLM tree that ``kernels`` builds on."""
    return "cmsis_nn" if kernels == "shufflenet" else kernels


# The application sources and their Makefile: shipped inside an installed package (setup.py copies the
# checkout's tflm/ there), else beside the package in a checkout.
PACKAGED_APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # keras_shufflenet/
CHECKOUT_APP_DIR = os.path.join(os.path.dirname(_PACKAGE_ROOT), "tflm")
APP_DIR = PACKAGED_APP_DIR if os.path.isfile(os.path.join(PACKAGED_APP_DIR, "Makefile")) else CHECKOUT_APP_DIR
# The trees a checkout builds against when TFLM_TREE is unset (an installed package needs TFLM_TREE).
DEFAULT_TREE = os.path.join(os.path.dirname(os.path.dirname(CHECKOUT_APP_DIR)), "shared", "tflm")

_INSTALL_HINT = {
    "arm-none-eabi-g++": "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib",
    "qemu-arm": (
        "qemu-user 7.2 (Debian 12) aborts on Cortex-M CPUs; install qemu-user >= 8 "
        "(Debian 12: add bookworm-backports, then apt-get install -t bookworm-backports qemu-user)"
    ),
    "g++": "apt-get install g++",
    "make": "apt-get install make",
}


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


def require_tool(tool: str) -> str:
    """The path of ``tool``, or a FirmwareError that says how to install it."""
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
    for candidate in (os.path.join(tflm_tree, tree_kernels(kernels)), tflm_tree):
        if os.path.isfile(os.path.join(candidate, interpreter)):
            tree = os.path.abspath(candidate)
            break
    else:
        raise FirmwareError(
            f"TFLM_TREE={tflm_tree!r} is not a TFLM source tree: neither it nor its {tree_kernels(kernels)}/ "
            f"folder holds {interpreter}. Make one with create_tflm_tree.py."
        )
    kernels_dir = os.path.join(tree, "tensorflow", "lite", "micro", "kernels")
    if tree_kernels(kernels) == "cmsis_nn" and not os.path.isfile(os.path.join(kernels_dir, "cmsis_nn", "conv.cc")):
        raise FirmwareError(
            f"KERNELS={kernels}, but the tree {tree} has no CMSIS-NN kernels (tensorflow/lite/micro/kernels/"
            "cmsis_nn/): make it with create_tflm_tree.py OPTIMIZED_KERNEL_DIR=cmsis_nn."
        )
    if kernels == "reference" and not os.path.isfile(os.path.join(kernels_dir, "conv.cc")):
        raise FirmwareError(f"KERNELS=reference, but the tree {tree} has no reference kernels (kernels/conv.cc).")
    return tree


def _compiler(target: str) -> str:
    return "g++" if target == "host" else "arm-none-eabi-g++"


def binutil(target: str, tool: str) -> str:
    """The GNU binutils program ``tool`` for ``target`` (``nm``, ``readelf``...)."""
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


def needs_decode(model_dir: str) -> bool:
    """Whether the export's model stores weights compressed (its op resolver registers DECODE)."""
    with open(os.path.join(model_dir, "op_resolver.h")) as handle:
        return "AddDecode()" in handle.read()


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

    A model with compressed weights (DECODE operators) builds TFLM with
    ``USE_TFLM_COMPRESSION``, which the Makefile reads from ``op_resolver.h``.
    TFLM itself is compiled once per tree, compiler and flags into a cache
    (``$XDG_CACHE_HOME/keras-shufflenet/tflm``); later builds only compile the
    application and link.

    Args:
      model_dir: The ``tflm/`` folder an export wrote.
      target: One of ``TARGETS``.
      kernels: One of ``KERNELS``: ``"reference"``, ``"cmsis_nn"`` (Arm's CMSIS-NN kernels) or ``"shufflenet"``
        (CMSIS-NN plus the project's kernels in ``tflm/kernels/``).
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
        raise FirmwareError(
            f"The application sources are not at {APP_DIR}: install the package from a wheel or sdist built by "
            "setup.py (which ships them), or run from a checkout of the project."
        )
    require_tool("make")
    require_tool(_compiler(target))
    model_dir = os.path.abspath(model_dir)
    if build_dir is None:
        build_dir = os.path.join(os.path.dirname(model_dir), "firmware", f"{target}_{kernels}", "build")
    build_dir = os.path.abspath(build_dir)
    args = [
        "make", "-C", APP_DIR, f"-j{jobs or os.cpu_count() or 1}", f"MODEL_DIR={model_dir}", f"TARGET={target}",
        f"KERNELS={kernels}", f"TFLM_TREE={tree}", f"BUILD_DIR={build_dir}",
        f"PYTHON={sys.executable}",  # runs tools/model_sources.py, which needs Python 3.10+
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


def run_command(elf: str, target: str, inferences: int | None) -> list[str]:
    """The command that runs ``elf``: directly on the host, in ``qemu-arm -cpu <target>`` for Cortex-M."""
    args = [elf] if target == "host" else [require_tool("qemu-arm"), "-cpu", target, elf]
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
    args = run_command(elf, target, inferences)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise FirmwareError(f"The firmware did not finish within {timeout:.0f} s: {' '.join(args)}") from err
    text = proc.stdout + proc.stderr
    out = parse_output(text)
    if "AllocateTensors() failed" in text:
        raise FirmwareError(
            "The tensor arena is too small on this target: "
            + text.strip().splitlines()[-1][:300]
            + " Re-export with a larger `arena_bytes`, or build with a larger ARENA_SIZE."
        )
    if proc.returncode != 0:
        raise FirmwareError(f"The firmware exited with status {proc.returncode}: {' '.join(args)}\n{text[-2000:]}")
    if not out.samples:
        raise FirmwareError(f"The firmware ran no inference:\n{text[-2000:]}")
    return out
