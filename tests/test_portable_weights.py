"""Weights cross between Keras 3 and Keras 2 (tf_keras) by layer name."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_shufflenet import ShuffleNet, portable_weights
from keras_shufflenet.keras_compat import USE_LEGACY_KERAS

# The layers and their weights differ under tf_keras: `make test` runs these under both Kerases.
pytestmark = pytest.mark.dual_keras


def _model(classes=5):
    return ShuffleNet(input_shape=(32, 32, 1), classes=classes, scale_factor=0.25, groups=3)


def test_round_trip_restores_every_layer(tmp_path):
    source, target = _model(), _model()
    path = str(tmp_path / "weights.npz")
    portable_weights.save(source, path)
    portable_weights.load(target, path)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(target(x, training=False).numpy(), source(x, training=False).numpy())
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_mismatched_model_is_refused(tmp_path):
    path = str(tmp_path / "weights.npz")
    portable_weights.save(_model(classes=5), path)
    with pytest.raises(ValueError, match="predictions/0 has shape"):
        portable_weights.load(_model(classes=7), path)
    other = ShuffleNet(input_shape=(32, 32, 1), classes=5, scale_factor=0.5, groups=3)
    with pytest.raises(ValueError, match="shape"):
        portable_weights.load(other, path)


@pytest.mark.slow
def test_keras3_weights_load_into_tf_keras(tmp_path):
    if USE_LEGACY_KERAS:
        pytest.skip("saves under Keras 3, loads in a Keras 2 child")
    model = _model()
    path = str(tmp_path / "weights.npz")
    portable_weights.save(model, path)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from keras_shufflenet import ShuffleNet, portable_weights
        from keras_shufflenet.keras_compat import USE_LEGACY_KERAS
        assert USE_LEGACY_KERAS
        model = ShuffleNet(input_shape=(32, 32, 1), classes=5, scale_factor=0.25, groups=3)
        portable_weights.load(model, {path!r})
        np.save({str(tmp_path / "y.npy")!r}, model(np.load({str(tmp_path / "x.npy")!r}), training=False).numpy())
        """
    )
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
