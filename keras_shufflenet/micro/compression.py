"""Magnitude pruning and quantization-aware training with tensorflow-model-optimization (tfmot).

tfmot 0.8 accepts only Keras 2 models, so both need the process to run with
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported (the package then
builds tf_keras models). ShuffleNet's functional graph exposes every conv,
batch norm and activation as its own layer, which is what tfmot works on.

What pruning and clustering buy on TFLite Micro: TFLM has no sparse kernels,
so zeros save no RAM or inference time; they save flash once the weights are
stored compressed, which the export does (``tflm_compression.py``: the pruned
encoding, or a LUT for clustered weights, decoded by TFLM's DECODE operator).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.layers import ChannelShuffle
from keras_shufflenet.micro.tflm_compression import Compression

PRUNING_ON_TFLM = (
    "TFLite Micro has no sparse kernels: zero weights save no RAM or inference time. They save flash where the "
    "board's model stores the pruned kernels in TFLM's pruned encoding (see the weight storage section)."
)


def require_legacy_keras(model: Any, argument: str, value: Any) -> None:
    """Refuses pruning/QAT unless the process and the model use Keras 2 (tf_keras).

    Raises:
      ValueError: Naming the argument that requested tfmot and how to run it.
    """
    model_is_keras2 = type(model).__module__.startswith("tf_keras")
    if not (USE_LEGACY_KERAS and model_is_keras2):
        raise ValueError(
            f"`{argument}={value!r}` needs tensorflow-model-optimization, which accepts only Keras 2 (tf_keras) "
            "models. Run the process with TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported and build the "
            f"model there (keras_shufflenet then builds tf_keras models). Received a {type(model).__module__} model "
            f"in a process with TF_USE_LEGACY_KERAS={'1' if USE_LEGACY_KERAS else 'unset'}."
        )


def _is_softmax_output(model: Any) -> bool:
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


# Tracing a tf_keras training step of the whole ShuffleNet graph takes tens of
# seconds; for a handful of steps running eagerly is faster.
_EAGER_MAX_STEPS = 16


def finetuning_learning_rate(learning_rate: float, total_steps: int, cosine_decay: bool = False) -> Any:
    """The fine-tune's Adam learning rate: constant, or from ``learning_rate`` down to 0 at ``total_steps``.

    The cosine ends on the weights of the smallest steps rather than wherever the last step of a constant rate
    threw them: over seeds, the clustered quickstart's top-1 dropped less and varied less (docs/compression.md).
    """
    if cosine_decay:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    return learning_rate


def _compile_for_finetuning(
    model: Any, learning_rate: float, classifier: Any, total_steps: int, cosine_decay: bool = False
) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(finetuning_learning_rate(learning_rate, total_steps, cosine_decay)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not _is_softmax_output(classifier)),
        metrics=["accuracy"],
        run_eagerly=total_steps <= _EAGER_MAX_STEPS,
    )


def _copy(model: Any) -> Any:
    """A copy with its own layers, so fine-tuning never changes the caller's model."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _steps_per_epoch(train_data: Any) -> int:
    import tensorflow as tf

    cardinality = int(train_data.cardinality()) if hasattr(train_data, "cardinality") else -2
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("`train_data` must be a finite dataset (one epoch); received an infinite tf.data.Dataset.")
    if cardinality < 0:
        cardinality = sum(1 for _ in train_data)
    if cardinality < 1:
        raise ValueError("`train_data` is empty; fine-tuning needs at least one batch.")
    return cardinality


def is_prunable(layer: Any) -> bool:
    """Conv2D (grouped or not) and Dense kernels; tfmot leaves DepthwiseConv2D dense."""
    L = keras.layers
    return isinstance(layer, (L.Conv2D, L.Dense)) and not isinstance(layer, L.DepthwiseConv2D)


