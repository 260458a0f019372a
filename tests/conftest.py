"""Shared test setup.

The suite runs under Keras 3 (default) and again under Keras 2 (tf_keras)
with ``TF_USE_LEGACY_KERAS=1``; tests that need one of them skip otherwise.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_shufflenet.keras_compat import USE_LEGACY_KERAS  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs Keras 2 (tf_keras): run with TF_USE_LEGACY_KERAS=1")
    for item in items:
        if "legacy_keras" in item.keywords and not USE_LEGACY_KERAS:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
