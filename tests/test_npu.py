"""The Arm Ethos-U NPU target: Vela compilation, its estimates, the NPU rewrites and the export's files."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import ShuffleNet
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.micro import convert, export, flatbuffer, npu, verify
from keras_shufflenet.micro.npu import graph as npu_graph

INPUT_SHAPE = (32, 32, 1)
CLASSES = 4

pytest.importorskip("ethosu.vela", reason="the NPU target needs `pip install ethos-u-vela`")


def _images(count, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (count, *INPUT_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return ShuffleNet(input_shape=INPUT_SHAPE, classes=CLASSES, scale_factor=0.25, groups=3)


@pytest.fixture(scope="module")
def int8_model(tiny_model):
    return convert.convert_int8(tiny_model, _images(16, seed=1))


@pytest.fixture(scope="module")
def int8_inputs():
    return np.random.default_rng(3).integers(-128, 128, (6, *INPUT_SHAPE), dtype=np.int64).astype(np.int8)


def _grouped_convs(tflite_model):
    model = flatbuffer.model_object(tflite_model)
    subgraph = model.subgraphs[0]
    return sum(
        1
        for op in subgraph.operators
        if flatbuffer.op_name(model.operatorCodes[op.opcodeIndex]) == "CONV_2D"
        and subgraph.tensors[op.inputs[0]].shape[-1] != subgraph.tensors[op.inputs[1]].shape[-1]
    )


@pytest.mark.parametrize(
    "rewrites", [("split_grouped_convs",), ("split_grouped_convs", "flatten_concatenations")], ids=["split", "both"]
)
def test_rewrites_keep_the_outputs_bit_for_bit_in_tflm(int8_model, int8_inputs, rewrites, tmp_path):
    grouped = _grouped_convs(int8_model)
    assert grouped > 0
    rewritten, counts = npu_graph.rewrite(int8_model, rewrites)
    assert counts["split_grouped_convs"] == grouped
    assert _grouped_convs(rewritten) == 0
    ops = flatbuffer.op_histogram(rewritten)
    assert ops["SPLIT"] == grouped
    assert ops["CONV_2D"] == flatbuffer.op_histogram(int8_model)["CONV_2D"] + 2 * grouped  # g = 3
    if "flatten_concatenations" in rewrites:
        assert counts["flatten_concatenations"] > 0  # The stride-2 units' branches.
    path = tmp_path / "rewritten.tflite"
    path.write_bytes(rewritten)
    # The oracle: TFLite's reference kernels on the unrewritten model.
    reference = verify.run_reference(int8_model, int8_inputs)
    outputs = verify.run_tflm(str(path), 1 << 20, int8_inputs)
    np.testing.assert_array_equal(outputs.reshape(reference.shape), reference)
    assert len(np.unique(reference)) > 4  # Not saturated: the comparison tells values apart.


def test_split_keeps_per_tensor_weights_bit_for_bit(tiny_model, int8_inputs, tmp_path):
    per_tensor = convert.convert_int8(tiny_model, _images(16, seed=1), "per_tensor")
    rewritten, counts = npu_graph.rewrite(per_tensor)
    assert counts["split_grouped_convs"] == _grouped_convs(per_tensor) > 0
    path = tmp_path / "rewritten.tflite"
    path.write_bytes(rewritten)
    reference = verify.run_reference(per_tensor, int8_inputs)
    np.testing.assert_array_equal(verify.run_tflm(str(path), 1 << 20, int8_inputs).reshape(reference.shape), reference)


def test_a_model_without_grouped_convs_is_left_as_it_is(int8_inputs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(batch_shape=(1, *INPUT_SHAPE))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Concatenate()([keras.layers.DepthwiseConv2D(3, padding="same")(x), x])
    outputs = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(x))
    dense = convert.convert_int8(keras.Model(inputs, outputs), _images(8, seed=1))
    rewritten, counts = npu_graph.rewrite(dense)
    assert counts == {"split_grouped_convs": 0, "flatten_concatenations": 0}
    assert flatbuffer.op_histogram(rewritten) == flatbuffer.op_histogram(dense)
    np.testing.assert_array_equal(
        verify.run_reference(rewritten, int8_inputs), verify.run_reference(dense, int8_inputs)
    )


def test_unknown_rewrite_is_refused(int8_model):
    with pytest.raises(ValueError, match="flatten_concatenations"):
        npu_graph.rewrite(int8_model, ("fold_everything",))


def test_per_layer_estimates_add_up_to_velas_totals(int8_model):
    result = npu.compile_model(int8_model, "ethos-u55-128")
    assert result.cycles > 0 and result.macs > 0
    assert sum(layer.cycles for layer in result.layers) == result.cycles
    by_op = result.by_op()
    assert sum(entry["cycles"] for entry in by_op.values()) == result.cycles
    assert {"Conv2D", "Add", "DepthwiseConv2D"} <= set(by_op)
    assert result.cpu_ops == [] and result.npu_ops > 0
    assert flatbuffer.op_histogram(result.model).get(npu.ETHOS_U_OP) == 1
    assert result.system_config == "Ethos_U55_High_End_Embedded" and result.memory_mode == "Shared_Sram"


def test_split_grouped_convs_remove_velas_separate_activation_pass(int8_model):
    before = npu.compile_model(int8_model, "ethos-u55-128")
    after = npu.compile_model(npu_graph.rewrite(int8_model)[0], "ethos-u55-128")
    assert after.cycles < before.cycles
    # Before: Vela runs each grouped conv's fused ReLU as its own pass over the output.
    assert any(layer.original_op == "Conv2D" and layer.vela_op == "Relu" and layer.cycles for layer in before.layers)
    assert not any(layer.original_op == "Conv2D" and layer.vela_op == "Relu" and layer.cycles for layer in after.layers)


@pytest.mark.parametrize("value", ["ethos-u99", "u55", 128, "ETHOS-U55-128"])
def test_a_bad_npu_is_refused_naming_the_allowed_values(tiny_model, tmp_path, value):
    with pytest.raises(ValueError, match=r"npu must be one of \('none', 'ethos-u55-32'.*Received: npu="):
        export(tiny_model, [_images(4, 0)], str(tmp_path / "out"), npu=value)
    assert not (tmp_path / "out").exists()


def test_missing_vela_names_the_pip_command(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ethosu", None)
    monkeypatch.setitem(sys.modules, "ethosu.vela", None)
    with pytest.raises(npu.VelaNotInstalledError, match=r"pip install ethos-u-vela==5\.2\.0"):
        export(tiny_model, [_images(4, 0)], str(tmp_path / "out"), npu="ethos-u55-128")


@pytest.mark.e2e  # The NPU's end-to-end path in the default tier.
def test_export_writes_the_vela_model_its_c_array_and_settings(tiny_model, tmp_path):
    from test_micro import parse_c_array

    calibration = _images(32, seed=1)
    eval_images = _images(8, seed=2)
    eval_data = tf.data.Dataset.from_tensor_slices((eval_images, np.arange(8) % CLASSES)).batch(8)
    out = tmp_path / "run"
    report = export(
        tiny_model,
        [calibration],
        str(out),
        eval_data=eval_data,
        num_representative=32,
        name="tiny",
        npu="ethos-u65-256",
    )
    section = report["npu"]
    assert json.loads((out / "report.json").read_text())["npu"] == section
    vela_model = (out / "tiny_vela.tflite").read_bytes()
    assert flatbuffer.op_histogram(vela_model) == {npu.ETHOS_U_OP: 1}
    source = (out / "ethos_u" / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_tiny_model_data[]" in source
    assert parse_c_array(source, "g_tiny_model_data") == vela_model
    settings = (out / "ethos_u" / "ethos_u_settings.h").read_text()
    assert 'kEthosUAccelerator = "ethos-u65-256"' in settings
    assert f"kEthosUModelSize = {len(vela_model)};" in settings
    assert "AddEthosU()" in settings
    # Vela's estimates, per op, add up to its totals; before and after the rewrites.
    for part in (section, section["before_rewrites"]):
        assert sum(entry["cycles"] for entry in part["by_op"].values()) == part["cycles"]
    assert section["cycles"] < section["before_rewrites"]["cycles"]
    assert section["rewrites"]["split_grouped_convs"] > 0 and section["rewrites_bit_exact_samples"] == 8
    rows = (out / "ethos_u" / "vela_per_layer.csv").read_text().splitlines()[1:]
    assert sum(int(row.split(",")[3]) for row in rows) == section["cycles"]
    # The CPU files are those of an export without the NPU: the int8 model the board's CPU gets has grouped convs.
    assert _grouped_convs((out / "tiny_int8.tflite").read_bytes()) > 0
    assert "Arm Ethos-U NPU (ethos-u65-256" in (out / "report.md").read_text()
