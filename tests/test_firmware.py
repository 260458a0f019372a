"""Tests of keras_shufflenet.micro.firmware: the TFLM application built for a host and for Cortex-M, run in qemu.

The model is quickstart-like (ShuffleNet 0.5x g3 on 56x56 digits, the
paper's stem; tests/quickstart_fixture.py), trained briefly, so that its activations are those of a real model. The
references are the host TFLM outputs the export wrote, the model's operator
list read from the flatbuffer, and a hand-written qemu log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import quickstart_fixture
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from keras_shufflenet.micro import c_sources, firmware
from keras_shufflenet.micro.firmware import instruction_count, tflm_app

TREE = firmware.default_tflm_tree()
needs_tree = pytest.mark.skipif(
    TREE is None, reason=f"no TFLM tree: set TFLM_TREE (the default {firmware.DEFAULT_TREE} is absent)"
)
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-g++") is None or shutil.which("qemu-arm") is None,
    reason="needs arm-none-eabi-g++ and qemu-arm (installed by .ci/run)",
)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """A quickstart-like model, trained for 2 epochs on the embedded digits, exported as `make demo` does (cached)."""
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    report = quickstart_fixture.copy_export("dense", str(run_dir))
    return {"dir": run_dir, "report": report}


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory):
    """The quickstart with pruned, shared-value conv kernels: its board model stores them compressed (cached)."""
    run_dir = tmp_path_factory.mktemp("compressed") / "run"
    report = quickstart_fixture.copy_export("compressed", str(run_dir))
    return {"dir": run_dir, "report": report}


def _model_ops(tflite_path) -> list[str]:
    """The operators of the model in execution order, read from the flatbuffer (custom ones by their code)."""
    with open(tflite_path, "rb") as handle:
        model = schema_fb.Model.GetRootAs(handle.read(), 0)
    names = {code: name for name, code in vars(schema_fb.BuiltinOperator).items() if not name.startswith("_")}
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        opcode = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        name = names[max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())]
        ops.append(opcode.CustomCode().decode() if name == "CUSTOM" else name)  # TFLM's DECODE is TFLM_DECODE.
    return ops


def _measure(run, target, kernels, **kwargs):
    output_dir = firmware.firmware_dir(str(run["dir"]), target, kernels)
    return firmware.build_and_measure(str(run["dir"] / "tflm"), target, kernels, output_dir, TREE, **kwargs)


@pytest.mark.slow
@needs_tree
def test_host_build_reproduces_the_export_on_every_sample(quickstart_run):
    result = _measure(quickstart_run, "host", "reference", count=False)
    assert result["built"] and result["output_matches_host"] and result["max_int8_diff"] == 0
    assert result["samples"] == 10  # one image per digit, within the export's sample budget
    assert sorted(s["label"] for s in result["per_sample"]) == list(range(10))
    assert all(s["top_class"] == s["label"] for s in result["per_sample"])  # chosen as correctly classified


@pytest.mark.slow
@needs_tree
@needs_arm
def test_cortex_m4_reference_kernels_are_bit_identical_and_measured(quickstart_run):
    result = _measure(quickstart_run, "cortex-m4", "reference", count=False)
    assert result["built"] and result["output_matches_host"] and result["max_int8_diff"] == 0
    assert result["top_class_matches_host"] and result["samples"] == 10
    model_file = quickstart_run["dir"] / "quickstart_int8_tflm.tflite"
    assert result["model_bytes"] == model_file.stat().st_size
    assert result["sample_bytes"] == 10 * (56 * 56 + 10)
    assert result["flash_bytes"] == result["model_bytes"] + result["sample_bytes"] + result["code_bytes"]
    assert 50_000 < result["code_bytes"] < 400_000
    # The 32-bit core keeps smaller bookkeeping than the 64-bit host, and the
    # arena it reports, rounded to TFLM's 16-byte alignment, is the smallest
    # that works: build_and_measure rebuilt and ran with exactly that.
    assert result["arena_used_bytes"] < quickstart_run["report"]["arena"]["min_bytes"]
    assert result["arena_min_bytes"] == -(-result["arena_used_bytes"] // 16) * 16
    assert result["arena_min_bytes_checked"]
    assert result["bss_bytes"] > result["arena_bytes"] >= result["arena_min_bytes"]
    static = result["data_bytes"] + result["bss_bytes"] - result["arena_bytes"]
    assert result["ram_bytes"] == static + result["arena_min_bytes"] + result["stack_bytes"]
    assert 0 < result["stack_bytes"] < 16_384
    elf = quickstart_run["dir"] / "firmware" / "cortex-m4_reference" / "shufflenet"
    assert (elf.parent / "shufflenet.map").stat().st_size > 0
    attributes = subprocess.run(["arm-none-eabi-readelf", "-A", str(elf)], capture_output=True, text=True).stdout
    assert 'Tag_CPU_name: "Cortex-M4"' in attributes or "Tag_CPU_arch: v7E-M" in attributes
    assert "Tag_ABI_VFP_args: VFP registers" in attributes  # hard float, as boards with an FPU are built


# The Cortex-M4 builds with CMSIS-NN's tree all take the compressed model, as `make demo` writes it: they
# then share one TFLM library (TFLM compiled with DECODE support is another library), which a cold cache
# builds once.
@pytest.mark.e2e  # The firmware's end-to-end path in the default tier: the default core and kernels.
@needs_tree
@needs_arm
def test_cortex_m4_default_kernels_match_the_host_and_count_instructions_per_op(compressed_run):
    kernels = firmware.default_kernels("cortex-m4")
    assert kernels == "shufflenet"
    result = _measure(compressed_run, "cortex-m4", kernels, count=True, check_arena=False)
    # The channel shuffle's 4-D transpose runs in CMSIS-NN (5-D silently failed).
    assert result["output_matches_host"] and result["max_int8_diff"] == 0 and result["top_class_matches_host"]
    ops = _model_ops(compressed_run["dir"] / "quickstart_int8_tflm.tflite")
    assert [row["op"] for row in result["per_op"]] == ops
    per_op_total = sum(row["instructions"] for row in result["per_op"])
    total = result["instructions_per_invoke"]
    # Only the interpreter's own loop lies between the operators.
    assert 0.97 * total < per_op_total <= total
    by_type = firmware.instructions_by_op_type(result["per_op"])
    assert next(iter(by_type)) == "CONV_2D"
    # CMSIS-NN runs several times fewer instructions than the reference
    # kernels would (about 200 M for this model); 1-20 per MAC is its range.
    macs = compressed_run["report"]["macs"]
    assert macs < total < 20 * macs


@pytest.mark.slow
@needs_tree
@needs_arm
def test_the_project_kernels_beat_stock_cmsis_nn_on_each_op_they_replace(compressed_run):
    stock = _measure(compressed_run, "cortex-m4", "cmsis_nn", count=True, check_arena=False)
    project = _measure(compressed_run, "cortex-m4", "shufflenet", count=True, check_arena=False)
    # Both give the host TFLM's (reference kernels') output, byte for byte, on every sample.
    for result in (stock, project):
        assert result["output_matches_host"] and result["max_int8_diff"] == 0 and result["samples"] >= 8
    stock_ops = firmware.instructions_by_op_type(stock["per_op"])
    project_ops = firmware.instructions_by_op_type(project["per_op"])
    replaced = set(c_sources.PROJECT_KERNELS)
    assert replaced == {"ADD", "CONV_2D", "MAX_POOL_2D", "MEAN", "TRANSPOSE"}
    for op in replaced:  # The quickstart's convs are grouped but for stage 2's first.
        assert project_ops[op] < stock_ops[op], op
    for op in set(stock_ops) - replaced:
        assert project_ops[op] == stock_ops[op], op  # The other ops run the same stock kernels.
    # The arena grows by the kernels' scratch (the ADD's 2 KiB of tables, the conv's widened filter
    # rows and im2col rows, reused by later ops) and their node data: about 3 KB here.
    assert project["arena_used_bytes"] <= stock["arena_used_bytes"] + 4096


@pytest.mark.slow
@needs_tree
@needs_arm
def test_compressed_weights_decode_on_cortex_m4_cmsis_nn(compressed_run):
    storage = compressed_run["report"]["weight_storage"]
    # Both encodings are in the board's model, and TFLM gave the dense model's outputs on every eval sample.
    assert {"lut", "prune"} <= set(storage["by_encoding"]) and storage["lossless_samples"] == 200
    assert storage["model_bytes"] < 0.75 * storage["dense_model_bytes"]
    resolver = (compressed_run["dir"] / "tflm" / "op_resolver.h").read_text()
    assert "AddDecode()" in resolver and tflm_app.needs_decode(str(compressed_run["dir"] / "tflm"))
    result = _measure(compressed_run, "cortex-m4", "cmsis_nn", count=True, check_arena=False)
    assert result["output_matches_host"] and result["max_int8_diff"] == 0 and result["top_class_matches_host"]
    decode = sum(n for op, n in firmware.instructions_by_op_type(result["per_op"]).items() if "DECODE" in op)
    decoded_weights = sum(entry["dense_bytes"] for name, entry in storage["by_encoding"].items() if name != "dense")
    # Decoding costs a few instructions per weight on the core, not per MAC.
    assert decoded_weights < decode < 20 * decoded_weights
    assert result["model_bytes"] == storage["model_bytes"]


@pytest.mark.slow
@needs_tree
@needs_arm
def test_record_in_run_sizes_the_32bit_arena_and_reports_every_result(quickstart_run):
    run_dir = str(quickstart_run["dir"])
    for target, kernels in (("host", "reference"), ("cortex-m4", "reference")):
        if not os.path.isfile(os.path.join(firmware.firmware_dir(run_dir, target, kernels), "result.json")):
            _measure(quickstart_run, target, kernels, count=False, check_arena=False)
    results = firmware.record_in_run(run_dir)
    used = max(r["arena_used_bytes"] for r in results.values() if r["target"] != "host")
    settings = (quickstart_run["dir"] / "tflm" / "model_settings.h").read_text()
    size32 = int(re.search(r"kTensorArenaSize32 = (\d+);", settings).group(1))
    assert used <= size32 <= 1.05 * used and size32 % 16 == 0
    # The 64-bit size stays the host's, which a host build needs.
    assert int(re.search(r"kTensorArenaSize64 = (\d+);", settings).group(1)) >= quickstart_run["report"]["arena_bytes"]
    saved = json.loads((quickstart_run["dir"] / "report.json").read_text())
    assert set(saved["firmware"]) >= {"host_reference", "cortex-m4_reference"}
    report_md = (quickstart_run["dir"] / "report.md").read_text()
    assert "| cortex-m4 | reference | bit-identical on 10 samples |" in report_md
    # A Cortex-M build with the rewritten size still runs.
    rebuilt = _measure(quickstart_run, "cortex-m4", "reference", count=False, check_arena=False)
    assert rebuilt["arena_bytes"] == size32 and rebuilt["output_matches_host"]


# --- The TFLM library: what it compiles, and its cache ----------------------------------

MODEL_SOURCES = os.path.join(tflm_app.APP_DIR, "tools", "model_sources.py")


def _model_sources(tree: str, resolver: str, *flags: str) -> list[str]:
    out = subprocess.run([sys.executable, MODEL_SOURCES, tree, resolver, *flags], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _resolver(tmp_path, *methods: str) -> str:
    path = tmp_path / "op_resolver.h"
    path.write_text("".join(f"  if (resolver.{m}() != kTfLiteOk) return kTfLiteError;\n" for m in methods))
    return str(path)


@needs_tree
def test_the_library_compiles_the_framework_and_only_the_models_kernels(tmp_path):
    kernels = "tensorflow/lite/micro/kernels/"
    reference = firmware.resolve_tree(TREE, "reference")
    listed = _model_sources(reference, _resolver(tmp_path, "AddConv2D", "AddAdd"))
    whole = _model_sources(reference, _resolver(tmp_path, "AddConv2D", "AddAdd"), "--all")
    # Each registration's file, the helpers its headers declare, and the whole framework.
    assert {kernels + f for f in ("conv.cc", "conv_common.cc", "add.cc", "add_common.cc", "kernel_util.cc")} <= set(
        listed
    )
    assert {p for p in listed if kernels not in p} == {p for p in whole if kernels not in p}
    assert "tensorflow/lite/micro/micro_interpreter.cc" in listed
    assert kernels + "softmax.cc" not in listed and kernels + "softmax.cc" in whole
    assert not any("decode" in p for p in whole)  # DECODE only with --compression,
    assert kernels + "decode_state_lut.cc" in _model_sources(
        reference, _resolver(tmp_path, "AddDecode"), "--compression"
    )
    assert len(listed) < 0.5 * len(whole)
    # CMSIS-NN: the kernel's file and the CMSIS-NN functions it calls, followed through the calls.
    cmsis = _model_sources(firmware.resolve_tree(TREE, "cmsis_nn"), _resolver(tmp_path, "AddConv2D"))
    assert kernels + "cmsis_nn/conv.cc" in cmsis and kernels + "conv_common.cc" in cmsis
    names = {os.path.basename(p) for p in cmsis}
    assert {"arm_convolve_wrapper_s8.c", "arm_convolve_s8.c", "arm_nn_mat_mult_nt_t_s8.c"} <= names
    assert "arm_softmax_s8.c" not in names and "arm_elementwise_add_s8.c" not in names


def _make_print(model_dir, variable: str, *args: str, env=None) -> str:
    # BUILD_DIR outside the checkout: the Makefile writes its flags file there even for print-.
    build_dir = os.path.join(os.path.dirname(str(model_dir)), "print_build")
    out = subprocess.run(
        ["make", "-s", "-C", tflm_app.APP_DIR, f"MODEL_DIR={model_dir}", f"TFLM_TREE={TREE}", f"BUILD_DIR={build_dir}",
         *args, f"print-{variable}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_tree
def test_the_cache_key_covers_compiler_flags_and_source_list(tmp_path):
    model_dir = tmp_path / "tflm"
    model_dir.mkdir()
    (model_dir / "model_data.cc").write_text("")
    _resolver(model_dir, "AddConv2D", "AddAdd")
    objects = _make_print(model_dir, "OBJ_DIR", "TARGET=host")
    library = _make_print(model_dir, "LIB_DIR", "TARGET=host")
    assert library.startswith(objects + "/lib_")
    # Other flags or another compiler: other objects. Another source list: the same objects, another library.
    assert _make_print(model_dir, "OBJ_DIR", "TARGET=host", "TFLM_COMPRESSION=1") != objects
    compiler = tmp_path / "g++"
    compiler.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "g++ (other) 99.0" && exit 0\nexec g++ "$@"\n')
    compiler.chmod(0o755)
    other = _make_print(
        model_dir, "OBJ_DIR", "TARGET=host", env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    )
    assert other != objects
    assert _make_print(model_dir, "OBJ_DIR", "TARGET=host", "TFLM_SOURCES=all") == objects
    assert _make_print(model_dir, "LIB_DIR", "TARGET=host", "TFLM_SOURCES=all") != library
    _resolver(model_dir, "AddConv2D")
    assert _make_print(model_dir, "LIB_DIR", "TARGET=host") != library


@pytest.mark.slow
@needs_tree
def test_a_build_killed_midway_is_never_reused_and_two_builds_at_once_do_not_clash(
    quickstart_run, tmp_path, monkeypatch
):
    model_dir = str(quickstart_run["dir"] / "tflm")
    # A fresh cache that holds the objects (copied from the user's cache, built here if absent) but six
    # kernels' and no library: the builds below compile those kernels and archive the library.
    firmware.build(model_dir, "host", "reference", str(tmp_path / "warm"), TREE)
    objects = _make_print(model_dir, "OBJ_DIR", "TARGET=host", "KERNELS=reference")
    cache = tmp_path / "cache"
    shutil.copytree(os.path.join(objects, "obj"), cache / os.path.basename(objects) / "obj")
    kernel_objects = cache / os.path.basename(objects) / "obj" / "tensorflow" / "lite" / "micro" / "kernels"
    removed = sorted(kernel_objects.glob("*.o"))[:6]
    for obj in removed:
        obj.unlink()
    monkeypatch.setenv("TFLM_CACHE", str(cache))
    args = ["make", "-C", tflm_app.APP_DIR, "-j2", f"MODEL_DIR={model_dir}", "TARGET=host", "KERNELS=reference",
            f"TFLM_TREE={TREE}", f"BUILD_DIR={tmp_path / 'killed'}", "library"]  # fmt: skip
    build = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(p.exists() for p in removed) and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.1)
    assert build.poll() is None, f"make ended (status {build.returncode}) before it could be killed"
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    library = _make_print(model_dir, "LIB", "TARGET=host", "KERNELS=reference")  # In the test's TFLM_CACHE.
    # Killed midway: some of the six compiled, not all, and no library.
    assert 0 < sum(p.exists() for p in removed) < len(removed) and not os.path.exists(library)
    # Every object under its final name is whole (a killed compile writes only to a temporary name).
    for obj in kernel_objects.glob("*.o"):
        assert subprocess.run(["readelf", "-h", str(obj)], capture_output=True).returncode == 0, obj
    with ThreadPoolExecutor(2) as pool:
        builds = [
            pool.submit(firmware.build, model_dir, "host", "reference", str(tmp_path / name), TREE, jobs=1)
            for name in ("first", "second")
        ]
        elves = [b.result()["elf"] for b in builds]
    # Both linked the one library, complete, and nothing temporary is left beside it.
    assert os.path.isfile(library) and not list(Path(library).parent.glob("*.tmp"))
    assert all(f"{os.path.dirname(library)}" in Path(elf + ".map").read_text() for elf in elves)
    for elf in elves:
        out = firmware.run(elf, "host")
        assert len(out.samples) == 10 and all(s["max_int8_diff"] == 0 for s in out.samples)


# --- Bad input: each a clear error, never a silent pass ---------------------------------


def test_no_tree_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TFLM_TREE", raising=False)
    monkeypatch.setattr(tflm_app, "DEFAULT_TREE", "/nonexistent/tflm")
    with pytest.raises(firmware.FirmwareError, match="No TFLM source tree: set TFLM_TREE"):
        firmware.resolve_tree(None, "reference")


def test_a_folder_that_is_not_a_tree_is_refused(tmp_path):
    with pytest.raises(firmware.FirmwareError, match="is not a TFLM source tree"):
        firmware.resolve_tree(str(tmp_path), "reference")


@needs_tree
def test_a_tree_without_the_requested_kernels_is_refused():
    with pytest.raises(firmware.FirmwareError, match="no CMSIS-NN kernels"):
        firmware.resolve_tree(os.path.join(firmware.resolve_tree(TREE, "reference")), "cmsis_nn")
    with pytest.raises(
        ValueError, match="`kernels` must be one of reference, cmsis_nn, shufflenet. Received: kernels='fast'"
    ):
        firmware.resolve_tree(TREE, "fast")


@pytest.mark.slow
@needs_tree
def test_an_operator_the_tree_lacks_is_named(quickstart_run, tmp_path):
    model_dir = tmp_path / "tflm"
    shutil.copytree(quickstart_run["dir"] / "tflm", model_dir)
    resolver = model_dir / "op_resolver.h"
    resolver.write_text(resolver.read_text().replace("AddSoftmax()", "AddShuffleNetFutureOp()"))
    with pytest.raises(firmware.FirmwareError, match="no kernel registration `AddShuffleNetFutureOp\\(\\)`"):
        firmware.build(str(model_dir), "host", "reference", str(tmp_path / "build"), TREE)


@pytest.mark.slow
@needs_tree
def test_a_tflm_version_with_another_api_is_named(quickstart_run, tmp_path):
    # A tree whose MicroInterpreter lacks arena_used_bytes(), which setup() calls.
    tree = tmp_path / "tree"
    shutil.copytree(firmware.resolve_tree(TREE, "reference"), tree)
    header = tree / "tensorflow" / "lite" / "micro" / "micro_interpreter.h"
    header.write_text(header.read_text().replace("size_t arena_used_bytes() const", "size_t used_bytes() const"))
    with pytest.raises(firmware.FirmwareError, match="does not compile against this TFLM tree.*arena_used_bytes"):
        firmware.build(str(quickstart_run["dir"] / "tflm"), "host", "reference", str(tmp_path / "build"), str(tree))


@pytest.mark.slow
@needs_tree
def test_an_arena_too_small_for_the_target_is_an_error(quickstart_run, tmp_path):
    built = firmware.build(str(quickstart_run["dir"] / "tflm"), "host", "reference", str(tmp_path), TREE, 4096)
    with pytest.raises(firmware.FirmwareError, match="tensor arena is too small on this target"):
        firmware.run(built["elf"], "host")
    # setup() failing is the application's exit status too, for a board's own test harness.
    result = subprocess.run([built["elf"]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "AllocateTensors() failed" in result.stdout + result.stderr


@pytest.mark.slow
@needs_tree
def test_missing_qemu_or_compiler_names_the_tool_and_its_package(quickstart_run, monkeypatch, tmp_path):
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda tool: None if tool in ("qemu-arm", "arm-none-eabi-g++") else real_which(tool)
    )
    with pytest.raises(firmware.FirmwareError, match="`qemu-arm` is not installed.*bookworm-backports"):
        firmware.run(str(tmp_path / "shufflenet"), "cortex-m4")
    with pytest.raises(firmware.FirmwareError, match="`arm-none-eabi-g\\+\\+` is not installed.*gcc-arm-none-eabi"):
        firmware.build(str(quickstart_run["dir"] / "tflm"), "cortex-m4", "reference", str(tmp_path), TREE)


# --- The pieces, against hand-made inputs (fast) ---------------------------------------


def test_trace_counter_counts_blocks_between_the_markers():
    # Blocks: 0x100 (3 insns, before Invoke), 0x200 invoke_begin (1), 0x300 op_begin (1),
    # 0x400 (4, inside the op; runs twice), 0x500 op_end (1), 0x600 (2, between ops),
    # 0x210 invoke_end (1). Then 0x400 again after Invoke: not counted.
    blocks = {0x100: 3, 0x200: 1, 0x300: 1, 0x400: 4, 0x500: 1, 0x600: 2, 0x210: 1}
    log = []
    for pc, n in blocks.items():
        log += ["----------------", "IN: f"] + [f"0x{pc + 2 * i:08x}:  bf00  nop" for i in range(n)] + [""]
    for pc in (0x100, 0x200, 0x300, 0x400, 0x400, 0x500, 0x600, 0x300, 0x400, 0x500, 0x210, 0x400):
        log.append(f"Trace 0: 0x7f0000000000 [00800400/{pc:016x}/00000000/00000200] f")
    counter = instruction_count._trace_counter()
    out = subprocess.run(
        [counter, "200", "210", "300", "500"], input="\n".join(log) + "\n", capture_output=True, text=True, check=True
    ).stdout.split("\n")
    # Counted from invoke_begin up to, not including, invoke_end; an operator from
    # its op_begin up to, not including, its op_end:
    # invoke_begin 1 + [op 0: 1 + 4 + 4] + op_end 1 + 2 + [op 1: 1 + 4] + op_end 1 = 19.
    assert out[:3] == ["invoke 19", "op 0 9", "op 1 5"]


def test_parse_output_reads_what_the_application_prints():
    text = (
        "Arena: 81924 of 83568 bytes used.\r\nOps (2):\r\n  op 0 CONV_2D\r\n  op 1 SOFTMAX\r\n"
        "Sample 0: top class 7 (7), score 998/1000; true class 7; host top class 7; output matches the host's TFLM "
        "output (largest difference 0).\r\nSample 0 output 0: -128 -128 127\r\nSample 0 output 16: -3\r\n"
        "Stack: 1432 bytes used.\r\n"
    )
    out = firmware.parse_output(text)
    assert (out.arena_used_bytes, out.arena_bytes, out.stack_bytes, out.ops) == (
        81924,
        83568,
        1432,
        ["CONV_2D", "SOFTMAX"],
    )
    assert out.samples == [
        {
            "index": 0,
            "top_class": 7,
            "label": 7,
            "host_top_class": 7,
            "max_int8_diff": 0,
            "output": [-128, -128, 127, -3],
        }
    ]


def test_set_32bit_arena_adds_two_percent_rounded_to_16_bytes():
    header = c_sources.model_settings_sources(
        {
            "input": {"shape": [1, 8, 8, 1], "scale": 0.5, "zero_point": 0},
            "output": {"shape": [1, 2], "scale": 1.0, "zero_point": 0},
        },
        None,
        99_000,
        90_000,
    )["model_settings.h"]
    assert "constexpr int kTensorArenaSize32 = 99000;" in header
    text, size = c_sources.set_32bit_arena(header, 81_924, ["cortex-m4_cmsis_nn"])
    assert size == 83_568 == -(-int(81_924 * 1.02) // 16) * 16
    assert f"constexpr int kTensorArenaSize32 = {size};" in text and "81924 bytes used" in text
    assert "constexpr int kTensorArenaSize64 = 99000;" in text
    again, _ = c_sources.set_32bit_arena(text, 80_000, ["cortex-m7_reference"])
    assert again.count("kTensorArenaSize32 =") == 1


@pytest.mark.slow
@needs_tree
def test_an_installed_wheel_builds_and_runs_the_firmware_outside_the_checkout(quickstart_run, tmp_path):
    # The wheel ships tflm/ inside the package; run from elsewhere, with only the installed copy importable.
    # Built from a copy: setuptools writes build/ and *.egg-info beside setup.py.
    source = tmp_path / "source"
    shutil.copytree(
        Path(__file__).resolve().parent.parent,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "runs", "*.egg-info", "__pycache__"),
    )
    wheel_command = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(
        [sys.executable, "-m", *wheel_command],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("keras_shufflenet-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert (site / "keras_shufflenet" / "micro" / "firmware" / "app" / "Makefile").is_file()
    assert not (site / "keras_shufflenet" / "micro" / "firmware" / "app" / "build").exists()
    run_dir = tmp_path / "run"
    shutil.copytree(quickstart_run["dir"], run_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), TFLM_TREE=TREE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_shufflenet.micro.firmware",
            f"--run_dir={run_dir}",
            "--target=host",
            "--kernels=reference",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads((run_dir / "firmware" / "host_reference" / "result.json").read_text())
    assert record["built"] and record["output_matches_host"]
    located = subprocess.run(
        [sys.executable, "-c", "import keras_shufflenet.micro.firmware.tflm_app as app; print(app.APP_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert located.stdout.strip() == str(site / "keras_shufflenet" / "micro" / "firmware" / "app")


@pytest.mark.slow
@needs_tree
def test_any_difference_from_the_host_output_fails_unless_a_tolerance_is_named(quickstart_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(quickstart_run["dir"], run_dir)
    samples = run_dir / "tflm" / "sample_input_data.cc"
    head, table = samples.read_text().split("g_sample_expected_output", 1)
    first_row = re.search(r"\{\s*\{([^}]*)\}", table)
    values = [int(v) for v in first_row.group(1).replace("\n", " ").split(",") if v.strip()]
    lowest = values.index(min(values))  # One step up on the lowest score leaves the top class alone.
    values[lowest] += 1
    row = " " + ", ".join(map(str, values)) + ","
    samples.write_text(
        head + "g_sample_expected_output" + table[: first_row.start(1)] + row + table[first_row.end(1) :]
    )
    arguments = [f"--run_dir={run_dir}", "--target=host", "--kernels=reference"]
    assert firmware.main(arguments) == 1
    record = json.loads((run_dir / "firmware" / "host_reference" / "result.json").read_text())
    assert record["max_int8_diff"] == 1 and not record["output_matches_host"] and record["top_class_matches_host"]
    assert firmware.main([*arguments, "--tolerance_lsb=1"]) == 0
