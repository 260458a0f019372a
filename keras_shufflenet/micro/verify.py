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

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tflm_worker.py")
_EXIT_TFLM_ERROR = 3
# TFLM aligns every arena allocation to 16 bytes; a finer search is meaningless.
ARENA_ALIGNMENT = 16
# The margin added to the measured minimum must stay below this (the bound).
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


def _describe_failure(result: subprocess.CompletedProcess) -> str:
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        cause = f"the TFLM process was killed by {name}"
    else:
        cause = f"the TFLM process exited with status {result.returncode}"
    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
    return f"{cause}: {tail}" if tail else cause


def probe_arena(model_path: str, arena_bytes: int) -> tuple[bool, subprocess.CompletedProcess]:
    """Whether the model allocates and runs one inference in ``arena_bytes`` (in a child process)."""
    result = _worker(["probe", model_path, str(int(arena_bytes))])
    return result.returncode == 0, result


def _allocation_estimate(model_path: str, arena_bytes: int) -> int | None:
    """TFLM's own accounting of the arena it used, parsed from ``print_allocations``."""
    result = _worker(["allocations", model_path, str(int(arena_bytes))])
    match = re.search(r"Arena allocation total (\d+) bytes", result.stderr)
    return int(match.group(1)) if result.returncode == 0 and match else None


def find_min_arena(model_path: str, margin: float = 0.1, max_bytes: int = 256 * 2**20) -> ArenaSearch:
    """Finds the smallest tensor arena the model runs in, by bisection in child processes.

    TFLM's allocation report gives a first estimate; the bracket around it is
    then narrowed by probing to 16-byte resolution. A probe that crashes
    counts as "does not fit", so the result stays on the safe side.

    Args:
      model_path: The ``.tflite`` file.
      margin: Fraction added to the minimum for the recommended size
        (``0 <= margin < 0.25``): a 32-bit target needs slightly different
        bookkeeping than this 64-bit host. Defaults to `0.1`.
      max_bytes: Largest arena tried before giving up. Defaults to 256 MiB.

    Returns:
      An :class:`ArenaSearch`.

    Raises:
      ValueError: If ``margin`` is out of range.
      TFLMError: If the model does not run in TFLM even with ``max_bytes``.
    """
    if not 0 <= margin < MAX_ARENA_MARGIN:
        raise ValueError(f"`arena_margin` must be in [0, {MAX_ARENA_MARGIN}). Received: arena_margin={margin!r}")
    model_bytes = os.path.getsize(model_path)
    probes = 0
    generous = max(4 * 2**20, 10 * model_bytes)
    estimate = None
    while estimate is None:
        probes += 1
        estimate = _allocation_estimate(model_path, generous)
        if estimate is None:
            if generous >= max_bytes:
                ok, result = probe_arena(model_path, generous)
                raise TFLMError(
                    f"The model does not run in TFLite Micro even with a {generous:,}-byte arena: "
                    f"{_describe_failure(result)}"
                )
            generous = min(generous * 4, max_bytes)

    # Bracket: `low` fails, `high` works.
    high = _round_up(estimate)
    while True:
        probes += 1
        ok, result = probe_arena(model_path, high)
        if ok:
            break
        if high >= max_bytes:
            raise TFLMError(f"The model does not run in TFLite Micro with {high:,} bytes: {_describe_failure(result)}")
        high = min(_round_up(high * 1.25), max_bytes)
    low = _round_up(estimate * 0.75)
    while low > 0:
        probes += 1
        ok, _ = probe_arena(model_path, low)
        if not ok:
            break
        high, low = low, _round_up(low * 0.5) if low > ARENA_ALIGNMENT else 0
    while high - low > ARENA_ALIGNMENT:
        middle = _round_up((low + high) / 2)
        if middle >= high:
            middle = high - ARENA_ALIGNMENT
        probes += 1
        ok, _ = probe_arena(model_path, middle)
        if ok:
            high = middle
        else:
            low = middle
    return ArenaSearch(min_bytes=high, recommended_bytes=_round_up(high * (1 + margin)), margin=margin, probes=probes)


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
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(
        model_content=tflite_model, experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF
    )
    return _run_tflite(interpreter, inputs)


def run_tflite(tflite_model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Runs every input through the default TFLite interpreter (used for the float model)."""
    import tensorflow as tf

    return _run_tflite(tf.lite.Interpreter(model_content=tflite_model), inputs)


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


def compare_bit_exact(tflm_outputs: np.ndarray, reference_outputs: np.ndarray) -> dict[str, Any]:
    """Compares TFLM with the reference kernels; raises unless every output is identical.

    Returns:
      ``{"samples": N, "bit_exact": True, "max_abs_diff_lsb": 0}``.

    Raises:
      VerificationError: Naming how many samples differ and by how much.
    """
    if tflm_outputs.shape != reference_outputs.shape:
        raise VerificationError(
            f"TFLM output shape {tflm_outputs.shape} differs from the reference shape {reference_outputs.shape}."
        )
    diff = np.abs(tflm_outputs.astype(np.int32) - reference_outputs.astype(np.int32))
    differing = int(np.count_nonzero(diff.reshape(len(diff), -1).max(axis=1)))
    if differing:
        raise VerificationError(
            f"TFLite Micro's int8 outputs differ from TFLite's reference kernels on {differing} of {len(diff)} "
            f"samples (up to {int(diff.max())} LSB)."
        )
    return {"samples": int(len(diff)), "bit_exact": True, "max_abs_diff_lsb": 0}


def count_instructions(model_path: str, arena_bytes: int, sample: np.ndarray, timeout: float = 600) -> int | None:
    """Instructions of one TFLM invoke on this host, counted with valgrind's callgrind.

    Instruction counts repeat exactly, unlike wall time on a shared machine.
    They are x86-64 instructions of TFLM's reference kernels, a relative cost,
    not a Cortex-M cycle count.

    Returns:
      The count, or None when valgrind is not installed.

    Raises:
      TFLMError: If the run under valgrind fails.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory(prefix="tflm_callgrind_") as scratch:
        inputs_path = os.path.join(scratch, "inputs.npy")
        np.save(inputs_path, sample[None])
        command = [
            valgrind,
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=tflite::micro::MicroInterpreter::Invoke()",
            "--toggle-collect=tflite::MicroInterpreter::Invoke()",
            f"--callgrind-out-file={os.path.join(scratch, 'callgrind.out')}",
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
        if result.returncode != 0 or not match:
            raise TFLMError(f"Counting instructions with callgrind failed: {_describe_failure(result)}")
        return int(match.group(1))
