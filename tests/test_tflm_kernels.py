"""The project's TFLM kernels (tflm/kernels/) against TFLM's reference, bit for bit.

``make -C tflm kernel-test`` builds ``tflm/tests/kernel_test.cc``: random
cases per kernel (shapes, groups, depths that are not multiples of 4, zero
points, multipliers and shifts over their range, fused activations), each
compared byte for byte with TFLM's reference implementation, plus the cases
each kernel hands to the stock kernel and quantization it must refuse. It
runs on the host (portable C paths, on TFLM's reference tree) and in qemu on
a Cortex-M4 (DSP) and a Cortex-M55 (MVE), on the CMSIS-NN tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from keras_shufflenet.micro import firmware
from keras_shufflenet.micro.firmware import tflm_app

TREE = firmware.default_tflm_tree()
needs_tree = pytest.mark.skipif(TREE is None, reason="no TFLM source tree (set TFLM_TREE)")
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-g++") is None or shutil.which("qemu-arm") is None,
    reason="arm-none-eabi-g++ or qemu-arm is not installed",
)
CASES = 350
KERNELS = ("ADD", "CONV_2D", "MEAN", "MAX_POOL_2D", "TRANSPOSE")
_TALLY = re.compile(r"^(\w+): (\d+) cases handled, (\d+) through the stock kernel, (\d+) refused in Prepare; (\d+)")


def _kernel_test(target: str, build_dir, seed: int = 1, tree_kernels: str = "cmsis_nn") -> dict[str, tuple]:
    tree = tflm_app.resolve_tree(TREE, tree_kernels)
    # On a Cortex-M, TFLM with DECODE support, as the demo's compressed model needs: the test then shares
    # that TFLM library with the Cortex-M4 firmware tests (tests/test_firmware.py).
    compression = 0 if target == "host" else 1
    build = subprocess.run(
        ["make", "-C", tflm_app.APP_DIR, "-j2", "kernel-test", f"TARGET={target}", f"TFLM_TREE={tree}",
         f"KERNEL_TEST_TREE={tree_kernels}", f"BUILD_DIR={build_dir}", f"PYTHON={sys.executable}",
         f"TFLM_COMPRESSION={compression}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    run = subprocess.run(
        [*tflm_app.run_command(os.path.join(build_dir, "kernel_test"), target, None), str(CASES), str(seed)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert "All outputs bit-identical to TFLM's reference." in run.stdout
    matches = [_TALLY.match(line) for line in run.stdout.splitlines()]
    return {m[1]: tuple(int(v) for v in m.groups()[1:]) for m in matches if m}


def _check(tallies: dict[str, tuple[int, int, int, int]], stock_kernels: tuple[str, ...] = ()) -> None:
    """Every case bit-exact; at least 200 through each project kernel, some through its fallback."""
    assert set(tallies) == {"REQUANTIZE", *KERNELS}
    handled, generic, _, mismatches = tallies.pop("REQUANTIZE")
    # The fast requantization against TFLM's, on a million random and extreme arguments.
    assert mismatches == 0 and handled > 500_000 and generic > 50_000
    for name, (handled, stock, refused, mismatches) in tallies.items():
        assert mismatches == 0, name
        assert handled + stock == CASES, name
        if name in stock_kernels:  # This core's stock kernel is faster: every case goes there.
            assert handled == 0 and refused == 0, name
            continue
        assert handled >= 200 and stock >= 10, name
        # Inconsistent quantization, refused in Prepare.
        assert refused == {"ADD": 2, "CONV_2D": 1, "MEAN": 0, "MAX_POOL_2D": 1, "TRANSPOSE": 0}[name]


@pytest.mark.e2e  # The default tier's kernel check: the core of the default firmware test.
@needs_tree
@needs_arm
def test_kernels_are_bit_exact_on_cortex_m4(tmp_path):
    _check(_kernel_test("cortex-m4", tmp_path / "build"))


@pytest.mark.slow
@needs_tree
@needs_arm
def test_kernels_are_bit_exact_on_cortex_m55(tmp_path):
    _check(_kernel_test("cortex-m55", tmp_path / "build"))


@pytest.mark.slow
@needs_tree
@pytest.mark.parametrize("seed", [1, 2])
def test_kernels_are_bit_exact_on_the_host(tmp_path, seed):
    # On TFLM's reference tree: the fallbacks run TFLM's reference kernels themselves.
    _check(_kernel_test("host", tmp_path / "build", seed, tree_kernels="reference"))
