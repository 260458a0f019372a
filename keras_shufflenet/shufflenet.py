"""ShuffleNet v1 builder with the keras.applications conventions.

Reference:
  - [ShuffleNet: An Extremely Efficient Convolutional Neural Network for
    Mobile Devices](https://arxiv.org/abs/1707.01083) (CVPR 2018)
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np

from keras_shufflenet import architecture
from keras_shufflenet import weights as official_weights
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.layers import apply_unit, batch_norm, unit_layers

_POOLING = (None, "avg", "max")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")


def _resolve_input_shape(
    input_shape: Any, input_tensor: Any, output_stride: int, include_top: bool
) -> tuple[Any, Any, Any]:
    """Returns (H, W, C) from the arguments; when neither is given, 224x224x3 (any size without the top)."""
    if input_tensor is not None:
        shape = tuple(input_tensor.shape)
        if len(shape) != 4:
            raise ValueError(f"`input_tensor` must have rank 4 (batch, H, W, C). Received shape: {shape}")
        shape = shape[1:]
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(f"`input_shape` {tuple(input_shape)} does not match the shape of `input_tensor` {shape}.")
    elif input_shape is None:
        # As keras.applications: a classifier's default input is 224x224; a backbone takes any size.
        shape = (224, 224, 3) if include_top else (None, None, 3)
    else:
        shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels). Received: input_shape={shape}")
    height, width, channels = shape
    for name, size in (("height", height), ("width", width)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))):
            raise ValueError(f"`input_shape` {name} must be None or an integer. Received: input_shape={shape}")
        if size is not None and size < output_stride:
            raise ValueError(
                f"`input_shape` {name} must be None or >= {output_stride}: with output_stride={output_stride} "
                f"({architecture.describe_stem(output_stride)}) a {size}-pixel side leaves a final feature map "
                f"smaller than 1x1. Received: input_shape={shape}; use a larger input or a smaller output_stride "
                f"(one of {architecture.OUTPUT_STRIDES})."
            )
    if channels is None or channels < 1:
        raise ValueError(f"`input_shape` must have a known channel count >= 1. Received: input_shape={shape}")
    return shape


def ShuffleNet(
    include_top: bool = True,
    weights: str | None = None,
    input_tensor: Any = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    groups: int | None = None,
    scale_factor: float | None = None,
    shuffle: bool = True,
    stem_channels: int | None = None,
    output_stride: int = architecture.DEFAULT_OUTPUT_STRIDE,
    shallow: bool = False,
    squeeze_excite: bool = False,
    se_ratio: int = architecture.SE_RATIO,
    convention: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Instantiates the ShuffleNet v1 architecture.

    Reference:
      - [ShuffleNet: An Extremely Efficient Convolutional Neural Network for
        Mobile Devices](https://arxiv.org/abs/1707.01083) (CVPR 2018)

    The network follows Table 1 of the paper: conv1 3x3/2 -> max pool 3x3/2
    -> Stages 2, 3, 4 of 4, 8, 4 ShuffleNet units (the first of each with
    stride 2) -> global average pool -> classifier. The first pointwise
    convolution of Stage 2 is not grouped. For small images,
    ``output_stride`` 16 drops the max pool and 8 also runs conv1 at stride
    1 (:data:`keras_shufflenet.architecture.STEM_LAYOUTS`). ``shallow`` and
    ``squeeze_excite`` build Table 5's variants. Widths are Table 1's times
    ``scale_factor``, rounded to multiples of ``4 * groups``
    (:func:`keras_shufflenet.architecture.stage_out_channels`); conv1 follows
    the official implementation (:func:`~keras_shufflenet.architecture.stem_channels`).

    Every unit is built from plain Keras layers with deterministic names
    (``stage3_unit2_gconv1``, ``stage3_unit2_dwconv_bn``, ...), so weights
    line up across runs and tensorflow-model-optimization can prune and
    quantize it layer by layer.

    The model expects inputs processed by
    :func:`keras_shufflenet.preprocess_input` (pixels scaled to [-1, 1]).

    Args:
      include_top: Whether to include the global pool and the classifier.
        Defaults to `True`.
      weights: `None` (random initialization), the path to a weights file
        saved with ``model.save_weights``, or the path to an official
        ShuffleNet v1 ImageNet checkpoint (megvii-model/ShuffleNet-Series,
        ``.pth.tar``; see :mod:`keras_shufflenet.weights`). A checkpoint sets
        ``convention="official"`` and takes ``scale_factor`` and ``groups``
        from its shapes: arguments that differ from it are an error. Its
        classifier loads with ``include_top=True`` and ``classes`` equal to
        the checkpoint's (1000 for ImageNet); with ``include_top=False`` only
        the backbone loads.
        Defaults to `None`.
      input_tensor: Optional Keras tensor (output of ``keras.Input()``) to use
        as the image input. Defaults to `None`.
      input_shape: ``(height, width, channels)``; height and width may be
        `None` or any size >= ``output_stride``, channels any count >= 1. Defaults to
        ``(224, 224, 3)``, or ``(None, None, 3)`` with ``include_top=False``
        (as ``keras.applications``).
      pooling: With ``include_top=False``: `None` (4D feature map), ``"avg"``
        or ``"max"`` global pooling. Defaults to `None`.
      classes: Number of classes for the classifier. Defaults to `1000`.
      classifier_activation: Activation of the classifier; `None` returns
        logits. Defaults to `"softmax"`.
      groups: Groups of the pointwise convolutions, one of 1, 2, 3, 4, 8.
        Defaults to `3`, or the checkpoint's with an official checkpoint.
      scale_factor: Width multiplier "s x" of the paper, finite and at least
        :func:`keras_shufflenet.architecture.min_scale_factor` (0.033-0.093
        by groups; below it the stage widths stop growing).
        Defaults to `1.0`, or the checkpoint's with an official checkpoint.
      shuffle: Whether to shuffle channels (off reproduces Table 3's
        ablation). Defaults to `True`.
      stem_channels: Width of conv1; `None` applies the documented rule.
        Defaults to `None`.
      output_stride: Input size over the final feature map's size: 32 (the
        paper's stem), 16 (no max pool) or 8 (no max pool, conv1 at stride
        1). The smaller, the larger the feature maps and the MACs (about 4x
        per halving). Inputs must be at least ``output_stride`` pixels a
        side. Defaults to `32`.
      shallow: Sec. 4.2's shallow network (26 layers: 2, 4, 2 units) at
        sqrt(2) times the widths, which keeps the complexity of the deep
        network at the same ``scale_factor`` (0.5x g3: 40 MFLOPs). Defaults
        to `False`.
      squeeze_excite: Squeeze-and-excitation on every unit's branch
        (Table 5: 2x g3 with SE, 527 MFLOPs). Defaults to `False`.
      se_ratio: Reduction ratio of the squeeze-and-excitation blocks, an
        integer >= 1 that leaves at least one channel. Defaults to `16`.
      convention: How the network computes, a key of
        :data:`keras_shufflenet.architecture.CONVENTIONS`. ``"paper"``: TF's
        "same" padding and the paper's shuffle after the first pointwise
        conv. ``"official"``: the official implementation's function, which
        its checkpoints need: one pixel of zero padding on every side of the
        stride-2 3x3 convolutions and pools (the average-pool shortcut counts
        it), and the shuffle after the depthwise conv's batch norm, in the
        official order (:class:`keras_shufflenet.ChannelShuffle`). Defaults
        to `"paper"`, or `"official"` with an official checkpoint.
      name: Model name. Defaults to ``"shufflenet_{scale}x_g{groups}"``.

    Returns:
      A `keras.Model`.

    Raises:
      ValueError: For any invalid argument, naming it and the value received.
    """
    checkpoint = None
    if weights is not None and isinstance(weights, (str, os.PathLike)) and _is_torch_checkpoint(weights):
        checkpoint, groups, scale_factor, convention = _resolve_checkpoint(
            weights, groups, scale_factor, convention, stem_channels
        )
    groups = 3 if groups is None else groups
    scale_factor = 1.0 if scale_factor is None else scale_factor
    convention = architecture.DEFAULT_CONVENTION if convention is None else convention
    groups = _check_arguments(
        include_top=include_top,
        weights=weights,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        groups=groups,
        scale_factor=scale_factor,
        stem_channels=stem_channels,
        output_stride=output_stride,
        shallow=shallow,
        squeeze_excite=squeeze_excite,
        se_ratio=se_ratio,
        convention=convention,
    )
    shape = _resolve_input_shape(input_shape, input_tensor, output_stride, include_top)
    spec = architecture.network_spec(
        groups,
        scale_factor,
        stem_channels,
        output_stride=output_stride,
        shallow=shallow,
        se_ratio=int(se_ratio) if squeeze_excite else 0,
    )
    if spec.stem_channels >= spec.stage_out_channels[0]:
        raise ValueError(
            f"`stem_channels` must be below Stage 2's width ({spec.stage_out_channels[0]}), which the first unit "
            f"extends by concatenation. Received: stem_channels={spec.stem_channels}"
        )

    if input_tensor is None:
        img_input = keras.Input(shape=shape, name="image")
    elif _is_keras_tensor(input_tensor):
        img_input = input_tensor
    else:
        img_input = keras.Input(tensor=input_tensor, shape=shape, name="image")

    x = _stem(img_input, spec, convention)
    for unit in spec.units:
        layers = unit_layers(
            unit.name,
            in_channels=unit.in_channels,
            filters=unit.filters,
            groups=unit.groups,
            strides=unit.strides,
            first_pointwise_grouped=unit.first_pointwise_grouped,
            bottleneck_ratio=architecture.BOTTLENECK_RATIO,
            shuffle=shuffle,
            se_ratio=spec.se_ratio,
            convention=convention,
        )
        x = apply_unit(layers, x)

    x = _head(x, include_top, pooling, classes, classifier_activation)
    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    if name is None:
        name = f"shufflenet_{scale_factor:g}x_g{groups}"
        name += "_shallow" * shallow + "_se" * squeeze_excite
        name += f"_os{output_stride}" if output_stride != architecture.DEFAULT_OUTPUT_STRIDE else ""
    model = keras.Model(inputs, x, name=name)
    if checkpoint is not None:
        official_weights.load_official_weights(model, checkpoint)
    elif weights is not None:
        _load_weights(model, os.fspath(weights), convention)
    return model


