"""ShuffleNet lowered one group at a time: no grouped convolution and no transpose left in the export graph.

TFLite Micro's optimized kernels (CMSIS-NN) run a grouped 1x1 CONV_2D through
the generic im2col path, which costs 2-3x the instructions per MAC of their
plain 1x1 path at the small per-group depths of ShuffleNet (10-40 input
channels at 0.5x), and the channel shuffle is a TRANSPOSE that copies every
activation byte. This module rewrites a ShuffleNet into the same function
made only of plain 1x1 convolutions:

* Between units the activations are kept as ``groups`` tensors, one per
  group of the next grouped convolution, so a group convolution is one plain
  CONV_2D per group and the residual ADD is one per group.
* The channel shuffle disappears into the wiring. Group ``h`` of the second
  pointwise convolution reads shuffled channels ``[h*n, (h+1)*n)``; each of
  them comes from one group ``i`` of the first pointwise convolution, and
  for a fixed ``(i, h)`` they form a contiguous run of that group's outputs.
  So the first convolution of group ``i`` is emitted as one CONV_2D per
  destination ``h`` (its output columns for that run), and group ``h``'s
  input is the CONCATENATION of those pieces. The depthwise convolution and
  the second pointwise convolution take their weights in the same
  (permuted) channel order.
* A stride-2 unit's output (pooled shortcut, then branch) is cut at the
  next unit's group boundaries: each branch piece is its own CONV_2D, and
  each group tensor the CONCATENATION of its pieces.

Batch norms are split with their convolutions (TFLite folds each into its
CONV_2D) and ReLUs follow their batch norm or the ADD, where TFLite fuses
them. The weights are the model's, column for column: per-channel int8
quantization gives each output channel the same scale as in the grouped
graph. Only the activation scales may differ, because each group tensor is
calibrated on its own.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from keras_shufflenet.keras_compat import keras

_UNIT_PREFIX = re.compile(r"^(stage\d+_unit\d+)_gconv1$")


def _layer(model: Any, name: str) -> Any | None:
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _unit_prefixes(model: Any) -> list[str]:
    return [m.group(1) for layer in model.layers if (m := _UNIT_PREFIX.match(layer.name))]


def _kernel(layer: Any) -> np.ndarray:
    return layer.get_weights()[0]


def _bn_weights(bn: Any, channels: list[int]) -> list[np.ndarray]:
    """``[gamma, beta, moving_mean, moving_variance]`` of ``bn`` at ``channels``."""
    params = [bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance]
    return [np.asarray(p.numpy())[channels] for p in params]


class _Builder:
    """Emits the lowered layers; every name derives from the model's layer it stands for."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def conv_bn(self, x: Any, conv: Any, bn: Any, columns: list[int], relu: bool, suffix: str) -> Any:
        """A plain 1x1 CONV_2D with ``conv``'s output ``columns`` (group-local kernel rows), then their batch norm."""
        kernel = _kernel(conv)[..., columns]
        layer = keras.layers.Conv2D(len(columns), 1, use_bias=False, name=f"{conv.name}_{suffix}")
        x = layer(x)
        layer.set_weights([kernel])
        return self.bn(x, bn, columns, relu, suffix)

    def bn(self, x: Any, bn: Any, channels: list[int], relu: bool, suffix: str) -> Any:
        layer = keras.layers.BatchNormalization(epsilon=bn.epsilon, name=f"{bn.name}_{suffix}")
        x = layer(x)
        layer.set_weights(_bn_weights(bn, channels))
        return keras.layers.ReLU(name=f"{bn.name}_{suffix}_relu")(x) if relu else x

    @staticmethod
    def concat(pieces: list[Any], name: str) -> Any:
        return pieces[0] if len(pieces) == 1 else keras.layers.Concatenate(name=name)(pieces)


