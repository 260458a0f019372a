"""Tests of keras_shufflenet.micro: int8 export, TFLite Micro verification and firmware files.

One tiny ShuffleNet (32x32x1, 0.25x) is exported once per module; the tests
check the artifacts against independent references: TFLite's own interpreter
(reference kernels), the compiled C array, and probes of the arena.
"""

import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from keras_shufflenet import ShuffleNet, profile
from keras_shufflenet.architecture import network_spec
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.micro import (
    ConversionCrashError,
    UnsupportedOpError,
    c_sources,
    compact,
    convert,
    export,
    flatbuffer,
    graph,
    litert,
    verify,
    weight_storage,
)

INPUT_SHAPE = (32, 32, 1)
CLASSES = 4
LABELS = ["north", "east", "south", "west"]


def parse_c_array(source: str, symbol: str) -> bytes:
    """Reads the bytes of ``symbol``'s initializer back from C source (for tests and checks)."""
    match = re.search(re.escape(symbol) + r"\s*\[\s*\]\s*=\s*\{(.*?)\};", source, re.S)
    if not match:
        raise ValueError(f"No array initializer for {symbol!r} in the source.")
    items = [item.strip() for item in match.group(1).split(",") if item.strip()]
    return bytes(int(item, 0) & 0xFF for item in items)


