"""The configuration of a run, defined once: every field with its default, help text and allowed values.

A :class:`TrainConfig` nests the input pipeline's :class:`PipelineConfig`
and the micro export's :class:`MicroExportConfig`; ``train/main.py``
generates one absl flag per field (flat names: ``--augment``,
``--quantize``) from the metadata written here, and ``config.json`` stores
the same flat names. The choice lists of the package live here too. Values
are checked once, when a config is built or validated, so the code behind it
needs no checks of its own.

This module imports neither TensorFlow nor Keras: the command line reads it
before it chooses which Keras the process runs (see :func:`needs_legacy_keras`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from keras_shufflenet import architecture
from keras_shufflenet.micro.npu import ACCELERATORS
from keras_shufflenet.micro.tflm_compression import MAX_CLUSTERS, MAX_INDEX_BITS, STORE_MODES, Compression

# The choice lists of the package.
MODES = ("train", "eval", "export")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("linear", "cosine", "constant")
AUGMENTATIONS = ("none", "shift", "affine", "scale")
CHANNELS = (0, 1, 3)
VERBOSITIES = (0, 1, 2, 3)
# How the micro export quantizes (``micro.export``'s ``quantize``), and
# "none" for a training run without an export.
EXPORT_QUANTIZE_MODES = ("ptq", "qat")
QUANTIZE_MODES = ("none", *EXPORT_QUANTIZE_MODES)
# How pixels become the model's input: "unit" is preprocess_input's [-1, 1];
# "official" the official ShuffleNet v1 checkpoints' BGR pixels in 0..255.
PREPROCESSINGS = ("unit", "official")
# Convolution weight scales: one per output channel (the converter's default)
# or one per tensor (4 bytes less per output channel).
WEIGHT_QUANTIZATIONS = ("per_channel", "per_tensor")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names it, the value received and what is allowed."""


def option(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, interval: str | None = None) -> Any:
    """A config field with its help text and allowed values (read by :func:`check_fields` and the flags).

    Args:
      default: The default value; its type is the field's (``None``: a string).
      help: One line for ``--help``.
      choices: The allowed values, if they are a list.
      interval: The allowed range, e.g. ``"[0, 1)"`` or ``"(0, inf)"``.
    """
    metadata = {"help": help, "choices": choices, "interval": _parse_interval(interval) if interval else None}
    return dataclasses.field(default=default, metadata=metadata)


def _parse_interval(text: str) -> tuple[float, float, bool, bool]:
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "(", text[-1] == ")"


def _describe_interval(interval: tuple[float, float, bool, bool], integer: bool) -> str:
    low, high, low_open, high_open = interval
    prefix = "an integer " if integer else ""
    if math.isinf(high):
        return f"{prefix}{'>' if low_open else '>='} {low:g}"
    return f"{prefix}in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _in_interval(value: float, interval: tuple[float, float, bool, bool]) -> bool:
    low, high, low_open, high_open = interval
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def bad_value(name: str, value: Any, allowed: str) -> ConfigError:
    """The error for field ``name``: what was received and what is allowed."""
    return ConfigError(f"{name} must be {allowed}. Received: {name}={value!r}")


