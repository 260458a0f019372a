"""ShuffleNet builder: fidelity to the paper, keras.applications behaviour."""

import json

import numpy as np
import pytest

from keras_shufflenet import ShuffleNet, architecture, preprocess_input, profile
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras

# Table 1 of the paper: output channels of Stages 2-4 and complexity (MFLOPs
# = mult-adds) at 1x, 224x224, 1000 classes.
PAPER_TABLE1 = {
    1: ((144, 288, 576), 143),
    2: ((200, 400, 800), 140),
    3: ((240, 480, 960), 137),
    4: ((272, 544, 1088), 133),
    8: ((384, 768, 1536), 137),
}
# The official implementation (megvii-model/ShuffleNet-Series): FLOPs (M) and
# params (M) per (groups, scale).
OFFICIAL = {
    (3, 0.5): (38, 0.7),
    (3, 1.0): (138, 1.9),
    (3, 1.5): (292, 3.4),
    (3, 2.0): (524, 5.4),
    (8, 0.5): (40, 1.0),
    (8, 1.0): (138, 2.4),
    (8, 1.5): (290, 4.3),
    (8, 2.0): (522, 6.5),
}
# Exact counts of this implementation (model.count_params(), 1000 classes),
# so that any silent change of the architecture fails a test.
GOLDEN_PARAMS = {
    (3, 0.5): 730_564,
    (3, 1.0): 1_890_208,
    (3, 1.5): 3_478_888,
    (3, 2.0): 5_499_736,
    (8, 0.5): 1_031_032,
    (8, 1.0): 2_473_936,
    (8, 1.5): 4_328_704,
    (8, 2.0): 6_600_568,
}


def _macs(groups, scale, **kwargs):
    result = profile(ShuffleNet(groups=groups, scale_factor=scale, **kwargs))
    classifier = sum(c.macs for c in result.layers if c.name == "predictions")
    return result, classifier


@pytest.mark.parametrize("groups", sorted(PAPER_TABLE1))
def test_table1_widths_and_complexity(groups):
    widths, paper_mflops = PAPER_TABLE1[groups]
    assert architecture.stage_out_channels(groups, 1.0) == widths
    result, classifier = _macs(groups, 1.0)
    # Table 1 counts the network without the 1000-way classifier: with it,
    # g=4 and g=8 come out 1.0 % above the table; without it all five are
    # within 0.4 %. The official table (below) counts the classifier.
    assert abs((result.macs - classifier) / 1e6 - paper_mflops) / paper_mflops < 0.01
    assert abs(result.macs / 1e6 - paper_mflops) / paper_mflops < 0.0105


@pytest.mark.parametrize(
    "groups, scale, paper_mflops, tolerance",
    [
        # Table 2 gives 38 and 13 MFLOPs for every g; the stem rule (below
        # 1x, 24*s rounded up to a multiple of g) and the 4*g width rounding
        # move the small models by up to 12 %.
        (3, 0.5, 38, 0.02),
        (4, 0.5, 38, 0.02),
        (8, 0.5, 40, 0.02),  # Official: 40M (its stem is 16 channels).
        (1, 0.5, 38, 0.02),
        (2, 0.5, 38, 0.03),
        # 0.25x: the stem keeps 0.5x's 12 channels (8 for g8); all within 5 %.
        (1, 0.25, 13, 0.05),
        (2, 0.25, 13, 0.05),
        (3, 0.25, 13, 0.05),
        (4, 0.25, 13, 0.05),
        (8, 0.25, 13, 0.05),
    ],
)
def test_small_scales_close_to_table2(groups, scale, paper_mflops, tolerance):
    result, _ = _macs(groups, scale)
    assert abs(result.macs / 1e6 - paper_mflops) / paper_mflops < tolerance


