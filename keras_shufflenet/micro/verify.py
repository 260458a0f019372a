"""Verification of an int8 model in the real TFLite Micro interpreter.

* TFLM's outputs are compared with TFLite's *reference* kernels
  (``OpResolverType.BUILTIN_REF``): both implement the same integer
  arithmetic, so they must agree bit for bit. TFLite's default optimized
  kernels may differ by an LSB and are not a valid oracle.
* The smallest tensor arena is found by bisection, each probe in a fresh
  child process, because TFLM aborts the process on some failures.

Every TFLM run happens in a child process (``tflm_worker.py``, which does not
import TensorFlow and starts in well under a second).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

from keras_shufflenet.micro import litert
from keras_shufflenet.micro.weight_storage import DECODE_OP

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tflm_worker.py")
_EXIT_NO_FIT = 4  # tflm_worker.EXIT_NO_FIT (the worker is run by path, not imported).
# TFLM aligns every arena allocation to 16 bytes; a finer search is meaningless.
ARENA_ALIGNMENT = 16
# The margin added to the measured minimum must stay below this: a larger one
# would hide a wrong measurement rather than cover a 32-bit target's bookkeeping.
MAX_ARENA_MARGIN = 0.25
_PROBE_TIMEOUT_S = 120


class TFLMError(RuntimeError):
    """TFLite Micro failed to run a model (error status or a crashed child process)."""


class VerificationError(RuntimeError):
    """The int8 model in TFLite Micro disagrees with the TFLite reference kernels."""


@dataclasses.dataclass
class ArenaSearch:
    """Result of the tensor-arena search.

    Attributes:
      min_bytes: Smallest arena (multiple of 16) in which the model allocated
        and ran, measured on this host.
      recommended_bytes: ``min_bytes`` plus the margin, rounded up to 16.
      margin: The fraction added to ``min_bytes``.
      probes: Number of child processes the search ran.
    """

    min_bytes: int
    recommended_bytes: int
    margin: float
    probes: int


def _round_up(value: float, multiple: int = ARENA_ALIGNMENT) -> int:
    return int(-(-int(np.ceil(value)) // multiple) * multiple)


def _worker(args: list[str], timeout: float = _PROBE_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, _WORKER, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def signal_name(returncode: int) -> str:
    """The signal that killed a child process, from its negative return code (e.g. ``"SIGSEGV"``)."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _describe_failure(result: subprocess.CompletedProcess) -> str:
    if result.returncode < 0:
        cause = f"the TFLM process was killed by {signal_name(result.returncode)}"
    else:
        cause = f"the TFLM process exited with status {result.returncode}"
    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
    return f"{cause}: {tail}" if tail else cause


def probe_arena(model_path: str, arena_bytes: int) -> tuple[bool, subprocess.CompletedProcess]:
    """Whether the model allocates and runs one inference in ``arena_bytes`` (in a child process)."""
    result = _worker(["probe", model_path, str(int(arena_bytes))])
    return result.returncode == 0, result


def find_min_arena(
    model_path: str, margin: float = 0.1, max_bytes: int = 256 * 2**20, max_children: int = 8
) -> ArenaSearch:
    """Finds the smallest tensor arena the model runs in, by bisection in child processes.

    One child bisects to 16-byte resolution (TFLM's alignment), reporting
    each probe as it goes. If TFLM aborts the child, the probe it was running
    counts as "does not fit" and a new child resumes from the narrowed
    bracket, so the result stays on the safe side.

    Args:
      model_path: The ``.tflite`` file.
      margin: Fraction added to the minimum for the recommended size
        (``0 <= margin < 0.25``): a 32-bit target's bookkeeping differs
        slightly from this 64-bit host's. Defaults to `0.1`.
      max_bytes: Largest arena tried. Defaults to 256 MiB.
      max_children: Child processes allowed (each abort costs one). Defaults to `8`.

    Returns:
      An :class:`ArenaSearch`.

    Raises:
      ValueError: If ``margin`` is out of range.
      TFLMError: If the model does not run in TFLM with up to ``max_bytes``.
    """
    if not 0 <= margin < MAX_ARENA_MARGIN:
        raise ValueError(f"`arena_margin` must be in [0, {MAX_ARENA_MARGIN}). Received: arena_margin={margin!r}")
    low, high = 0, min(max(4 * 2**20, _round_up(10 * os.path.getsize(model_path))), max_bytes)
    best: int | None = None  # Smallest size seen to work.
    probes = 0
    result = None
    for _ in range(max_children):
        result = _worker(["search", model_path, str(low), str(high), str(max_bytes)], timeout=_PROBE_TIMEOUT_S * 4)
        trying = None
        for line in result.stdout.splitlines():
            word, _, value = line.partition(" ")
            if word == "try":
                trying = int(value)
                probes += 1
            elif word == "ok":
                best = int(value) if best is None else min(best, int(value))
                trying = None
            elif word == "fail":
                low, trying = max(low, int(value)), None
            elif word == "min" and result.returncode == 0:
                minimum = int(value)
                return ArenaSearch(minimum, _round_up(minimum * (1 + margin)), margin, probes)
        if result.returncode == _EXIT_NO_FIT:
            break
        if trying is not None:  # The child died while probing this size: count it as too small.
            low = max(low, trying)
        if best is not None and best - low <= ARENA_ALIGNMENT:
            return ArenaSearch(best, _round_up(best * (1 + margin)), margin, probes)
        if low >= max_bytes:
            break
        high = best if best is not None else min(max(high, 2 * low), max_bytes)
    raise TFLMError(
        f"The model does not run in TFLite Micro with an arena of up to {max_bytes:,} bytes: "
        f"{_describe_failure(result) if result is not None else 'no attempt'}"
    )


