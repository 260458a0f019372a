"""The arguments of :func:`keras_shufflenet.micro.export`, checked before any slow step.

:func:`validate` is the export's edge: it names the argument, the value
received and what is allowed, so the stages behind it check nothing again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_shufflenet.micro import fine_tuning, npu, weight_storage
from keras_shufflenet.micro.export_config import ExportConfig
from keras_shufflenet.micro.graph import fold_batch_norms, input_shape_of
from keras_shufflenet.micro.weight_storage import Compression


def _check_lut_fits(config: ExportConfig, model: Any) -> Compression:
    """With ``weight_storage="lut"`` and no clustering, checks that every kernel's distinct values fit a table."""
    value = config.compression
    per_tensor = config.weight_quantization == "per_tensor"
    if value.store == "lut" and not value.clustering:
        # Before any work: the folded float kernels' distinct values bound the int8 ones.
        bits = value.index_bits or weight_storage.MAX_INDEX_BITS
        counts = fine_tuning.distinct_weights(fold_batch_norms(model), per_channel=not per_tensor)["layers"]
        for layer, distinct in counts.items():
            if distinct > 2**bits:
                raise ValueError(
                    f"`compression.store`='lut' cannot store layer '{layer}': its kernel has {distinct} distinct "
                    f"values {'per tensor' if per_tensor else 'in one output channel'} and a {bits}-bit table holds "
                    f"{2**bits}. Cluster the weights (`compression.clusters` <= {2**bits}) or use store='auto'."
                )
    return value


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """An export's settings, and what :func:`validate` derived from them, the model and the data."""

    config: ExportConfig
    compression: Compression
    qat_epochs: int
    arena_bytes: int | None
    npu: str | None
    input_shape: tuple[int, int, int]
    classes: int | None
    labels: list[str] | None
    verbose: int


def validate(
    model: Any, train_data: Any, eval_data: Any, config: ExportConfig, labels: Any, verbose: int
) -> ExportOptions:
    """Checks what the export's settings (``config``, already checked on their own) need of the model and data.

    Returns:
      The settings with what they resolve to for this model (labels as strings, defaults resolved).

    Raises:
      ValueError: Naming the first bad argument, its value and what is allowed.
    """
    if not config.enabled:
        raise ValueError(
            "`quantize` must be one of ('ptq', 'qat') for an export ('none' only turns a training run's export "
            f"off). Received: quantize={config.quantize!r}"
        )
    npu_target = None if config.npu == "none" else config.npu
    if npu_target is not None:
        npu.require_vela()  # Before any slow step.
    if config.pruning:
        fine_tuning.require_legacy_keras(model, "prune_sparsity", config.prune_sparsity)
    if config.quantize == "qat":
        fine_tuning.require_legacy_keras(model, "quantize", config.quantize)
    compression_options = _check_lut_fits(config, model)
    if (config.pruning or config.quantize == "qat" or compression_options.clustering) and train_data is None:
        raise ValueError("`train_data` is required for pruning, clustering or QAT (each fine-tunes the model).")
    input_shape = input_shape_of(model)
    output_shape = tuple(model.outputs[0].shape[1:])
    classes = int(output_shape[0]) if len(output_shape) == 1 else None
    if eval_data is not None and classes is None:
        raise ValueError(
            f"`eval_data` needs a classifier (output shape (batch, classes)); the model outputs {output_shape}."
        )
    if labels is not None:
        labels = [str(label) for label in labels]
        if classes is None or len(labels) != classes:
            raise ValueError(f"`labels` must name each of the {classes} output classes. Received {len(labels)} labels.")
    elif classes is not None:
        labels = [str(index) for index in range(classes)]
    return ExportOptions(
        config=config,
        compression=compression_options,
        qat_epochs=config.resolved_qat_epochs,
        arena_bytes=config.arena_bytes or None,
        npu=npu_target,
        input_shape=input_shape,
        classes=classes,
        labels=labels,
        verbose=verbose,
    )
