"""ShuffleNet v1 as data: the paper's Table 1, its variants, and one rule for widths.

Reference: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018, arXiv:1707.01083: Table 1
(the network), Table 2 (scales), Sec. 4.2 and Table 5 (the shallow and the
squeeze-and-excitation variants).

Everything the builder needs to know about the architecture is derived here,
so a change of architecture is a change of this table.
"""

from __future__ import annotations

import dataclasses
import math

# Table 1: output channels of Stages 2, 3 and 4 at 1x, per number of groups.
STAGE_OUT_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
ALLOWED_GROUPS: tuple[int, ...] = tuple(sorted(STAGE_OUT_CHANNELS))

# Table 1: units per stage; the first unit of every stage has stride 2.
STAGE_REPEATS: tuple[int, int, int] = (4, 8, 4)
FIRST_STAGE: int = 2  # stages are numbered 2, 3, 4 as in the paper.

STEM_CHANNELS_1X: int = 24  # conv1: 3x3, stride 2.
BOTTLENECK_RATIO: float = 0.25  # "bottleneck channels ... 1/4 of the output".

# The stem for each output stride (input size / final feature map size):
# (conv1 stride, whether the 3x3/2 max pool follows). 32 is the paper's
# ImageNet stem; 16 drops the max pool and 8 also runs conv1 at stride 1,
# for microcontroller images of 32-96 px that the paper's stem would reduce
# to a 1x1-3x3 map. Stages 2-4 always halve the size three times.
STEM_LAYOUTS: dict[int, tuple[int, bool]] = {32: (2, True), 16: (2, False), 8: (1, False)}
OUTPUT_STRIDES: tuple[int, ...] = tuple(sorted(STEM_LAYOUTS))
DEFAULT_OUTPUT_STRIDE: int = 32
# The smallest final feature map the automatic choice accepts (output_stride_for).
MIN_AUTO_FEATURE_MAP: int = 2

# Sec. 4.2: "a 26-layer architecture by removing half of the blocks in
# Stage 2-4" (conv1 + 8 units x 3 + classifier = 26 layers).
SHALLOW_STAGE_REPEATS: tuple[int, int, int] = (2, 4, 2)
# The paper names the shallow model after the budget it matches (0.5x, 40
# MFLOPs, beside the deep 0.5x's 38) and gives no widths. A unit's cost grows
# with the square of its width, so half the units at sqrt(2) times the width
# keep the budget; with the stem rule below this gives 40.0 MFLOPs at "0.5x".
SHALLOW_WIDTH_MULTIPLIER: float = math.sqrt(2.0)
# Squeeze-and-excitation (Hu et al., 2018) on each unit's residual branch
# (Table 5: 2x with SE, 527 MFLOPs beside 524): reduction ratio 16 as in SENet.
SE_RATIO: int = 16

# How the network computes what the table describes. "paper" is this
# package's own (TF "same" padding, the paper's shuffle after the first
# pointwise conv). "official" computes the function of the official
# implementation (megvii-model/ShuffleNet-Series, ShuffleNetV1), so its
# ImageNet checkpoints load exactly (keras_shufflenet.weights):
# - padding "symmetric": the stride-2 3x3 convolutions, the max pool and the
#   average-pool shortcut pad one pixel on every side (PyTorch's padding=1)
#   where TF's "same" pads only the bottom and right, and the average pool
#   counts the padded zeros (PyTorch's count_include_pad=True);
# - the shuffle after the depthwise conv's batch norm, in the order
#   "official": channels reshaped to (C/g, g) then transposed, the inverse
#   permutation of the paper's (g, C/g).
# Both use batch-norm epsilon 1e-5 (layers.BN_EPSILON).
PADDINGS: tuple[str, ...] = ("same", "symmetric")
SHUFFLE_ORDERS: tuple[str, ...] = ("paper", "official")
SHUFFLE_POSITIONS: tuple[str, ...] = ("after_gconv1", "after_dwconv")


@dataclasses.dataclass(frozen=True)
class Convention:
    """How the network computes: padding, shuffle order and shuffle position.

    Attributes:
      padding: ``"same"`` (TF) or ``"symmetric"`` (explicit zero padding of
        one pixel on every side of stride-2 3x3 windows).
      shuffle_order: ``"paper"`` (reshape to ``(g, C/g)``) or ``"official"``
        (reshape to ``(C/g, g)``); see :class:`keras_shufflenet.ChannelShuffle`.
      shuffle_position: ``"after_gconv1"`` (after the first pointwise conv's
        ReLU) or ``"after_dwconv"`` (after the depthwise conv's batch norm).
    """

    padding: str
    shuffle_order: str
    shuffle_position: str