def run_tflm(model_path: str, arena_bytes: int, inputs: np.ndarray, timeout: float = 1800) -> np.ndarray:
    """Runs every input through TFLite Micro (in a child process), one invoke each.

    Args:
      model_path: The int8 ``.tflite`` file.
      arena_bytes: Tensor arena size.
      inputs: Array ``(N, H, W, C)`` of the model's input dtype.
      timeout: Seconds before the child is killed.

    Returns:
      The outputs, ``(N, ...)`` without the batch dimension of 1.

    Raises:
      TFLMError: If TFLM reports an error or the child crashes.
    """
    with tempfile.TemporaryDirectory(prefix="tflm_run_") as scratch:
        inputs_path = os.path.join(scratch, "inputs.npy")
        outputs_path = os.path.join(scratch, "outputs.npy")
        np.save(inputs_path, inputs)
        result = _worker(["run", model_path, str(int(arena_bytes)), inputs_path, outputs_path], timeout=timeout)
        if result.returncode != 0:
            raise TFLMError(f"TFLite Micro failed to run the model: {_describe_failure(result)}")
        return np.load(outputs_path)


def run_reference(tflite_model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Runs every input through TFLite's reference kernels, the bit-exact oracle for TFLM."""
    return _run_tflite(litert.interpreter(tflite_model, reference_kernels=True), inputs)


def run_tflite(tflite_model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Runs every input through the default TFLite interpreter (used for the float model)."""
    return _run_tflite(litert.interpreter(tflite_model), inputs)


def _run_tflite(interpreter: Any, inputs: np.ndarray) -> np.ndarray:
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for sample in inputs:
        interpreter.set_tensor(input_index, sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index)[0].copy())
    return np.stack(outputs)


def compare_bit_exact(
    tflm_outputs: np.ndarray, reference_outputs: np.ndarray, tolerance_lsb: int = 0
) -> dict[str, Any]:
    """Compares TFLM with the reference kernels; raises if any output differs by more than ``tolerance_lsb``.

    Returns:
      ``{"samples", "bit_exact", "differing_samples", "max_abs_diff_lsb", "tolerance_lsb"}``.

    Raises:
      VerificationError: Naming how many samples differ and by how much.
    """
    if tflm_outputs.shape != reference_outputs.shape:
        raise VerificationError(
            f"TFLM output shape {tflm_outputs.shape} differs from the reference shape {reference_outputs.shape}."
        )
    diff = np.abs(tflm_outputs.astype(np.int32) - reference_outputs.astype(np.int32))
    differing = int(np.count_nonzero(diff.reshape(len(diff), -1).max(axis=1)))
    max_diff = int(diff.max()) if diff.size else 0
    if max_diff > tolerance_lsb:
        raise VerificationError(
            f"TFLite Micro's int8 outputs differ from TFLite's reference kernels on {differing} of {len(diff)} "
            f"samples (up to {max_diff} LSB; allowed: {tolerance_lsb})."
        )
    return {
        "samples": int(len(diff)),
        "bit_exact": differing == 0,
        "differing_samples": differing,
        "max_abs_diff_lsb": max_diff,
        "tolerance_lsb": int(tolerance_lsb),
    }


# Kernel Eval function (its unqualified name in the TFLM library) -> op type.
_EVAL_TO_OP = {
    "ConvEval": "CONV_2D",
    "DepthwiseConvEval": "DEPTHWISE_CONV_2D",
    "AddEval": "ADD",
    "TransposeEval": "TRANSPOSE",
    "EvalReshapeReference": "RESHAPE",
    "ReluEval": "RELU",
    "Relu6Eval": "RELU6",
    "MaxEval": "MAX_POOL_2D",
    "AverageEval": "AVERAGE_POOL_2D",
    "ConcatenationEval": "CONCATENATION",
    "EvalMean": "MEAN",
    "FullyConnectedEval": "FULLY_CONNECTED",
    "SoftmaxEval": "SOFTMAX",
    "QuantizeEval": "QUANTIZE",
    "DequantizeEval": "DEQUANTIZE",
    "PadEval": "PAD",
}
_ANNOTATE_LINE = re.compile(
    r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*?:tflite::micro::(?:\(anonymous namespace\)::)?(\w+)\("
)
# The DECODE operator's work: each encoding's Decode() (namespace tflite or, in newer TFLM, tflite::micro).
_ANNOTATE_DECODE_LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*?:tflite::(?:micro::)?DecodeState\w+::Decode\(")
# What no kernel's Eval accounts for: the interpreter's loop over the ops.
INTERPRETER = "(interpreter)"


@dataclasses.dataclass
class InstructionCount:
    """Instructions of one TFLM invoke, counted by callgrind.

    Attributes:
      total: Instructions inside ``MicroInterpreter::Invoke()``.
      by_op: Inclusive instructions of each op type's kernel Eval function,
        and the rest under ``"(interpreter)"``.
    """

    total: int
    by_op: dict[str, int]


def _callgrind(model_path: str, arena_bytes: int, sample: np.ndarray, out_file: str, timeout: float) -> int:
    """Runs one invoke under callgrind, writing ``out_file``; returns the instructions inside ``Invoke()``."""
    scratch = os.path.dirname(out_file)
    inputs_path = os.path.join(scratch, "inputs.npy")
    np.save(inputs_path, sample[None])
    command = [
        shutil.which("valgrind") or "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=tflite::micro::MicroInterpreter::Invoke()",
        "--toggle-collect=tflite::MicroInterpreter::Invoke()",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        _WORKER,
        "run",
        model_path,
        str(int(arena_bytes)),
        inputs_path,
        os.path.join(scratch, "outputs.npy"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    match = re.search(r"Collected\s*:\s*(\d+)", result.stderr)
    if result.returncode != 0 or not match or int(match.group(1)) == 0:
        raise TFLMError(f"Counting instructions with callgrind failed: {_describe_failure(result)}")
    return int(match.group(1))


def count_instructions(model_path: str, arena_bytes: int, sample: np.ndarray, timeout: float = 600) -> int | None:
    """Instructions of one TFLM invoke on this host, counted with valgrind's callgrind.

    Instruction counts repeat exactly, unlike wall time on a shared machine.
    They are x86-64 instructions of TFLM's reference kernels, a relative cost,
    not a Cortex-M cycle count.

    Args:
      model_path: The int8 ``.tflite`` file.
      arena_bytes: Tensor arena size.
      sample: One input ``(H, W, C)`` of the model's input dtype.
      timeout: Seconds before the run is killed.

    Returns:
      The count, or None when valgrind is not installed.

    Raises:
      TFLMError: If the run under valgrind fails.
    """
    if shutil.which("valgrind") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="tflm_callgrind_") as scratch:
        return _callgrind(model_path, arena_bytes, sample, os.path.join(scratch, "callgrind.out"), timeout)


def count_instructions_by_op(
    model_path: str, arena_bytes: int, sample: np.ndarray, timeout: float = 600
) -> InstructionCount | None:
    """:func:`count_instructions`, split per op type with ``callgrind_annotate --inclusive=yes``.

    Returns:
      An :class:`InstructionCount`, or None when valgrind is not installed.

    Raises:
      TFLMError: If the run under valgrind fails.
    """
    if shutil.which("valgrind") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="tflm_callgrind_") as scratch:
        out_file = os.path.join(scratch, "callgrind.out")
        total = _callgrind(model_path, arena_bytes, sample, out_file, timeout)
        annotate = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", out_file],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    by_op: dict[str, int] = {}
    for line in annotate.splitlines():
        parsed = _ANNOTATE_LINE.match(line)
        if parsed and parsed.group(2) in _EVAL_TO_OP:
            op = _EVAL_TO_OP[parsed.group(2)]
            by_op[op] = by_op.get(op, 0) + int(parsed.group(1).replace(",", ""))
        decode = _ANNOTATE_DECODE_LINE.match(line)
        if decode:
            by_op[DECODE_OP] = by_op.get(DECODE_OP, 0) + int(decode.group(1).replace(",", ""))
    by_op[INTERPRETER] = total - sum(by_op.values())
    return InstructionCount(total, by_op)
