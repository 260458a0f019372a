"""keras-shufflenet: ShuffleNet v1 for Keras with a TensorFlow Lite Micro path."""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The firmware application (its sources, Makefile and tools) ships inside the package, where
# keras_shufflenet.micro.firmware.tflm_app finds it once installed; a checkout uses tflm/ itself.
APP_SOURCE, APP_PACKAGE_DIR = "tflm", os.path.join("keras_shufflenet", "micro", "firmware", "app")


class BuildPyWithFirmwareApp(build_py):
    """build_py that also copies tflm/ (less its build outputs) into the built package."""

    def run(self) -> None:
        super().run()
        if os.path.isdir(APP_SOURCE):
            shutil.copytree(
                APP_SOURCE,
                os.path.join(self.build_lib, APP_PACKAGE_DIR),
                ignore=shutil.ignore_patterns("build", "__pycache__", "*.o", "*.a"),
                dirs_exist_ok=True,
            )


EXTRAS = {
    # Training and evaluation on tf.data / TensorFlow Datasets (train/main.py).
    "train": ["tensorflow-datasets>=4.9,<5", "absl-py>=1.4", "matplotlib>=3.7", "tensorboard", "importlib_resources"],
    # Pruning, quantization and TFLite Micro verification (keras_shufflenet.micro); LiteRT runs .tflite
    # models (TensorFlow's tf.lite.Interpreter is deprecated), TensorFlow's converter writes them.
    # tflite-micro is published as nightlies only; the compression tools used here change between them, so
    # constraints.txt pins the one tested. tf-keras must match TensorFlow's minor version.
    "micro": [
        "tensorflow-model-optimization>=0.8.1,<0.9",
        "tf-keras>=2.21,<2.22",
        "tflite-micro>=0.dev20261023182759",
        "ai-edge-litert>=2.3,<3",
    ],
    # The Arm Ethos-U NPU target (micro.export(npu=...)): Arm's Vela compiler.
    "npu": ["ethos-u-vela>=5.2,<5.3"],
    # Reading official checkpoints with PyTorch instead of the built-in reader (optional; see
    # keras_shufflenet.weights): the test reference uses it too.
    "convert": ["torch"],
    # Tests, linting and formatting.
    "dev": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.17,<0.18", "import-linter>=2.17,<3"],
}
# "all" leaves out "convert": PyTorch from PyPI is gigabytes of CUDA wheels, and the built-in reader needs none.
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "convert" for req in reqs})

setup(
    name="keras-shufflenet",
    version="0.1.0",
    description="ShuffleNet v1 (Zhang et al., CVPR 2018) for Keras, with a TensorFlow Lite Micro target.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_shufflenet", "keras_shufflenet.*"]),
    package_data={"keras_shufflenet": ["datasets/data/*.csv.gz", "datasets/data/*.md", "datasets/data/*.txt"]},
    # The ranges the package is tested on (exact versions: constraints.txt, which make and CI install).
    install_requires=["tensorflow>=2.21,<2.22", "keras>=3.10,<4", "numpy>=1.26"],
    extras_require=EXTRAS,
    cmdclass={"build_py": BuildPyWithFirmwareApp},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
