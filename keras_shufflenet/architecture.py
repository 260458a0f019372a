"""ShuffleNet v1 as data: the paper's Table 1 and one rule for widths.

Reference: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018, arXiv:1707.01083, Table 1.

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
MIN_INPUT_SIZE: int = 32  # five stride-2 steps leave at least 1x1.


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
    """The whole network: stem width and the unit list, in order."""

    groups: int
    scale_factor: float
    stem_channels: int
    stage_out_channels: tuple[int, int, int]
    units: tuple[UnitSpec, ...]


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
    below 1x, ``24 * s`` rounded up to a multiple of ``groups`` so that the
    first unit's branch (``stage2 - stem`` channels) splits into the groups.
    """
    if scale_factor >= 1:
        return STEM_CHANNELS_1X * int(math.floor(scale_factor))
    return groups * max(1, math.ceil(STEM_CHANNELS_1X * scale_factor / groups))


def network_spec(groups: int, scale_factor: float, stem: int | None = None) -> NetworkSpec:
    """Expands Table 1 into the list of units for one configuration.

    Args:
      groups: Groups of the pointwise convolutions, one of ``ALLOWED_GROUPS``.
      scale_factor: Width multiplier "s x" of the paper, ``> 0``.
      stem: Channels of conv1; ``None`` applies :func:`stem_channels`.

    Returns:
      The ``NetworkSpec``.
    """
    widths = stage_out_channels(groups, scale_factor)
    stem = stem_channels(groups, scale_factor) if stem is None else stem
    units = []
    in_channels = stem
    for stage_index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, widths, strict=True)):
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
    return NetworkSpec(
        groups=groups,
        scale_factor=scale_factor,
        stem_channels=stem,
        stage_out_channels=widths,
        units=tuple(units),
    )
