"""TFLite conversion of a frozen graph, as a child process (and the converter settings, once).

TensorFlow's int8 calibrator can kill its process with SIGSEGV on some
models, with no Python exception, so :func:`keras_shufflenet.micro.export`
never converts in the caller's process: it freezes the export graph, writes
it as a ``GraphDef``, and runs this script by path. The script imports only
numpy and TensorFlow (not Keras, not the package). The in-process converters
of :mod:`keras_shufflenet.micro.convert` build their converters with the same
functions, so both paths give the same flatbuffers.

Usage:
  convert_worker.py JOBS_JSON

``JOBS_JSON`` holds ``samples`` (an ``.npy`` of calibration images) and
``jobs``, each with ``graph`` (a serialized frozen ``GraphDef``), ``inputs``
and ``outputs`` (tensor names), ``mode`` (``"float"`` or ``"int8"``),
``weight_quantization`` and ``output`` (where the ``.tflite`` goes). Exit
status 0 on success, :data:`EXIT_CONVERSION_ERROR` when the converter raised
(its message is the last line of stderr); a crash shows as a negative
status (the signal).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tensorflow as tf

EXIT_CONVERSION_ERROR = 2


def float_converter(function: Any) -> Any:
    """A float32 converter of a frozen concrete function (builtin ops only)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def int8_converter(function: Any, representative_samples: np.ndarray, weight_quantization: str) -> Any:
    """A full-int8 converter (int8 input and output) calibrated on ``representative_samples``."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter's only switch for this (no public equivalent).
    converter._experimental_disable_per_channel = weight_quantization == "per_tensor"
    converter.representative_dataset = lambda: ([sample[None]] for sample in representative_samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter


def function_from_graph_def(graph_def: Any, inputs: list[str], outputs: list[str]) -> Any:
    """A concrete function computing ``outputs`` from ``inputs`` of a frozen ``GraphDef``."""

    def import_graph() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    graph = wrapped.graph
    return wrapped.prune(
        [graph.as_graph_element(name) for name in inputs], [graph.as_graph_element(name) for name in outputs]
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return EXIT_CONVERSION_ERROR
    with open(argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    samples = np.load(spec["samples"])
    for job in spec["jobs"]:
        graph_def = tf.compat.v1.GraphDef()
        with open(job["graph"], "rb") as handle:
            graph_def.ParseFromString(handle.read())
        function = function_from_graph_def(graph_def, job["inputs"], job["outputs"])
        if job["mode"] == "float":
            converter = float_converter(function)
        else:
            converter = int8_converter(function, samples, job["weight_quantization"])
        try:
            model = bytes(converter.convert())
        except Exception as error:  # The converter raises ConverterError or RuntimeError.
            message = " ".join(str(error).split())
            print(f"{job['mode']} conversion failed: {message}", file=sys.stderr)
            return EXIT_CONVERSION_ERROR
        with open(job["output"], "wb") as handle:
            handle.write(model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
