"""Tests of weights stored compressed for TFLite Micro's DECODE operator (keras_shufflenet.micro.weight_storage).

The pruned encoding is written here, not by the tflite-micro package, so it
is checked against the package's TFLM interpreter: a constant tensor, encoded
and decoded by DECODE as the model's output, must come back value for value,
with per-channel zero points on either channel axis. Whole models are
checked the same way: compressed and dense give the same TFLM outputs.
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.compression import compressor, decode_insert
from tflite_micro.tensorflow.lite.micro.compression import model_editor as editor
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from keras_shufflenet import ShuffleNet
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.micro import Compression, compact, convert, export, flatbuffer, graph, verify
from keras_shufflenet.micro import weight_storage as tc
from keras_shufflenet.training.config import ConfigError, TrainConfig

_TYPES = {
    np.int8: schema_fb.TensorType.INT8,
    np.int16: schema_fb.TensorType.INT16,
    np.float32: schema_fb.TensorType.FLOAT32,
}


def _decode_in_tflm(values, zero_points, axis, encoded, ancillary):
    """A model whose output is ``values``, stored as (encoded, ancillary) and decoded by DECODE in TFLM."""
    channels = values.shape[axis] if axis is not None else 1
    quantization = editor.Quantization(
        scales=[0.05] * channels, zero_points=[int(z) for z in np.broadcast_to(zero_points, channels)], axis=axis or 0
    )
    constant = editor.Tensor(
        shape=values.shape, dtype=_TYPES[values.dtype.type], data=values.tobytes(), quantization=quantization, name="w"
    )
    unused_input = editor.Tensor(shape=(1,), dtype=schema_fb.TensorType.INT8, name="x")
    subgraph = editor.Subgraph(tensors=[unused_input, constant], inputs=[unused_input], outputs=[constant])
    model = editor.Model(subgraphs=[subgraph])
    decode_insert.insert_decode_operators(model, {(0, 1): compressor.CompressionResult(encoded, ancillary)})
    interpreter = runtime.Interpreter.from_bytes(tc._aligned(bytes(model.build())), arena_size=65536)
    interpreter.set_input(np.zeros(1, np.int8), 0)
    interpreter.invoke()
    return interpreter.get_output(0).reshape(values.shape)


def _sparse(rng, shape, zero_points, axis, dtype=np.int8, keep=0.4):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    values = rng.integers(info.min, info.max, shape) if info else rng.normal(size=shape)
    element_zero_points = tc._element_zero_points(shape, np.asarray(zero_points), axis).reshape(shape)
    return np.where(rng.random(shape) < keep, values, element_zero_points).astype(dtype)


@pytest.mark.parametrize(
    "shape, axis, zero_points",
    [
        ((6, 3, 3, 5), 0, [3, -2, 0, 7, -128, 1]),  # Conv filters: output channels first.
        ((1, 3, 3, 7), 3, [1, 0, -4, 2, 9, -1, 5]),  # Depthwise filters: channels last.
        ((6, 3, 3, 5), 0, [0, 0, 0, 0, 0, 0]),  # Symmetric weights: the decoder's one-zero-point path.
        ((4, 9), None, [-3]),  # One zero point for the whole tensor.
    ],
)
def test_pruned_encoding_decodes_in_the_tflm_interpreter(rng, shape, axis, zero_points):
    values = _sparse(rng, shape, zero_points, axis)
    encoded, ancillary = tc.encode_pruned(values, zero_points, axis)
    kept = np.count_nonzero(values.reshape(-1) != tc._element_zero_points(shape, np.asarray(zero_points), axis))
    assert len(encoded) == -(-values.size // 8) and len(ancillary) == 16 + kept
    np.testing.assert_array_equal(_decode_in_tflm(values, zero_points, axis, encoded, ancillary), values)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_pruned_encoding_of_wider_types_decodes_in_tflm(rng, dtype):
    values = _sparse(rng, (5, 8), [0] * 5, 0, dtype=dtype)
    encoded, ancillary = tc.encode_pruned(values, 0, 0)
    np.testing.assert_array_equal(_decode_in_tflm(values, [0] * 5, 0, encoded, ancillary), values)


def test_a_wrong_bit_order_would_not_decode(rng):
    # The check above can fail: least significant bit first decodes to other values.
    values = _sparse(rng, (4, 16), [0] * 4, 0)
    encoded, ancillary = tc.encode_pruned(values, 0, 0)
    flipped = np.packbits(np.unpackbits(np.frombuffer(encoded, np.uint8)), bitorder="little").tobytes()
    assert not np.array_equal(_decode_in_tflm(values, [0] * 4, 0, flipped, ancillary), values)


def test_folding_batch_norms_keeps_the_outputs_and_leaves_no_batch_norm(rng):
    keras.utils.set_random_seed(1)
    model = ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.25, groups=3)
    for layer in model.layers:  # Statistics other than the initial ones, so the fold has work to do.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape).astype(np.float32) for w in layer.get_weights()])
    folded = graph.fold_batch_norms(model)
    assert not [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    images = rng.uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    # Folded convs have a bias; the ReLU after a stride-2 unit's concat still fuses into them on export.
    assert folded.get_layer("stage2_unit1_gconv2").use_bias
    assert "RELU" not in flatbuffer.op_histogram(convert.convert_float(folded))


def test_the_longest_matching_prefix_sets_a_layers_cluster_count():
    from keras_shufflenet.micro.fine_tuning import clusters_for

    layer_clusters = {"stage4": 4, "stage4_unit1": 8}
    assert clusters_for("stage4_unit2_gconv1", 16, layer_clusters) == 4
    assert clusters_for("stage4_unit1_gconv1", 16, layer_clusters) == 8
    assert clusters_for("stage3_unit1_gconv1", 16, layer_clusters) == 16
    assert clusters_for("classifier", 0, layer_clusters) == 0


def test_index_bits_follow_the_cluster_count():
    assert [tc.index_bits_for(n) for n in (2, 3, 4, 5, 8, 16, 17, 128)] == [1, 2, 2, 3, 3, 4, 5, 7]


def _tiny_int8(weights_transform, weight_quantization="per_channel"):
    """A small conv model with its kernels transformed, converted to the compact int8 flatbuffer."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 1), batch_size=1)
    x = keras.layers.Conv2D(24, 3, name="conv_a")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(48, 3, name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="classifier")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([weights_transform(kernel).astype(np.float32), bias])
    calibration = np.random.default_rng(0).uniform(-1, 1, (16, 12, 12, 1)).astype(np.float32)
    int8 = convert.convert_int8(model, calibration, weight_quantization=weight_quantization)
    io = flatbuffer.io_quantization(int8)["input"]
    return compact.compact_for_tflm(int8).model, convert.quantize_input(calibration, io["scale"], io["zero_point"])