def _stem(img_input: Any, spec: architecture.NetworkSpec, convention: str) -> Any:
    """conv1 (+ batch norm, ReLU) and the max pool, as ``spec``'s output stride and ``convention`` ask."""
    L = keras.layers
    # "symmetric": one pixel of zeros on every side, then "valid" (PyTorch's padding=1).
    # A stride-1 3x3 "same" window is symmetric already.
    symmetric = architecture.CONVENTIONS[convention].padding == "symmetric"
    x = img_input
    if symmetric and spec.conv1_strides == 2:
        x = L.ZeroPadding2D(1, name="conv1_pad")(x)
    x = L.Conv2D(
        spec.stem_channels,
        3,
        strides=spec.conv1_strides,
        padding="valid" if symmetric and spec.conv1_strides == 2 else "same",
        use_bias=False,
        kernel_initializer="he_normal",
        name="conv1",
    )(x)
    x = batch_norm("conv1_bn")(x)
    x = L.ReLU(name="conv1_relu")(x)
    if spec.max_pool and symmetric:
        # Zeros stand for PyTorch's -inf padding: after the ReLU no value is below 0.
        x = L.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = L.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    elif spec.max_pool:
        x = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(x)
    return x


def _head(x: Any, include_top: bool, pooling: str | None, classes: int, classifier_activation: Any) -> Any:
    """The global pool and classifier (``include_top``), or the optional global pooling of the features."""
    L = keras.layers
    if include_top:
        x = L.GlobalAveragePooling2D(name="global_pool")(x)
        x = L.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = L.GlobalAveragePooling2D(name="global_pool")(x)
    elif pooling == "max":
        x = L.GlobalMaxPooling2D(name="global_pool")(x)
    return x


