"""Cost of a Keras model: MACs, parameters and peak activation memory.

MACs are multiply-accumulates of convolutions and dense layers, which is what
the ShuffleNet and MobileNet papers call "FLOPs" ("the number of
multiplication-adds"). Batch norm, activations, pooling, additions and the
channel shuffle count 0 MACs, as in the papers.

The model is run once, eagerly, on a batch of one zero image while every
leaf layer records its input and output tensors. That works for any Keras
model (functional, sequential, subclassed, with composite layers such as
``ShuffleUnit`` or a nested MobileNet) and gives the execution order that
the peak activation memory needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet.keras_compat import keras


@dataclasses.dataclass
class LayerCost:
    """Cost of one call of a leaf layer."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    macs: int
    params: int


@dataclasses.dataclass(frozen=True)
class Profile:
    """The profile of a model; ``str()`` gives a per-layer table.

    Attributes:
      macs: Multiply-accumulates for one image.
      params: All parameters (trainable and not, e.g. batch-norm statistics).
      trainable_params: Trainable parameters.
      peak_activation_elements: Largest number of activation elements alive
        at once when the layers run in order (inputs and outputs of the
        running layer plus every tensor still needed later).
      layers: One ``LayerCost`` per leaf-layer call, in execution order.
    """

    macs: int
    params: int
    trainable_params: int
    peak_activation_elements: int
    layers: list[LayerCost]

    def peak_activation_bytes(self, bytes_per_element: int = 4) -> int:
        """Peak activation memory in bytes (4 for float32, 1 for int8)."""
        return self.peak_activation_elements * bytes_per_element

    def to_markdown(self) -> str:
        """A markdown table of the layers followed by the totals."""
        lines = ["| layer | type | output shape | MACs | params |", "|---|---|---|---:|---:|"]
        for c in self.layers:
            shape = "x".join(str(d) for d in c.output_shape)
            lines.append(f"| {c.name} | {c.type} | {shape} | {c.macs:,} | {c.params:,} |")
        lines.append(
            f"\nMACs: {self.macs:,} ({self.macs / 1e6:.1f} M); params: {self.params:,} "
            f"(trainable {self.trainable_params:,}); peak activations: "
            f"{self.peak_activation_elements:,} elements "
            f"({self.peak_activation_bytes(4):,} bytes float32, {self.peak_activation_bytes(1):,} bytes int8)"
        )
        return "\n".join(lines)

    __str__ = to_markdown


def _unwrap(layer: Any) -> Any:
    """The layer that does the arithmetic (tfmot wrappers hold it in .layer)."""
    while hasattr(layer, "layer") and isinstance(layer.layer, keras.layers.Layer):
        layer = layer.layer
    return layer


