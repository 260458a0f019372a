"""The arguments of :func:`keras_shufflenet.micro.export`, checked before any slow step.

:func:`validate` is the export's edge: it names the argument, the value
received and what is allowed, so the stages behind it check nothing again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from keras_shufflenet.micro import c_sources, compression, convert, npu, tflm_compression, verify
from keras_shufflenet.micro.graph import input_shape_of
from keras_shufflenet.micro.tflm_compression import Compression
from keras_shufflenet.training.config import EXPORT_QUANTIZE_MODES

# Default allowed TFLM-vs-reference difference per quantization mode: none.
# (The classifier is exported as a 1x1 CONV_2D, see graph.DenseAsPointwiseConv:
# TFLM's FULLY_CONNECTED rounds differently from the reference kernel on some inputs.)
DEFAULT_TOLERANCE_LSB = {"ptq": 0, "qat": 0}


def _compression(value: Any, quantize: str, weight_quantization: str, model: Any) -> Compression:
    """Checks the ``compression`` argument (a :class:`Compression`, a dict of its fields, or None)."""
    if value is None:
        return Compression()
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(Compression)})
        if unknown:
            raise ValueError(
                f"`compression` has unknown keys {unknown}; allowed: "
                f"{[f.name for f in dataclasses.fields(Compression)]}. Received: compression={value!r}"
            )
        value = Compression(**value)
    if not isinstance(value, Compression):
        raise ValueError(
            f"`compression` must be a keras_shufflenet.micro.Compression, a dict of its fields or None. "
            f"Received: compression={value!r}"
        )
    value.check(quantize, weight_quantization)
    per_tensor = weight_quantization == "per_tensor"
    if value.store == "lut" and not value.clustering:
        # Before any work: the folded float kernels' distinct values bound the int8 ones.
        from keras_shufflenet.micro.graph import fold_batch_norms

        bits = value.index_bits or tflm_compression.MAX_INDEX_BITS
        counts = compression.distinct_weights(fold_batch_norms(model), per_channel=not per_tensor)["layers"]
        for layer, distinct in counts.items():
            if distinct > 2**bits:
                raise ValueError(
                    f"`compression.store`='lut' cannot store layer '{layer}': its kernel has {distinct} distinct "
                    f"values {'per tensor' if per_tensor else 'in one output channel'} and a {bits}-bit table holds "
                    f"{2**bits}. Cluster the weights (`compression.clusters` <= {2**bits}) or use store='auto'."
                )
    return value


@dataclasses.dataclass
class ExportOptions:
    """The validated arguments of :func:`export`."""

    name: str
    quantize: str
    weight_quantization: str
    prune_sparsity: float
    prune_epochs: int
    qat_epochs: int
    num_representative: int
    num_verify: int
    num_eval: int
    arena_margin: float
    arena_bytes: int | None
    count_instructions: bool
    tolerance_lsb: int
    verbose: int
    compression: Compression
    input_shape: tuple[int, int, int]
    classes: int | None
    labels: list[str] | None
    npu: str | None = None

    @property
    def pruning(self) -> bool:
        return self.prune_sparsity > 0


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def validate(model: Any, train_data: Any, eval_data: Any, **args: Any) -> ExportOptions:
    """Checks every argument of :func:`~keras_shufflenet.micro.export` (``args``: the keyword arguments).

    Returns:
      The arguments, normalized (labels as strings, defaults resolved).

    Raises:
      ValueError: Naming the first bad argument, its value and what is allowed.
    """
    c_sources.check_c_identifier(args["name"])
    npu_target = npu.check_npu(args.get("npu"))
    if npu_target is not None:
        npu.require_vela()  # Before any slow step.
    quantize, prune_sparsity = args["quantize"], args["prune_sparsity"]
    if quantize not in EXPORT_QUANTIZE_MODES:
        raise ValueError(f"`quantize` must be one of {EXPORT_QUANTIZE_MODES}. Received: quantize={quantize!r}")
    if isinstance(prune_sparsity, bool) or not isinstance(prune_sparsity, (int, float)) or not 0 <= prune_sparsity < 1:
        raise ValueError(f"`prune_sparsity` must be a number in [0, 1). Received: prune_sparsity={prune_sparsity!r}")
    convert.check_weight_quantization(args["weight_quantization"])
    if args["weight_quantization"] == "per_tensor" and quantize == "qat":
        raise ValueError(
            "`weight_quantization='per_tensor'` works with quantize='ptq' only: "
            "quantization-aware training learns per-channel weight ranges. Received: quantize='qat'"
        )
    prune_epochs = _check_count("prune_epochs", args["prune_epochs"], 0)
    if not 0 <= args["arena_margin"] < verify.MAX_ARENA_MARGIN:
        raise ValueError(
            f"`arena_margin` must be in [0, {verify.MAX_ARENA_MARGIN}). Received: arena_margin={args['arena_margin']!r}"
        )
    arena_bytes = args["arena_bytes"]
    tolerance_lsb = args["tolerance_lsb"]
    qat_epochs = args["qat_epochs"] if args["qat_epochs"] is not None else max(prune_epochs, 1)
    if prune_sparsity > 0:
        compression.require_legacy_keras(model, "prune_sparsity", prune_sparsity)
        if prune_epochs < 1:
            raise ValueError(f"`prune_epochs` must be >= 1 when pruning. Received: prune_epochs={prune_epochs}")
    if quantize == "qat":
        compression.require_legacy_keras(model, "quantize", quantize)
        qat_epochs = _check_count("qat_epochs", qat_epochs, 1)
    compression_options = _compression(args["compression"], quantize, args["weight_quantization"], model)
    if (prune_sparsity > 0 or quantize == "qat" or compression_options.clustering) and train_data is None:
        raise ValueError("`train_data` is required for pruning, clustering or QAT (each fine-tunes the model).")
    input_shape = input_shape_of(model)
    output_shape = tuple(model.outputs[0].shape[1:])
    classes = int(output_shape[0]) if len(output_shape) == 1 else None
    if eval_data is not None and classes is None:
        raise ValueError(
            f"`eval_data` needs a classifier (output shape (batch, classes)); the model outputs {output_shape}."
        )
    labels = args["labels"]
    if labels is not None:
        labels = [str(label) for label in labels]
        if classes is None or len(labels) != classes:
            raise ValueError(f"`labels` must name each of the {classes} output classes. Received {len(labels)} labels.")
    elif classes is not None:
        labels = [str(index) for index in range(classes)]
    return ExportOptions(
        name=args["name"],
        quantize=quantize,
        weight_quantization=args["weight_quantization"],
        prune_sparsity=float(prune_sparsity),
        prune_epochs=prune_epochs,
        qat_epochs=qat_epochs,
        num_representative=_check_count("num_representative", args["num_representative"], 1),
        num_verify=_check_count("num_verify", args["num_verify"], 1),
        num_eval=_check_count("num_eval", args["num_eval"], 1),
        arena_margin=args["arena_margin"],
        arena_bytes=None if arena_bytes is None else _check_count("arena_bytes", arena_bytes, 1),
        count_instructions=bool(args["count_instructions"]),
        tolerance_lsb=_check_count(
            "tolerance_lsb", DEFAULT_TOLERANCE_LSB[quantize] if tolerance_lsb is None else tolerance_lsb, 0
        ),
        verbose=args["verbose"],
        compression=compression_options,
        input_shape=input_shape,
        classes=classes,
        labels=labels,
        npu=npu_target,
    )
