"""Saved models load back in a fresh process after ``import keras_shufflenet`` alone.

Each case saves in one Python process and loads in another, because in the
process that built a model its classes are registered whatever the package
does; only a fresh process shows whether ``import keras_shufflenet`` is
enough for ``keras.models.load_model`` (no ``custom_objects``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SAVE = """
import numpy as np
from keras_shufflenet import ShuffleNet
from keras_shufflenet.keras_compat import keras

images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
for name, kwargs in {"plain": {}, "se": {"squeeze_excite": True}}.items():
    model = ShuffleNet(input_shape=(32, 32, 1), classes=4, groups=3, scale_factor=0.25, output_stride=16, **kwargs)
    model.save(f"{OUT}/{name}.keras")
    np.save(f"{OUT}/{name}.npy", model.predict(images, verbose=0))
np.save(f"{OUT}/images.npy", images)
"""

# Loads with the Keras module itself, imported before or after the package.
_LOAD = """
import numpy as np
{imports}
images = np.load(f"{{OUT}}/images.npy")
for name in ("plain", "se"):
    model = keras.models.load_model(f"{{OUT}}/{{name}}.keras")
    np.save(f"{{OUT}}/{{name}}_reloaded.npy", model.predict(images, verbose=0))
"""


def _run(code: str, out: str, legacy: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    script = f"OUT = {out!r}\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "legacy, imports",
    [
        (False, "import keras_shufflenet\nimport keras"),
        pytest.param(False, "import keras\nimport keras_shufflenet", marks=pytest.mark.slow),
        pytest.param(True, "import keras_shufflenet\nimport tf_keras as keras", marks=pytest.mark.slow),
    ],
    ids=["keras3-package-first", "keras3-keras-first", "tf_keras"],
)
def test_builder_models_load_in_a_fresh_process_after_importing_the_package(tmp_path, legacy, imports):
    out = str(tmp_path)
    _run(_SAVE, out, legacy)
    _run(_LOAD.format(imports=imports), out, legacy)
    for name in ("plain", "se"):
        np.testing.assert_allclose(np.load(f"{out}/{name}_reloaded.npy"), np.load(f"{out}/{name}.npy"), atol=1e-6)


@pytest.mark.slow
def test_a_trained_model_loads_compiled_in_a_fresh_process(tmp_path):
    run = str(tmp_path / "run")
    train = [
        sys.executable,
        os.path.join(ROOT, "train", "main.py"),
        "--dataset=mnist5k",
        f"--model_dir={run}",
        "--input_size=16",
        "--output_stride=8",
        "--scale_factor=0.25",
        "--epochs=1",
        "--train_steps=2",
        "--validation_freq=100",
        "--verbose=0",
    ]
    result = subprocess.run(train, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    _run(
        """
        import numpy as np
        import keras_shufflenet
        import keras
        model = keras.models.load_model(f"{OUT}/run/model.keras")
        assert model.predict(np.zeros((1, 16, 16, 1), "float32"), verbose=0).shape == (1, 10)
        """,
        str(tmp_path),
        legacy=False,
    )