def _tflm_outputs(model_bytes, int8_inputs, tmp_path, name):
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(model_bytes)
    return verify.run_tflm(str(path), verify.find_min_arena(str(path), margin=0).min_bytes + 1024, int8_inputs)


def _clustered(kernel, clusters=4):
    """``clusters`` shared values per kernel, like tfmot after clustering."""
    centroids = np.linspace(kernel.min(), kernel.max(), clusters)
    return centroids[np.abs(kernel[..., None] - centroids).argmin(-1)]


@pytest.mark.parametrize("weight_quantization", ["per_channel", "per_tensor"])
def test_clustered_weights_are_stored_as_luts_and_run_bit_identical(tmp_path, weight_quantization):
    dense, images = _tiny_int8(_clustered, weight_quantization)
    stored = tc.compress(dense)
    lut = [t for t in stored.tensors if t.encoding == "lut"]
    # conv_b (1,152 x 48 weights) and the classifier shrink to 2-bit indices; conv_a's 9 weights
    # per channel do not pay for a per-channel table (kept dense, said so).
    assert {t.index_bits for t in lut} == {2} and len(lut) >= 2
    assert len(stored.model) < len(dense)
    assert all(t.encoding == "lut" or t.note for t in stored.tensors)
    assert flatbuffer.op_histogram(stored.model)[tc.DECODE_OP] == len(lut)
    np.testing.assert_array_equal(
        _tflm_outputs(stored.model, images, tmp_path, "lut"), _tflm_outputs(dense, images, tmp_path, "dense")
    )


def test_pruned_weights_are_stored_pruned_and_run_bit_identical(tmp_path, rng):
    dense, images = _tiny_int8(lambda k: np.where(rng.random(k.shape) < 0.7, 0.0, k))
    stored = tc.compress(dense)
    pruned = [t for t in stored.tensors if t.encoding == "prune"]
    assert pruned and all(t.zero_fraction > 0.6 for t in pruned)
    assert sum(t.stored_bytes for t in pruned) < 0.5 * sum(t.dense_bytes for t in pruned)
    # The model shrinks by what the encodings save, less at most DECODE_OVERHEAD_BYTES per DECODE operator:
    # the encoded tensor must not keep a second copy of the per-channel scales and zero points.
    saved = sum(t.dense_bytes - t.stored_bytes for t in stored.compressed_tensors)
    assert len(dense) - saved < len(stored.model) <= len(dense) - saved + tc.DECODE_OVERHEAD_BYTES * len(pruned)
    np.testing.assert_array_equal(
        _tflm_outputs(stored.model, images, tmp_path, "pruned"), _tflm_outputs(dense, images, tmp_path, "dense")
    )


