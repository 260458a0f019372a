"""Tests of the quiet console: TensorFlow's chatter hidden, everything else passed through."""

import os
import subprocess
import sys
import textwrap

import pytest

from keras_shufflenet import console

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796326679.938328   23799 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "E0000 00:00:1796326686.207822   23799 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "I1203 19:39:47.118680 140051641797504 functional_saver.py:440] Sharding callback duration: 397 microseconds",
    "W0000 00:00:1796326686.207822   23799 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
KEPT = [
    "E0000 00:00:1796326686.207822   23799 conv_ops.cc:52] INVALID_ARGUMENT: input depth must be evenly divisible",
    "Traceback (most recent call last):",
    "error: --groups must be one of 1, 2, 3, 4, 8. Received: 5",
    "INFO: a line of the user's own",
]


@pytest.mark.parametrize("line", NOISE)
def test_tensorflow_chatter_is_noise(line):
    assert console.is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_errors_and_other_lines_are_not_noise(line):
    assert not console.is_noise(line)


def _run_quiet_child(verbose: int) -> subprocess.CompletedProcess:
    """A process that turns quiet, then writes every line to fd 2, itself and from a child process."""
    lines = NOISE + KEPT
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from keras_shufflenet import console
        console.quiet({verbose})
        lines = {lines!r}
        for line in lines:
            os.write(2, (line + "\\n").encode())
        subprocess.run([sys.executable, "-c", "import os,sys; os.write(2, sys.argv[1].encode())", lines[1] + "\\n"])
        print("progress 3/4", end="\\r", file=sys.stderr, flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in (console.QUIET_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)


def test_quiet_drops_exactly_the_noise_of_the_process_and_its_children():
    result = _run_quiet_child(verbose=1)
    assert result.returncode == 0
    assert result.stderr.splitlines() == KEPT + ["progress 3/4"]


def test_the_highest_verbosity_shows_everything():
    result = _run_quiet_child(verbose=console.LIBRARY_LOGS_VERBOSITY)
    assert result.stderr.count("cudart_stub") == 2 and all(line in result.stderr for line in NOISE + KEPT)
