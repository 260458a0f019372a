"""One TFLite Micro inference, run as a child process (by path, under valgrind or alone).

TFLite Micro can abort the whole process on a model it cannot handle, and
callgrind must watch a process that does nothing but the inference, so this
script imports only numpy and ``tflite_micro`` (not TensorFlow) and is never
imported by the benchmarks.

Usage:
  tflm_run_one.py MODEL.tflite ARENA_BYTES
Exit status 0 if the model allocated and ran one inference on a fixed random
int8 input, 3 if TFLM reported an error (for example an arena too small).
"""

import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime

EXIT_TFLM_ERROR = 3


def main(model_path: str, arena_bytes: int) -> int:
    try:
        interpreter = runtime.Interpreter.from_file(model_path, arena_size=arena_bytes)
        details = interpreter.get_input_details(0)
        # A fixed input: the reference kernels' work does not depend on the values,
        # and a fixed one keeps the instruction count from run to run.
        rng = np.random.default_rng(0)
        sample = rng.integers(-128, 128, size=details["shape"], dtype=np.int64).astype(details["dtype"])
        interpreter.set_input(sample, 0)
        interpreter.invoke()
        interpreter.get_output(0)
    except RuntimeError as error:
        print(f"TFLM error: {error}", file=sys.stderr)
        return EXIT_TFLM_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