def test_an_encoding_that_would_expand_keeps_the_tensor_dense_and_says_so():
    dense, _ = _tiny_int8(lambda k: k)  # Unclustered, unpruned: nothing to gain.
    stored = tc.compress(dense)
    assert stored.model == dense and not stored.compressed_tensors
    assert all(t.encoding == "dense" for t in stored.tensors)
    assert tc.compress(dense, store="dense").model == dense


def test_lut_storage_of_a_tensor_with_too_many_values_is_refused():
    dense, _ = _tiny_int8(lambda k: k)
    with pytest.raises(tc.CompressionError, match=r"conv_b|distinct values in one channel"):
        tc.compress(dense, store="lut")
    clustered, _ = _tiny_int8(lambda k: _clustered(k, 8))
    with pytest.raises(tc.CompressionError, match="2-bit indices holds at most 4"):
        tc.compress(clustered, store="lut", index_bits=2)


@pytest.mark.parametrize(
    "compression, kwargs, message",
    [
        (Compression(clusters=32, index_bits=4), {}, "`clusters`=32 does not fit `index_bits`=4"),
        ({"clusters": 1}, {}, r"clusters` must be 0 \(no clustering\) or an integer in \[2, 128\]"),
        ({"clusters": 256}, {}, r"\[2, 128\]"),
        ({"index_bits": 8}, {}, r"`index_bits` must be in \[1, 7\]"),
        ({"clusters": 16, "layer_clusters": {"stage4": 1}}, {}, r"`layer_clusters\['stage4'\]` must be an integer"),
        ({"layer_clusters": ["stage4", 4]}, {}, "must map layer-name prefixes"),
        ({"clusters": 8, "layer_clusters": {"stage4": 64}, "index_bits": 4}, {}, "`clusters`=64 does not fit"),
        ({"store": "zip"}, {}, "`store` must be one of"),
        ({"clusters": 16, "learning_rate": 0.0}, {}, "`learning_rate` of clustering must be a positive number"),
        ({"bits": 4}, {}, "unknown keys"),
        ("lut", {}, "must be a keras_shufflenet.micro.Compression"),
        ({"store": "lut"}, {}, "cannot store layer"),
    ],
)
def test_bad_compression_is_refused_before_any_work(tmp_path, compression, kwargs, message):
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.25, groups=3)
    with pytest.raises(ValueError, match=message):
        export(model, [np.zeros((2, 32, 32, 1), np.float32)], str(tmp_path / "out"), compression=compression, **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "quantize, weight_quantization, compression, message",
    [
        ("qat", "per_channel", Compression(clusters=8), "works with quantize='ptq' only"),
        ("ptq", "per_tensor", Compression(clusters=8, per_channel=True), "weight_quantization='per_tensor' cannot"),
        ("ptq", "per_channel", Compression(clusters=8, store="dense"), "saves no flash"),
    ],
)
def test_compression_for_a_quantization_it_cannot_serve_is_refused(quantize, weight_quantization, compression, message):
    with pytest.raises(ValueError, match=message):
        compression.check(quantize, weight_quantization)
    # The trainer refuses the same flags before training.
    flags = {"quantize": quantize, "weight_quantization": weight_quantization, "clusters": compression.clusters}
    flags.update(cluster_per_channel=compression.per_channel, weight_storage=compression.store)
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_flat(flags)


def test_kmeans_finds_the_means_of_separated_groups():
    from keras_shufflenet.micro.fine_tuning import kmeans_1d, nearest_centroid

    rng = np.random.default_rng(0)
    groups = [rng.normal(center, 0.01, size) for center, size in ((-1.0, 50), (0.2, 200), (3.0, 20))]
    centroids = kmeans_1d(np.concatenate(groups), 3)
    np.testing.assert_allclose(centroids, [group.mean() for group in groups], atol=1e-9)
    np.testing.assert_array_equal(nearest_centroid(np.array([-5.0, 1.5, 1.7, 9.0]), centroids), [0, 1, 2, 2])
    # Fewer distinct values than clusters: those values.
    np.testing.assert_array_equal(kmeans_1d(np.array([2.0, -1.0, 2.0]), 4), [-1.0, 2.0])


def _distinct_per_channel(kernel):
    return max(len(np.unique(row)) for row in np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1))