def _layer_macs(layer: Any, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one call, from the layer's kind and shapes."""
    layer = _unwrap(layer)
    L = keras.layers
    spatial_out = math.prod(output_shape[1:-1]) if len(output_shape) > 2 else 1
    if isinstance(layer, L.DepthwiseConv2D) or type(layer).__name__ == "DepthwiseConv1D":
        kernel_volume = math.prod(layer.kernel_size)
        return spatial_out * output_shape[-1] * kernel_volume
    if isinstance(layer, L.SeparableConv2D) or type(layer).__name__ == "SeparableConv1D":
        kernel_volume = math.prod(layer.kernel_size)
        depth = input_shape[-1] * layer.depth_multiplier
        return spatial_out * (depth * kernel_volume + depth * output_shape[-1])
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        groups = getattr(layer, "groups", 1) or 1
        kernel_volume = math.prod(layer.kernel_size)
        if isinstance(layer, (L.Conv2DTranspose, getattr(L, "Conv1DTranspose", ()), L.Conv3DTranspose)):
            spatial_in = math.prod(input_shape[1:-1])
            return spatial_in * input_shape[-1] * kernel_volume * output_shape[-1] // groups
        return spatial_out * output_shape[-1] * kernel_volume * (input_shape[-1] // groups)
    if isinstance(layer, L.Dense):
        return math.prod(input_shape[1:]) * output_shape[-1]
    return 0


def _leaf_layers(model: Any) -> list[Any]:
    leaves = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        children = list(layer._flatten_layers(include_self=False, recursive=False))
        is_wrapper = hasattr(layer, "layer") and isinstance(layer.layer, keras.layers.Layer)
        if not children or is_wrapper:
            leaves.append(layer)
    # A wrapper's inner layer is not called by itself; keep the wrapper only.
    inner = {id(_unwrap(w)) for w in leaves if _unwrap(w) is not w}
    return [layer for layer in leaves if id(layer) not in inner]


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape)


def _flat_tensors(structure: Any) -> list[Any]:
    return [t for t in tf.nest.flatten(structure) if isinstance(t, (tf.Tensor, tf.Variable))]


def profile(model: Any, input_shape: tuple[int, ...] | None = None) -> Profile:
    """Profiles a Keras model: MACs, parameters and peak activation memory.

    Args:
      model: Any built Keras model with one image input.
      input_shape: ``(height, width, channels)`` to profile at; needed only
        when the model's input has unknown dimensions. Defaults to the
        model's input shape.

    Returns:
      A :class:`Profile`; ``str(profile)`` is a per-layer markdown table.

    Raises:
      ValueError: If the input shape is unknown and ``input_shape`` is not given.
    """
    model_shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    shape = tuple(input_shape) if input_shape is not None else model_shape
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            "`input_shape` must be given as (height, width, channels) when the model's input has unknown "
            f"dimensions. Received: input_shape={input_shape!r}, model input shape={model_shape!r}"
        )

    records: list[tuple[Any, list[Any], list[Any]]] = []
    patched = []
    for layer in _leaf_layers(model):
        original = layer.call

        def recording_call(*args: Any, __layer: Any = layer, __call: Any = original, **kwargs: Any) -> Any:
            outputs = __call(*args, **kwargs)
            records.append((__layer, _flat_tensors((args, kwargs)), _flat_tensors(outputs)))
            return outputs

        layer.call = recording_call
        patched.append((layer, original))
    try:
        model(np.zeros((1, *shape), dtype=np.float32), training=False)
    finally:
        for layer, original in patched:
            layer.call = original  # Restores the class method.
            if "call" in vars(layer) and vars(layer)["call"] is original:
                del layer.__dict__["call"]

    layers = []
    for layer, inputs, outputs in records:
        in_shape = _shape(inputs[0]) if inputs else ()
        out_shape = _shape(outputs[0]) if outputs else ()
        layers.append(
            LayerCost(
                name=layer.name,
                type=type(_unwrap(layer)).__name__,
                output_shape=out_shape[1:],
                macs=_layer_macs(layer, in_shape, out_shape),
                params=int(sum(np.prod(w.shape) for w in layer.weights)),
            )
        )
    params = int(sum(np.prod(w.shape) for w in model.weights))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return Profile(
        macs=sum(c.macs for c in layers),
        params=params,
        trainable_params=trainable,
        peak_activation_elements=_peak_elements(records),
        layers=layers,
    )


def _peak_elements(records: list[tuple[Any, list[Any], list[Any]]]) -> int:
    """Peak live activation elements over the recorded execution order."""
    size: dict[int, int] = {}
    last_use: dict[int, int] = {}
    first_def: dict[int, int] = {}
    for step, (_, inputs, outputs) in enumerate(records):
        for t in inputs:
            key = id(t)
            size.setdefault(key, int(np.prod(t.shape[1:])))
            first_def.setdefault(key, -1)  # Produced before the first layer.
            last_use[key] = step
        for t in outputs:
            key = id(t)
            size[key] = int(np.prod(t.shape[1:]))
            first_def.setdefault(key, step)
            last_use.setdefault(key, step)
    final_step = len(records) - 1
    for _, _, outputs in records[-1:]:
        for t in outputs:
            last_use[id(t)] = final_step
    peak = 0
    for step in range(len(records)):
        live = sum(size[k] for k in size if first_def[k] <= step <= last_use[k])
        peak = max(peak, live)
    return peak
