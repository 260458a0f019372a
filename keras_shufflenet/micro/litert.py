"""The TFLite interpreter: LiteRT's (``ai_edge_litert``), which replaces ``tf.lite.Interpreter``.

TensorFlow 2.21 still ships ``tf.lite.Interpreter`` but warns on every use
that it is deprecated (scheduled for deletion in TF 2.20). LiteRT's
interpreter has the same API, including the reference-kernel op resolver
that is the bit-exact oracle for TFLite Micro. TensorFlow's converter stays
the converter.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install ai-edge-litert (or the package's [micro] extra)"


def _module() -> Any:
    try:
        from ai_edge_litert import interpreter  # The micro extra, imported when a model runs.
    except ImportError as err:
        raise ImportError(f"Running a .tflite model needs LiteRT: {INSTALL_HINT}.") from err
    return interpreter


def interpreter(tflite_model: bytes, reference_kernels: bool = False, num_threads: int | None = None) -> Any:
    """A LiteRT interpreter for a ``.tflite`` flatbuffer, tensors not yet allocated.

    Args:
      tflite_model: The flatbuffer.
      reference_kernels: Use TFLite's reference kernels
        (``OpResolverType.BUILTIN_REF``), which compute integer operators
        exactly as TFLite Micro's reference kernels do. Defaults to `False`:
        the optimized kernels (XNNPACK for float), what an application gets.
      num_threads: Threads for the optimized kernels. Defaults to `None`
        (LiteRT's choice).

    Returns:
      An ``ai_edge_litert.interpreter.Interpreter``.
    """
    litert = _module()
    kwargs: dict[str, Any] = {"model_content": bytes(tflite_model)}
    if reference_kernels:
        kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_REF
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    return litert.Interpreter(**kwargs)
