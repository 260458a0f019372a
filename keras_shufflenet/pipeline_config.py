"""How images are resized, augmented and batched: :class:`PipelineConfig`, the settings of :mod:`keras_shufflenet.data`.

TensorFlow-free, like the other configurations (see :mod:`keras_shufflenet.config_fields`).
"""

from __future__ import annotations

import dataclasses

from keras_shufflenet.config_fields import check_fields, option

AUGMENTATIONS = ("none", "shift", "affine", "scale")
CHANNELS = (0, 1, 3)
# How pixels become the model's input: "unit" is preprocess_input's [-1, 1];
# "official" the official ShuffleNet v1 checkpoints' BGR pixels in 0..255.
PREPROCESSINGS = ("unit", "official")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How images are resized, augmented and batched (:mod:`keras_shufflenet.data`).

    ``augment="scale"`` is the paper's "slightly less aggressive" scale
    augmentation (Inception's crops go down to 8 %): a random-area crop of
    ``min_crop_area``..1 of the image with aspect 3/4..4/3, resized to
    ``input_size``, with evaluation on a center crop of
    ``eval_crop_fraction`` of a resize (224 of 256).
    """

    input_size: int = option(32, "Model input height and width; images are resized.", interval="[1, inf)")
    channels: int = option(0, "Model input channels (1 or 3); 0 takes the dataset's.", choices=CHANNELS)
    augment: str = option(
        "shift",
        "none; shift: random translation (small images); affine: random rotation, scale and translation (digits); "
        "scale: random-area crops with center-crop eval (ImageNet).",
        choices=AUGMENTATIONS,
    )
    random_flip: bool = option(False, "Random horizontal flips in training (not for digits or text).")
    shift_fraction: float = option(
        0.125, "Largest translation of --augment=shift and affine, as a fraction of the size.", interval="[0, 1)"
    )
    max_rotation: float = option(10.0, "Largest rotation of --augment=affine, in degrees.", interval="[0, 180]")
    max_zoom: float = option(
        0.1, "Largest change of scale of --augment=affine, as a fraction (0.1: 0.9x to 1.1x).", interval="[0, 1)"
    )
    min_crop_area: float = option(0.25, "Smallest crop area fraction of --augment=scale.", interval="(0, 1]")
    eval_crop_fraction: float = option(
        0.875, "Center-crop fraction of --augment=scale eval (224 of 256).", interval="(0, 1]"
    )
    preprocessing: str = option(
        "unit",
        "unit: pixels / 127.5 - 1 (keras_shufflenet.preprocess_input); official: BGR pixels in 0..255, the input of "
        "the official ShuffleNet v1 checkpoints (with --augment=scale: eval resizes to 256, crops 224).",
        choices=PREPROCESSINGS,
    )
    cache: bool = option(True, "Cache decoded, resized images in memory (turn off for datasets larger than RAM).")
    shuffle_buffer: int = option(10_000, "Shuffle buffer size in images.", interval="[1, inf)")
    seed: int = option(0, "Seed of initialization, shuffling, augmentation and held-out splits.")

    def __post_init__(self) -> None:
        check_fields(self)