@pytest.mark.dual_keras
@pytest.mark.parametrize("per_channel", [False, True])
def test_clustering_fine_tunes_folded_kernels_at_shared_values(rng, per_channel):
    from keras_shufflenet.micro.fine_tuning import cluster

    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=(16, 16, 1), classes=4, scale_factor=0.25, groups=3, output_stride=8)
    images = rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 4, 16))).batch(8)
    gconv = model.get_layer("stage3_unit2_gconv1")
    kernel = gconv.get_weights()[0]
    kernel[..., 0] = 0  # As pruning leaves a kernel: these stay 0.
    gconv.set_weights([kernel])
    before = [w.copy() for w in model.get_weights()]

    clustered = cluster(
        model,
        data,
        8,
        1,
        per_channel=per_channel,
        preserve_sparsity=True,
        layer_clusters={"stage3": 3},
        learning_rate=1e-2,
    )

    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in clustered.layers)
    for layer in clustered.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and not isinstance(
            layer, keras.layers.DepthwiseConv2D
        ):
            weights = layer.get_weights()[0]
            limit = 3 if layer.name.startswith("stage3") else 8
            live = weights if not layer.name == gconv.name else weights[..., 1:]
            count = (
                _distinct_per_channel(live)
                if per_channel and isinstance(layer, keras.layers.Conv2D)
                else len(np.unique(live))
            )
            assert count <= limit, layer.name
    folded = clustered.get_layer(gconv.name).get_weights()[0]
    assert not folded[..., 0].any()
    # The fine-tune moved the shared values; the caller's model is untouched.
    assert not np.allclose(
        folded[..., 1:], graph.fold_batch_norms(model).get_layer(gconv.name).get_weights()[0][..., 1:]
    )
    for original, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(original, now)


def test_the_clustering_fine_tune_decays_its_learning_rate_to_zero_on_a_cosine():
    from keras_shufflenet.micro import fine_tuning

    schedule = fine_tuning.finetuning_learning_rate(2e-4, total_steps=250, cosine_decay=True)
    rates = [float(schedule(step)) for step in (0, 125, 250)]
    np.testing.assert_allclose(rates, [2e-4, 1e-4, 0.0], atol=1e-9)
    assert fine_tuning.finetuning_learning_rate(2e-4, total_steps=250) == 2e-4  # Pruning and QAT: constant.
    assert Compression().learning_rate == TrainConfig().micro.cluster_learning_rate == 1e-3


@pytest.mark.slow
def test_clustered_export_stores_luts_decoded_bit_identical_in_tflm(tmp_path, rng):
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.5, groups=3)
    images = rng.uniform(-1, 1, (64, 32, 32, 1)).astype(np.float32)
    train_data = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 4, 64))).batch(16)
    report = export(
        model,
        [images],
        str(tmp_path / "run"),
        eval_data=train_data,
        train_data=train_data,
        weight_quantization="per_tensor",
        compression=Compression(clusters=4, epochs=1),
        num_representative=32,
        num_verify=8,
        num_eval=48,
    )
    clustering, storage = report["clustering"], report["weight_storage"]
    assert clustering["clusters"] == 4 and clustering["distinct"]["max"] <= 4
    lut = storage["by_encoding"]["lut"]
    # Every conv and dense kernel big enough to gain is a 2-bit LUT; the model is under half its dense size.
    assert lut["tensors"] >= 20 and lut["stored_bytes"] < 0.3 * lut["dense_bytes"]
    assert {t["index_bits"] for t in storage["tensors"] if t["encoding"] == "lut"} == {2}
    assert report["flash_bytes"] < 0.5 * storage["dense_model_bytes"]
    assert storage["lossless_samples"] == 48 and report["tflm_bit_exact"]["bit_exact"]
    assert storage["arena_min_bytes"] >= storage["dense_arena_min_bytes"]
    assert (tmp_path / "run" / "model_int8_tflm_dense.tflite").stat().st_size == storage["dense_model_bytes"]
    assert "AddDecode()" in (tmp_path / "run" / "tflm" / "op_resolver.h").read_text()
    assert "## Weight storage (TFLM DECODE)" in (tmp_path / "run" / "report.md").read_text()
    # The caller's model keeps its batch norms and its own weights.
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert len(np.unique(model.get_layer("stage3_unit2_gconv1").get_weights()[0])) > 100


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="counting instructions needs valgrind")
def test_a_compressed_export_counts_the_instructions_of_both_models_and_of_decode(tmp_path, rng):
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.5, groups=3)
    images = rng.uniform(-1, 1, (32, 32, 32, 1)).astype(np.float32)
    train_data = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 4, 32))).batch(16)
    progress = []
    report = export(
        model,
        [images],
        str(tmp_path / "run"),
        train_data=train_data,
        weight_quantization="per_tensor",
        clusters=4,
        cluster_epochs=1,
        num_representative=16,
        num_verify=4,
        count_instructions=True,
        progress=progress.append,
    )
    storage = report["weight_storage"]
    assert report["tflm_instructions_per_inference"] == storage["instructions"] > 0
    assert storage["dense_instructions"] > 0 and 0 < storage["decode_instructions"] < storage["instructions"]
    assert storage["instructions_ratio"] == round(storage["instructions"] / storage["dense_instructions"], 4)
    assert any(line.startswith(f"count instructions: {storage['instructions']:,} per inference") for line in progress)
