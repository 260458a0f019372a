"""ShuffleNet layers: the channel shuffle and the ShuffleNet unit.

The unit is defined once, as the ordered set of Keras layers it is made of
(:func:`unit_layers`) and how they are wired (:func:`apply_unit`). Two things
use that single definition:

* :func:`keras_shufflenet.ShuffleNet` calls :func:`apply_unit` on symbolic
  tensors, so every conv, batch norm and activation of a unit is a layer of
  the *functional* model. tensorflow-model-optimization works layer by layer
  on such a graph: it can prune each pointwise kernel and place fake-quant
  exactly where TFLite's int8 kernels quantize. A composite layer would be
  opaque to it.
* :class:`ShuffleUnit` owns the same layers and calls :func:`apply_unit` in
  ``call()``, for users who want a unit as one layer in their own models.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from keras_shufflenet import architecture
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras

_PACKAGE = "keras_shufflenet"

# PyTorch's BatchNorm defaults, as in the official implementation, so that
# running statistics settle within a short fine-tune.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _shape_ending_with(inputs: Any, last_dims: list[int]) -> Any:
    """The shape ``(*inputs.shape[:-1], *last_dims)`` for ``tf.reshape``.

    A static list when the inner dimensions are known (plain RESHAPE after
    conversion, which TFLite Micro needs, and no shape ops in the graph),
    else a tensor built from ``tf.shape``.
    """
    inner = list(inputs.shape[1:-1])
    if all(d is not None for d in inner):
        return [-1, *inner, *last_dims]
    return tf.concat([tf.shape(inputs)[:-1], last_dims], axis=0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelShuffle(keras.layers.Layer):
    """Channel shuffle of ShuffleNet (Zhang et al., 2018, Sec. 3.1).

    With ``order="paper"`` the channels are reshaped to ``(groups, n)``,
    transposed to ``(n, groups)`` and flattened, so output channel
    ``j * groups + i`` is input channel ``i * n + j`` (``n = channels //
    groups``): every group of the next grouped convolution sees one channel
    of every previous group. ``order="official"`` is the official
    implementation's (megvii-model/ShuffleNet-Series): reshape to
    ``(n, groups)``, transpose, so output channel ``i * n + j`` is input
    channel ``j * groups + i``, the inverse permutation (the paper's shuffle
    with ``n`` groups). Weights trained with one order need that order.

    Works for any batch and spatial size (channels last). With static
    spatial dimensions the reshapes are static, which TFLite Micro needs.

    Args:
      groups: Number of groups, ``>= 1``; must divide the channel count.
      order: ``"paper"`` or ``"official"``, as above. Defaults to `"paper"`.
      **kwargs: Standard layer arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, groups: int, order: str = "paper", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"`groups` must be an integer >= 1. Received: groups={groups!r}")
        if order not in architecture.SHUFFLE_ORDERS:
            raise ValueError(f"`order` must be one of {architecture.SHUFFLE_ORDERS}. Received: order={order!r}")
        self.groups = groups
        self.order = order

    def build(self, input_shape: Any) -> None:
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"ChannelShuffle needs a known channel dimension. Received input_shape={tuple(input_shape)}"
            )
        if channels % self.groups:
            raise ValueError(
                f"The number of channels ({channels}) must be divisible by `groups` ({self.groups}) "
                "for a channel shuffle."
            )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        channels = inputs.shape[-1]
        split = [self.groups, channels // self.groups]
        if self.order == "official":
            split.reverse()
        inner = inputs.shape[1:-1]
        if all(d is not None for d in inner):
            # The pixels as one axis: a 4-D transpose (batch, pixels, g, n),
            # the most that TFLM's CMSIS-NN TRANSPOSE kernel handles; with 5
            # dimensions it silently computes garbage.
            pixels = 1
            for d in inner:
                pixels *= d
            x = tf.transpose(tf.reshape(inputs, [-1, pixels, *split]), [0, 1, 3, 2])
        else:
            rank = len(inputs.shape)
            x = tf.transpose(tf.reshape(inputs, _shape_ending_with(inputs, split)), [*range(rank - 1), rank, rank - 1])
        return tf.reshape(x, _shape_ending_with(inputs, [channels]))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_prunable_weights(self) -> list[Any]:
        """No weights: lets tfmot's ``prune_low_magnitude`` pass through it."""
        return []

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups, "order": self.order}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PointwiseGroupConv2D(keras.layers.Conv2D):
    """A 1x1 group convolution that trains as one matrix multiply per group.

    The same layer, weights and result as ``Conv2D(filters, 1, groups=g)``
    (kernel ``(1, 1, in_channels // g, filters)``, group ``k`` producing the
    output channels ``[k * filters // g, (k + 1) * filters // g)``). Only the
    computation differs:

    * ``training=True`` (``fit``, ``train_on_batch``): ``split -> g matmuls
      -> concat`` on the channels. TensorFlow has no fast grouped convolution
      on the CPU: the native one is about 3x slower to train, and a single
      batched matmul needs transposes of the activations to and from
      group-major order that cost as much as the matmul itself. Split and
      concat copy contiguous runs of channels, and each group's matmul is
      one ordinary GEMM.
    * Inference in a graph (``training`` false or unset inside a
      ``tf.function``: ``predict``, ``evaluate``, and the graphs that
      ``tf.lite.TFLiteConverter``, ``model.export`` and
      ``tf.saved_model.save`` trace): ``Conv2D``'s own grouped convolution.
      TFLite converts it to one grouped ``CONV_2D`` and folds the following
      batch norm into it; the lowering would become FULLY_CONNECTED, SPLIT,
      CONCATENATION and RESHAPE operators and leave every batch norm as a
      MUL. Gradients still flow (Keras compiles it with XLA on the CPU,
      where TensorFlow has no gradient for grouped convolutions). The price
      is Keras inference time on the CPU: 1.1-1.45x the lowering's time per
      batch, measured side by side (1x g3 at 224x224 and 0.5x g3 at 96x96,
      batch 1 to 64, runs on a shared machine). Converting right by default
      is worth that, and training keeps its speed.
    * Eager calls (``model(x)`` outside a ``tf.function``) are never
      converted and use the lowering: Keras would compile an XLA function
      for the grouped convolution at every eager call.

    :func:`keras_shufflenet.ShuffleNet` uses it for grouped 1x1 convolutions
    under Keras 3; under tf_keras (tensorflow-model-optimization) the
    builder uses ``Conv2D`` directly. Configurations other than a stride-1,
    undilated 1x1 channels-last group convolution always use ``Conv2D``'s
    computation.
    """

    def _is_pointwise_group_conv(self) -> bool:
        return (
            self.groups > 1
            and tuple(self.kernel_size) == (1, 1)
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.data_format == "channels_last"
        )

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        # Eager calls are never converted, and there Keras's grouped
        # convolution would trace and compile an XLA function at every call.
        if not (self._is_pointwise_group_conv() and (training or tf.executing_eagerly())):
            return super().call(inputs)
        outputs = self.grouped_matmul(inputs, self.kernel)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def grouped_matmul(self, inputs: Any, kernel: Any) -> Any:
        """The training computation: ``inputs`` times ``kernel`` as ``groups`` matmuls on channel slices."""
        in_channels = inputs.shape[-1]
        out_channels = kernel.shape[-1]
        # Pixels as rows; kernel (1, 1, in / g, out) as g blocks of (in / g, out / g).
        pixel_groups = tf.split(tf.reshape(inputs, [-1, in_channels]), self.groups, axis=-1)
        kernel_groups = tf.split(tf.reshape(kernel, [in_channels // self.groups, out_channels]), self.groups, axis=-1)
        y = tf.concat([tf.matmul(x, w) for x, w in zip(pixel_groups, kernel_groups, strict=True)], axis=-1)
        return tf.reshape(y, _shape_ending_with(inputs, [out_channels]))


def batch_norm(name: str) -> keras.layers.Layer:
    """A batch norm of the network, with the official implementation's momentum and epsilon."""
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def pointwise_conv(filters: int, groups: int, name: str) -> keras.layers.Layer:
    """The 1x1 (group) convolution of a unit: ``PointwiseGroupConv2D`` under Keras 3 when grouped."""
    grouped = groups > 1 and not USE_LEGACY_KERAS
    conv = PointwiseGroupConv2D if grouped else keras.layers.Conv2D
    return conv(filters, 1, groups=groups, use_bias=False, kernel_initializer="he_normal", name=name)


def _check_unit_args(
    in_channels: int,
    filters: int,
    groups: int,
    strides: int,
    first_pointwise_grouped: bool,
    bottleneck_ratio: float,
    se_ratio: int = 0,
) -> int:
    """Validates a unit's arguments; returns its bottleneck width."""
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"`groups` must be an integer >= 1. Received: groups={groups!r}")
    if strides not in (1, 2):
        raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
    if not 0 < bottleneck_ratio <= 1:
        raise ValueError(f"`bottleneck_ratio` must be in (0, 1]. Received: bottleneck_ratio={bottleneck_ratio!r}")
    if strides == 1 and filters != in_channels:
        raise ValueError(
            f"A stride-1 unit adds its input, so `filters` must equal the input channels. "
            f"Received: filters={filters}, input channels={in_channels}"
        )
    branch_channels = filters - in_channels if strides == 2 else filters
    if branch_channels < 1:
        raise ValueError(
            f"A stride-2 unit concatenates its input, so `filters` must exceed the input channels. "
            f"Received: filters={filters}, input channels={in_channels}"
        )
    bottleneck = int(filters * bottleneck_ratio)
    checks = [("bottleneck channels (filters * bottleneck_ratio)", bottleneck)]
    checks.append(("branch output channels", branch_channels))
    if first_pointwise_grouped:
        checks.append(("input channels", in_channels))
    for what, count in checks:
        if count < 1 or count % groups:
            raise ValueError(f"The {what} ({count}) must be a positive multiple of `groups` ({groups}).")
    if isinstance(se_ratio, bool) or not isinstance(se_ratio, int) or se_ratio < 0:
        raise ValueError(f"`se_ratio` must be an integer >= 0 (0: no squeeze-and-excitation). Received: {se_ratio!r}")
    if se_ratio and branch_channels // se_ratio < 1:
        raise ValueError(
            f"`se_ratio` {se_ratio} leaves no squeeze-and-excitation channels for a branch of {branch_channels} "
            f"channels; it must be at most {branch_channels}."
        )
    return bottleneck


def unit_layers(
    prefix: str,
    in_channels: int,
    filters: int,
    groups: int,
    strides: int,
    first_pointwise_grouped: bool = True,
    bottleneck_ratio: float = 0.25,
    shuffle: bool = True,
    se_ratio: int = 0,
    convention: str = architecture.DEFAULT_CONVENTION,
) -> dict[str, keras.layers.Layer]:
    """Creates the layers of one ShuffleNet unit (Fig. 2 b/c), by role.

    Args:
      prefix: Name prefix of every layer, e.g. ``"stage2_unit1"``.
      in_channels: Channels of the unit's input.
      filters: Channels of the unit's output.
      groups: Groups of the pointwise convolutions.
      strides: 1 (residual add) or 2 (average-pooled shortcut, concat).
      first_pointwise_grouped: Whether the first 1x1 convolution is grouped.
      bottleneck_ratio: Bottleneck width as a fraction of ``filters``.
      shuffle: Whether to shuffle channels after the first 1x1 convolution
        (off for Table 3's ablation; there is nothing to shuffle with one
        group).
      se_ratio: Squeeze-and-excitation on the branch (Table 5's "with SE"):
        global average pool, 1x1 conv to ``branch // se_ratio`` channels with
        ReLU, 1x1 conv back with a sigmoid, times the branch; applied before
        the add or concat, as SE-ResNet does. 0 for none.
      convention: A key of :data:`keras_shufflenet.architecture.CONVENTIONS`:
        ``"paper"`` or ``"official"`` (symmetric padding of the stride-2
        depthwise conv and of the average-pool shortcut, which then counts
        the padding; the shuffle after the depthwise conv, in the official
        order).

    Returns:
      A dict from role (``"gconv1"``, ``"gconv1_bn"``, ...) to layer, in
      execution order.

    Raises:
      ValueError: If the channel counts do not split into the groups.
    """
    bottleneck = _check_unit_args(
        in_channels, filters, groups, strides, first_pointwise_grouped, bottleneck_ratio, se_ratio
    )
    if convention not in architecture.CONVENTIONS:
        raise ValueError(
            f"`convention` must be one of {tuple(architecture.CONVENTIONS)}. Received: convention={convention!r}"
        )
    rule = architecture.CONVENTIONS[convention]
    # A stride-1 3x3 "same" window pads one pixel on every side already.
    symmetric = rule.padding == "symmetric" and strides == 2
    branch_channels = filters - in_channels if strides == 2 else filters
    L = keras.layers

    def bn(role: str) -> keras.layers.Layer:
        return batch_norm(f"{prefix}_{role}")

    layers: dict[str, keras.layers.Layer] = {}
    layers["gconv1"] = pointwise_conv(bottleneck, groups if first_pointwise_grouped else 1, f"{prefix}_gconv1")
    layers["gconv1_bn"] = bn("gconv1_bn")
    layers["gconv1_relu"] = L.ReLU(name=f"{prefix}_gconv1_relu")
    shuffles = shuffle and groups > 1

    def add_shuffle() -> None:
        layers["shuffle"] = ChannelShuffle(groups, order=rule.shuffle_order, name=f"{prefix}_shuffle")

    if shuffles and rule.shuffle_position == "after_gconv1":
        add_shuffle()
    if symmetric:
        layers["dwconv_pad"] = L.ZeroPadding2D(1, name=f"{prefix}_dwconv_pad")
    layers["dwconv"] = L.DepthwiseConv2D(
        3,
        strides=strides,
        padding="valid" if symmetric else "same",
        use_bias=False,
        depthwise_initializer="he_normal",
        name=f"{prefix}_dwconv",
    )
    layers["dwconv_bn"] = bn("dwconv_bn")  # No ReLU after the depthwise conv.
    if shuffles and rule.shuffle_position == "after_dwconv":
        add_shuffle()
    layers["gconv2"] = pointwise_conv(branch_channels, groups, f"{prefix}_gconv2")
    layers["gconv2_bn"] = bn("gconv2_bn")
    if se_ratio:
        layers["se_pool"] = L.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")
        layers["se_reduce"] = L.Conv2D(
            branch_channels // se_ratio,
            1,
            activation="relu",
            kernel_initializer="he_normal",
            name=f"{prefix}_se_reduce",
        )
        layers["se_expand"] = L.Conv2D(branch_channels, 1, activation="sigmoid", name=f"{prefix}_se_expand")
        layers["se_scale"] = L.Multiply(name=f"{prefix}_se_scale")
    if strides == 1:
        layers["add"] = L.Add(name=f"{prefix}_add")
    elif symmetric:
        # The padded zeros count in the average, as PyTorch's count_include_pad=True.
        layers["shortcut_pad"] = L.ZeroPadding2D(1, name=f"{prefix}_shortcut_pad")
        layers["shortcut_pool"] = L.AveragePooling2D(3, strides=2, padding="valid", name=f"{prefix}_shortcut_pool")
        layers["concat"] = L.Concatenate(name=f"{prefix}_concat")
    else:
        layers["shortcut_pool"] = L.AveragePooling2D(3, strides=2, padding="same", name=f"{prefix}_shortcut_pool")
        layers["concat"] = L.Concatenate(name=f"{prefix}_concat")
    layers["relu"] = L.ReLU(name=f"{prefix}_relu")
    return layers


# The roles of the residual branch; a unit's dict holds them in execution order.
_BRANCH_ROLES = (
    "gconv1",
    "gconv1_bn",
    "gconv1_relu",
    "shuffle",
    "dwconv_pad",
    "dwconv",
    "dwconv_bn",
    "gconv2",
    "gconv2_bn",
)


def apply_unit(layers: dict[str, keras.layers.Layer], inputs: Any) -> Any:
    """Wires the layers made by :func:`unit_layers` on ``inputs``."""
    x = inputs
    for role, layer in layers.items():
        if role in _BRANCH_ROLES:
            x = layer(x)
    if "se_pool" in layers:
        weights = layers["se_expand"](layers["se_reduce"](layers["se_pool"](x)))
        x = layers["se_scale"]([x, weights])
    if "add" in layers:
        x = layers["add"]([inputs, x])
    else:
        # Shortcut first, as in the official implementation.
        shortcut = layers["shortcut_pad"](inputs) if "shortcut_pad" in layers else inputs
        x = layers["concat"]([layers["shortcut_pool"](shortcut), x])
    return layers["relu"](x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ShuffleUnit(keras.layers.Layer):
    """A ShuffleNet unit (Zhang et al., 2018, Fig. 2 b and c) as one layer.

    1x1 group conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise conv
    (stride 1 or 2) -> BN -> 1x1 group conv -> BN, then with stride 1 the
    input is added, with stride 2 a 3x3/2 average-pooled shortcut is
    concatenated (the branch then outputs ``filters - input channels``), and
    a ReLU follows.

    :func:`keras_shufflenet.ShuffleNet` builds the same layers inline, so
    that tensorflow-model-optimization sees each of them; use this layer in
    your own models when one layer per unit is more convenient.

    Args:
      filters: Output channels of the unit.
      groups: Groups of the pointwise convolutions. Defaults to `3`.
      strides: 1 or 2. Defaults to `1`.
      first_pointwise_grouped: Whether the first 1x1 conv is grouped; the
        paper does not group it when the input is narrow (Stage 2's first
        unit). Defaults to `True`.
      bottleneck_ratio: Bottleneck width as a fraction of ``filters``.
        Defaults to `0.25`.
      shuffle: Whether to shuffle channels. Defaults to `True`.
      se_ratio: Squeeze-and-excitation reduction ratio on the branch; 0
        (the default) for none.
      convention: ``"paper"`` or ``"official"``; see :func:`unit_layers`.
        Defaults to `"paper"`.
      **kwargs: Standard layer arguments (``name``, ``dtype``, ...).
    """

    def __init__(
        self,
        filters: int,
        groups: int = 3,
        strides: int = 1,
        first_pointwise_grouped: bool = True,
        bottleneck_ratio: float = 0.25,
        shuffle: bool = True,
        se_ratio: int = 0,
        convention: str = architecture.DEFAULT_CONVENTION,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters!r}")
        self.filters = filters
        self.groups = groups
        self.strides = strides
        self.first_pointwise_grouped = first_pointwise_grouped
        self.bottleneck_ratio = bottleneck_ratio
        self.shuffle = shuffle
        self.se_ratio = se_ratio
        if convention not in architecture.CONVENTIONS:
            raise ValueError(
                f"`convention` must be one of {tuple(architecture.CONVENTIONS)}. Received: convention={convention!r}"
            )
        self.convention = convention
        self._unit: dict[str, keras.layers.Layer] = {}

    def build(self, input_shape: Any) -> None:
        # The branch width of a stride-2 unit depends on the input channels,
        # so the sublayers are created here rather than in __init__.
        self._unit = unit_layers(
            self.name,
            in_channels=int(input_shape[-1]),
            filters=self.filters,
            groups=self.groups,
            strides=self.strides,
            first_pointwise_grouped=self.first_pointwise_grouped,
            bottleneck_ratio=self.bottleneck_ratio,
            shuffle=self.shuffle,
            se_ratio=self.se_ratio,
            convention=self.convention,
        )
        shape = tuple(input_shape)
        for role, layer in self._unit.items():
            if role in _BRANCH_ROLES:
                # Built explicitly, so that saved weights load before a call.
                layer.build(shape)
                shape = tuple(layer.compute_output_shape(shape))
        if "se_reduce" in self._unit:
            self._unit["se_reduce"].build((shape[0], 1, 1, shape[-1]))
            self._unit["se_expand"].build((shape[0], 1, 1, self._unit["se_reduce"].filters))
        super().build(input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return apply_unit(self._unit, inputs)

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = list(input_shape)
        if self.strides == 2:
            shape[1:3] = [None if d is None else (d + 1) // 2 for d in shape[1:3]]
        shape[-1] = self.filters
        return tuple(shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "groups": self.groups,
            "strides": self.strides,
            "first_pointwise_grouped": self.first_pointwise_grouped,
            "bottleneck_ratio": self.bottleneck_ratio,
            "shuffle": self.shuffle,
            "se_ratio": self.se_ratio,
            "convention": self.convention,
        }
