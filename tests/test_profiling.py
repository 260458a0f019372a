"""profile(): MACs, params and peak activations against published numbers."""

import numpy as np
import pytest

from keras_shufflenet import ShuffleNet, ShuffleUnit, profile
from keras_shufflenet.keras_compat import keras


def test_mobilenet_macs_match_its_paper():
    # MobileNet (Howard et al., 2017), Table 8: 1.0 MobileNet-224 has 569
    # million mult-adds and 4.2 million parameters.
    result = profile(keras.applications.MobileNet(weights=None, alpha=1.0))
    assert abs(result.macs / 1e6 - 569) < 1
    assert abs(result.trainable_params / 1e6 - 4.2) < 0.05


def test_mobilenet_v2_macs_match_its_paper():
    # MobileNetV2 (Sandler et al., 2018), Table 4: 300M MACs, 3.4M params.
    result = profile(keras.applications.MobileNetV2(weights=None, alpha=1.0))
    assert abs(result.macs / 1e6 - 300) / 300 < 0.01
    assert abs(result.params / 1e6 - 3.5) < 0.05


def test_per_layer_costs_and_peak_memory_by_hand():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="a")(inputs)  # 8*8*4*27 MACs
    b = keras.layers.Conv2D(6, 1, groups=2, name="b")(a)  # 8*8*6*(4/2) MACs, 6*2+6 params
    c = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="c")(b)  # 4*4*6*9 MACs
    d = keras.layers.GlobalAveragePooling2D(name="d")(c)
    e = keras.layers.Dense(5, name="e")(d)  # 6*5 MACs
    result = profile(keras.Model(inputs, e))
    per_layer = {c.name: c.macs for c in result.layers}
    assert per_layer == {"a": 8 * 8 * 4 * 27, "b": 8 * 8 * 6 * 2, "c": 4 * 4 * 6 * 9, "d": 0, "e": 30}
    assert result.params == 4 * 27 + (6 * 2 + 6) + (6 * 9 + 6) + (6 * 5 + 5)
    assert [c.output_shape for c in result.layers][:3] == [(8, 8, 4), (8, 8, 6), (4, 4, 6)]
    # Largest live set: while "b" runs, its input a (256) and output (384).
    assert result.peak_activation_elements == 8 * 8 * 4 + 8 * 8 * 6
    assert result.peak_activation_bytes(1) == result.peak_activation_elements
    assert "| b | Conv2D | 8x8x6 | 768 | 18 |" in result.to_markdown()


def test_peak_memory_counts_a_live_residual():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(2, 1, name="x")(inputs)
    y = keras.layers.Conv2D(2, 1, name="y")(x)
    z = keras.layers.Add(name="z")([inputs, y])
    result = profile(keras.Model(inputs, z))
    # While "y" runs, the input (kept for the add), x and y are all live.
    assert result.peak_activation_elements == 3 * 32


def test_shuffle_unit_layer_profiles_like_the_inline_unit():
    inputs = keras.Input((56, 56, 24))
    x = ShuffleUnit(240, groups=3, strides=2, first_pointwise_grouped=False)(inputs)
    x = ShuffleUnit(240, groups=3)(x)
    composite = profile(keras.Model(inputs, x))
    # Same two units inside the ShuffleNet graph.
    full = profile(ShuffleNet(groups=3))
    inline = sum(c.macs for c in full.layers if c.name.startswith(("stage2_unit1_", "stage2_unit2_")))
    assert composite.macs == inline
    assert composite.params == sum(
        c.params for c in full.layers if c.name.startswith(("stage2_unit1_", "stage2_unit2_"))
    )


def test_unknown_input_size_needs_input_shape():
    model = ShuffleNet(input_shape=(None, None, 3), include_top=False)
    with pytest.raises(ValueError, match="input_shape"):
        profile(model)
    fixed = ShuffleNet(include_top=False, input_shape=(224, 224, 3))
    assert profile(model, input_shape=(224, 224, 3)).macs == profile(fixed).macs
    # Without an input shape a backbone takes any size, as in keras.applications.
    assert ShuffleNet(include_top=False).input_shape == (None, None, None, 3)
    assert ShuffleNet().input_shape == (None, 224, 224, 3)


def test_profile_leaves_the_model_unchanged():
    model = ShuffleNet(input_shape=(32, 32, 3), classes=3)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    before = model(x, training=False).numpy()
    profile(model)
    assert all("call" not in vars(layer) for layer in model.layers)
    np.testing.assert_array_equal(model(x, training=False).numpy(), before)