CONVENTIONS: dict[str, Convention] = {
    "paper": Convention(padding="same", shuffle_order="paper", shuffle_position="after_gconv1"),
    "official": Convention(padding="symmetric", shuffle_order="official", shuffle_position="after_dwconv"),
}
DEFAULT_CONVENTION: str = "paper"

# The official release's configurations (scale, groups), whose checkpoints
# keras_shufflenet.weights reads. Their widths are this module's rule's:
# stage_out_channels and stem_channels reproduce the official
# `stage_out_channels` table at every one of them (tests/test_weights.py).
OFFICIAL_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
OFFICIAL_GROUPS: tuple[int, ...] = (3, 8)


@dataclasses.dataclass(frozen=True)
class UnitSpec:
    """One ShuffleNet unit (Fig. 2 b/c) in the network.

    Attributes:
      name: Layer-name prefix, e.g. ``"stage3_unit2"``.
      in_channels: Channels entering the unit.
      filters: Channels leaving the unit (after the concat for stride 2).
      strides: 1 (residual add) or 2 (average-pooled shortcut, concat).
      groups: Groups of the two pointwise convolutions.
      first_pointwise_grouped: False only for the first unit of Stage 2,
        whose 24 input channels are too few to split (paper, Sec. 3.3).
      bottleneck_channels: Channels of the 1x1 -> 3x3 depthwise bottleneck.
    """

    name: str
    in_channels: int
    filters: int
    strides: int
    groups: int
    first_pointwise_grouped: bool
    bottleneck_channels: int


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The whole network: the stem and the unit list, in order.

    Attributes:
      groups: Groups of the pointwise convolutions.
      scale_factor: The width multiplier asked for.
      stem_channels: Width of conv1.
      stage_out_channels: Output channels of Stages 2-4.
      units: The units, in order.
      output_stride: Input size over final feature-map size (8, 16 or 32).
      conv1_strides: Stride of conv1 (1 or 2).
      max_pool: Whether the 3x3/2 max pool follows conv1.
      se_ratio: Squeeze-and-excitation reduction ratio of every unit's
        branch; 0 without squeeze-and-excitation.
    """

    groups: int
    scale_factor: float
    stem_channels: int
    stage_out_channels: tuple[int, int, int]
    units: tuple[UnitSpec, ...]
    output_stride: int = DEFAULT_OUTPUT_STRIDE
    conv1_strides: int = 2
    max_pool: bool = True
    se_ratio: int = 0


def make_divisible(value: float, divisor: int) -> int:
    """Rounds ``value`` to the nearest multiple of ``divisor`` (ties up).

    The same rule as keras.applications' MobileNetV2: never less than
    ``divisor`` and never more than 10 % below ``value``.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def stage_out_channels(groups: int, scale_factor: float) -> tuple[int, int, int]:
    """Output channels of Stages 2-4: Table 1 times ``scale_factor``.

    Width rule: each width is rounded to a multiple of ``4 * groups`` so that
    the bottleneck (1/4 of the width) splits evenly into ``groups``. It
    reproduces every width of Table 1 and of the official implementation
    (e.g. 0.5x g3 -> 120/240/480, 1.5x g8 -> 576/1152/2304).
    """
    return tuple(make_divisible(c * scale_factor, 4 * groups) for c in STAGE_OUT_CHANNELS[groups])


