"""Runs a model in the TFLite Micro interpreter, as a child process.

TFLite Micro can abort the process (SIGABRT, no Python exception) on a model
it cannot handle, so :mod:`keras_shufflenet.micro.verify` never runs it in the
exporting process. This script is run by path and imports only numpy and
``tflite_micro`` (not TensorFlow), so each child starts in well under a second.

Usage:
  tflm_worker.py probe MODEL ARENA_BYTES         exit 0 if the model allocates and runs, 3 if the arena is too small
  tflm_worker.py allocations MODEL ARENA_BYTES   prints TFLM's arena accounting to stderr after one run
  tflm_worker.py run MODEL ARENA_BYTES IN OUT    runs every int8 input of IN.npy (N, ...) and saves outputs to OUT.npy
"""

import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime

# Exit status of "the arena is too small" (or any other error TFLM reports as an exception).
EXIT_TFLM_ERROR = 3


def _interpreter(model_path: str, arena_bytes: int) -> "runtime.Interpreter":
    return runtime.Interpreter.from_file(model_path, arena_size=arena_bytes)


def _run_one(interpreter: "runtime.Interpreter", sample: np.ndarray) -> np.ndarray:
    interpreter.set_input(sample[None], 0)
    interpreter.invoke()
    return np.array(interpreter.get_output(0))


def main(argv: list[str]) -> int:
    mode, model_path, arena_bytes = argv[1], argv[2], int(argv[3])
    try:
        interpreter = _interpreter(model_path, arena_bytes)
        details = interpreter.get_input_details(0)
        if mode in ("probe", "allocations"):
            _run_one(interpreter, np.zeros(details["shape"][1:], dtype=details["dtype"]))
            if mode == "allocations":
                interpreter.print_allocations()
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
