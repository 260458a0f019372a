"""Compression by fine-tuning: magnitude pruning, weight clustering and quantization-aware training.

Pruning and QAT use tensorflow-model-optimization (tfmot). tfmot 0.8 accepts
only Keras 2 models, so both need the process to run with
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported (the package then
builds tf_keras models). ShuffleNet's functional graph exposes every conv,
batch norm and activation as its own layer, which is what tfmot works on.
Clustering (:func:`cluster`) is the package's own and runs under either Keras.

What pruning and clustering buy on TFLite Micro: TFLM has no sparse kernels,
so zeros save no RAM or inference time; they save flash once the weights are
stored compressed, which the export does (``tflm_compression.py``: the pruned
encoding, or a LUT for clustered weights, decoded by TFLM's DECODE operator).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.layers import ChannelShuffle
from keras_shufflenet.micro.graph import fold_batch_norms
from keras_shufflenet.micro.qat_objects import NoOpQuantizeConfig, qat_scope
from keras_shufflenet.micro.weight_storage import Compression

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
    import tensorflow_model_optimization as tfmot  # Keras 2 only: imported by pruning and QAT alone.

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


def kmeans_1d(values: np.ndarray, clusters: int, max_iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means on scalars: the sorted centroids of ``values`` (deterministic).

    The centroids start at the quantiles ``(i + 0.5) / clusters``, so they
    follow the weights' density, and move to their clusters' means until no
    weight changes cluster. A value range with fewer distinct values than
    ``clusters`` gives those values.
    """
    values = np.asarray(values, np.float64).ravel()
    distinct = np.unique(values)
    if len(distinct) <= clusters:
        return distinct
    centroids = np.unique(np.quantile(values, (np.arange(clusters) + 0.5) / clusters))
    assignment = None
    for _ in range(max_iterations):
        new_assignment = nearest_centroid(values, centroids)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = np.bincount(assignment, minlength=len(centroids))
        sums = np.bincount(assignment, weights=values, minlength=len(centroids))
        # An emptied cluster keeps its centroid (it may win weights back next round).
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids


def nearest_centroid(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest of the sorted ``centroids`` for each value (ties go to the lower one)."""
    return np.searchsorted((centroids[:-1] + centroids[1:]) / 2, values, side="left").astype(np.int32)


class SharedValues:
    """One kernel held at shared values, with latent weights that choose their value.

    The kernel variable always holds shared values: each weight holds the
    centroid of its cluster. Each weight also has a latent value, which the
    optimizer's steps move (the straight-through estimate), and it joins the
    cluster whose centroid is nearest its latent value. After each step
    (:meth:`update`), the step's change of each weight moves its latent
    value, each centroid moves by the mean change of its cluster (weight
    sharing), and the weights rejoin their nearest centroids.

    Attributes:
      variable: The kernel variable.
    """

    def __init__(self, variable: Any, kernel: np.ndarray, clusters: int, per_channel: bool, keep_zeros: bool) -> None:
        # Rows: one per output channel (per_channel) or the whole kernel; weights in the kernel's order.
        channels = kernel.shape[-1]
        row_of = (np.arange(kernel.size) % channels if per_channel else np.zeros(kernel.size, np.int64)).astype(
            np.int32
        )
        flat = kernel.reshape(-1).astype(np.float32)
        live = flat != 0 if keep_zeros else np.ones(flat.shape, bool)
        rows = channels if per_channel else 1
        centroids = np.zeros((rows, clusters), np.float32)
        for row in range(rows):
            values = flat[live & (row_of == row)]
            found = kmeans_1d(values, clusters) if values.size else np.zeros(1)
            # Fewer distinct values than clusters: repeat the last (a repeat is never the nearest).
            centroids[row] = np.concatenate([found, np.repeat(found[-1:], clusters - len(found))])
        self.variable = variable
        self._shape = kernel.shape
        self._clusters = clusters
        self._dead = rows * clusters  # The segment of the zeros that pruning left: held at 0.
        self._row_of = tf.constant(row_of)
        self._live = tf.constant(live)
        self._latent = tf.Variable(flat, trainable=False)
        self._centroids = tf.Variable(np.append(centroids.reshape(-1), 0.0).astype(np.float32), trainable=False)
        self._segments = tf.Variable(self._nearest(tf.constant(flat), tf.constant(centroids.reshape(-1))))

    def _nearest(self, latent: Any, centroids: Any) -> Any:
        candidates = tf.gather(tf.reshape(centroids[: self._dead], [-1, self._clusters]), self._row_of)
        choice = tf.argmin(tf.abs(candidates - latent[:, None]), axis=1, output_type=tf.int32)
        return tf.where(self._live, self._row_of * self._clusters + choice, self._dead)

    def share(self) -> None:
        """Sets the kernel to its weights' centroids."""
        self.variable.assign(tf.reshape(tf.gather(self._centroids, self._segments), self._shape))

    def update(self) -> None:
        """After an optimizer step: moves latent weights and centroids by the step, reassigns, shares."""
        stepped = tf.reshape(tf.convert_to_tensor(self.variable), [-1])
        self._latent.assign_add(stepped - tf.gather(self._centroids, self._segments))
        sums = tf.math.unsorted_segment_sum(stepped, self._segments, self._dead + 1)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(stepped), self._segments, self._dead + 1)
        centroids = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), self._centroids)
        self._centroids.assign(tf.tensor_scatter_nd_update(centroids, [[self._dead]], [0.0]))
        self._segments.assign(self._nearest(self._latent, self._centroids))
        self.share()


