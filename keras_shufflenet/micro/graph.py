"""The export graph: the Keras model rewritten into the layers TFLite should see, on a static batch of 1.

TFLite Micro plans its memory ahead of time and can abort the whole process on
a dynamic shape, so the model is re-instantiated on a ``(1, H, W, C)`` input:
every tensor of the converted graph has a static shape and no
SHAPE/STRIDED_SLICE/PACK arithmetic on the batch size is left behind. Layers
that are faster in Keras are swapped for the ones TFLite runs best, with
identical math (:func:`static_batch_model`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet.keras_compat import keras
from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.micro.qat_objects import qat_scope


def input_shape_of(model: Any) -> tuple[int, int, int]:
    """The static ``(height, width, channels)`` of a single-input image model.

    Raises:
      ValueError: If the model does not have exactly one rank-4 input with
        known height, width and channels.
    """
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ValueError(f"`model` must have exactly one input. Received a model with {len(inputs)} inputs.")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            "`model` must take images of a static size (batch, height, width, channels) for a microcontroller "
            f"export; build it with a full input_shape such as (96, 96, 3). Received input shape: {shape}"
        )
    return tuple(int(d) for d in shape[1:])  # type: ignore[return-value]


def _clone_scope(model: Any) -> Any:
    """Custom objects needed to clone the model (tfmot wrappers after QAT)."""
    if any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        return qat_scope()
    return contextlib.nullcontext()


class DenseAsPointwiseConv(keras.layers.Dense):
    """A Dense layer on ``(batch, features)`` computed as a 1x1 convolution.

    The same arithmetic, lowered to TFLite's CONV_2D instead of
    FULLY_CONNECTED: for per-channel int8 weights, TFLite Micro's
    FULLY_CONNECTED rounds differently from TFLite's reference kernel on some
    inputs (1 LSB), while their CONV_2D kernels agree bit for bit.
    """

    def call(self, inputs: Any) -> Any:
        features = inputs.shape[-1]
        x = tf.reshape(inputs, [-1, 1, 1, features])
        kernel = tf.reshape(self.kernel, [1, 1, features, self.units])
        y = tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        y = tf.reshape(y, [-1, self.units])
        return self.activation(y) if self.activation is not None else y


class PassThrough(keras.layers.Layer):
    """Returns its input: stands, under the same name, for a layer whose work the export moved elsewhere."""

    def call(self, inputs: Any, mask: Any = None, training: Any = None) -> Any:
        return inputs


class PassThroughReLU(PassThrough):
    """A ReLU standing for a folded batch norm that took the ReLU after a concatenation (see :func:`fold_batch_norms`).

    TFLite fuses it into the biased convolution before. It accepts the call
    arguments of the layer it stands for.
    """

    def call(self, inputs: Any, mask: Any = None, training: Any = None) -> Any:
        return tf.nn.relu(inputs)


class BatchNormalizationReLU(keras.layers.BatchNormalization):
    """``BatchNormalization`` followed by a ReLU; TFLite folds both into the preceding convolution."""

    def call(self, inputs: Any, training: Any = None, **kwargs: Any) -> Any:
        return tf.nn.relu(super().call(inputs, training=training, **kwargs))


def _producer(tensor: Any) -> Any:
    return tensor._keras_history[0]


def _input_list(layer: Any) -> list[Any]:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _is_plain_relu(layer: Any) -> bool:
    return (
        type(layer) is keras.layers.ReLU
        and layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def _is_non_negative(layer: Any) -> bool:
    """Whether ``layer``'s output is never negative: a ReLU's, or a pool of such an output."""
    if _is_plain_relu(layer):
        return True
    # Zero padding (the "symmetric" convention) keeps a non-negative input non-negative.
    if isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D, keras.layers.ZeroPadding2D)):
        return _is_non_negative(_producer(layer.input))
    return False


def _consumer_counts(model: Any) -> dict[str, int]:
    """How many layers (and model outputs) read each layer's output, by layer name."""
    consumers: dict[str, int] = {}
    for layer in model.layers:
        for tensor in _input_list(layer) if layer._inbound_nodes else []:
            name = _producer(tensor).name
            consumers[name] = consumers.get(name, 0) + 1
    for tensor in model.outputs:
        consumers[_producer(tensor).name] = consumers.get(_producer(tensor).name, 0) + 1
    return consumers


