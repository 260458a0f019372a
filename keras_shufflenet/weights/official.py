"""The official ShuffleNet v1 checkpoints: their key names and shapes, and their mapping onto the Keras model.

The official implementation (megvii-model/ShuffleNet-Series, ``ShuffleNetV1``)
saves ``{'state_dict': model.state_dict()}`` from an ``nn.DataParallel``
model, so every key starts with ``module.``:

* ``first_conv.0`` conv 3x3/2, ``first_conv.1`` its batch norm;
* ``features.<k>`` the k-th unit over Stages 2-4: ``branch_main_1.0`` the
  first 1x1 (group) conv, ``.1`` its batch norm, ``.3`` the depthwise 3x3,
  ``.4`` its batch norm; ``branch_main_2.0`` the second 1x1 group conv,
  ``.1`` its batch norm;
* ``classifier.0`` a ``Linear`` without bias.

Convolutions are ``(out, in / groups, kh, kw)``; Keras wants
``(kh, kw, in / groups, out)`` (depthwise: ``(kh, kw, channels, 1)``) and
``Dense`` ``(in, out)``. Batch norms carry ``weight, bias, running_mean,
running_var`` (and ``num_batches_tracked``, unused).

This module imports neither TensorFlow nor Keras; :func:`layer_weights`
returns arrays by Keras layer name.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from keras_shufflenet import architecture
from keras_shufflenet.weights.reader import CheckpointError

DATA_PARALLEL_PREFIX = "module."
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
# Batch-norm counter the official code never reads back.
IGNORED_SUFFIX = "num_batches_tracked"
# Keras role -> official sub-module, per unit.
UNIT_MODULES = {
    "gconv1": "branch_main_1.0",
    "gconv1_bn": "branch_main_1.1",
    "dwconv": "branch_main_1.3",
    "dwconv_bn": "branch_main_1.4",
    "gconv2": "branch_main_2.0",
    "gconv2_bn": "branch_main_2.1",
}
# Official parameter counts (ShuffleNetV1/README.md, in millions, rounded to 0.1M).
OFFICIAL_PARAMS_M: dict[tuple[float, int], float] = {
    (0.5, 3): 0.7,
    (1.0, 3): 1.9,
    (1.5, 3): 3.4,
    (2.0, 3): 5.4,
    (0.5, 8): 1.0,
    (1.0, 8): 2.4,
    (1.5, 8): 4.3,
    (2.0, 8): 6.5,
}


def _bn_shapes(module: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{module}.{suffix}": (channels,) for suffix in BN_SUFFIXES}


def official_modules(spec: architecture.NetworkSpec) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (official module, kind) for a network spec; kind is conv, depthwise, bn or dense."""
    modules = {"conv1": ("first_conv.0", "conv"), "conv1_bn": ("first_conv.1", "bn")}
    for index, unit in enumerate(spec.units):
        for role, module in UNIT_MODULES.items():
            kind = "bn" if role.endswith("_bn") else "depthwise" if role == "dwconv" else "conv"
            modules[f"{unit.name}_{role}"] = (f"features.{index}.{module}", kind)
    modules["predictions"] = ("classifier.0", "dense")
    return modules