class _ShareValues(keras.callbacks.Callback):
    """Keeps every clustered kernel at shared values: from the start, and after each training step."""

    def __init__(self, kernels: list[SharedValues]) -> None:
        super().__init__()
        self.kernels = kernels
        self._update = tf.function(self._update_all)

    def _update_all(self) -> None:
        for kernel in self.kernels:
            kernel.update()

    def on_train_begin(self, logs: Any = None) -> None:
        for kernel in self.kernels:
            kernel.share()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._update()


def cluster(
    model: Any,
    train_data: Any,
    clusters: int,
    epochs: int,
    per_channel: bool = False,
    preserve_sparsity: bool = False,
    learning_rate: float = Compression.learning_rate,
    layer_clusters: Mapping[str, int] | None = None,
    verbose: int = 0,
) -> Any:
    """Folds batch norms, clusters conv and dense kernels to shared values while fine-tuning.

    Batch norms are folded into their convolutions first
    (:func:`keras_shufflenet.micro.graph.fold_batch_norms`), so the clustered
    kernels are the ones the int8 model stores. Each kernel (with
    ``per_channel``, each output channel) is split into ``clusters`` groups
    by 1-D k-means (:func:`kmeans_1d`), and the model fine-tunes with each
    weight at its group's centroid (:class:`SharedValues`: the centroids
    move by their weights' mean update, and each weight's latent value
    decides which centroid it takes, as tensorflow-model-optimization's
    clustering does). It runs in plain Keras (Keras 3 or tf_keras), so the
    export clusters in the process that trained.

    After int8 conversion a kernel quantized per tensor holds at most
    ``clusters`` distinct values, and one quantized per channel at most
    ``clusters`` per channel: TFLM's LUT compression stores them as
    ``ceil(log2(clusters))``-bit indices and one table per tensor (or per
    channel).

    Args:
      model: A functional Keras model (Keras 3 or tf_keras).
      train_data: Finite ``tf.data.Dataset`` of ``(images, int labels)`` batches.
      clusters: Shared values per kernel (or per output channel), ``>= 2``; 0
        clusters only the layers named in ``layer_clusters``.
      epochs: Fine-tuning epochs, ``>= 1``.
      per_channel: One set of values per output channel of each
        convolution (Dense kernels are clustered per tensor). Defaults to
        `False`: one set per kernel, for weights quantized per tensor.
      preserve_sparsity: Keep zero weights (after :func:`prune`) at zero,
        outside the clusters. Defaults to `False`.
      learning_rate: Adam learning rate at the start of the fine-tuning,
        decayed to 0 on a cosine over its steps. Defaults to `1e-3`.
      layer_clusters: Cluster counts for the layers whose names start with
        a key (the longest matching key wins), e.g. ``{"stage4": 4}``;
        other layers get ``clusters``. Defaults to `None`.
      verbose: Keras ``fit`` verbosity. Defaults to `0`.

    Returns:
      A new model without the folded batch norms (the caller's model is not
      changed).
    """

    total_steps = _steps_per_epoch(train_data) * epochs
    folded = fold_batch_norms(model)
    kernels = []
    for layer in folded.layers:
        count = clusters_for(layer.name, clusters, layer_clusters)
        if is_clusterable(layer) and count >= 2:
            kernel = np.asarray(layer.get_weights()[0])
            channelwise = per_channel and isinstance(layer, keras.layers.Conv2D)
            kernels.append(SharedValues(layer.kernel, kernel, count, channelwise, preserve_sparsity))
    _compile_for_finetuning(folded, learning_rate, model, total_steps, cosine_decay=True)
    folded.fit(train_data, epochs=epochs, verbose=verbose, callbacks=[_ShareValues(kernels)])
    return folded


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
    import tensorflow_model_optimization as tfmot  # Keras 2 only: imported by pruning and QAT alone.

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
