"""ChannelShuffle and ShuffleUnit against independent references."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import ChannelShuffle, ShuffleUnit
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.layers import PointwiseGroupConv2D, batch_norm, pointwise_conv

# The layers and their weights differ under tf_keras: `make test` runs these under both Kerases.
pytestmark = pytest.mark.dual_keras


@pytest.mark.parametrize("groups, channels", [(1, 4), (2, 6), (3, 12), (4, 8), (8, 24)])
def test_channel_shuffle_matches_index_formula(groups, channels, rng):
    x = rng.normal(size=(2, 3, 5, channels)).astype(np.float32)
    y = ChannelShuffle(groups)(x).numpy()
    n = channels // groups
    for i in range(groups):
        for j in range(n):
            # The paper's definition: output channel j*g + i is input channel i*n + j.
            np.testing.assert_array_equal(y[..., j * groups + i], x[..., i * n + j])


def test_channel_shuffle_is_inverted_by_shuffle_with_n_groups(rng):
    x = rng.normal(size=(1, 2, 2, 12)).astype(np.float32)
    y = ChannelShuffle(4)(ChannelShuffle(3)(x)).numpy()
    np.testing.assert_array_equal(y, x)


def test_channel_shuffle_any_batch_and_spatial_size(rng):
    layer = ChannelShuffle(3)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 6], tf.float32)])
    for shape in [(1, 1, 1, 6), (4, 7, 3, 6), (0, 2, 2, 6)]:
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(fn(x).numpy(), ChannelShuffle(3)(x).numpy())
        assert fn(x).shape == shape
    # Rank 3 (a sequence) works too.
    x = rng.normal(size=(2, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(ChannelShuffle(2)(x).numpy(), x[..., [0, 3, 1, 4, 2, 5]])


@pytest.mark.parametrize("groups, in_channels, filters", [(2, 4, 6), (3, 12, 9), (8, 16, 24)])
def test_pointwise_group_conv_matches_per_group_matmul(groups, in_channels, filters, rng):
    layer = PointwiseGroupConv2D(filters, 1, groups=groups, use_bias=True, bias_initializer="random_normal")
    x = rng.normal(size=(2, 3, 5, in_channels)).astype(np.float32)
    y = layer(x).numpy()
    kernel, bias = (w.numpy() for w in layer.weights)
    i, o = in_channels // groups, filters // groups
    for k in range(groups):
        # Group k: input channels [k*i, (k+1)*i) -> output channels [k*o, (k+1)*o).
        expected = x[..., k * i : (k + 1) * i] @ kernel[0, 0, :, k * o : (k + 1) * o] + bias[k * o : (k + 1) * o]
        np.testing.assert_allclose(y[..., k * o : (k + 1) * o], expected, rtol=1e-5, atol=1e-5)


def test_pointwise_group_conv_equals_conv2d_with_groups_forward_and_backward(rng):
    x = tf.constant(rng.normal(size=(2, 4, 4, 12)).astype(np.float32))
    fast = PointwiseGroupConv2D(18, 1, groups=3, use_bias=False)
    plain = keras.layers.Conv2D(18, 1, groups=3, use_bias=False)
    fast.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(fast.get_weights())
    grads = []
    for layer in (fast, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        grads.append((layer(x).numpy(), *(g.numpy() for g in tape.gradient(loss, [x, layer.trainable_weights[0]]))))
    for fast_value, plain_value in zip(*grads, strict=True):
        np.testing.assert_allclose(fast_value, plain_value, rtol=1e-5, atol=1e-5)


def test_pointwise_group_conv_any_batch_and_spatial_size(rng):
    layer = PointwiseGroupConv2D(6, 1, groups=2)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
    for shape in [(1, 1, 1, 4), (3, 7, 2, 4), (0, 2, 2, 4)]:
        assert fn(rng.normal(size=shape).astype(np.float32)).shape == (*shape[:3], 6)


def test_pointwise_group_conv_falls_back_to_conv2d_when_not_pointwise(rng):
    layer = PointwiseGroupConv2D(4, 3, groups=2, padding="same")
    x = rng.normal(size=(1, 5, 5, 4)).astype(np.float32)
    plain = keras.layers.Conv2D(4, 3, groups=2, padding="same")
    plain.build(x.shape)
    layer.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-5)


def test_units_use_the_matmul_lowering_only_under_keras3():
    assert type(pointwise_conv(6, 1, "a")) is keras.layers.Conv2D
    # tensorflow-model-optimization accepts only the exact Conv2D class.
    expected = keras.layers.Conv2D if USE_LEGACY_KERAS else PointwiseGroupConv2D
    assert type(pointwise_conv(6, 3, "b")) is expected


def test_units_use_the_official_batch_norm_settings():
    layer = batch_norm("stage2_unit1_gconv1_bn")
    assert type(layer) is keras.layers.BatchNormalization
    assert (layer.momentum, layer.epsilon, layer.name) == (0.9, 1e-5, "stage2_unit1_gconv1_bn")


def test_channel_shuffle_rejects_indivisible_channels():
    with pytest.raises(ValueError, match=r"channels \(10\).*`groups` \(3\)"):
        ChannelShuffle(3)(np.zeros((1, 2, 2, 10), np.float32))
    with pytest.raises(ValueError, match="groups=0"):
        ChannelShuffle(0)


def test_channel_shuffle_config_round_trip():
    layer = ChannelShuffle(4, name="shuffle_a")
    config = layer.get_config()
    assert config["groups"] == 4
    clone = ChannelShuffle.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)


def _reference_pointwise(x, kernel, groups):
    """Grouped 1x1 conv written as per-group matrix products (no Keras)."""
    cin, cout = x.shape[-1], kernel.shape[-1]
    kin, kout = cin // groups, cout // groups
    out = np.zeros(x.shape[:-1] + (cout,), np.float64)
    for g in range(groups):
        w = kernel[0, 0, :, g * kout : (g + 1) * kout]  # [kin, kout]
        out[..., g * kout : (g + 1) * kout] = x[..., g * kin : (g + 1) * kin] @ w
    return out


def _reference_bn(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _reference_unit(unit, x):
    """The unit of the paper's Fig. 2 from its weights, in numpy/tf.nn."""
    layers = unit._unit

    def bn(role, h):
        b = layers[role]
        values = [v.numpy() for v in (b.gamma, b.beta, b.moving_mean, b.moving_variance)]
        return _reference_bn(h, *values, b.epsilon)

    g = unit.groups
    g1 = g if unit.first_pointwise_grouped else 1
    h = _reference_pointwise(x, layers["gconv1"].kernel.numpy(), g1)
    h = np.maximum(bn("gconv1_bn", h), 0)
    if unit.shuffle and g > 1:
        c = h.shape[-1]
        n = c // g
        h = h[..., [(k % g) * n + k // g for k in range(c)]]
    dw_layer = layers["dwconv"]
    dw = (dw_layer.depthwise_kernel if hasattr(dw_layer, "depthwise_kernel") else dw_layer.kernel).numpy()
    h = tf.nn.depthwise_conv2d(h, dw.astype(np.float64), [1, unit.strides, unit.strides, 1], "SAME").numpy()
    h = bn("dwconv_bn", h)
    h = bn("gconv2_bn", _reference_pointwise(h, layers["gconv2"].kernel.numpy(), g))
    if unit.strides == 1:
        return np.maximum(h + x, 0)
    pooled = tf.nn.avg_pool2d(x, 3, 2, "SAME").numpy()
    return np.maximum(np.concatenate([pooled, h], axis=-1), 0)


@pytest.mark.parametrize(
    "filters, groups, strides, in_channels, first_grouped, shuffle",
    [(24, 3, 1, 24, True, True), (48, 3, 2, 24, False, True), (64, 8, 2, 32, True, True), (24, 2, 1, 24, True, False)],
)
def test_shuffle_unit_matches_reference(filters, groups, strides, in_channels, first_grouped, shuffle, rng):
    unit = ShuffleUnit(filters, groups=groups, strides=strides, first_pointwise_grouped=first_grouped, shuffle=shuffle)
    x = rng.normal(size=(2, 8, 10, in_channels)).astype(np.float32)
    unit.build(x.shape)
    # Non-trivial batch-norm statistics, so that the reference checks them.
    for role, layer in unit._unit.items():
        if role.endswith("_bn"):
            for variable in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance):
                variable.assign(rng.uniform(0.5, 1.5, size=variable.shape).astype(np.float32))
    y = unit(x, training=False).numpy()
    expected = _reference_unit(unit, x.astype(np.float64))
    assert y.shape == (2, 8 // strides, 10 // strides, filters)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_shuffle_unit_has_no_relu_after_depthwise():
    unit = ShuffleUnit(24, groups=3)
    unit.build((None, 8, 8, 24))
    roles = list(unit._unit)
    assert roles[roles.index("dwconv") + 1] == "dwconv_bn"
    assert roles[roles.index("dwconv_bn") + 1] == "gconv2"


def test_shuffle_unit_bottleneck_ratio():
    unit = ShuffleUnit(48, groups=2, bottleneck_ratio=0.5)
    unit.build((None, 8, 8, 48))
    assert unit._unit["gconv1"].filters == 24


@pytest.mark.parametrize(
    "kwargs, in_channels, message",
    [
        ({"filters": 24, "groups": 3, "strides": 3}, 24, "strides=3"),
        ({"filters": 30, "groups": 3}, 24, "filters=30"),
        ({"filters": 24, "groups": 3, "strides": 2}, 24, "must exceed"),
        ({"filters": 20, "groups": 3}, 20, r"\(5\).*`groups` \(3\)"),
        ({"filters": 24, "groups": 3, "bottleneck_ratio": 1.5}, 24, "bottleneck_ratio=1.5"),
        ({"filters": 24, "groups": 3, "se_ratio": -1}, 24, "`se_ratio` must be an integer >= 0"),
        ({"filters": 24, "groups": 3, "se_ratio": 32}, 24, "`se_ratio` 32 leaves no squeeze-and-excitation channels"),
    ],
)
def test_shuffle_unit_rejects_bad_arguments(kwargs, in_channels, message):
    with pytest.raises(ValueError, match=message):
        ShuffleUnit(**kwargs).build((None, 8, 8, in_channels))


def test_shuffle_unit_config_and_saving_round_trip(tmp_path, rng):
    inputs = keras.Input((8, 8, 24))
    x = ShuffleUnit(48, groups=3, strides=2, first_pointwise_grouped=False, name="unit_a")(inputs)
    x = ShuffleUnit(48, groups=3, bottleneck_ratio=0.5, shuffle=False, name="unit_b")(x)
    x = ShuffleUnit(48, groups=3, se_ratio=4, name="unit_c")(x)
    model = keras.Model(inputs, x)
    unit = model.get_layer("unit_a")
    config = unit.get_config()
    for key, value in {"filters": 48, "groups": 3, "strides": 2, "first_pointwise_grouped": False}.items():
        assert config[key] == value
    assert model.get_layer("unit_c").get_config()["se_ratio"] == 4
    assert model.get_layer("unit_c")._unit["se_reduce"].filters == 12
    assert json.dumps(ShuffleUnit.from_config(config).get_config(), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )

    x_in = rng.normal(size=(1, 8, 8, 24)).astype(np.float32)
    path = str(tmp_path / "units.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored(x_in).numpy(), model(x_in).numpy(), rtol=1e-6, atol=1e-6)