def _images(count, seed):
    """Images whose class is the quadrant holding a bright square, preprocessed to [-1, 1]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    images = rng.uniform(-1, -0.6, (count, *INPUT_SHAPE)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 2)
        image[row * 16 + 4 : row * 16 + 12, col * 16 + 4 : col * 16 + 12] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return ShuffleNet(input_shape=INPUT_SHAPE, classes=CLASSES, scale_factor=0.25, groups=3)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    calibration, _ = _images(64, seed=1)
    eval_images, eval_labels = _images(48, seed=2)
    eval_data = tf.data.Dataset.from_tensor_slices((eval_images, eval_labels)).batch(16)
    out = tmp_path_factory.mktemp("export") / "run"
    progress = []
    report = export(
        tiny_model,
        [calibration[:32], calibration[32:]],
        str(out),
        eval_data=eval_data,
        labels=LABELS,
        num_representative=48,
        num_verify=12,
        name="tiny",
        progress=progress.append,
    )
    return {"report": report, "dir": out, "eval": (eval_images, eval_labels), "progress": progress}


def test_progress_names_each_stage_as_it_ends_with_its_time(exported):
    lines = exported["progress"]
    stages = [line.split(":")[0].split(" (")[0] for line in lines]
    assert stages == list(exported["report"]["timings_s"])[: len(stages)]
    assert stages[:3] == ["read data", "profile", "convert"] and "arena search" in stages
    for line, seconds in zip(lines, exported["report"]["timings_s"].values(), strict=False):
        assert line.endswith(f"({seconds:.1f} s)")
    assert "read data: 48 calibration and 48 evaluation images" in lines[0]
    assert any(
        line.startswith("verify in TFLM: 48 samples, 12 against the reference kernels: bit-identical") for line in lines
    )


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_export_writes_float_and_int8_models_and_report(exported):
    report, out = exported["report"], exported["dir"]
    int8_model = _read(out / "tiny_int8.tflite")
    assert (out / "tiny_float.tflite").exists()
    tflm_model = _read(out / "tiny_int8_tflm.tflite")
    assert report["flash_bytes"] == len(tflm_model) < len(int8_model) == report["int8_standard_bytes"]
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("float_top1", "int8_top1", "flash_bytes", "arena_bytes", "macs", "params", "sparsity", "ops"):
        assert on_disk[key] == report[key]
    report_md = (out / "report.md").read_text()
    assert "| flash: int8 model bytes (" in report_md
    assert "## Pruning" not in report_md  # No pruning asked for: no per-layer pruning table.
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging directory left behind"
    # Full int8 with a static batch of one, as TFLM needs.
    interpreter = litert.interpreter(int8_model)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    assert list(inp["shape_signature"]) == [1, *INPUT_SHAPE]
    assert list(outp["shape_signature"]) == [1, CLASSES]
    # Per-channel weights: the first convolution's filter has one scale per output channel.
    filters = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and t["dtype"] == np.int8]
    assert any(len(t["quantization_parameters"]["scales"]) == t["shape"][0] > 1 for t in filters)


def test_accuracy_matches_independent_evaluation(exported, tiny_model):
    report = exported["report"]
    eval_images, eval_labels = exported["eval"]
    keras_top1 = np.mean(tiny_model.predict(eval_images, verbose=0).argmax(axis=1) == eval_labels)
    assert report["float_top1"] == pytest.approx(keras_top1)
    # int8 top-1 from TFLite's reference kernels, which TFLM must match bit for bit.
    int8_model = _read(exported["dir"] / "tiny_int8.tflite")
    io = report["io"]["input"]
    quantized = np.clip(np.round(eval_images / io["scale"]) + io["zero_point"], -128, 127).astype(np.int8)
    reference = verify.run_reference(int8_model, quantized)
    assert report["int8_top1"] == pytest.approx(np.mean(reference.argmax(axis=1) == eval_labels), abs=1 / 48 + 1e-9)
    assert report["accuracy"]["samples"] == 48
    assert report["tflm_bit_exact"] == {
        "samples": 12,
        "bit_exact": True,
        "differing_samples": 0,
        "max_abs_diff_lsb": 0,
        "tolerance_lsb": 0,
    }
    assert report["float_tflite_max_abs_diff"] < 1e-4


def test_reference_runs_use_litert_and_warn_of_no_deprecation(exported):
    int8_model = _read(exported["dir"] / "tiny_int8.tflite")
    assert type(litert.interpreter(int8_model, reference_kernels=True)).__module__.startswith("ai_edge_litert")
    inputs = np.random.default_rng(3).integers(-128, 128, (4, *INPUT_SHAPE)).astype(np.int8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = verify.run_reference(int8_model, inputs)
    assert not [w for w in caught if "deprecated" in str(w.message)]
    # LiteRT's reference kernels are TFLM's oracle: the same int8 outputs, bit for bit.
    path = exported["dir"] / "tiny_int8_tflm.tflite"
    np.testing.assert_array_equal(verify.run_tflm(str(path), exported["report"]["arena_bytes"], inputs), reference)


def test_arena_is_the_smallest_that_works(exported):
    report = exported["report"]
    model_path = str(exported["dir"] / "tiny_int8_tflm.tflite")
    minimum = report["arena"]["min_bytes"]
    assert verify.probe_arena(model_path, minimum)[0]
    assert not verify.probe_arena(model_path, minimum - verify.ARENA_ALIGNMENT)[0]
    assert report["arena_bytes"] == report["arena"]["recommended_bytes"]
    assert minimum <= report["arena_bytes"] < 1.25 * minimum
    assert verify.probe_arena(model_path, report["arena_bytes"])[0]


def test_model_data_cc_holds_exactly_the_tflite_bytes(exported):
    tflm = exported["dir"] / "tflm"
    source = (tflm / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_tiny_model_data[]" in source
    assert parse_c_array(source, "g_tiny_model_data") == _read(exported["dir"] / "tiny_int8_tflm.tflite")
    header = (tflm / "model_data.h").read_text()
    assert f"g_tiny_model_data_size = {exported['report']['flash_bytes']};" in header


def test_model_settings_and_op_resolver(exported):
    report, tflm = exported["report"], exported["dir"] / "tflm"
    settings = (tflm / "model_settings.h").read_text()
    interpreter = litert.interpreter(_read(exported["dir"] / "tiny_int8.tflite"))
    in_scale, in_zero = interpreter.get_input_details()[0]["quantization"]
    out_scale, out_zero = interpreter.get_output_details()[0]["quantization"]
    assert float(re.search(r"kInputScale = ([0-9.e-]+)f;", settings).group(1)) == pytest.approx(in_scale)
    assert f"kInputZeroPoint = {in_zero};" in settings
    assert float(re.search(r"kOutputScale = ([0-9.e-]+)f;", settings).group(1)) == pytest.approx(out_scale)
    assert f"kOutputZeroPoint = {out_zero};" in settings
    assert "kNumRows = 32;" in settings and "kNumChannels = 1;" in settings
    # 64-bit hosts get the measured size; 32-bit cores the same until micro.firmware measures one.
    assert f"kTensorArenaSize64 = {report['arena_bytes']};" in settings
    assert f"kTensorArenaSize32 = {report['arena_bytes']};" in settings
    assert '"north", "east", "south", "west"' in (tflm / "model_settings.cc").read_text()
    # Exactly the operators TFLite itself sees in the model, each registered once.
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    resolver = (tflm / "op_resolver.h").read_text()
    registered = re.findall(r"resolver\.(Add\w+)\((?:KERAS_SHUFFLENET_KERNEL\((\w+)\))?\)", resolver)
    assert sorted(method for method, _ in registered) == sorted(flatbuffer.TFLM_OP_RESOLVER_METHODS[op] for op in ops)
    # The project's kernels through one macro, for exactly the operators they implement.
    assert {op for _, op in registered if op} == set(c_sources.PROJECT_KERNELS) & ops
    assert "#ifdef KERAS_SHUFFLENET_KERNELS" in resolver and '#include "shufflenet_kernels.h"' in resolver
    assert "MicroMutableOpResolver<kNumberOfOps>" in resolver and f"kNumberOfOps = {len(ops)};" in resolver
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE", "RESHAPE"} <= set(report["ops"])


def _compile_firmware(compiler, tflm_dir, out_dir, extra_flags):
    objects = []
    for source in ("model_data.cc", "model_settings.cc", "sample_input_data.cc"):
        obj = out_dir / (source + ".o")
        subprocess.run(
            [compiler, "-std=c++17", "-Wall", "-Werror", "-O2", *extra_flags, "-c", str(tflm_dir / source), "-o", obj],
            check=True,
            capture_output=True,
        )
        objects.append(obj)
    return objects


def test_firmware_compiles_with_gcc_and_array_is_the_model(exported, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    tflm = exported["dir"] / "tflm"
    objects = _compile_firmware("g++", tflm, tmp_path, [])
    dump = tmp_path / "dump.cc"
    dump.write_text(
        '#include <cstdio>\n#include "model_data.h"\n#include "model_settings.h"\n'
        "int main() {\n"
        "  std::fwrite(g_tiny_model_data, 1, g_tiny_model_data_size, stdout);\n"
        "  return reinterpret_cast<unsigned long>(g_tiny_model_data) % 16 != 0 || kCategoryCount != 4;\n"
        "}\n"
    )
    binary = tmp_path / "dump"
    subprocess.run(["g++", "-std=c++17", "-I", str(tflm), str(dump), *map(str, objects), "-o", binary], check=True)
    printed = subprocess.run([str(binary)], check=True, capture_output=True).stdout
    assert printed == _read(exported["dir"] / "tiny_int8_tflm.tflite")


def test_firmware_cross_compiles_for_cortex_m4(exported, tmp_path):
    if shutil.which("arm-none-eabi-g++") is None:
        pytest.skip("arm-none-eabi-g++ is not installed (CI installs gcc-arm-none-eabi)")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-fno-exceptions", "-fno-rtti"]
    objects = _compile_firmware("arm-none-eabi-g++", exported["dir"] / "tflm", tmp_path, flags)
    symbols = subprocess.run(["arm-none-eabi-nm", "-S", str(objects[0])], check=True, capture_output=True, text=True)
    match = re.search(r"^[0-9a-f]+ ([0-9a-f]+) R g_tiny_model_data$", symbols.stdout, re.M)
    assert match and int(match.group(1), 16) == exported["report"]["flash_bytes"]


def test_compact_model_is_smaller_and_bit_identical_in_tflm(exported):
    standard = _read(exported["dir"] / "tiny_int8.tflite")
    result = compact.compact_for_tflm(standard)
    assert result.model == _read(exported["dir"] / "tiny_int8_tflm.tflite")
    assert result.zero_points_collapsed > 0 and result.bias_quantizations_dropped > 0
    assert len(result.model) < 0.8 * len(standard)
    # Every per-channel weight tensor keeps its scales but one zero point.
    model = schema_fb.ModelT.InitFromPackedBuf(result.model, 0)
    per_channel = [
        t
        for t in model.subgraphs[0].tensors
        if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale) > 1
    ]
    assert per_channel and all(len(t.quantization.zeroPoint) == 1 for t in per_channel)
    assert all(t.name in (None, b"", "") for t in model.subgraphs[0].tensors)
    # TFLM on the compact model == TFLite reference kernels on the standard one.
    rng = np.random.default_rng(3)
    inputs = rng.integers(-128, 128, size=(6, *INPUT_SHAPE)).astype(np.int8)
    path = exported["dir"] / "tiny_int8_tflm.tflite"
    np.testing.assert_array_equal(
        verify.run_tflm(str(path), exported["report"]["arena_bytes"], inputs), verify.run_reference(standard, inputs)
    )


def test_per_tensor_weights_have_one_scale_and_run_bit_exact_in_tflm(tiny_model, exported, tmp_path):
    calibration, _ = _images(32, seed=1)
    per_channel = _read(exported["dir"] / "tiny_int8.tflite")
    per_tensor = convert.convert_int8(tiny_model, calibration, weight_quantization="per_tensor")
    subgraph = schema_fb.ModelT.InitFromPackedBuf(per_tensor, 0).subgraphs[0]
    weights = [t for t in subgraph.tensors if t.type == schema_fb.TensorType.INT8 and t.buffer and t.shape.size == 4]
    assert weights and all(len(t.quantization.scale) == 1 for t in weights)
    assert len(per_tensor) < len(per_channel)
    path = tmp_path / "per_tensor.tflite"
    path.write_bytes(compact.compact_for_tflm(per_tensor).model)
    inputs = np.random.default_rng(4).integers(-128, 128, size=(4, *INPUT_SHAPE)).astype(np.int8)
    np.testing.assert_array_equal(
        verify.run_tflm(str(path), exported["report"]["arena_bytes"], inputs), verify.run_reference(per_tensor, inputs)
    )
    with pytest.raises(ValueError, match="weight_quantization.*per_tensor.*Received"):
        convert.convert_int8(tiny_model, calibration, weight_quantization="per_layer")


def test_c_strings_escape_labels():
    sources = c_sources.model_settings_sources(
        {
            "input": {"shape": [1, 2, 2, 1], "scale": 0.5, "zero_point": 0},
            "output": {"shape": [1, 2], "scale": 1.0, "zero_point": 0},
        },
        ['say "hi"', "café1"],
        1024,
        1000,
    )
    assert r'"say \"hi\"", "caf\303\2511"' in sources["model_settings.cc"]


# --- Bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batches, message",
    [
        ([np.zeros((2, 28, 28, 1), np.float32)], r"shape \(batch, 32, 32, 1\)"),
        ([np.zeros((2, 32, 32, 1), np.uint8)], "dtype: uint8"),
        ([np.full((2, 32, 32, 1), np.nan, np.float32)], "NaN"),
        ([], "no images"),
        # Raw pixels that were not preprocessed: the int8 input would get scale 1.0.
        (
            [np.full((2, 32, 32, 1), 200.0, np.float32)],
            r"`representative_data` holds values from 200 to 200, but a ShuffleNet takes images scaled to \[-1, 1\]",
        ),
    ],
)
def test_bad_representative_data_is_refused_and_nothing_written(tiny_model, tmp_path, batches, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        export(tiny_model, batches, str(out))
    assert list(tmp_path.iterdir()) == []


def test_unpreprocessed_eval_data_is_refused(tiny_model, tmp_path):
    calibration, _ = _images(8, seed=1)
    raw = (calibration + 1) * 127.5
    eval_data = tf.data.Dataset.from_tensor_slices((raw, np.zeros(8, np.int64))).batch(4)
    with pytest.raises(ValueError, match=r"`eval_data` holds values from 0\S* to 255, .*preprocess_input"):
        export(tiny_model, [calibration], str(tmp_path / "run"), eval_data=eval_data)
    assert list(tmp_path.iterdir()) == []


def test_other_models_keep_their_own_input_range(tmp_path):
    # Only a ShuffleNet is known to take [-1, 1]; a model with its own rescaling takes pixels.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 1)).astype(np.float32)
    report = export(model, [pixels], str(tmp_path / "run"), num_verify=2, name="pixels")
    assert report["io"]["input"]["scale"] > 0.5  # about 255 / 256


def test_an_empty_output_dir_is_refused_before_any_work(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="`output_dir` must be a directory path. Received: output_dir=''"):
        export(tiny_model, [np.zeros((1, *INPUT_SHAPE), np.float32)], "")
    assert list(tmp_path.iterdir()) == []


def test_one_array_of_images_is_one_batch_of_representative_data(tiny_model, exported, tmp_path):
    images, _ = _images(12, seed=1)
    report = export(tiny_model, images, str(tmp_path / "run"), num_verify=2, name="tiny")
    assert report["representative_samples"] == 12


def test_staging_folders_of_killed_exports_are_removed_by_the_next(tmp_path):
    from keras_shufflenet import run_dir

    child = subprocess.Popen(["true"])
    child.wait()
    stale = tmp_path / f".run.export-{child.pid}-abc"
    stale.mkdir()
    (stale / "half.tflite").write_bytes(b"\0")
    live = tmp_path / f".run.export-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / ".run.export-notapid"
    other.mkdir()
    staging = run_dir.make_staging_dir(str(tmp_path / "run"))
    assert not stale.exists() and live.exists() and other.exists()
    assert os.path.basename(staging).startswith(f".run.export-{os.getpid()}-")


def test_an_op_without_a_tflite_kernel_is_named_with_its_layer(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(lambda t: tf.math.erf(t), name="gelu_like")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"no TFLite builtin kernel: Erf \(in layer 'gelu_like'\)"):
        # Calibration images with spread: constant ones are refused before conversion.
        export(model, [np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)], str(tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_dir_is_refused(tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="output_dir"):
        export(tiny_model, [np.zeros((1, *INPUT_SHAPE), np.float32)], str(blocker / "run"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantize": "float16"}, "quantize"),
        ({"labels": ["a", "b"]}, "labels"),
        ({"name": "my-model"}, "C identifier"),
        ({"arena_margin": 0.3}, "arena_margin"),
        ({"prune_sparsity": 1.5}, "prune_sparsity"),
    ],
)
def test_bad_arguments_name_the_argument(tiny_model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export(tiny_model, [np.zeros((1, *INPUT_SHAPE), np.float32)], str(tmp_path / "run"), **kwargs)


@pytest.mark.skipif(USE_LEGACY_KERAS, reason="checks the Keras 3 refusal")
def test_pruning_a_keras3_model_explains_tf_keras(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="TF_USE_LEGACY_KERAS=1"):
        export(tiny_model, [np.zeros((1, *INPUT_SHAPE), np.float32)], str(tmp_path / "run"), prune_sparsity=0.5)


def test_export_graph_has_grouped_conv2d_not_the_keras_matmul_lowering(tiny_model, rng):
    static = graph.static_batch_model(tiny_model)
    grouped = [layer for layer in static.layers if layer.name.endswith(("gconv1", "gconv2")) and layer.groups > 1]
    assert grouped and all(type(layer) is keras.layers.Conv2D for layer in grouped)
    image = rng.normal(size=(1, *INPUT_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(static(image).numpy(), tiny_model(image).numpy(), rtol=1e-5, atol=1e-6)
    ops = flatbuffer.op_histogram(convert.convert_float(tiny_model))
    assert "BATCH_MATMUL" not in ops and "FULLY_CONNECTED" not in ops
    # Every convolution, grouped or not, and the classifier is one CONV_2D.
    convs = [layer for layer in static.layers if type(layer).__name__ in ("Conv2D", "DenseAsPointwiseConv")]
    assert ops["CONV_2D"] == len(convs)


def test_relu_after_a_concat_moves_onto_its_inputs(tiny_model, rng):
    stride2 = [unit.name for unit in network_spec(groups=3, scale_factor=0.25).units if unit.strides == 2]
    dropped, fused = graph.relus_through_concats(tiny_model)
    # Stride-2 units: relu(concat(avg_pool(x), bn(conv))) with x a ReLU's output.
    assert dropped == {f"{name}_relu" for name in stride2}
    assert fused == {f"{name}_gconv2_bn" for name in stride2}
    static = graph.static_batch_model(tiny_model)
    assert {type(static.get_layer(name)) for name in dropped} == {graph.PassThrough}
    image = rng.normal(size=(1, *INPUT_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(static(image).numpy(), tiny_model(image).numpy(), rtol=1e-5, atol=1e-6)
    assert "RELU" not in flatbuffer.op_histogram(convert.convert_float(tiny_model))


def test_relu_moves_when_the_layers_also_serve_another_model(rng):
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=INPUT_SHAPE, classes=CLASSES, scale_factor=0.25, groups=3)
    # tfmot's prune and strip clone a model reusing its unwrapped layers: each then has two inbound nodes.
    keras.models.clone_model(model, clone_function=lambda layer: layer)
    assert graph.relus_through_concats(model) == (set(), set())  # Ambiguous on the shared layers themselves.
    assert "RELU" not in flatbuffer.op_histogram(convert.convert_float(model))  # Read on the export's fresh copy.
    image = rng.normal(size=(1, *INPUT_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(
        graph.static_batch_model(model)(image).numpy(), model(image).numpy(), rtol=1e-5, atol=1e-6
    )


def test_relu_after_a_concat_stays_when_an_input_can_be_negative(rng):
    image = keras.Input(batch_shape=(1, 6, 6, 3))
    conv = keras.layers.Conv2D(4, 1, name="conv")(image)
    shared_bn = keras.layers.BatchNormalization(name="shared_bn")(conv)
    for second in (image, shared_bn):  # A raw input; a batch norm that another layer also reads.
        joined = keras.layers.Concatenate()([keras.layers.AveragePooling2D(1)(image), second])
        outputs = [keras.layers.ReLU()(joined)] + ([keras.layers.Flatten()(shared_bn)] if second is shared_bn else [])
        model = keras.Model(image, outputs)
        assert graph.relus_through_concats(model) == (set(), set())
    x = rng.normal(size=(1, 6, 6, 3)).astype(np.float32)
    model = keras.Model(image, keras.layers.ReLU()(keras.layers.Concatenate()([image, conv])))
    assert "RELU" in flatbuffer.op_histogram(convert.convert_float(model))
    np.testing.assert_allclose(graph.static_batch_model(model)(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_unsupported_op_is_named():
    image = keras.Input(batch_shape=(1, 8, 8, 4))
    top = keras.layers.Lambda(lambda x: tf.math.top_k(x, k=2).values)(image)
    model = keras.Model(image, top)
    with pytest.raises(UnsupportedOpError, match="TOPK_V2"):
        flatbuffer.check_tflm_ops(convert.convert_float(model))


def test_arena_too_small_fails_and_keeps_the_good_export(exported, tiny_model, tmp_path):
    good = tmp_path / "run"
    shutil.copytree(exported["dir"], good)
    before = {p: _read(p) for p in good.rglob("*") if p.is_file()}
    calibration, _ = _images(8, seed=3)
    with pytest.raises(ValueError, match="arena_bytes.*too small"):
        export(tiny_model, [calibration], str(good), arena_bytes=1024, name="tiny")
    assert {p: _read(p) for p in good.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_crashing_or_invalid_model_is_a_clean_error(tmp_path):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0" * 64)
    ok, _ = verify.probe_arena(str(garbage), 4096)
    assert not ok
    with pytest.raises(verify.TFLMError, match="does not run in TFLite Micro"):
        verify.find_min_arena(str(garbage), max_bytes=2**16, max_children=2)


def test_bit_exact_comparison_reports_differences():
    reference = np.zeros((3, 4), np.int8)
    changed = reference.copy()
    changed[1, 2] = 2
    with pytest.raises(verify.VerificationError, match="1 of 3 samples.*2 LSB"):
        verify.compare_bit_exact(changed, reference)
    tolerated = verify.compare_bit_exact(changed, reference, tolerance_lsb=2)
    assert not tolerated["bit_exact"] and tolerated["differing_samples"] == 1 and tolerated["max_abs_diff_lsb"] == 2


# --- Slow and tf_keras-only ---------------------------------------------------------------------


@pytest.mark.slow
def test_instruction_count_exceeds_macs(exported):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    report = exported["report"]
    sample = np.zeros(INPUT_SHAPE, np.int8)
    count = verify.count_instructions(str(exported["dir"] / "tiny_int8.tflite"), report["arena_bytes"], sample)
    # Each multiply-accumulate of the reference kernels takes at least one instruction.
    assert count > report["macs"]


@pytest.mark.slow
@pytest.mark.legacy_keras
def test_prune_and_qat_export(tmp_path):
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=INPUT_SHAPE, classes=CLASSES, scale_factor=0.25, groups=3)
    images, labels = _images(64, seed=4)
    train_data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    report = export(
        model,
        [images],
        str(tmp_path / "run"),
        eval_data=train_data,
        train_data=train_data,
        prune_sparsity=0.5,
        prune_epochs=1,
        quantize="qat",
        num_representative=32,
        num_verify=8,
        num_eval=32,
    )
    sparsity = report["sparsity"]
    assert sparsity["prunable_overall"] == pytest.approx(0.5, abs=0.01)
    assert "## Pruning" in (tmp_path / "run" / "report.md").read_text()
    assert all(name.endswith("dwconv") for name in sparsity["dense_layers"])
    assert all(info["sparsity"] < 0.05 for name, info in sparsity["layers"].items() if name.endswith("dwconv"))
    # Pruned zeros survive quantization-aware training and int8 conversion.
    assert sparsity["int8_zero_fraction"] >= 0.4
    # The board's model stores the pruned kernels in TFLM's pruned encoding, lossless in TFLM.
    storage = report["weight_storage"]
    assert storage["by_encoding"]["prune"]["tensors"] >= 10 and storage["lossless_samples"] == 32
    # The model shrinks by what the encodings save, less at most DECODE_OVERHEAD_BYTES per DECODE operator
    # (this tiny model's flatbuffer is half operator and quantization tables, so that is about 16 %).
    compressed = [t for t in storage["tensors"] if t["encoding"] != "dense"]
    saved = sum(t["dense_bytes"] - t["stored_bytes"] for t in compressed)
    assert 0.3 * sum(t["dense_bytes"] for t in compressed) < saved
    upper = storage["dense_model_bytes"] - saved + weight_storage.DECODE_OVERHEAD_BYTES * len(compressed)
    assert storage["dense_model_bytes"] - saved < report["flash_bytes"] == storage["model_bytes"] <= upper
    # Bit-identical after QAT too (the classifier is exported as a 1x1 CONV_2D).
    assert report["tflm_bit_exact"]["bit_exact"] and report["tflm_bit_exact"]["tolerance_lsb"] == 0
    assert report["quantize"] == "qat" and "pruned encoding" in sparsity["note"]
    assert (tmp_path / "run" / "model_int8.tflite").exists()
    # The caller's model is left unpruned.
    kernel = model.get_layer("stage3_unit2_gconv1").get_weights()[0]
    assert np.count_nonzero(kernel == 0) == 0


def test_channel_shuffle_exports_as_a_transpose_of_at_most_four_dimensions(exported):
    # CMSIS-NN's TRANSPOSE handles at most 4 dimensions; with 5 it returns
    # garbage and TFLM does not notice (seen on an emulated Cortex-M4).
    model = schema_fb.Model.GetRootAs(_read(exported["dir"] / "tiny_int8_tflm.tflite"), 0)
    graph = model.Subgraphs(0)
    ranks = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() == schema_fb.BuiltinOperator.TRANSPOSE:
            ranks.append(graph.Tensors(op.Inputs(0)).ShapeLength())
    assert ranks and max(ranks) <= 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, expected_ops",
    [
        ({"output_stride": 16}, {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"}),
        ({"output_stride": 8}, {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"}),
        ({"output_stride": 16, "shallow": True}, {"CONV_2D", "ADD"}),
        ({"output_stride": 16, "squeeze_excite": True}, {"MEAN", "LOGISTIC", "MUL"}),
    ],
    ids=["os16", "os8", "shallow", "squeeze_excite"],
)
def test_small_input_and_table5_variants_export_bit_exact_in_tflm(kwargs, expected_ops, tmp_path):
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=INPUT_SHAPE, classes=CLASSES, scale_factor=0.25, groups=3, **kwargs)
    calibration, _ = _images(32, seed=1)
    report = export(model, [calibration], str(tmp_path / "run"), num_representative=32, num_verify=8, name="variant")
    assert report["tflm_bit_exact"]["bit_exact"] and report["tflm_bit_exact"]["samples"] == 8
    assert expected_ops <= set(report["ops"])
    assert "MAX_POOL_2D" not in report["ops"]  # the small-input stems have no max pool
    assert report["macs"] == profile(model).macs


def test_output_elements_by_op_counts_every_residual_add(exported):
    # Independent count from the architecture: each stride-1 unit adds one H x W x C map.
    size = INPUT_SHAPE[0]
    spec = network_spec(groups=3, scale_factor=0.25)
    expected = 0
    for unit in spec.units:
        if unit.strides == 2:
            size = -(-size // 2) if unit.name != "stage2_unit1" else -(-size // 8)
        else:
            expected += size * size * unit.filters
    counts = flatbuffer.output_elements_by_op(_read(exported["dir"] / "tiny_int8.tflite"))
    assert counts["ADD"] == expected
    assert counts["CONV_2D"] > counts["ADD"] > 0


def test_conversion_in_a_child_gives_the_same_flatbuffers_as_in_process(tiny_model):
    calibration, _ = _images(8, seed=1)
    float_child, int8_child = convert.convert_in_child(tiny_model, tiny_model, calibration)
    assert float_child == convert.convert_float(tiny_model)
    assert int8_child == convert.convert_int8(tiny_model, calibration)


def test_a_converter_crash_is_an_exception_naming_the_layers_and_nothing_is_left(tiny_model, tmp_path, monkeypatch):
    # A stand-in for TensorFlow's calibrator dying with SIGSEGV: the worker kills itself.
    crashing = tmp_path / "crashing_worker.py"
    crashing.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(convert, "_WORKER", str(crashing))
    calibration, _ = _images(8, seed=1)
    out = tmp_path / "out" / "run"
    with pytest.raises(ConversionCrashError, match=r"crashed \(SIGSEGV\) .*layers \{.*Conv2D.*ops \{.*Conv2D"):
        export(tiny_model, [calibration], str(out))
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_constant_calibration_data_is_refused_and_no_eval_data_is_said_loudly(tiny_model, tmp_path):
    constant = np.full((8, *INPUT_SHAPE), -1.0, np.float32)
    with pytest.raises(ValueError, match=r"`representative_data` has no spread in channel\(s\) \[0\]"):
        export(tiny_model, [constant], str(tmp_path / "constant"))
    assert not (tmp_path / "constant").exists()
    progress = []
    images = np.random.default_rng(0).uniform(-1, 1, (8, *INPUT_SHAPE)).astype(np.float32)
    report = export(tiny_model, [images], str(tmp_path / "blind"), num_verify=4, progress=progress.append)
    assert report["int8_top1"] is None and "ACCURACY NOT MEASURED" in progress[0]
    assert "**Accuracy not measured:**" in (tmp_path / "blind" / "report.md").read_text()
