"""The benchmark helpers that turn measurements into published numbers."""

import json
import os

import numpy as np
import pytest

from benchmarks.common import marked_block, remove_layers, swap_layers, variant, with_change, with_marked_block
from benchmarks.keras_speed import graph_stats
from benchmarks.tflm_cost import macs_by_op
from keras_shufflenet import ChannelShuffle, ShuffleNet
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.profiling import profile


@pytest.fixture(scope="module")
def small_shufflenet():
    keras.utils.set_random_seed(0)
    return ShuffleNet(input_shape=(32, 32, 3), classes=4, scale_factor=0.25, groups=3, weights=None)


def test_macs_by_op_accounts_for_every_mac_of_the_model(small_shufflenet):
    cost = profile(small_shufflenet)
    by_op = macs_by_op(cost)
    # Every MAC of a ShuffleNet runs in a convolution or the classifier (a 1x1 CONV_2D after export).
    assert set(by_op) == {"CONV_2D", "DEPTHWISE_CONV_2D"}
    assert sum(by_op.values()) == cost.macs
    dw = sum(layer.macs for layer in cost.layers if layer.type == "DepthwiseConv2D")
    assert by_op["DEPTHWISE_CONV_2D"] == dw > 0


@pytest.mark.skipif(USE_LEGACY_KERAS, reason="PointwiseGroupConv2D is the Keras 3 lowering")
def test_variant_swaps_layers_and_keeps_weights_and_outputs(small_shufflenet, rng):
    swapped = variant(small_shufflenet, swap_layers(PointwiseGroupConv2D, keras.layers.Conv2D))
    assert not [layer for layer in swapped.layers if type(layer) is PointwiseGroupConv2D]
    assert [layer.name for layer in swapped.layers] == [layer.name for layer in small_shufflenet.layers]
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(swapped(x).numpy(), small_shufflenet(x).numpy(), rtol=1e-5, atol=1e-6)


def test_remove_layers_passes_the_input_through(rng):
    image = keras.Input((2, 2, 6))
    model = keras.Model(image, ChannelShuffle(3, name="shuffle")(image))
    x = rng.normal(size=(1, 2, 2, 6)).astype(np.float32)
    assert not np.array_equal(model(x).numpy(), x)
    np.testing.assert_array_equal(variant(model, remove_layers(ChannelShuffle))(x).numpy(), x)


def test_graph_stats_counts_the_ops_and_bytes_of_one_inference():
    image = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 1, use_bias=False)(image)
    model = keras.Model(image, keras.layers.ReLU()(keras.layers.Concatenate()([conv, conv])))
    stats = graph_stats(model)
    # Conv2D, ConcatV2 and Relu run; the variable read moves no data.
    assert stats["op_types"] == {"Conv2D": 1, "ConcatV2": 1, "Relu": 1}
    assert stats["ops"] == 3
    # float32 outputs: 8x8x4 (conv), 8x8x8 (concat), 8x8x8 (relu); the concat's axis is a const.
    assert stats["activation_mb"] * 1e6 == pytest.approx(4 * 64 * (4 + 8 + 8))
    assert stats["macs"] == 8 * 8 * 3 * 4


def test_with_change_gives_the_percent_change_against_the_reference():
    assert with_change(12.0, None, 1) == "12.0"
    assert with_change(13.2, 12.0, 1) == "13.2 (+10 %)"
    assert with_change(7.5, 10.0, 2) == "7.50 (-25 %)"


def test_small_inputs_report_marks_the_automatic_choice_and_every_row():
    from benchmarks.small_inputs import report

    row = {
        "input_size": 32,
        "output_stride": 16,
        "automatic": True,
        "final_map": 2,
        "macs": 2_730_000,
        "params": 254_158,
        "arena_bytes": 50_000,
        "flash_bytes": 300_000,
        "float_top1": 0.975,
        "int8_top1": 0.974,
        "bit_exact": True,
        "train_seconds": 200.0,
    }
    other = {**row, "output_stride": 32, "automatic": False, "final_map": 1, "int8_top1": 0.84, "bit_exact": False}
    text = report([row, other])
    lines = [line for line in text.splitlines() if line.startswith("| 32²")]
    assert len(lines) == 2
    assert "**16** (auto)" in lines[0] and "conv1 stride 2, no max pool" in lines[0] and "0.974" in lines[0]
    assert "(auto)" not in lines[1] and "(not bit-exact)" in lines[1]