def prune(
    model: Any,
    train_data: Any,
    sparsity: float,
    epochs: int,
    learning_rate: float = 2e-4,
    verbose: int = 0,
) -> Any:
    """Magnitude-prunes conv and dense kernels to ``sparsity`` while fine-tuning, then strips the wrappers.

    The sparsity follows a polynomial decay from 0 to ``sparsity`` over the
    first three quarters of the fine-tuning steps (ten mask updates), so the
    last quarter recovers accuracy at the final sparsity.

    Args:
      model: A tf_keras functional model (see :func:`require_legacy_keras`).
      train_data: Finite ``tf.data.Dataset`` of ``(images, int labels)`` batches.
      sparsity: Target fraction of zero weights per pruned kernel, in (0, 1).
      epochs: Fine-tuning epochs, ``>= 1``.
      learning_rate: Adam learning rate of the fine-tuning. Defaults to `2e-4`.
      verbose: Keras ``fit`` verbosity. Defaults to `0`.

    Returns:
      A new, stripped tf_keras model (the caller's model is not changed).

    Raises:
      ValueError: For a Keras 3 model or an infinite or empty ``train_data``.
        (:func:`keras_shufflenet.micro.export` checks the other arguments.)
    """
    require_legacy_keras(model, "prune_sparsity", sparsity)
    import tensorflow_model_optimization as tfmot

    total_steps = _steps_per_epoch(train_data) * epochs
    pruning_steps = max(1, int(total_steps * 0.75))
    updates = min(10, pruning_steps)
    frequency = max(1, pruning_steps // updates)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=float(sparsity),
        begin_step=0,
        end_step=frequency * updates,  # A multiple of the frequency, so the last update reaches the target.
        frequency=frequency,
    )

    def wrap(layer: Any) -> Any:
        if is_prunable(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = keras.models.clone_model(_copy(model), clone_function=wrap)
    _compile_for_finetuning(pruned, learning_rate, model, total_steps)
    pruned.fit(train_data, epochs=epochs, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=verbose)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def is_clusterable(layer: Any) -> bool:
    """Conv2D (grouped or not) and Dense kernels; tfmot's clustering leaves DepthwiseConv2D alone."""
    return is_prunable(layer)


def cluster(
    model: Any,
    train_data: Any,
    clusters: int,
    epochs: int,
    per_channel: bool = False,
    preserve_sparsity: bool = False,
    learning_rate: float = Compression.learning_rate,
    centroid_init: str = "kmeans_plus_plus",
    layer_clusters: Mapping[str, int] | None = None,
    verbose: int = 0,
) -> Any:
    """Folds batch norms, clusters conv and dense kernels to shared values while fine-tuning, strips the wrappers.

    Batch norms are folded into their convolutions first
    (:func:`keras_shufflenet.micro.graph.fold_batch_norms`), so the clustered
    kernels are the ones the int8 model stores. Each kernel (with
    ``per_channel``, each output channel) keeps ``clusters`` centroids,
    initialized by k-means++ and trained with the weights. After int8
    conversion a kernel quantized per tensor holds at most ``clusters``
    distinct values, and one quantized per channel at most ``clusters`` per
    channel: TFLM's LUT compression stores them as
    ``ceil(log2(clusters))``-bit indices and one table per tensor (or per
    channel).

    Args:
      model: A tf_keras functional model (see :func:`require_legacy_keras`).
      train_data: Finite ``tf.data.Dataset`` of ``(images, int labels)`` batches.
      clusters: Centroids per kernel (or per output channel), ``>= 2``; 0
        clusters only the layers named in ``layer_clusters``.
      epochs: Fine-tuning epochs, ``>= 1``.
      per_channel: One set of centroids per output channel of each
        convolution (Dense kernels are clustered per tensor). Defaults to
        `False`: one set per kernel, for weights quantized per tensor.
      preserve_sparsity: Keep pruned weights at zero (after :func:`prune`).
        Defaults to `False`.
      learning_rate: Adam learning rate at the start of the fine-tuning,
        decayed to 0 on a cosine over its steps. Defaults to `2e-4`.
      centroid_init: tfmot's centroid initialization: ``"linear"`` (evenly
        spaced from the smallest to the largest weight), ``"kmeans_plus_plus"``,
        ``"density_based"`` or ``"random"``. Defaults to `"kmeans_plus_plus"`.
      layer_clusters: Cluster counts for the layers whose names start with
        a key (the longest matching key wins), e.g. ``{"stage4": 4}``;
        other layers get ``clusters``. Defaults to `None`.
      verbose: Keras ``fit`` verbosity. Defaults to `0`.

    Returns:
      A new, stripped tf_keras model without the folded batch norms (the
      caller's model is not changed).
    """
    require_legacy_keras(model, "clusters", clusters)
    import tensorflow_model_optimization as tfmot

    # preserve_sparsity and cluster_per_channel are only on the experimental entry point.
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster as experimental

    from keras_shufflenet.micro.graph import fold_batch_norms

    total_steps = _steps_per_epoch(train_data) * epochs
    init = getattr(tfmot.clustering.keras.CentroidInitialization, centroid_init.upper())

    def wrap(layer: Any) -> Any:
        count = clusters_for(layer.name, clusters, layer_clusters)
        if not is_clusterable(layer) or count < 2:
            return layer
        # tfmot clusters a kernel only if it has more weights (per channel) than clusters; smaller ones already fit.
        return experimental.cluster_weights(
            layer,
            number_of_clusters=count,
            cluster_centroids_init=init,
            preserve_sparsity=preserve_sparsity,
            cluster_per_channel=per_channel and isinstance(layer, keras.layers.Conv2D),
        )

    clustered = keras.models.clone_model(fold_batch_norms(model), clone_function=wrap)
    _compile_for_finetuning(clustered, learning_rate, model, total_steps, cosine_decay=True)
    clustered.fit(train_data, epochs=epochs, verbose=verbose)
    return tfmot.clustering.keras.strip_clustering(clustered)


def clusters_for(name: str, clusters: int, layer_clusters: Mapping[str, int] | None) -> int:
    """The cluster count of layer ``name``: the longest key of ``layer_clusters`` it starts with, else ``clusters``."""
    matches = [prefix for prefix in (layer_clusters or {}) if name.startswith(prefix)]
    return layer_clusters[max(matches, key=len)] if matches else clusters


def describe_clusters(clusters: int, layer_clusters: Mapping[str, int] | None, per_channel: bool) -> str:
    """The cluster counts as the export's progress line and ``report.md`` give them.

    E.g. ``"16 values per kernel, 4 in stage4*"``.
    """
    unit = "output channel" if per_channel else "kernel"
    per_layer = "".join(f", {count} in {prefix}*" for prefix, count in (layer_clusters or {}).items())
    return f"{clusters} values per {unit}{per_layer}"


def describe_finetune(epochs: int, learning_rate: float) -> str:
    """The clustering fine-tune as the export's progress line and ``report.md`` give it."""
    return f"{epochs} fine-tuning epoch(s), learning rate {learning_rate:g} decayed to 0 on a cosine"


def distinct_weights(model: Any, per_channel: bool) -> dict[str, Any]:
    """Most distinct values per kernel (or per output channel) of each conv and dense layer, and the largest.

    Count on a model whose batch norms are folded
    (:func:`keras_shufflenet.micro.graph.fold_batch_norms`): those are the
    kernels the int8 model stores.
    """
    layers = {}
    for layer in model.layers:
        if not is_clusterable(layer):
            continue
        kernel = np.asarray(layer.get_weights()[0])
        rows = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1) if per_channel else kernel.reshape(1, -1)
        layers[layer.name] = max(len(np.unique(row)) for row in rows)
    return {"max": max(layers.values(), default=0), "per_channel": per_channel, "layers": layers}


