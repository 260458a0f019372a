"""A quiet console for the command-line tools: TensorFlow's start-up and library chatter hidden.

TensorFlow's native code logs before its logging is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` does not silence everything: every process that
imports it prints the CUDA probe ("Could not find cuda drivers", "failed call
to cuInit") and the CPU-feature notice. Python libraries add absl INFO lines
(TensorFlow Datasets, the SavedModel writer's "Sharding callback duration")
and warnings. :func:`quiet` filters the process's standard error (file
descriptor 2, which child processes inherit) line by line, dropping only
those known lines, and lowers the Python loggers to warnings. Everything
else, errors included, passes through unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

# Verbosity of the command-line tools (the trainer's --verbose): from this level
# on, TensorFlow's own logs are shown as they are.
LIBRARY_LOGS_VERBOSITY = 3
# Set for child processes once the console is quiet, so that they stay quiet too.
QUIET_ENV = "KERAS_SHUFFLENET_QUIET"

# Native log lines (absl's format: level, date, time, thread, file:line]) that
# carry no information for a user: every INFO and WARNING line, and the CUDA
# probe's error on a machine without a GPU. Other errors pass.
_NATIVE_LINE = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "
    r"|E\d{4} [\d:.]+\s+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)
# Python warnings that describe TensorFlow's internals, not the user's run.
_PYTHON_WARNINGS = (
    r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a tf.data.Dataset",
    r"Statistics for quantized inputs were expected, but not specified",
    r"Please consider providing the trackable_obj argument",
)

_installed = False


def is_noise(line: str) -> bool:
    """Whether a line of standard error is known TensorFlow chatter."""
    return bool(_NATIVE_LINE.match(line))


class _StderrFilter:
    """Copies what is written to file descriptor 2 to the real stderr, without the noise lines."""

    def __init__(self) -> None:
        self._target = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while chunk := os.read(self._read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not is_noise(line.decode("utf-8", "replace"))]
            # A partial line (a progress bar's carriage-return update) passes at once unless it may be noise.
            if pending and not pending.startswith((b"I", b"W", b"E", b"INFO:", b"To enable")):
                kept.append(pending)
                pending = b""
            if kept:
                os.write(self._target, b"".join(kept))
        if pending and not is_noise(pending.decode("utf-8", "replace")):
            os.write(self._target, pending)

    def close(self) -> None:
        """Restores file descriptor 2 and waits for the pending lines to pass."""
        sys.stderr.flush()
        os.dup2(self._target, 2)  # Closes the pipe's last write end: the pump sees the end.
        self._thread.join(timeout=5)
        os.close(self._read_end)


def quiet(verbose: int = 1) -> None:
    """Hides TensorFlow's chatter in this process and its children, unless ``verbose`` asks for it.

    Call before TensorFlow is imported (the native start-up lines come at
    import). Idempotent.

    Args:
      verbose: The tool's verbosity; at ``LIBRARY_LOGS_VERBOSITY`` or more
        nothing is hidden.
    """
    global _installed
    if verbose >= LIBRARY_LOGS_VERBOSITY or _installed:
        return
    _installed = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ[QUIET_ENV] = "1"
    for message in _PYTHON_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    quiet_python_logs()
    stderr_filter = _StderrFilter()
    atexit.register(stderr_filter.close)


def quiet_python_logs() -> None:
    """Lowers absl's and TensorFlow's Python loggers to warnings (absl's ``app.run`` sets INFO)."""
    from absl import logging as absl_logging  # absl-py comes with the train extra; the package runs without.

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