def test_firmware_cost_explains_the_gap_with_requantized_outputs_per_mac():
    from benchmarks.firmware_cost import _requantization_section

    def entry(macs, conv, dw, add, instructions):
        outputs = {"CONV_2D": conv, "DEPTHWISE_CONV_2D": dw, "ADD": add}
        return {
            "macs": macs,
            "requantized_outputs": outputs,
            "cortex-m4_cmsis_nn": {"instructions_per_invoke": instructions},
        }

    results = {
        "A": entry(6_000_000, 200_000, 50_000, 50_000, 30_000_000),
        "B": entry(6_000_000, 150_000, 50_000, 0, None),
    }
    lines = "\n".join(_requantization_section(results, "##")).splitlines()
    rows = [line for line in lines if line.startswith("| A") or line.startswith("| B")]
    assert rows[0].endswith("| 20.0 | 100.0 |") and rows[1].endswith("| 30.0 | – |")


def test_failure_probe_report_counts_verdicts_before_and_now():
    from benchmarks.failure_probes import report

    before = [{"probe": "a", "verdict": "wrong"}, {"probe": "b", "verdict": "awkward"}]
    now = [
        {"probe": "a", "verdict": "clear", "message": "error: x | y"},
        {"probe": "b", "verdict": "clear", "message": ""},
    ]
    text = report(now, before)
    assert "| a | wrong | clear | error: x \\| y |" in text
    assert "| b | awkward | clear | (ran as expected) |" in text
    assert "before: 0 clear, 1 awkward, 1 wrong" in text and "now: 2 clear, 0 awkward, 0 wrong" in text


def test_failure_probe_judges():
    from benchmarks.failure_probes import Result, _refused

    judge = _refused("groups")
    assert judge(Result(1, "", "ValueError: `groups` must be one of", 3.0, "")) == "clear"
    assert judge(Result(0, "", "", 3.0, "")) == "wrong"
    assert judge(Result(-11, "", "", 3.0, "")) == "wrong"
    assert judge(Result(1, "", "Traceback\n" * 3 + "x" * 2000 + "\nValueError: shapes differ", 3.0, "")) == "awkward"


def test_a_marked_block_is_appended_once_then_replaced_in_place():
    page = "# Benchmarks\n\n## 1. Fidelity\n\ntext\n"
    first = with_marked_block(page, "compression", "## 6. Compressed\n\nold table")
    assert first.startswith(page.rstrip("\n")) and "old table" in first
    second = with_marked_block(first + "\n## 7. Later\n", "compression", "## 6. Compressed\n\nnew table")
    assert "old table" not in second and second.count("## 6. Compressed") == 1
    assert second.index("new table") < second.index("## 7. Later")
    assert marked_block(second, "compression").endswith("<!-- compression: end -->")
    assert marked_block(page, "compression") is None


def test_compression_report_compares_each_export_with_dense():
    from benchmarks.compression import report

    def row(label, flash, top1, instructions, decode):
        return {
            "label": label, "flash_bytes": flash, "arena_min_bytes": 100_000, "dense_arena_min_bytes": 90_000,
            "instructions": instructions, "dense_instructions": 50_000_000, "decode_instructions": decode,
            "float_top1": 0.978, "int8_top1": top1, "by_encoding": {"lut": {"tensors": 34}},
        }  # fmt: skip

    rows = [row("dense", 305_808, 0.98, 50_000_000, 0), row("clustered 8", 150_320, 0.971, 51_500_000, 1_500_000)]
    text = report(rows, "Compressed weights", accuracy=True)
    assert (
        "| clustered 8 | 150,320 | 0.492 | 100,000 (+10,000) | 51,500,000 | 1,500,000 | 1.030 | 97.8 | 97.1 |" in text
    )