def weight_sparsity(model: Any) -> dict[str, Any]:
    """Fraction of exactly-zero kernel weights per conv/dense layer, and which layers stayed dense.

    Returns:
      ``{"overall": ..., "prunable_overall": ..., "layers": {name: {...}},
      "dense_layers": [names of layers tfmot does not prune]}``.
    """
    layers: dict[str, dict[str, Any]] = {}
    zeros = total = prunable_zeros = prunable_total = 0
    dense_layers = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # A tfmot wrapper holds the real layer.
        # By variable name: inside a QAT wrapper `inner.kernel` is the fake-quantized tensor.
        kernels = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel")]
        if not kernels:
            continue
        values = np.asarray(kernels[0])
        layer_zeros = int(np.count_nonzero(values == 0))
        prunable = is_prunable(inner)
        layers[layer.name] = {
            "type": type(inner).__name__,
            "weights": int(values.size),
            "sparsity": round(layer_zeros / values.size, 4),
            "pruned_by_tfmot": prunable,
        }
        zeros += layer_zeros
        total += values.size
        if prunable:
            prunable_zeros += layer_zeros
            prunable_total += values.size
        else:
            dense_layers.append(layer.name)
    return {
        "overall": round(zeros / total, 4) if total else 0.0,
        "prunable_overall": round(prunable_zeros / prunable_total, 4) if prunable_total else 0.0,
        "layers": layers,
        "dense_layers": dense_layers,
    }