def stem_channels(groups: int, scale_factor: float) -> int:
    """Width of conv1, where the paper is silent for scales other than 1x.

    Follows the official implementation (megvii-model/ShuffleNet-Series),
    which does not scale the stem linearly: 24 at 1x and 1.5x, 48 at 2x, and
    12 (g3) or 16 (g8) at 0.5x. As a rule: ``24 * floor(s)`` for ``s >= 1``;
    from 0.5x to 1x, ``24 * s`` rounded up to a multiple of ``groups`` so that
    the first unit's branch (``stage2 - stem`` channels) splits into the groups.

    Below 0.5x the stem stops shrinking: it keeps 0.5x's 12 channels, rounded
    down to a multiple of ``groups`` (8 for g = 8). Table 2 gives 13 MFLOPs
    at 0.25x for every g; this rule gives 13.2-13.5 for g = 1-4 and 12.4 for
    g = 8, whereas a stem scaled to 6-8 channels gives 11.0-12.4.
    """
    if scale_factor >= 1:
        return STEM_CHANNELS_1X * int(math.floor(scale_factor))
    if scale_factor >= 0.5:
        return groups * max(1, math.ceil(STEM_CHANNELS_1X * scale_factor / groups))
    half_scale_stem = STEM_CHANNELS_1X // 2
    return groups * max(1, half_scale_stem // groups)


def min_scale_factor(groups: int) -> float:
    """The smallest ``scale_factor`` whose stage widths grow from stage to stage for ``groups``.

    Widths are rounded to multiples of ``4 * groups`` (never below it), so
    at small scales neighbouring stages get the same width, and a stride-2
    unit, which concatenates its input with its branch, has no branch left.
    """
    low, high = 1e-3, 1.0
    for _ in range(40):  # Bisection: widths are monotone in the scale.
        middle = (low + high) / 2
        widths = stage_out_channels(groups, middle)
        stem = stem_channels(groups, middle)
        grows = stem < widths[0] < widths[1] < widths[2]
        low, high = (low, middle) if grows else (middle, high)
    return math.ceil(high * 1000) / 1000  # rounded up to 0.001, still building


def output_stride_for(input_size: int) -> int:
    """The output stride the trainer uses for square images of ``input_size``.

    The largest of :data:`OUTPUT_STRIDES` that leaves a final feature map of
    at least :data:`MIN_AUTO_FEATURE_MAP` pixels a side: the paper's stem
    from 33 px up, no max pool from 17 px, conv1 at stride 1 below. On
    mnist5k at 32 px (docs/small_inputs.md) the paper's stem (1x1 map) reached
    0.968 int8 top-1 for 0.71 MMACs, this choice 0.978 for 2.73, stride 8
    0.990 for 10.9.

    Raises:
      ValueError: If ``input_size`` is not an integer >= 1.
    """
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"`input_size` must be an integer >= 1. Received: input_size={input_size!r}")
    for stride in sorted(OUTPUT_STRIDES, reverse=True):
        if -(-input_size // stride) >= MIN_AUTO_FEATURE_MAP:
            return stride
    return min(OUTPUT_STRIDES)


def describe_stem(output_stride: int) -> str:
    """The stem of ``output_stride`` in words, e.g. ``"conv1 stride 2, no max pool"``."""
    conv_stride, max_pool = STEM_LAYOUTS[output_stride]
    return f"conv1 stride {conv_stride}, {'3x3/2 max pool' if max_pool else 'no max pool'}"


def network_spec(
    groups: int,
    scale_factor: float,
    stem: int | None = None,
    output_stride: int = DEFAULT_OUTPUT_STRIDE,
    shallow: bool = False,
    se_ratio: int = 0,
) -> NetworkSpec:
    """Expands Table 1 into the list of units for one configuration.

    Args:
      groups: Groups of the pointwise convolutions, one of ``ALLOWED_GROUPS``.
      scale_factor: Width multiplier "s x" of the paper, ``> 0``.
      stem: Channels of conv1; ``None`` applies :func:`stem_channels`.
      output_stride: One of :data:`OUTPUT_STRIDES` (:data:`STEM_LAYOUTS`).
      shallow: Sec. 4.2's shallow network: :data:`SHALLOW_STAGE_REPEATS`
        units at :data:`SHALLOW_WIDTH_MULTIPLIER` times the widths.
      se_ratio: Squeeze-and-excitation reduction ratio, 0 for none.

    Returns:
      The ``NetworkSpec``.
    """
    width_scale = scale_factor * SHALLOW_WIDTH_MULTIPLIER if shallow else scale_factor
    widths = stage_out_channels(groups, width_scale)
    stem = stem_channels(groups, width_scale) if stem is None else stem
    repeats_per_stage = SHALLOW_STAGE_REPEATS if shallow else STAGE_REPEATS
    units = []
    in_channels = stem
    for stage_index, (repeats, out_channels) in enumerate(zip(repeats_per_stage, widths, strict=True)):
        stage = FIRST_STAGE + stage_index
        for unit_index in range(repeats):
            first_unit = unit_index == 0
            units.append(
                UnitSpec(
                    name=f"stage{stage}_unit{unit_index + 1}",
                    in_channels=in_channels,
                    filters=out_channels,
                    strides=2 if first_unit else 1,
                    groups=groups,
                    first_pointwise_grouped=not (stage == FIRST_STAGE and first_unit),
                    bottleneck_channels=int(out_channels * BOTTLENECK_RATIO),
                )
            )
            in_channels = out_channels
    conv1_strides, max_pool = STEM_LAYOUTS[output_stride]
    return NetworkSpec(
        groups=groups,
        scale_factor=scale_factor,
        stem_channels=stem,
        stage_out_channels=widths,
        units=tuple(units),
        output_stride=output_stride,
        conv1_strides=conv1_strides,
        max_pool=max_pool,
        se_ratio=se_ratio,
    )