def expected_shapes(spec: architecture.NetworkSpec, classes: int) -> dict[str, tuple[int, ...]]:
    """The official state dict's key -> shape (without the ``module.`` prefix) for ``spec``."""
    shapes: dict[str, tuple[int, ...]] = {"first_conv.0.weight": (spec.stem_channels, 3, 3, 3)}
    shapes.update(_bn_shapes("first_conv.1", spec.stem_channels))
    for index, unit in enumerate(spec.units):
        prefix = f"features.{index}"
        mid = unit.bottleneck_channels
        branch = unit.filters - unit.in_channels if unit.strides == 2 else unit.filters
        first_groups = unit.groups if unit.first_pointwise_grouped else 1
        shapes[f"{prefix}.branch_main_1.0.weight"] = (mid, unit.in_channels // first_groups, 1, 1)
        shapes.update(_bn_shapes(f"{prefix}.branch_main_1.1", mid))
        shapes[f"{prefix}.branch_main_1.3.weight"] = (mid, 1, 3, 3)
        shapes.update(_bn_shapes(f"{prefix}.branch_main_1.4", mid))
        shapes[f"{prefix}.branch_main_2.0.weight"] = (branch, mid // unit.groups, 1, 1)
        shapes.update(_bn_shapes(f"{prefix}.branch_main_2.1", branch))
    shapes["classifier.0.weight"] = (classes, spec.stage_out_channels[-1])
    return shapes


def official_spec(scale_factor: float, groups: int) -> architecture.NetworkSpec:
    """The network of the official ``model_size`` ``scale_factor`` and ``group`` ``groups``."""
    return architecture.network_spec(groups, scale_factor)


def state_dict_of(checkpoint: Any, path: str) -> dict[str, np.ndarray]:
    """The tensors of a read checkpoint, keys without ``module.``; accepts ``{'state_dict': ...}`` or a bare one."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not state:
        raise CheckpointError(
            f"{path!r} is a PyTorch file but holds no state dict (a dict of tensors, or {{'state_dict': ...}}); "
            f"it holds {type(state).__name__}"
        )
    tensors = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path!r}: entry {key!r} of the state dict is not a named tensor")
        name = key[len(DATA_PARALLEL_PREFIX) :] if key.startswith(DATA_PARALLEL_PREFIX) else key
        if not name.endswith(IGNORED_SUFFIX):
            tensors[name] = value
    return tensors


def _describe_difference(tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str:
    missing = [key for key in shapes if key not in tensors]
    unexpected = [key for key in tensors if key not in shapes]
    wrong = [
        f"{key} {tensors[key].shape} (expected {shape})"
        for key, shape in shapes.items()
        if key in tensors and tensors[key].shape != shape
    ]
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            parts.append(f"{len(items)} {what} (first: {', '.join(items[:3])})")
    return "; ".join(parts)


def infer_configuration(tensors: dict[str, np.ndarray], path: str) -> tuple[float, int, int]:
    """``(scale_factor, groups, classes)`` of an official ShuffleNet v1 state dict, from its shapes.

    Stage 2's second unit fixes the width and the groups (its last 1x1 conv
    is ``(width, width / 4 / groups, 1, 1)``), the classifier the classes;
    then every key and shape must be those of that configuration.

    Raises:
      CheckpointError: Naming what does not fit, e.g. for a ShuffleNet v2 or
        any other architecture's checkpoint.
    """
    probe = "features.1.branch_main_2.0.weight"
    head = "classifier.0.weight"
    if "first_conv.0.weight" not in tensors or probe not in tensors or head not in tensors:
        some = ", ".join(sorted(tensors)[:4])
        hint = (
            " (it looks like ShuffleNet v2: 'branch_main.' keys)" if any(".branch_main." in k for k in tensors) else ""
        )
        raise CheckpointError(
            f"{path!r} is not an official ShuffleNet v1 checkpoint{hint}: it lacks first_conv.0.weight, "
            f"{probe} or {head}. Its keys begin: {some}"
        )
    width, per_group = tensors[probe].shape[:2]
    mid = int(width * architecture.BOTTLENECK_RATIO)
    groups = mid // per_group if per_group and mid % per_group == 0 else None
    if groups not in architecture.ALLOWED_GROUPS:
        raise CheckpointError(
            f"{path!r}: {probe} has shape {tensors[probe].shape}, which gives no ShuffleNet v1 group count "
            f"({architecture.ALLOWED_GROUPS})"
        )
    scale_factor = round(width / architecture.STAGE_OUT_CHANNELS[groups][0], 3)
    classes = int(tensors[head].shape[0])
    spec = architecture.network_spec(groups, scale_factor, stem=int(tensors["first_conv.0.weight"].shape[0]))
    shapes = expected_shapes(spec, classes)
    difference = _describe_difference(tensors, shapes)
    if difference:
        raise CheckpointError(
            f"{path!r} is not an official ShuffleNet v1 checkpoint of {scale_factor:g}x g{groups} "
            f"(the configuration its Stage 2 suggests): {difference}"
        )
    if spec.stem_channels != architecture.stem_channels(groups, scale_factor):
        raise CheckpointError(
            f"{path!r}: conv1 has {spec.stem_channels} channels; ShuffleNet v1 {scale_factor:g}x g{groups} has "
            f"{architecture.stem_channels(groups, scale_factor)}"
        )
    return scale_factor, groups, classes


def layer_weights(
    tensors: dict[str, np.ndarray], spec: architecture.NetworkSpec, include_top: bool
) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weights in Keras order, from an official state dict (already checked)."""
    weights: dict[str, list[np.ndarray]] = collections.OrderedDict()
    for layer_name, (module, kind) in official_modules(spec).items():
        if kind == "dense":
            if include_top:
                kernel = tensors[f"{module}.weight"]
                # Linear(C, n, bias=False): y = W x over the pooled channels; Dense takes (C, n) and a bias.
                weights[layer_name] = [kernel.T.astype(np.float32), np.zeros(kernel.shape[0], np.float32)]
            continue
        if kind == "bn":
            weights[layer_name] = [tensors[f"{module}.{suffix}"].astype(np.float32) for suffix in BN_SUFFIXES]
            continue
        kernel = tensors[f"{module}.weight"].astype(np.float32)
        # (out, in / g, kh, kw) -> (kh, kw, in / g, out); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1).
        weights[layer_name] = [kernel.transpose(2, 3, 0, 1) if kind == "depthwise" else kernel.transpose(2, 3, 1, 0)]
    return weights


def describe(scale_factor: float, groups: int) -> str:
    """``"1x g3"``-style name of a configuration."""
    return f"{scale_factor:g}x g{groups}"


def is_official_configuration(scale_factor: float, groups: int) -> bool:
    """Whether the official release has a checkpoint of this configuration."""
    return groups in architecture.OFFICIAL_GROUPS and any(
        math.isclose(scale_factor, s) for s in architecture.OFFICIAL_SCALES
    )
