"""Instructions of one TFLM ``Invoke()`` on an emulated Cortex-M, in total and per operator.

The application marks ``Invoke()`` and each operator with empty functions
(``tflm/markers.cc``); qemu's execution trace shows them run, and
``tflm/tools/trace_count.c`` sums the instructions in between.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from typing import Any

from keras_shufflenet.micro.firmware.elf_size import symbols
from keras_shufflenet.micro.firmware.tflm_app import APP_DIR, FirmwareError, require_tool, run_command

MARKERS = ("ks_marker_invoke_begin", "ks_marker_invoke_end", "ks_marker_op_begin", "ks_marker_op_end")


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
        subprocess.run([require_tool("gcc"), "-O2", "-o", tmp, source], check=True, capture_output=True)
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
    table = symbols(elf, target)
    missing = [name for name in MARKERS if name not in table]
    if missing:
        raise FirmwareError(f"The ELF has no markers {missing}: build it with MARKERS=1 (tflm/Makefile's default).")
    # Thumb function symbols may carry bit 0; qemu logs the even address.
    markers = {name: table[name][0] & ~1 for name in MARKERS}
    counter = _trace_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # qemu writes the log into a FIFO that the counter reads: a
        # reference-kernel trace is gigabytes and never touches the disk.
        fifo = os.path.join(tmp, "trace")
        os.mkfifo(fifo)
        args = run_command(elf, target, 1)
        args[1:1] = ["-d", "in_asm,exec,nochain", "-D", fifo]
        with open(os.path.join(tmp, "out"), "w") as program_output:
            qemu = subprocess.Popen(args, stdout=program_output, stderr=subprocess.STDOUT)
            marker_args = [f"{markers[name]:x}" for name in MARKERS]
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