class NoOpQuantizeConfig:
    """QAT config of ChannelShuffle: no fake-quant at all.

    The shuffle is a pure permutation (RESHAPE/TRANSPOSE/RESHAPE in TFLite),
    which int8 kernels run without requantizing: its output keeps its input's
    scale and zero point, so no quantizer belongs around it.
    """

    def get_weights_and_quantizers(self, layer: Any) -> list:
        return []

    def get_activations_and_quantizers(self, layer: Any) -> list:
        return []

    def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
        pass

    def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
        pass

    def get_output_quantizers(self, layer: Any) -> list:
        return []

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> NoOpQuantizeConfig:
        return cls()


def _quantize_config_base() -> type:
    import tensorflow_model_optimization as tfmot

    # Registered as a subclass so tfmot's isinstance checks accept it, without
    # importing tfmot when the module loads under Keras 3.
    return tfmot.quantization.keras.QuantizeConfig


def qat_scope() -> contextlib.AbstractContextManager:
    """The custom objects tfmot needs to clone or load a quantization-aware ShuffleNet."""
    import tensorflow_model_optimization as tfmot

    _quantize_config_base().register(NoOpQuantizeConfig)
    return tfmot.quantization.keras.quantize_scope(
        {
            "NoOpQuantizeConfig": NoOpQuantizeConfig,
            "ChannelShuffle": ChannelShuffle,
        }
    )


def quantization_aware_training(
    model: Any,
    train_data: Any,
    epochs: int,
    learning_rate: float = 1e-4,
    preserve_sparsity: bool = False,
    verbose: int = 0,
) -> Any:
    """Fine-tunes with fake quantization placed where TFLite's int8 kernels quantize.

    Conv + batch norm (+ ReLU) are folded as in the int8 graph; ChannelShuffle
    gets :class:`NoOpQuantizeConfig`. tfmot quantizes the Dense kernel per
    tensor (per channel does not convert: the converter's kernel transpose
    rejects it), and for that per-tensor FULLY_CONNECTED TFLite Micro and
    TFLite's reference kernels round differently by an LSB or so. With ``preserve_sparsity`` (after
    pruning) tfmot's prune-preserving scheme keeps the zero weights at zero.

    Args:
      model: A tf_keras functional model (see :func:`require_legacy_keras`).
      train_data: Finite ``tf.data.Dataset`` of ``(images, int labels)`` batches.
      epochs: Fine-tuning epochs, ``>= 1``.
      learning_rate: Adam learning rate. Defaults to `1e-4`.
      preserve_sparsity: Keep pruned weights at zero. Defaults to `False`.
      verbose: Keras ``fit`` verbosity. Defaults to `0`.

    Returns:
      The quantization-aware tf_keras model; convert it with
      :func:`keras_shufflenet.micro.convert.convert_int8`.
    """
    require_legacy_keras(model, "quantize", "qat")
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    total_steps = _steps_per_epoch(train_data) * epochs  # Also validates the dataset before the graph rewrite.

    def annotate(layer: Any) -> Any:
        if isinstance(layer, ChannelShuffle):
            return qk.quantize_annotate_layer(layer, quantize_config=NoOpQuantizeConfig())
        return layer

    with qat_scope():
        annotated = qk.quantize_annotate_model(keras.models.clone_model(_copy(model), clone_function=annotate))
        if preserve_sparsity:
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            qat_model = qk.quantize_apply(annotated, scheme)
        else:
            qat_model = qk.quantize_apply(annotated)
    _compile_for_finetuning(qat_model, learning_rate, model, total_steps)
    qat_model.fit(train_data, epochs=epochs, verbose=verbose)
    return qat_model
