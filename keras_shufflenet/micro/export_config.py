"""Every setting of the microcontroller export, declared once: :class:`ExportConfig`.

:func:`keras_shufflenet.micro.export` takes an ``ExportConfig`` (or its
fields as keywords), and ``train/main.py`` generates one flag per field, under
the same name, from the metadata written here. The checks that need no model
run when a config is built; :mod:`keras_shufflenet.micro.options` adds those
that need the model and the data.

TensorFlow-free: the command line reads it before it chooses which Keras the
process runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from keras_shufflenet.config_fields import ConfigError, bad_value, check_fields, option
from keras_shufflenet.micro.verify import MAX_ARENA_MARGIN
from keras_shufflenet.micro.weight_storage import MAX_CLUSTERS, MAX_INDEX_BITS, STORE_MODES, Compression

# How the export quantizes; "none" only turns a training run's export off.
EXPORT_QUANTIZE_MODES = ("ptq", "qat")
QUANTIZE_MODES = ("none", *EXPORT_QUANTIZE_MODES)
# Convolution weight scales: one per output channel (the converter's default)
# or one per tensor (4 bytes less per output channel).
WEIGHT_QUANTIZATIONS = ("per_channel", "per_tensor")

# The Arm Ethos-U NPUs the export compiles for (keras_shufflenet.micro.npu): Vela 5.2's Ethos-U55 and U65
# configurations, MACs per cycle in the name.
ACCELERATORS = (
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
)

_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Keywords that export() accepted before ExportConfig, and the fields they set.
_RENAMED = {"num_representative": "representative_samples"}
# The fields of a `compression=Compression(...)` argument, by ExportConfig field.
_COMPRESSION_FIELDS = {
    "clusters": "clusters",
    "layer_clusters": "layer_clusters",
    "cluster_per_channel": "per_channel",
    "cluster_epochs": "epochs",
    "cluster_learning_rate": "learning_rate",
    "weight_storage": "store",
    "index_bits": "index_bits",
    "max_decoded_bytes": "max_decoded_bytes",
}


def check_c_identifier(name: Any) -> str:
    """Checks the model name used in file names and C symbols (``g_<name>_model_data``).

    Raises:
      ConfigError: If ``name`` is not a C identifier.
    """
    if not isinstance(name, str) or not _C_IDENTIFIER.match(name):
        raise ConfigError(
            "`name` must be a C identifier (letters, digits and underscores, not starting with a digit), "
            f"as it names the C array g_<name>_model_data. Received: name={name!r}"
        )
    return name


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


def format_layer_clusters(layer_clusters: Mapping[str, int] | None) -> str:
    """``{"stage3": 8, "stage4": 4}`` as ``"stage3:8,stage4:4"``, the form of the flag."""
    return ",".join(f"{prefix}:{count}" for prefix, count in (layer_clusters or {}).items())


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The settings of a microcontroller export (:func:`keras_shufflenet.micro.export`).

    Each field is also a flag of ``train/main.py`` under its own name. Build
    one with keywords, or from another with :func:`dataclasses.replace`; the
    values are checked when it is built, and :class:`ConfigError` names the
    first one that is not allowed.
    """

    name: str = option(
        "model", "C identifier of the exported model: its file names and C symbols (g_<name>_model_data)."
    )
    quantize: str = option(
        "ptq",
        "int8 quantization of the micro export: post-training (ptq) or quantization-aware (qat); a training run "
        "exports nothing with none.",
        choices=QUANTIZE_MODES,
    )
    weight_quantization: str = option(
        "per_channel",
        "int8 weight scales of the micro export: per output channel, or one per tensor (smaller, PTQ only).",
        choices=WEIGHT_QUANTIZATIONS,
    )
    prune_sparsity: float = option(
        0.0, "Magnitude-pruning target sparsity of the micro export (0 = no pruning).", interval="[0, 1)"
    )
    prune_epochs: int = option(2, "Fine-tuning epochs of pruning in the micro export.", interval="[0, inf)")
    qat_epochs: int = option(
        0, "Fine-tuning epochs of quantization-aware training; 0: --prune_epochs, at least 1.", interval="[0, inf)"
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
    num_verify: int = option(
        100, "Samples on which TFLM must be bit-identical to TFLite's reference kernels.", interval="[1, inf)"
    )
    num_eval: int = option(1000, "Eval samples of the float and int8 top-1 of the micro export.", interval="[1, inf)")
    arena_margin: float = option(
        0.1, "Fraction added to the smallest tensor arena measured.", interval=f"[0, {MAX_ARENA_MARGIN})"
    )
    arena_bytes: int = option(
        0,
        "A fixed tensor arena in bytes (the RAM the board can spare; the export fails if the model needs more); "
        "0: the smallest measured plus --arena_margin.",
        interval="[0, inf)",
    )
    count_instructions: bool = option(
        False, "Count TFLM's instructions per inference with valgrind's callgrind (about half a minute)."
    )
    tolerance_lsb: int = option(
        0,
        "Largest allowed difference between TFLM and TFLite's reference kernels (0: bit-identical).",
        interval="[0, inf)",
    )
    npu: str = option(
        "none",
        "Also compile the int8 model for an Arm Ethos-U NPU with Vela (pip install ethos-u-vela): none or an "
        "accelerator configuration.",
        choices=("none", *ACCELERATORS),
    )

    def __post_init__(self) -> None:
        if isinstance(self.layer_clusters, Mapping):  # The Python form, kept as the flag's text.
            object.__setattr__(self, "layer_clusters", format_layer_clusters(self.layer_clusters))
        check_c_identifier(self.name)
        check_fields(self)
        try:
            self.compression.check(self.quantize, self.weight_quantization)
        except ValueError as error:
            raise ConfigError(str(error).replace("`per_channel`", "`cluster_per_channel`")) from None
        if self.npu != "none" and not self.enabled:
            raise bad_value("npu", self.npu, "'none' without a micro export (--quantize=none)")
        if self.enabled and self.representative_samples < 1:
            raise bad_value(
                "representative_samples",
                self.representative_samples,
                f">= 1 with --quantize={self.quantize} (int8 calibration needs images)",
            )
        if self.weight_quantization == "per_tensor" and self.quantize == "qat":
            raise bad_value(
                "weight_quantization",
                self.weight_quantization,
                "'per_channel' with quantize='qat' (QAT learns per-channel ranges; per_tensor is for ptq)",
            )
        if self.pruning and self.prune_epochs < 1:
            raise bad_value("prune_epochs", self.prune_epochs, ">= 1 when pruning (prune_sparsity > 0)")

    @classmethod
    def from_settings(cls, config: ExportConfig | None = None, **settings: Any) -> ExportConfig:
        """``config`` (default: the defaults) with ``settings`` applied, by field name.

        A setting of None keeps the field's value. Two other names are
        accepted: ``compression`` (a :class:`~keras_shufflenet.micro.Compression`
        or a dict of its fields) sets the clustering and storage fields, and
        ``num_representative`` is ``representative_samples``.

        Raises:
          ConfigError: For an unknown name or a value that is not allowed.
        """
        if config is not None and not isinstance(config, cls):
            raise ConfigError(f"`config` must be a keras_shufflenet.micro.ExportConfig or None. Received: {config!r}")
        changes: dict[str, Any] = {}
        for key, value in settings.items():
            if value is None:
                continue
            if key == "compression":
                changes.update(_compression_fields(value))
            else:
                changes[_RENAMED.get(key, key)] = value
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(
                f"unknown export setting(s) {unknown}; the settings are {sorted(known)}, and `compression`."
            )
        return dataclasses.replace(config or cls(), **changes)

    @property
    def enabled(self) -> bool:
        """Whether there is an export (``quantize`` is not ``"none"``)."""
        return self.quantize != "none"

    @property
    def pruning(self) -> bool:
        return self.prune_sparsity > 0

    @property
    def resolved_qat_epochs(self) -> int:
        """The epochs of quantization-aware training: ``qat_epochs``, or ``prune_epochs`` (at least 1) for 0."""
        return self.qat_epochs or max(self.prune_epochs, 1)

    @property
    def compression(self) -> Compression:
        """The clustering and storage settings, as the compression stages take them."""
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
        return self.enabled and (self.pruning or self.quantize == "qat")


def _compression_fields(value: Any) -> dict[str, Any]:
    """The fields that a ``compression`` argument (a Compression, or a dict of its fields) sets."""
    names = [field.name for field in dataclasses.fields(Compression)]
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(
                f"`compression` has unknown keys {unknown}; allowed: {names}. Received: compression={value!r}"
            )
        value = Compression(**value)
    if not isinstance(value, Compression):
        raise ConfigError(
            "`compression` must be a keras_shufflenet.micro.Compression, a dict of its fields or None. "
            f"Received: compression={value!r}"
        )
    value.check()  # Its own checks first, in its own field names.
    fields = {field: getattr(value, attribute) for field, attribute in _COMPRESSION_FIELDS.items()}
    fields["index_bits"] = fields["index_bits"] or 0
    fields["max_decoded_bytes"] = fields["max_decoded_bytes"] or 0
    fields["layer_clusters"] = format_layer_clusters(fields["layer_clusters"])
    return fields