def check_fields(config: Any) -> None:
    """Checks every field of a config dataclass against its :func:`option` metadata.

    Raises:
      ConfigError: Naming the first field whose value is not allowed.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) or field.metadata.get("help") is None:
            continue
        default = field.default
        choices, interval = field.metadata["choices"], field.metadata["interval"]
        if choices is not None and value not in choices:
            raise bad_value(field.name, value, f"one of {choices}")
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise bad_value(field.name, value, "True or False")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad_value(field.name, value, "an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_value(field.name, value, "a number")
        if interval is not None and not _in_interval(value, interval):
            raise bad_value(field.name, value, _describe_interval(interval, isinstance(default, int)))


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


def parse_layer_clusters(text: str) -> dict[str, int] | None:
    """``"stage3:8,stage4:4"`` as ``{"stage3": 8, "stage4": 4}`` (None for an empty text).

    Raises:
      ConfigError: For an entry that is not ``prefix:count``.
    """
    if not text:
        return None
    result = {}
    for entry in text.split(","):
        prefix, _, count = entry.strip().partition(":")
        if not prefix or not count.strip().isdigit():
            raise bad_value("layer_clusters", text, "comma-separated layer-name-prefix:count entries, e.g. 'stage4:4'")
        result[prefix] = int(count)
    return result


@dataclasses.dataclass(frozen=True)
class MicroExportConfig:
    """The microcontroller export of a trained run (the arguments of :func:`keras_shufflenet.micro.export`)."""

    quantize: str = option(
        "none",
        "Micro export: none, post-training int8 (ptq), or quantization-aware int8 (qat).",
        choices=QUANTIZE_MODES,
    )
    prune_sparsity: float = option(
        0.0, "Magnitude-pruning target sparsity of the micro export (0 = no pruning).", interval="[0, 0.99]"
    )
    prune_epochs: int = option(2, "Fine-tuning epochs for pruning and QAT in the micro export.", interval="[0, inf)")
    weight_quantization: str = option(
        "per_channel",
        "int8 weight scales of the micro export: per output channel, or one per tensor (smaller, PTQ only).",
        choices=WEIGHT_QUANTIZATIONS,
    )
    clusters: int = option(
        0,
        "Weight clustering of the micro export: shared values per kernel, stored as LUT indices (0 = none).",
        interval=f"[0, {MAX_CLUSTERS}]",
    )
    layer_clusters: str = option(
        "",
        "Cluster counts by layer-name prefix, overriding --clusters, e.g. 'stage4:4' or 'stage3:8,stage4:4'.",
    )
    cluster_per_channel: bool = option(
        False, "Cluster each output channel on its own (for per-channel weights; one LUT table per channel)."
    )
    cluster_epochs: int = option(Compression.epochs, "Fine-tuning epochs of weight clustering.", interval="[1, inf)")
    cluster_learning_rate: float = option(
        Compression.learning_rate,
        "Adam learning rate of the clustering fine-tune (cosine decay to 0).",
        interval="(0, inf)",
    )
    weight_storage: str = option(
        "auto",
        "How the board's model stores weights (decoded by TFLM's DECODE): auto = per tensor the smallest of "
        "LUT, pruned and dense.",
        choices=STORE_MODES,
    )
    index_bits: int = option(
        0, "LUT index bits of clustered weights (0 = what --clusters needs).", interval=f"[0, {MAX_INDEX_BITS}]"
    )
    max_decoded_bytes: int = option(
        0,
        "Largest weight tensor stored compressed (decoded into the arena); 0 = the dense model's arena.",
        interval="[0, inf)",
    )
    representative_samples: int = option(200, "Training images that calibrate int8 quantization.", interval="[0, inf)")
    npu: str = option(
        "none",
        "Also compile the int8 model for an Arm Ethos-U NPU with Vela (pip install ethos-u-vela): none or an "
        "accelerator configuration.",
        choices=("none", *ACCELERATORS),
    )
    export_dir: str = option("", "Directory of the micro export; empty uses --model_dir.")

    def __post_init__(self) -> None:
        check_fields(self)
        try:
            self.compression.check(self.quantize, self.weight_quantization)
        except ValueError as error:
            raise ConfigError(str(error).replace("`per_channel`", "`cluster_per_channel`")) from None
        if self.npu != "none" and not self.enabled:
            raise bad_value("npu", self.npu, "'none' without a micro export (--quantize=none)")
        if self.weight_quantization == "per_tensor" and self.quantize == "qat":
            raise bad_value(
                "weight_quantization",
                self.weight_quantization,
                "'per_channel' with quantize='qat' (QAT learns per-channel ranges)",
            )

    @property
    def enabled(self) -> bool:
        """Whether a training run ends with a micro export."""
        return self.quantize != "none"

    @property
    def compression(self) -> Compression:
        """The ``compression`` argument of :func:`keras_shufflenet.micro.export`."""
        return Compression(
            clusters=self.clusters,
            per_channel=self.cluster_per_channel,
            epochs=self.cluster_epochs,
            learning_rate=self.cluster_learning_rate,
            store=self.weight_storage,
            index_bits=self.index_bits or None,
            layer_clusters=parse_layer_clusters(self.layer_clusters),
            max_decoded_bytes=self.max_decoded_bytes or None,
        )

    @property
    def needs_tfmot(self) -> bool:
        """Whether the export prunes or runs QAT (tensorflow-model-optimization, Keras 2 only)."""
        return self.enabled and (self.prune_sparsity > 0 or self.quantize == "qat")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training, evaluation or export run needs; one flag of ``train/main.py`` per field.

    The fields of ``data`` (:class:`PipelineConfig`) and ``micro``
    (:class:`MicroExportConfig`) are flags too, under their own names. Build a
    config from flat names with :meth:`from_flat` and change it with
    :meth:`replace`; :meth:`flat` gives the flat names back.
    """

    dataset: str = option("mnist5k", "A TFDS name (mnist5k, cifar10, imagenet2012, ...) or folder:PATH.")
    data_dir: str | None = option(None, "TFDS data directory (manual downloads in data_dir/downloads/manual).")
    model_dir: str = option("runs/default", "Directory for checkpoints, logs, the saved model and metrics.")
    mode: str = option(
        "train",
        "train (resumes if model_dir has a checkpoint), eval, or export (the micro export of a trained model_dir).",
        choices=MODES,
    )
    # The defaults train the default dataset (mnist5k at 32x32) to 0.975 top-1 in about 220 s on 2 CPU
    # cores: small models on small data are limited by optimizer steps, hence batch 32 and Adam at 1e-2.
    epochs: int = option(15, "Training epochs (ignored when --train_steps > 0).", interval="[1, inf)")
    train_steps: int = option(0, "Total training steps (rounded up to whole epochs); 0: --epochs.", interval="[0, inf)")
    batch_size: int = option(32, "Global batch size, divisible by the number of replicas.", interval="[1, inf)")
    eval_batch_size: int = option(0, "Eval batch size; 0 uses --batch_size.", interval="[0, inf)")
    groups: int = option(
        3, "Groups of the pointwise convolutions: 1, 2, 3, 4 or 8.", choices=architecture.ALLOWED_GROUPS
    )
    scale_factor: float = option(
        0.5, "Width multiplier 's' of the paper (0.25, 0.5, 1, 1.5, 2, ...).", interval="(0, inf)"
    )
    output_stride: int = option(
        0,
        "Input size over the final feature map's: 32 (the paper's stem), 16 (no max pool), 8 (conv1 at stride 1 "
        "too); 0 chooses from --input_size (the largest leaving at least 2x2).",
        choices=(0, *architecture.OUTPUT_STRIDES),
    )
    shallow: bool = option(False, "The paper's shallow ShuffleNet (26 layers at sqrt(2) times the widths).")
    squeeze_excite: bool = option(False, "Squeeze-and-excitation on every unit's branch (ratio 16).")
    convention: str = option(
        "paper",
        "paper: TF 'same' padding, the paper's shuffle; official: the official implementation's padding and "
        "shuffle, which its checkpoints need (keras_shufflenet.architecture.CONVENTIONS).",
        choices=tuple(architecture.CONVENTIONS),
    )
    init_weights: str = option(
        "",
        "Initial backbone weights for training: an official ShuffleNet v1 checkpoint (.pth.tar; needs "
        "--convention=official and its --groups and --scale_factor) or a Keras .weights.h5 of the same "
        "architecture. The classifier is new, for the dataset's classes.",
    )
    optimizer: str = option("adam", "sgd (with --momentum) or adam.", choices=OPTIMIZERS)
    learning_rate: float = option(0.01, "Peak learning rate (after warmup).", interval="(0, inf)")
    lr_schedule: str = option("cosine", "Decay to 0 over the run, or constant.", choices=LR_SCHEDULES)
    warmup_epochs: float = option(0.5, "Linear learning-rate warmup from 0, in epochs.", interval="[0, inf)")
    momentum: float = option(0.9, "SGD momentum.", interval="[0, 0.999]")
    weight_decay: float = option(
        4e-5, "L2 weight decay on conv and dense kernels (gradient += wd * kernel).", interval="[0, 1]"
    )
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy.", interval="[0, 0.999]")
    holdout_fraction: float = option(
        0.1, "Eval fraction held out per class when the data has no eval split.", interval="(0, 1)"
    )
    strategy: str = option(
        "default", "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.", choices=STRATEGIES
    )
    tpu: str = option("", "TPU name or address for --strategy=tpu.")
    mixed_precision: bool = option(False, "float16 compute (bfloat16 on TPU) with float32 variables.")
    deterministic: bool = option(False, "Deterministic TensorFlow ops (slower); the seed is always applied.")
    jit_compile: bool = option(False, "Compile the training step with XLA.")
    steps_per_execution: int = option(1, "Training steps per tf.function call.", interval="[1, inf)")
    validation_freq: int = option(1, "Evaluate on the eval split every N epochs during training.", interval="[1, inf)")
    verbose: int = option(
        1,
        "Output: 0 silent training, 1 progress bar, 2 one line per epoch, 3 as 2 with TensorFlow's own "
        "logs (hidden below 3: start-up, CUDA probe, absl INFO, converter warnings).",
        choices=VERBOSITIES,
    )
    eval_model: str = option("", "Model for --mode=eval; empty uses model_dir/model.keras.")
    data: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    micro: MicroExportConfig = dataclasses.field(default_factory=MicroExportConfig)

    def validate(self) -> None:
        """Checks every value; raises :class:`ConfigError` naming the first bad one."""
        check_fields(self)
        if not self.dataset:
            raise bad_value("dataset", self.dataset, "a TFDS name or 'folder:PATH'")
        if not self.model_dir:
            raise bad_value("model_dir", self.model_dir, "a directory path")
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise bad_value("model_dir", self.model_dir, "a directory path, not an existing file")
        if self.micro.enabled and self.micro.representative_samples < 1:
            raise bad_value(
                "representative_samples",
                self.micro.representative_samples,
                f">= 1 with --quantize={self.micro.quantize} (int8 calibration needs images)",
            )
        minimum_scale = architecture.min_scale_factor(self.groups)
        if self.scale_factor < minimum_scale:
            raise bad_value("scale_factor", self.scale_factor, f">= {minimum_scale:g} with groups={self.groups}")
        smallest = self.output_stride or min(architecture.OUTPUT_STRIDES)
        if self.data.input_size < smallest:
            stem = f"output_stride={self.output_stride}" if self.output_stride else "any output stride"
            raise bad_value("input_size", self.data.input_size, f">= {smallest} for ShuffleNet with {stem}")

    @property
    def resolved_output_stride(self) -> int:
        """``output_stride``, or the one :func:`~keras_shufflenet.architecture.output_stride_for` chooses (0)."""
        return self.output_stride or architecture.output_stride_for(self.data.input_size)

    @property
    def eval_batch(self) -> int:
        """The eval batch size (``eval_batch_size``, or ``batch_size`` when it is 0)."""
        return self.eval_batch_size or self.batch_size

    @property
    def export_dir(self) -> str:
        """Where the micro export goes (``micro.export_dir``, or ``model_dir``)."""
        return self.micro.export_dir or self.model_dir

    def flat(self) -> dict[str, Any]:
        """Every field under its flag name, in flag order (what ``config.json`` and ``flags.txt`` hold)."""
        return {name: getattr(_owner(self, path), name) for name, path, _ in flag_fields()}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from flag names (any subset; the rest keep their defaults).

        Raises:
          ConfigError: For an unknown name or a value the nested configs refuse.
        """
        return cls().replace(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied, by flag name (``augment=...`` changes ``data.augment``).

        Raises:
          ConfigError: For an unknown name or a value the nested configs refuse.
        """
        by_path: dict[tuple[str, ...], dict[str, Any]] = {}
        known = {name: path for name, path, _ in flag_fields()}
        for name, value in changes.items():
            if name not in known:
                raise ConfigError(f"unknown configuration field {name!r}; the fields are {sorted(known)}.")
            by_path.setdefault(known[name], {})[name] = value
        nested = {
            path[0]: dataclasses.replace(getattr(self, path[0]), **values) for path, values in by_path.items() if path
        }
        return dataclasses.replace(self, **by_path.get((), {}), **nested)


def _owner(config: TrainConfig, path: tuple[str, ...]) -> Any:
    return getattr(config, path[0]) if path else config


def flag_fields() -> list[tuple[str, tuple[str, ...], dataclasses.Field]]:
    """``(flag name, path of the nested config, field)`` of every :class:`TrainConfig` option, in flag order."""
    result = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("data", "micro"):
            nested = PipelineConfig if field.name == "data" else MicroExportConfig
            result += [(inner.name, (field.name,), inner) for inner in dataclasses.fields(nested)]
        else:
            result.append((field.name, (), field))
    return result


def needs_legacy_keras(config: TrainConfig) -> bool:
    """Whether the whole run needs Keras 2 (tf_keras), which a process selects before importing TensorFlow.

    Keras 3's ``fit`` does not run under MultiWorkerMirroredStrategy
    (keras-team/keras#20585), and ``mode="export"`` with pruning or QAT uses
    tensorflow-model-optimization, which accepts only Keras 2 models. (A
    training run with pruning or QAT trains in Keras 3 and exports in a Keras 2
    child process: see :mod:`keras_shufflenet.export_job`.)
    """
    return config.strategy == "multi_worker" or (config.mode == "export" and config.micro.needs_tfmot)