def _runs(total: int, bounds: list[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` runs of ``range(total)`` cut at ``bounds``."""
    cuts = sorted({0, total, *(b for b in bounds if 0 < b < total)})
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _unit(builder: _Builder, prefix: str, groups_in: list[Any], out_groups: int) -> list[Any]:
    """One ShuffleNet unit on its input groups; returns the output as ``out_groups`` tensors."""
    m = builder.model
    gconv1, gconv2 = m.get_layer(f"{prefix}_gconv1"), m.get_layer(f"{prefix}_gconv2")
    dwconv = m.get_layer(f"{prefix}_dwconv")
    shuffle = m.get_layer(f"{prefix}_shuffle")
    g = shuffle.groups
    bottleneck = int(gconv1.filters)
    n = bottleneck // g  # channels per group of the bottleneck
    branch = int(gconv2.filters)
    branch_per_group = branch // g
    stride = int(dwconv.strides[0])
    in_channels = sum(int(t.shape[-1]) for t in groups_in)
    g1 = int(gconv1.groups)

    # Shuffled channel c = j * g + i is channel j of first-conv group i (x index i * n + j).
    # Group h of the second conv reads shuffled channels [h * n, (h + 1) * n), here in block order by i.
    dw_inputs = []
    for h in range(g):
        shuffled = list(range(h * n, (h + 1) * n))
        by_source = [[c for c in shuffled if c % g == i] for i in range(g)]
        order = [c for run in by_source for c in run]
        if g1 == 1:  # a dense first conv (Stage 2's first unit): one conv yields the whole group
            (x,) = groups_in
            columns = [(c % g) * n + c // g for c in order]
            piece = builder.conv_bn(x, gconv1, m.get_layer(f"{prefix}_gconv1_bn"), columns, True, f"to{h}")
            dw_inputs.append((piece, order))
            continue
        pieces = []
        for i, run in enumerate(by_source):
            if not run:
                continue
            local = [c // g for c in run]  # group-local output columns of first-conv group i
            columns = [i * n + j for j in local]  # Keras indexes a grouped kernel's outputs globally
            pieces.append(
                builder.conv_bn(groups_in[i], gconv1, m.get_layer(f"{prefix}_gconv1_bn"), columns, True, f"g{i}to{h}")
            )
        dw_inputs.append((builder.concat(pieces, f"{prefix}_shuffle_to{h}"), order))

    branch_groups = []
    for h, (x, order) in enumerate(dw_inputs):
        dw = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{dwconv.name}_g{h}")
        x = dw(x)
        dw.set_weights([dwconv.get_weights()[0][:, :, order, :]])
        x = builder.bn(x, m.get_layer(f"{prefix}_dwconv_bn"), order, False, f"g{h}")
        branch_groups.append((x, [c - h * n for c in order]))

    gconv2_kernel = _kernel(gconv2)
    gconv2_bn = m.get_layer(f"{prefix}_gconv2_bn")

    def second_conv(h: int, start: int, end: int, relu: bool, suffix: str) -> Any:
        """Output channels [start, end) of second-conv group h (global column indices)."""
        x, rows = branch_groups[h]
        columns = list(range(start, end))
        layer = keras.layers.Conv2D(len(columns), 1, use_bias=False, name=f"{gconv2.name}_{suffix}")
        y = layer(x)
        layer.set_weights([gconv2_kernel[:, :, rows, :][..., columns]])
        return builder.bn(y, gconv2_bn, columns, relu, suffix)

    if stride == 1:
        if len(groups_in) != g or in_channels != branch:
            raise ValueError(f"{prefix}: a stride-1 unit needs {g} input groups of {branch // g} channels.")
        outputs = []
        for h in range(g):
            y = second_conv(h, h * branch_per_group, (h + 1) * branch_per_group, False, f"g{h}")
            x = keras.layers.Add(name=f"{prefix}_add_g{h}")([groups_in[h], y])
            outputs.append(keras.layers.ReLU(name=f"{prefix}_relu_g{h}")(x))
        return outputs

    # Stride 2: concat(avgpool(input), relu(branch)), cut at the next unit's group boundaries.
    pool = m.get_layer(f"{prefix}_shortcut_pool")
    out_channels = in_channels + branch
    per_out = out_channels // out_groups
    bounds = [k * per_out for k in range(out_groups + 1)]
    segments: list[tuple[int, int, Any]] = []  # (global start, global end, tensor)
    start = 0
    for i, x in enumerate(groups_in):
        width = int(x.shape[-1])
        pooled = keras.layers.AveragePooling2D(3, strides=2, padding="same", name=f"{pool.name}_g{i}")(x)
        runs = _runs(width, [b - start for b in bounds])
        if len(runs) == 1:
            segments.append((start, start + width, pooled))
        else:
            parts = keras.layers.Lambda(
                lambda t, sizes=[e - s for s, e in runs]: _split(t, sizes), name=f"{pool.name}_g{i}_split"
            )(pooled)
            for (s, e), part in zip(runs, parts, strict=True):
                segments.append((start + s, start + e, part))
        start += width
    for h in range(g):
        base = in_channels + h * branch_per_group
        for s, e in _runs(branch_per_group, [b - base for b in bounds]):
            y = second_conv(h, h * branch_per_group + s, h * branch_per_group + e, True, f"g{h}_{s}_{e}")
            segments.append((base + s, base + e, y))
    outputs = []
    for k in range(out_groups):
        pieces = [t for s, e, t in segments if bounds[k] <= s and e <= bounds[k + 1]]
        outputs.append(builder.concat(pieces, f"{prefix}_concat_g{k}"))
    return outputs


def _split(t: Any, sizes: list[int]) -> Any:
    import tensorflow as tf

    return tf.split(t, sizes, axis=-1)


def _chain_after(model: Any, layer: Any) -> list[Any] | None:
    """The layers from ``layer`` (excluded) to the model's output, or `None` if they are not a single chain."""
    layers = list(model.layers)
    chain = layers[layers.index(layer) + 1 :]
    previous = layer
    for current in chain:
        inputs = _flat_inputs(current)
        if len(inputs) != 1 or _producer_of(inputs[0]) is not previous:
            return None
        previous = current
    return chain if _producer_of(model.outputs[0]) is previous else None


def _producer_of(tensor: Any) -> Any:
    return tensor._keras_history[0]


def _flat_inputs(layer: Any) -> list[Any]:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _clone(layer: Any, x: Any) -> Any:
    copy = layer.__class__.from_config(layer.get_config())
    y = copy(x)
    if layer.weights:
        copy.set_weights(layer.get_weights())
    return y


def split_groups(model: Any) -> Any | None:
    """The model lowered one group at a time (see the module docstring), or `None` when it is not a ShuffleNet.

    Args:
      model: A static-batch export model (:func:`~keras_shufflenet.micro.graph.static_batch_model`
        with ``move_relus=False``) of a network built by :func:`keras_shufflenet.ShuffleNet` with the
        channel shuffle on.

    Returns:
      A functional model computing the same function, or `None` when the
      model does not have ShuffleNet's units (other architectures, a
      ShuffleNet without shuffle, quantization-aware wrappers).
    """
    prefixes = _unit_prefixes(model)
    if not prefixes or any(
        type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers
    ):
        return None
    roles = ("gconv1_bn", "gconv1_relu", "shuffle", "dwconv", "dwconv_bn", "gconv2", "gconv2_bn", "relu")
    if any(_layer(model, f"{p}_{r}") is None for p in prefixes for r in roles):
        return None
    groups = model.get_layer(f"{prefixes[0]}_shuffle").groups
    if groups < 2:
        return None
    first_gconv1 = model.get_layer(f"{prefixes[0]}_gconv1")
    stem = _flat_inputs(first_gconv1)[0]
    last_relu = model.get_layer(f"{prefixes[-1]}_relu")
    head = _chain_after(model, last_relu)
    if head is None or len(model.outputs) != 1:
        return None

    image = keras.Input(batch_shape=tuple(model.inputs[0].shape), name=model.inputs[0].name.split(":")[0])
    stem_chain = []
    layer = _producer_of(stem)
    while not isinstance(layer, keras.layers.InputLayer):
        stem_chain.append(layer)
        inputs = _flat_inputs(layer)
        if len(inputs) != 1:
            return None
        layer = _producer_of(inputs[0])
    x = image
    for layer in reversed(stem_chain):
        x = _clone(layer, x)

    builder = _Builder(model)
    groups_in: list[Any] = [x]
    for prefix in prefixes:
        groups_in = _unit(builder, prefix, groups_in, groups)
    x = builder.concat(groups_in, f"{prefixes[-1]}_concat")
    for layer in head:
        x = _clone(layer, x)
    return keras.Model(image, x, name=model.name)