@pytest.mark.parametrize("groups, scale", sorted(OFFICIAL))
def test_official_flops_and_params(groups, scale):
    official_mflops, official_mparams = OFFICIAL[(groups, scale)]
    model = ShuffleNet(groups=groups, scale_factor=scale)
    result = profile(model)
    tolerance = 0.02 if scale >= 1.5 else 0.015
    assert abs(result.macs / 1e6 - official_mflops) / official_mflops < tolerance
    # The official classifier has no bias and PyTorch counts no batch-norm
    # statistics: compare the same quantity.
    trainable_without_bias = result.trainable_params - 1000
    assert abs(trainable_without_bias / 1e6 - official_mparams) <= 0.05
    assert model.count_params() == GOLDEN_PARAMS[(groups, scale)]


def test_stem_stops_shrinking_below_half_scale():
    # Table 2's 13 MFLOPs at 0.25x need 0.5x's 12-channel stem (a multiple of g: 8 for g8).
    assert {g: architecture.stem_channels(g, 0.25) for g in (1, 2, 3, 4, 8)} == {1: 12, 2: 12, 3: 12, 4: 12, 8: 8}
    assert architecture.stem_channels(3, 0.1) == 12
    assert architecture.stem_channels(3, 0.49) <= architecture.stem_channels(3, 0.5)


# Table 5 of the paper (MFLOPs), with this implementation's exact parameter counts.
TABLE5_VARIANTS = {
    "0.5x shallow g3": ({"scale_factor": 0.5, "groups": 3, "shallow": True}, 40, 898_996),
    "2x g3 with SE": ({"scale_factor": 2.0, "groups": 3, "squeeze_excite": True}, 527, 7_959_043),
}


@pytest.mark.parametrize("variant", sorted(TABLE5_VARIANTS))
def test_table5_variants_complexity_and_params(variant):
    kwargs, paper_mflops, golden_params = TABLE5_VARIANTS[variant]
    model = ShuffleNet(**kwargs)
    result = profile(model)
    assert abs(result.macs / 1e6 - paper_mflops) / paper_mflops < 0.03
    assert model.count_params() == golden_params


def test_shallow_variant_has_26_layers_of_half_the_units():
    model = ShuffleNet(scale_factor=0.5, groups=3, shallow=True, input_shape=(64, 64, 3), classes=10)
    units = sorted({layer.name.rsplit("_gconv1", 1)[0] for layer in model.layers if layer.name.endswith("_gconv1")})
    assert units == ["stage2_unit1", "stage2_unit2", "stage3_unit1", "stage3_unit2", "stage3_unit3",
                     "stage3_unit4", "stage4_unit1", "stage4_unit2"]  # fmt: skip
    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))
    ]
    assert len(weighted) == 26  # conv1 + 8 units x (gconv1, depthwise, gconv2) + classifier
    # sqrt(2) x 0.5x's widths (120, 240, 480), rounded to multiples of 12.
    assert architecture.network_spec(3, 0.5, shallow=True).stage_out_channels == (168, 336, 684)