def test_demo_accuracy_and_its_seeded_runs():
    from benchmarks.compression import DEMO_LABEL, _runs, demo_accuracy

    runs = _runs(imagenet=False, repeats=3)
    labels = [label for label, _ in runs]
    assert labels.count(DEMO_LABEL) == 1 and len(labels) == len(set(labels))
    # Independent runs of the demo's configuration: the same settings, each with its own seed.
    demo_settings = dict(runs)[DEMO_LABEL]
    seeded = [settings for label, settings in runs if label.startswith(f"{DEMO_LABEL} (seed ")]
    assert seeded == [{**demo_settings, "seed": seed} for seed in (1, 2, 3)]
    assert all(DEMO_LABEL not in label for label, _ in _runs(imagenet=True, repeats=3))

    def row(label, flash, int8):
        return {"label": label, "flash_bytes": flash, "float_top1": 0.978, "int8_top1": int8}

    rows = [row("dense", 305_808, 0.98), row("clustered 8", 150_320, 0.9), row(DEMO_LABEL, 144_000, 0.972)]
    rows += [row(f"{DEMO_LABEL} (seed 1)", 144_000, 0.958), row(f"{DEMO_LABEL} (seed 2)", 144_000, 0.977)]
    text = demo_accuracy(rows)
    assert "drop against the trained float model (97.8) of +0.6 points; flash 144,000 bytes, 47.1 %" in text
    assert "The same with 2 seeds: drops of +2.0, +0.1 points (mean +1.05, worst +2.0)" in text


def test_npu_report_sums_velas_per_op_cycles_to_its_totals_and_compares_per_mac():
    from benchmarks import npu

    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "npu.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    for steps in results["models"].values():
        for step in steps:
            for vela in step["vela"].values():
                assert sum(entry["cycles"] for entry in vela["by_op"].values()) == vela["cycles"]
    shuffle, mobile = (results["models"][spec.label] for spec in (npu.SHUFFLENET, npu.MOBILENET))
    for accelerator, ratio in npu.goal_ratios(results).items():
        # Cycles per MAC, with each model's MACs counted once, on its unrewritten graph.
        expected = (shuffle[-1]["vela"][accelerator]["cycles"] / shuffle[0]["vela"][accelerator]["macs"]) / (
            mobile[-1]["vela"][accelerator]["cycles"] / mobile[0]["vela"][accelerator]["macs"]
        )
        assert ratio == pytest.approx(expected)
        assert f"| {ratio:.2f} |" in npu.to_markdown(results)
    assert shuffle[-1]["counts"]["split_grouped_convs"] > 0 and shuffle[-1]["bit_exact_samples"] > 0
    assert not any(mobile[-1]["counts"].values())  # MobileNet has no grouped convolution to split.
    probe = results["shortcut_fold_probe"]
    assert probe["folded_adds"] == 3 + 7 + 3  # Every stride-1 unit of stages 2-4.
    for accelerator, vela in probe["vela"].items():
        assert "Add" not in vela["by_op"]
        assert f"{vela['cycles']:,} cycles on {accelerator}" in npu.to_markdown(results)


def test_rows_are_reused_from_a_json_list_or_from_a_log(tmp_path):
    import json

    from benchmarks.compression import read_rows

    rows = [{"label": "dense", "flash_bytes": 1}, {"label": "pruned 30 %", "flash_bytes": 2}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    log = "INFO: noise\n" + "\n".join(json.dumps(r) for r in rows) + "\n{not a row\n"
    (tmp_path / "bench.log").write_text(log)
    assert read_rows(str(tmp_path / "rows.json")) == rows == read_rows(str(tmp_path / "bench.log"))