def relus_through_concats(model: Any) -> tuple[set[str], set[str]]:
    """The ReLUs after a concatenation that the export moves onto the concatenation's inputs.

    ``relu(concat(a, b)) == concat(relu(a), relu(b))``. On an input that is
    already non-negative (a ReLU's output, or a pool of one: the average-pooled
    shortcut of a stride-2 ShuffleNet unit) the ReLU is the identity; after a
    batch norm it joins the batch norm, and TFLite fuses it into the
    convolution before. The converted model then has no standalone RELU:
    TFLite's int8 RELU requantizes element by element outside XNNPACK, and
    costs TFLite Micro instructions for nothing.

    Args:
      model: A functional Keras model.

    Returns:
      ``(names of the ReLU layers to drop, names of the batch norms that take
      their ReLU)``; both empty after quantization-aware training (whose
      fake-quant placement must stay as trained) and for models with shared
      layers.
    """
    if any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        return set(), set()
    if any(len(layer._inbound_nodes) > 1 for layer in model.layers):
        return set(), set()  # A shared layer: its inputs are not one tensor each; leave the graph as it is.
    consumers = _consumer_counts(model)
    dropped: set[str] = set()
    fused: set[str] = set()
    for relu in model.layers:
        if not _is_plain_relu(relu):
            continue
        concat = _producer(relu.input)
        if not isinstance(concat, keras.layers.Concatenate) or consumers.get(concat.name) != 1:
            continue
        takers = []
        for tensor in _input_list(concat):
            source = _producer(tensor)
            if _is_non_negative(source):
                continue
            # A batch norm takes the ReLU; so does one folded away (a PassThrough after a biased conv).
            if isinstance(source, (keras.layers.BatchNormalization, PassThrough)) and consumers.get(source.name) == 1:
                takers.append(source.name)
                continue
            break
        else:
            dropped.add(relu.name)
            fused.update(takers)
    return dropped, fused


def _export_layer(layer: Any, dropped_relus: set[str] = frozenset(), relu_batch_norms: set[str] = frozenset()) -> Any:
    """The layer of the export graph standing for ``layer`` (same config and name)."""
    if isinstance(layer, keras.layers.Lambda):
        return layer  # Stateless; Keras refuses to rebuild a Python lambda from its config.
    config = layer.get_config()
    if layer.name in dropped_relus:
        return PassThrough(name=layer.name)
    if layer.name in relu_batch_norms:
        if isinstance(layer, PassThrough):
            return PassThroughReLU(name=layer.name)
        return BatchNormalizationReLU.from_config(config)
    if type(layer) is PointwiseGroupConv2D:
        # TFLite's grouped CONV_2D, not the training-time matmul lowering.
        return keras.layers.Conv2D.from_config(config)
    inputs = layer.input
    on_features = not isinstance(inputs, (list, tuple)) and len(inputs.shape) == 2
    if type(layer) is keras.layers.Dense and on_features:
        return DenseAsPointwiseConv.from_config(config)
    inner = getattr(layer, "layer", None)
    if type(inner) is keras.layers.Dense and on_features and type(layer).__name__.startswith("QuantizeWrapper"):
        # After QAT: the same fake-quantized kernel, fed to a 1x1 convolution.
        conv = DenseAsPointwiseConv.from_config(inner.get_config())
        return type(layer)(conv, quantize_config=layer.quantize_config, name=layer.name)
    return layer.__class__.from_config(config)


def _folded_weights(conv: Any, batch_norm: Any) -> list[np.ndarray]:
    """``conv`` then ``batch_norm`` (inference statistics) as one conv's ``[kernel, bias]``."""
    weights = iter(batch_norm.get_weights())
    channels = batch_norm.moving_mean.shape[-1]
    gamma = next(weights) if batch_norm.scale else np.ones(channels, np.float32)
    beta = next(weights) if batch_norm.center else np.zeros(channels, np.float32)
    mean, variance = next(weights), next(weights)
    scale = gamma / np.sqrt(variance + batch_norm.epsilon)
    conv_weights = conv.get_weights()
    kernel = conv_weights[0]
    bias = conv_weights[1] if conv.use_bias else np.zeros(channels, np.float32)
    # The output channel is the kernel's last axis, or (depthwise) input channel x multiplier.
    kernel = kernel * scale.reshape(kernel.shape[-2:] if isinstance(conv, keras.layers.DepthwiseConv2D) else (-1,))
    return [kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]