def test_squeeze_excite_scales_each_branch_by_a_sigmoid_of_its_mean():
    model = ShuffleNet(scale_factor=0.25, groups=3, squeeze_excite=True, input_shape=(32, 32, 3), classes=4)
    reduce, expand = model.get_layer("stage3_unit2_se_reduce"), model.get_layer("stage3_unit2_se_expand")
    assert (reduce.filters, expand.filters) == (120 // 16, 120)
    branch = keras.Model(model.input, model.get_layer("stage3_unit2_gconv2_bn").output)
    scaled = keras.Model(model.input, model.get_layer("stage3_unit2_se_scale").output)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    b = branch(x).numpy()
    w1, b1 = reduce.get_weights()
    w2, b2 = expand.get_weights()
    squeezed = np.maximum(b.mean(axis=(1, 2)) @ w1[0, 0] + b1, 0)
    excitation = 1 / (1 + np.exp(-(squeezed @ w2[0, 0] + b2)))
    np.testing.assert_allclose(scaled(x).numpy(), b * excitation[:, None, None, :], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "output_stride, conv1_strides, max_pool, final_map",
    [(32, 2, True, 2), (16, 2, False, 4), (8, 1, False, 8)],
)
def test_output_stride_sets_the_stem_and_the_final_map(output_stride, conv1_strides, max_pool, final_map):
    model = ShuffleNet(include_top=False, input_shape=(64, 64, 1), scale_factor=0.25, output_stride=output_stride)
    assert tuple(model.get_layer("conv1").strides) == (conv1_strides, conv1_strides)
    assert any(layer.name == "maxpool" for layer in model.layers) == max_pool
    assert model.output_shape[1:3] == (final_map, final_map) == (64 // output_stride, 64 // output_stride)


def test_default_output_stride_is_the_papers():
    assert architecture.DEFAULT_OUTPUT_STRIDE == 32
    model = ShuffleNet(input_shape=(224, 224, 3))
    assert model.get_layer("maxpool") is not None and tuple(model.get_layer("conv1").strides) == (2, 2)
    assert model.name == "shufflenet_1x_g3"


@pytest.mark.parametrize(
    "size, stride", [(8, 8), (16, 8), (17, 16), (28, 16), (32, 16), (33, 32), (48, 32), (64, 32), (96, 32), (224, 32)]
)
def test_automatic_output_stride_leaves_at_least_two_by_two(size, stride):
    assert architecture.output_stride_for(size) == stride
    assert -(-size // stride) >= 2 or stride == 8


def test_official_stem_widths():
    # megvii-model/ShuffleNet-Series ShuffleNetV1 stage_out_channels[1].
    expected = {(3, 0.5): 12, (3, 1.0): 24, (3, 1.5): 24, (3, 2.0): 48, (8, 0.5): 16, (8, 1.0): 24, (8, 2.0): 48}
    for (groups, scale), stem in expected.items():
        assert architecture.stem_channels(groups, scale) == stem


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("scale", [0.1, 0.25, 0.33, 0.5, 0.75, 1.0, 1.25, 3.0])
def test_width_rule_keeps_every_grouped_conv_divisible(groups, scale):
    spec = architecture.network_spec(groups, scale)
    for unit in spec.units:
        branch = unit.filters - unit.in_channels if unit.strides == 2 else unit.filters
        assert unit.bottleneck_channels % groups == 0
        assert branch > 0 and branch % groups == 0
        if unit.first_pointwise_grouped:
            assert unit.in_channels % groups == 0


@pytest.mark.dual_keras
def test_layer_structure_follows_table1():
    model = ShuffleNet(groups=3, input_shape=(64, 64, 3), classes=10)
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["image", "conv1", "conv1_bn", "conv1_relu", "maxpool"]
    units = sorted({n.split("_")[0] + "_" + n.split("_")[1] for n in names if n.startswith("stage")})
    assert len(units) == 16
    assert [sum(u.startswith(f"stage{s}_") for u in units) for s in (2, 3, 4)] == [4, 8, 4]
    # Ungrouped first pointwise conv of Stage 2 only.
    assert model.get_layer("stage2_unit1_gconv1").groups == 1
    assert model.get_layer("stage3_unit1_gconv1").groups == 3
    assert all(model.get_layer(f"stage{s}_unit1_concat") for s in (2, 3, 4))
    assert model.get_layer("stage2_unit2_add")
    assert names[-2:] == ["global_pool", "predictions"]
    # No activation after any depthwise conv's batch norm.
    for i, name in enumerate(names):
        if name.endswith("_dwconv_bn"):
            assert names[i + 1].endswith("_gconv2")


@pytest.mark.dual_keras
def test_deterministic_names_and_shuffle_off():
    a = [layer.name for layer in ShuffleNet(input_shape=(32, 32, 3)).layers]
    b = [layer.name for layer in ShuffleNet(input_shape=(32, 32, 3)).layers]
    assert a == b
    no_shuffle = ShuffleNet(input_shape=(32, 32, 3), shuffle=False)
    assert not [layer for layer in no_shuffle.layers if layer.name.endswith("_shuffle")]
    assert len([n for n in a if n.endswith("_shuffle")]) == 16
    assert not [
        n
        for n in (layer.name for layer in ShuffleNet(groups=1, input_shape=(32, 32, 3)).layers)
        if n.endswith("_shuffle")
    ]


@pytest.mark.dual_keras
@pytest.mark.parametrize(
    "kwargs, batch_shape, expected",
    [
        ({"include_top": False, "input_shape": (224, 224, 3)}, (1, 224, 224, 3), (1, 7, 7, 960)),
        ({"include_top": False, "pooling": "avg", "input_shape": (96, 128, 3)}, (2, 96, 128, 3), (2, 960)),
        ({"include_top": False, "pooling": "max", "input_shape": (None, None, 3)}, (1, 70, 33, 3), (1, 960)),
        ({"input_shape": (32, 32, 1), "classes": 10}, (3, 32, 32, 1), (3, 10)),
        ({"input_shape": (40, 48, 4), "classes": 5, "groups": 8, "scale_factor": 0.5}, (1, 40, 48, 4), (1, 5)),
        ({"input_shape": (None, None, 1), "classes": 7, "scale_factor": 0.3}, (2, 37, 64, 1), (2, 7)),
    ],
)
def test_output_shapes(kwargs, batch_shape, expected):
    model = ShuffleNet(**kwargs)
    y = model(np.zeros(batch_shape, np.float32), training=False)
    assert tuple(y.shape) == expected


@pytest.mark.dual_keras
def test_classifier_activation():
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    softmax_model = ShuffleNet(input_shape=(32, 32, 3), classes=4)
    logits_model = ShuffleNet(input_shape=(32, 32, 3), classes=4, classifier_activation=None)
    logits_model.set_weights(softmax_model.get_weights())
    logits = logits_model(x, training=False).numpy().astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(softmax_model(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        ShuffleNet(input_shape=(32, 32, 3), classifier_activation="no_such_activation")


@pytest.mark.dual_keras
def test_input_tensor():
    inputs = keras.Input((48, 48, 3))
    model = ShuffleNet(input_tensor=inputs, classes=3)
    assert model.inputs[0] is inputs or tuple(model.inputs[0].shape) == (None, 48, 48, 3)
    assert tuple(model.outputs[0].shape) == (None, 3)


@pytest.mark.dual_keras
def test_weights_from_path_and_config_round_trip(tmp_path):
    model = ShuffleNet(input_shape=(32, 32, 3), classes=4, scale_factor=0.25)
    path = str(tmp_path / "shufflenet.weights.h5")
    model.save_weights(path)
    again = ShuffleNet(input_shape=(32, 32, 3), classes=4, scale_factor=0.25, weights=path)
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)

    config = json.dumps(model.get_config(), sort_keys=True)
    clone = type(model).from_config(model.get_config())
    assert json.dumps(clone.get_config(), sort_keys=True) == config

    saved = str(tmp_path / "shufflenet.keras")
    model.save(saved)
    restored = keras.models.load_model(saved)
    np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.dual_keras
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"groups": 5}, r"`groups` must be one of \(1, 2, 3, 4, 8\). Received: groups=5"),
        ({"scale_factor": 0}, "scale_factor=0"),
        ({"scale_factor": -1.0}, "scale_factor=-1.0"),
        ({"input_shape": (31, 64, 3)}, r"height must be None or >= 32: with output_stride=32 .*\(31, 64, 3\)"),
        ({"input_shape": (64, 16, 3)}, "width must be None or >= 32"),
        ({"input_shape": (15, 64, 3), "output_stride": 16}, r"height must be None or >= 16: with output_stride=16"),
        ({"input_shape": (7, 7, 1), "output_stride": 8}, "smaller than 1x1"),
        ({"input_shape": (32.5, 32, 3)}, "must be None or an integer"),
        ({"output_stride": 4}, r"`output_stride` must be one of \(8, 16, 32\). Received: output_stride=4"),
        ({"output_stride": True}, "output_stride=True"),
        ({"shallow": 1}, "`shallow` must be True or False. Received: shallow=1"),
        ({"squeeze_excite": "yes"}, "squeeze_excite='yes'"),
        ({"squeeze_excite": True, "se_ratio": 0}, "se_ratio=0"),
        ({"squeeze_excite": True, "se_ratio": 2.5}, "se_ratio=2.5"),
        (
            {"squeeze_excite": True, "se_ratio": 1000, "scale_factor": 0.25},
            "`se_ratio` 1000 leaves no squeeze-and-excitation channels",
        ),
        ({"weights": "imagenet"}, "weights='imagenet'"),
        ({"classes": 0}, "classes=0"),
        ({"pooling": "min", "include_top": False}, "pooling='min'"),
        ({"stem_channels": 10, "groups": 3}, "stem_channels=10"),
        ({"input_shape": (64, 64)}, "input_shape"),
        ({"groups": 3.0}, r"`groups` must be one of .* Received: groups=3.0"),
        ({"groups": True}, "Received: groups=True"),
        ({"scale_factor": float("inf")}, "`scale_factor` must be a finite number > 0. Received: scale_factor=inf"),
        ({"scale_factor": 0.02, "groups": 3}, r"`scale_factor` must be >= 0.056 with groups=3: .*scale_factor=0.02"),
        ({"classifier_activation": "bogus"}, "`classifier_activation` must be None, .*'bogus'"),
        ({"stem_channels": 240, "scale_factor": 0.25}, r"below Stage 2's width \(60\).*stem_channels=240"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShuffleNet(**kwargs)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_the_smallest_scale_factor_builds_and_below_it_is_refused(groups):
    smallest = architecture.min_scale_factor(groups)
    ShuffleNet(groups=groups, scale_factor=smallest, input_shape=(32, 32, 1), classes=2)
    with pytest.raises(ValueError, match=f"must be >= {smallest:g} with groups={groups}"):
        ShuffleNet(groups=groups, scale_factor=smallest - 0.001, input_shape=(32, 32, 1), classes=2)


@pytest.mark.dual_keras
def test_weights_of_another_configuration_or_format_are_named(tmp_path):
    path = str(tmp_path / "g3.weights.h5")
    ShuffleNet(groups=3, scale_factor=0.25, input_shape=(32, 32, 1), classes=4).save_weights(path)
    with pytest.raises(ValueError, match=r"`weights` file .*g3.weights.h5' does not fit .*groups, scale_factor"):
        ShuffleNet(groups=8, scale_factor=0.25, input_shape=(32, 32, 1), classes=4, weights=path)
    text = tmp_path / "notes.weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="notes.weights.h5' does not fit .*Keras weights file"):
        ShuffleNet(groups=3, scale_factor=0.25, input_shape=(32, 32, 1), classes=4, weights=str(text))
    model = ShuffleNet(groups=3, scale_factor=0.25, input_shape=(32, 32, 1), classes=4, weights=path)
    assert model.count_params() > 0


def test_preprocess_input_maps_pixels_to_unit_range():
    x = np.array([[0, 127.5, 255]], np.float32)
    np.testing.assert_allclose(preprocess_input(x), [[-1, 0, 1]])
    assert np.asarray(preprocess_input(np.array([255], np.uint8))).dtype == np.float32


@pytest.mark.legacy_keras
def test_tfmot_prunes_every_conv_and_dense_kernel_but_depthwise():
    import tensorflow_model_optimization as tfmot

    model = ShuffleNet(input_shape=(32, 32, 1), classes=10, scale_factor=0.25)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    assert USE_LEGACY_KERAS
    prunable = {}
    for layer in pruned.layers:
        if type(layer).__name__ == "PruneLowMagnitude":
            prunable[layer.layer.name] = [w.name for w in layer.layer.get_prunable_weights()]
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            assert prunable[layer.name] == []
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            assert len(prunable[layer.name]) == 1 and "kernel" in prunable[layer.name][0]