def _check_arguments(
    *,
    include_top: bool,
    weights: Any,
    pooling: Any,
    classes: Any,
    classifier_activation: Any,
    groups: Any,
    scale_factor: Any,
    stem_channels: Any,
    output_stride: Any,
    shallow: Any,
    squeeze_excite: Any,
    se_ratio: Any,
    convention: Any,
) -> int:
    """Checks :func:`ShuffleNet`'s arguments (defaults resolved); returns ``groups`` as an int.

    Raises:
      ValueError: Naming the first bad argument and the value received.
    """
    if (
        isinstance(groups, bool)
        or not isinstance(groups, (int, np.integer))
        or groups not in architecture.ALLOWED_GROUPS
    ):
        raise ValueError(f"`groups` must be one of {architecture.ALLOWED_GROUPS}. Received: groups={groups!r}")
    groups = int(groups)
    if (
        isinstance(scale_factor, bool)
        or not isinstance(scale_factor, (int, float, np.floating, np.integer))
        or not math.isfinite(scale_factor)
        or not scale_factor > 0
    ):
        raise ValueError(f"`scale_factor` must be a finite number > 0. Received: scale_factor={scale_factor!r}")
    minimum_scale = architecture.min_scale_factor(groups)
    if scale_factor < minimum_scale:
        raise ValueError(
            f"`scale_factor` must be >= {minimum_scale:g} with groups={groups}: below it the stage widths stop "
            f"growing (each is rounded to a multiple of 4 * groups) and the stride-2 units have no branch. "
            f"Received: scale_factor={scale_factor!r}"
        )
    if weights is not None and not (isinstance(weights, (str, os.PathLike)) and os.path.exists(weights)):
        raise ValueError(
            "`weights` must be None (random initialization) or the path to an existing weights file. "
            f"Received: weights={weights!r}"
        )
    _check_positive_int("classes", classes)
    if pooling not in _POOLING:
        raise ValueError(f"`pooling` must be one of {_POOLING}. Received: pooling={pooling!r}")
    if stem_channels is not None:
        _check_positive_int("stem_channels", stem_channels)
        if stem_channels % groups:
            raise ValueError(
                f"`stem_channels` must be a multiple of `groups` ({groups}). Received: stem_channels={stem_channels}"
            )
    if include_top and classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise ValueError(
                "`classifier_activation` must be None, a Keras activation name (e.g. 'softmax') or a callable. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from None
    if isinstance(output_stride, bool) or output_stride not in architecture.OUTPUT_STRIDES:
        raise ValueError(
            f"`output_stride` must be one of {architecture.OUTPUT_STRIDES}. Received: output_stride={output_stride!r}"
        )
    for flag_name, flag in (("shallow", shallow), ("squeeze_excite", squeeze_excite)):
        if not isinstance(flag, bool):
            raise ValueError(f"`{flag_name}` must be True or False. Received: {flag_name}={flag!r}")
    if squeeze_excite:
        _check_positive_int("se_ratio", se_ratio)
    if convention not in architecture.CONVENTIONS:
        raise ValueError(
            f"`convention` must be one of {tuple(architecture.CONVENTIONS)}. Received: convention={convention!r}"
        )
    return groups


def _is_torch_checkpoint(path: str | os.PathLike[str]) -> bool:
    return official_weights.is_torch_checkpoint(path)


def _resolve_checkpoint(
    path: str | os.PathLike[str],
    groups: int | None,
    scale_factor: float | None,
    convention: str | None,
    stem_channels: int | None,
) -> tuple[Any, int, float, str]:
    """Reads an official checkpoint; returns it with the groups, scale and convention it fixes.

    Raises:
      ValueError: If the file is not a usable checkpoint, or an argument
        given differs from the checkpoint's configuration (naming both).
    """
    try:
        checkpoint = official_weights.read_official_checkpoint(path)
    except official_weights.CheckpointError as error:
        raise ValueError(f"`weights`: {error}") from None
    given = {"groups": groups, "scale_factor": scale_factor, "convention": convention, "stem_channels": stem_channels}
    fixed = {
        "groups": checkpoint.groups,
        "scale_factor": checkpoint.scale_factor,
        "convention": "official",
        "stem_channels": architecture.stem_channels(checkpoint.groups, checkpoint.scale_factor),
    }
    for argument, value in given.items():
        expected = fixed[argument]
        same = value == expected if not isinstance(value, float) else math.isclose(value, expected)
        if value is not None and not same:
            raise ValueError(
                f"`{argument}`={value!r} does not match the checkpoint `weights`={os.fspath(path)!r}, which is "
                f"ShuffleNet v1 {checkpoint.describe()} and needs {argument}={expected!r}; omit `{argument}` to "
                "take it from the checkpoint."
            )
    return checkpoint, checkpoint.groups, checkpoint.scale_factor, "official"


def _load_weights(model: keras.Model, path: str, convention: str) -> None:
    """``model.load_weights(path)``, with an error that names the file and the configuration on a mismatch."""
    recorded = official_weights.recorded_convention(path)
    if recorded is not None and recorded != convention:
        raise ValueError(
            f"`weights` file {path!r} was converted for convention={recorded!r} and the model is built with "
            f"convention={convention!r}, which computes another function with the same shapes. Build it with "
            f"convention={recorded!r}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns once per mismatched layer before it raises.
            model.load_weights(path)
    except Exception as error:  # noqa: BLE001  (h5py, Keras and TensorFlow raise different types)
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`weights` file {path!r} does not fit the model {model.name!r} (groups, scale_factor, "
            "stem_channels, shallow, squeeze_excite, classes and include_top must be those it was saved with; "
            "the file must be a Keras weights file, e.g. from model.save_weights('x.weights.h5')). "
            f"Loading it failed with: {first_line}"
        ) from None


def _is_keras_tensor(tensor: Any) -> bool:
    is_keras_tensor = getattr(keras.backend, "is_keras_tensor", None) or keras.utils.is_keras_tensor
    try:
        return bool(is_keras_tensor(tensor))
    except ValueError:
        return False


def preprocess_input(x: Any, data_format: str | None = None) -> Any:
    """Scales pixels from [0, 255] to [-1, 1], as the training pipeline does.

    Args:
      x: A float or integer array or tensor of images with values in
        [0, 255], any number of channels.
      data_format: Unused; accepted for keras.applications compatibility.

    Returns:
      ``x / 127.5 - 1`` as float32.
    """
    del data_format
    if isinstance(x, np.ndarray):
        return x.astype(np.float32) / 127.5 - 1.0
    import tensorflow as tf  # Tensors only: numpy input needs no TensorFlow.

    return tf.cast(x, tf.float32) / 127.5 - 1.0
