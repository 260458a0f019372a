"""Runs a model in the TFLite Micro interpreter, as a child process.

TFLite Micro can abort the process (SIGABRT, no Python exception) on a model
it cannot handle, so :mod:`keras_shufflenet.micro.verify` never runs it in the
exporting process. This script is run by path and imports only numpy and
``tflite_micro`` (not TensorFlow), so each child starts in well under a second.

Usage:
  tflm_worker.py probe MODEL ARENA_BYTES         exit 0 if the model allocates and runs, 3 if the arena is too small
  tflm_worker.py run MODEL ARENA_BYTES IN OUT    runs every int8 input of IN.npy (N, ...) and saves outputs to OUT.npy
  tflm_worker.py search MODEL LOW HIGH MAX       bisects the smallest arena in (LOW, HIGH], doubling HIGH up to MAX
                                                 while it fails; prints "try N", then "ok N" or "fail N" per probe
                                                 (so a parent can resume after an abort) and finally "min N"
"""

import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime

# Exit status of "the arena is too small" (or any other error TFLM reports as an exception).
EXIT_TFLM_ERROR = 3
# Exit status of a search that found no arena up to MAX.
EXIT_NO_FIT = 4
# TFLM aligns arena allocations to 16 bytes.
ALIGNMENT = 16


def _interpreter(model_path: str, arena_bytes: int) -> "runtime.Interpreter":
    return runtime.Interpreter.from_file(model_path, arena_size=arena_bytes)


def _run_one(interpreter: "runtime.Interpreter", sample: np.ndarray) -> np.ndarray:
    interpreter.set_input(sample[None], 0)
    interpreter.invoke()
    return np.array(interpreter.get_output(0))


def _fits(model_path: str, arena_bytes: int) -> bool:
    print(f"try {arena_bytes}", flush=True)
    try:
        interpreter = _interpreter(model_path, arena_bytes)
        details = interpreter.get_input_details(0)
        _run_one(interpreter, np.zeros(details["shape"][1:], dtype=details["dtype"]))
        fits = True
    except RuntimeError:
        fits = False
    print(f"{'ok' if fits else 'fail'} {arena_bytes}", flush=True)
    return fits


def _search(model_path: str, low: int, high: int, max_bytes: int) -> int:
    while not _fits(model_path, high):
        if high >= max_bytes:
            return EXIT_NO_FIT
        low, high = high, min(high * 2, max_bytes)
    while high - low > ALIGNMENT:
        middle = -(-((low + high) // 2) // ALIGNMENT) * ALIGNMENT
        middle = min(middle, high - ALIGNMENT)
        if _fits(model_path, middle):
            high = middle
        else:
            low = middle
    print(f"min {high}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[1] == "search":
        return _search(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    mode, model_path, arena_bytes = argv[1], argv[2], int(argv[3])
    try:
        interpreter = _interpreter(model_path, arena_bytes)
        details = interpreter.get_input_details(0)
        if mode == "probe":
            _run_one(interpreter, np.zeros(details["shape"][1:], dtype=details["dtype"]))
            return 0
        if mode == "run":
            inputs = np.load(argv[4])
            outputs = np.stack([_run_one(interpreter, sample)[0] for sample in inputs])
            np.save(argv[5], outputs)
            return 0
    except RuntimeError as error:
        print(f"TFLM error: {error}", file=sys.stderr)
        return EXIT_TFLM_ERROR
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