def fold_batch_norms(model: Any) -> Any:
    """A copy of ``model`` with each batch norm after a convolution folded into it, as TFLite's converter does.

    The convolution gains a bias, the batch norm becomes a
    :class:`PassThrough` of the same name, and the outputs are those of the
    model in inference mode. Weight clustering uses it so that the weights it
    clusters are the ones the int8 model stores: clustered before folding,
    each output channel's batch-norm scale would multiply its shared values
    into values of its own.

    Args:
      model: A functional Keras model (Keras 3 or tf_keras).

    Returns:
      The folded copy (``model`` is not changed).
    """
    consumers = _consumer_counts(model)
    folds: dict[str, Any] = {}  # Conv name -> its batch norm.
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or not layer._inbound_nodes:
            continue
        conv = _producer(layer.input)
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        last_axis = axis in (-1, len(layer.input.shape) - 1)
        if isinstance(conv, keras.layers.Conv2D | keras.layers.DepthwiseConv2D) and consumers.get(conv.name) == 1:
            if last_axis and getattr(conv, "data_format", "channels_last") == "channels_last":
                folds[conv.name] = layer
    folded_norms = {norm.name for norm in folds.values()}

    def fold(layer: Any) -> Any:
        if layer.name in folded_norms:
            return PassThrough(name=layer.name)
        if layer.name in folds:
            return layer.__class__.from_config({**layer.get_config(), "use_bias": True})
        if isinstance(layer, keras.layers.Lambda):
            return layer
        return layer.__class__.from_config(layer.get_config())

    with _clone_scope(model):
        folded = keras.models.clone_model(model, clone_function=fold)
    for layer in folded.layers:
        if layer.name in folds:
            layer.set_weights(_folded_weights(model.get_layer(layer.name), folds[layer.name]))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded


def clone_with_weights(model: Any, clone_function: Callable[[Any], Any], input_tensors: Any = None) -> Any:
    """``keras.models.clone_model(model, ...)`` with every layer's weights copied by layer name.

    Args:
      model: A functional Keras model.
      clone_function: Returns the layer that stands for each layer of ``model``
        (with the same name, and weights of the same shapes).
      input_tensors: New inputs for the clone; `None` keeps the model's.

    Returns:
      The clone, with the weights of ``model``.
    """
    clone = keras.models.clone_model(model, input_tensors=input_tensors, clone_function=clone_function)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def static_batch_model(model: Any, move_relus: bool = True) -> Any:
    """Re-instantiates ``model`` on a ``(1, H, W, C)`` input and copies its weights layer by layer.

    The layers TFLite should see replace those that are faster in Keras, with
    identical math: Dense classifiers become :class:`DenseAsPointwiseConv`
    and :class:`~keras_shufflenet.layers.PointwiseGroupConv2D` becomes a
    grouped ``Conv2D`` (TFLite's grouped CONV_2D). A ReLU after a
    concatenation moves onto its inputs (:func:`relus_through_concats`).

    Args:
      model: A functional Keras model (Keras 3 or tf_keras) with one image input.
      move_relus: Move ReLUs through concatenations; `False` keeps each ReLU
        after its concatenation (to measure what the move saves). Defaults to `True`.

    Returns:
      A model with the same layers, names and weights whose every tensor has a
      static shape with batch 1.
    """
    height, width, channels = input_shape_of(model)
    input_name = model.inputs[0].name.split(":")[0]

    def input_tensors() -> Any:
        image = keras.Input(batch_shape=(1, height, width, channels), name=input_name)
        # Models built on an `input_tensor` take a list of one input.
        return [image] if isinstance(model.input, (list, tuple)) else image

    with _clone_scope(model):
        static = clone_with_weights(model, _export_layer, input_tensors())
        # Read the graph on the fresh copy: there every layer has one inbound node, even
        # where the caller's layers were reused by another model (tfmot's clone_model does that).
        dropped_relus, relu_batch_norms = relus_through_concats(static) if move_relus else (set(), set())
        if dropped_relus:
            static = clone_with_weights(
                static, lambda layer: _export_layer(layer, dropped_relus, relu_batch_norms), input_tensors()
            )
    return static
