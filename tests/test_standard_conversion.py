"""The conversion paths a Keras user takes on their own give the deployment graph.

``tf.lite.TFLiteConverter.from_keras_model``, ``model.export`` and a ``.keras``
file reloaded later must all convert a ShuffleNet's grouped 1x1 convolutions to
grouped CONV_2D operators with the batch norms folded in, not the training
lowering of :class:`~keras_shufflenet.layers.PointwiseGroupConv2D` (one
FULLY_CONNECTED per group, SPLIT, CONCATENATION, a MUL per batch norm). The
expected operator counts come from the architecture table.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import ShuffleNet
from keras_shufflenet.architecture import network_spec
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS, keras
from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.micro import convert, deployment_model, flatbuffer, litert

# 2x2 feature maps in stage 4: at 1x1 a static-batch Keras 3 graph squeezes the residual adds.
INPUT_SHAPE = (64, 64, 3)
CONFIG = {"groups": 3, "scale_factor": 0.25, "classes": 2}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = ShuffleNet(input_shape=INPUT_SHAPE, **CONFIG)
    # Batch norms with statistics of their own, so that a fold that went wrong shows in the outputs.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1, 1, (3, *INPUT_SHAPE)).astype(np.float32)


def expected_ops():
    """The operators of the deployment graph of ``ShuffleNet(**CONFIG)``, counted from the architecture table."""
    units = network_spec(CONFIG["groups"], CONFIG["scale_factor"]).units
    stride2 = sum(unit.strides == 2 for unit in units)
    return {
        "CONV_2D": 1 + 2 * len(units),  # conv1 and two pointwise convolutions per unit, grouped or not
        "MAX_POOL_2D": 1,
        "AVERAGE_POOL_2D": stride2,  # the shortcut of each stride-2 unit
        "RESHAPE": 2 * len(units),  # the channel shuffle: reshape, transpose, reshape
        "TRANSPOSE": len(units),
        "DEPTHWISE_CONV_2D": len(units),
        "CONCATENATION": stride2,
        "RELU": stride2,  # after the concatenation; micro.export moves it into the convolution before
        "ADD": len(units) - stride2,
        "MEAN": 1,
        "FULLY_CONNECTED": 1,  # the classifier
        "SOFTMAX": 1,
    }


def grouped_conv_count(tflite_model):
    """The CONV_2D operators whose filter sees only a slice of the input channels."""
    graph = flatbuffer.model_object(tflite_model)
    count = 0
    for subgraph in graph.subgraphs:
        for op in subgraph.operators:
            if flatbuffer.op_name(graph.operatorCodes[op.opcodeIndex]) == "CONV_2D":
                in_channels = subgraph.tensors[op.inputs[0]].shape[-1]
                filter_channels = subgraph.tensors[op.inputs[1]].shape[-1]
                count += filter_channels < in_channels
    return count


def grouped_layer_count(model):
    """The grouped 1x1 convolutions of the Keras model (``PointwiseGroupConv2D``, or ``Conv2D`` under tf_keras)."""
    return sum(
        isinstance(layer, keras.layers.Conv2D)
        and not isinstance(layer, keras.layers.DepthwiseConv2D)
        and layer.groups > 1
        for layer in model.layers
    )


def run_tflite(tflite_model, images):
    interpreter = litert.interpreter(tflite_model)
    outputs = []
    for image in images:
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    return np.stack(outputs)


def check_deployment_graph(tflite_model, model, images):
    assert flatbuffer.op_histogram(tflite_model) == expected_ops()
    assert grouped_conv_count(tflite_model) == grouped_layer_count(model) > 0
    np.testing.assert_allclose(run_tflite(tflite_model, images), model.predict(images, verbose=0), atol=1e-5)


def test_from_keras_model_converts_grouped_conv2d_with_folded_batch_norms(model, images):
    check_deployment_graph(tf.lite.TFLiteConverter.from_keras_model(model).convert(), model, images)


@pytest.mark.slow
def test_a_reloaded_keras_file_converts_the_same(model, images, tmp_path):
    path = str(tmp_path / "shufflenet.keras" if not USE_LEGACY_KERAS else tmp_path / "shufflenet.h5")
    model.save(path)
    reloaded = keras.models.load_model(path)  # The package's layers are registered: no custom_objects.
    assert [type(layer) for layer in reloaded.layers] == [type(layer) for layer in model.layers]
    check_deployment_graph(tf.lite.TFLiteConverter.from_keras_model(reloaded).convert(), model, images)


@pytest.mark.slow
def test_exported_saved_model_converts_the_same(model, images, tmp_path):
    path = str(tmp_path / "saved_model")
    model.export(path)
    check_deployment_graph(tf.lite.TFLiteConverter.from_saved_model(path).convert(), model, images)


@pytest.mark.slow
def test_int8_post_training_quantization_keeps_the_graph(model, images):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    ops = flatbuffer.op_histogram(converter.convert())
    assert ops == expected_ops()


@pytest.mark.slow
def test_deployment_model_converts_to_the_micro_export_graph(model, images):
    tflite_model = tf.lite.TFLiteConverter.from_keras_model(deployment_model(model)).convert()
    assert flatbuffer.op_histogram(tflite_model) == flatbuffer.op_histogram(convert.convert_float(model))
    ops = expected_ops()
    assert flatbuffer.op_histogram(tflite_model) == {
        **{op: count for op, count in ops.items() if op not in ("RELU", "FULLY_CONNECTED")},
        "CONV_2D": ops["CONV_2D"] + 1,  # the classifier
        "RESHAPE": ops["RESHAPE"] + 2,  # to and from the classifier's 1x1 map
    }
    flatbuffer.check_static_shapes(tflite_model)  # Batch 1, no -1 in any shape signature.
    np.testing.assert_allclose(run_tflite(tflite_model, images), model.predict(images, verbose=0), atol=1e-5)


@pytest.mark.skipif(USE_LEGACY_KERAS, reason="PointwiseGroupConv2D is the Keras 3 builder's layer")
def test_pointwise_group_conv_lowers_only_while_training_or_eager(rng):
    layer = PointwiseGroupConv2D(6, 1, groups=3, use_bias=True, bias_initializer="random_normal")
    x = tf.constant(rng.normal(size=(2, 4, 4, 9)).astype(np.float32))
    layer.build(x.shape)

    def graph_ops(training):
        graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(x).graph
        ops = {node.type for node in graph.get_operations()}
        for function in graph.as_graph_def().library.function:  # Keras runs the grouped conv in an XLA function.
            ops.update(node.op for node in function.node_def)
        return ops

    assert {"MatMul", "SplitV"} & graph_ops(True) and "Conv2D" not in graph_ops(True)
    assert "Conv2D" in graph_ops(False) and "MatMul" not in graph_ops(False)
    kernel, bias = (w.numpy() for w in layer.weights)
    expected = np.concatenate(
        [x.numpy()[..., 3 * k : 3 * k + 3] @ kernel[0, 0, :, 2 * k : 2 * k + 2] for k in range(3)], axis=-1
    )
    expected += bias
    graph_call = tf.function(lambda x, training: layer(x, training=training))
    for training in (True, False):
        np.testing.assert_allclose(graph_call(x, training), expected, atol=1e-5)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)  # Eager: the lowering.


@pytest.mark.skipif(USE_LEGACY_KERAS, reason="PointwiseGroupConv2D is the Keras 3 builder's layer")
def test_pointwise_group_conv_has_gradients_in_graph_inference(rng):
    # Fine-tuning with frozen batch-norm statistics calls the model with training=False.
    layer = PointwiseGroupConv2D(6, 1, groups=3, use_bias=False)
    x = tf.constant(rng.normal(size=(2, 4, 4, 9)).astype(np.float32))
    layer.build(x.shape)

    @tf.function
    def gradients(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, training=training)))
        return tape.gradient(loss, [x, layer.kernel])

    for inference, lowered in zip(gradients(False), gradients(True), strict=True):
        np.testing.assert_allclose(inference, lowered, rtol=1e-5, atol=1e-5)
