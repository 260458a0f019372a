"""The configuration of a run, defined once: every field with its default, help text and allowed values.

A :class:`TrainConfig` nests the input pipeline's
:class:`~keras_shufflenet.pipeline_config.PipelineConfig` and the micro
export's :class:`~keras_shufflenet.micro.export_config.ExportConfig`;
``train/main.py`` generates one absl flag per field (flat names:
``--augment``, ``--quantize``) from their metadata
(:mod:`keras_shufflenet.config_fields`), and ``config.json`` stores the same
flat names. Values are checked once, when a config is built or validated, so
the code behind it needs no checks of its own.

This module imports neither TensorFlow nor Keras: the command line reads it
before it chooses which Keras the process runs (see :func:`needs_legacy_keras`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from keras_shufflenet import architecture
from keras_shufflenet.config_fields import ConfigError, bad_value, check_fields, option
from keras_shufflenet.micro.export_config import ExportConfig
from keras_shufflenet.pipeline_config import PipelineConfig

# The choice lists of training.
MODES = ("train", "eval", "export")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("linear", "cosine", "constant")
VERBOSITIES = (0, 1, 2, 3)


@dataclasses.dataclass
class TrainConfig:
    """Everything a training, evaluation or export run needs; one flag of ``train/main.py`` per field.

    The fields of ``data`` (:class:`PipelineConfig`) and ``micro``
    (:class:`~keras_shufflenet.micro.export_config.ExportConfig`) are flags too, under their own names. Build a
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
    export_dir: str = option("", "Directory of the micro export; empty uses --model_dir.")
    data: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    # A training run exports only when asked (--quantize=ptq or qat).
    micro: ExportConfig = dataclasses.field(default_factory=lambda: ExportConfig(quantize="none"))

    def validate(self) -> None:
        """Checks every value; raises :class:`ConfigError` naming the first bad one."""
        check_fields(self)
        if not self.dataset:
            raise bad_value("dataset", self.dataset, "a TFDS name or 'folder:PATH'")
        if not self.model_dir:
            raise bad_value("model_dir", self.model_dir, "a directory path")
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise bad_value("model_dir", self.model_dir, "a directory path, not an existing file")
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
    def resolved_export_dir(self) -> str:
        """Where the micro export goes (``export_dir``, or ``model_dir``)."""
        return self.export_dir or self.model_dir

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
            nested = PipelineConfig if field.name == "data" else ExportConfig
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
