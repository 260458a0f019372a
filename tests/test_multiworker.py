"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train in lockstep.

train/main.py runs multi-worker jobs under Keras 2 (tf_keras), restarting
itself with TF_USE_LEGACY_KERAS=1: Keras 3's fit does not support the strategy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "train", "main.py")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def make_images(root: str) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        for label in range(2):
            for i in range(count):
                image = rng.integers(0, 60, (32, 32, 1), dtype=np.uint8)
                image[label * 16 : label * 16 + 16] += 150
                path = os.path.join(root, split, f"class{label}", f"{i:02d}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tf.io.write_file(path, tf.io.encode_png(image))


@pytest.mark.slow
def test_two_workers_finish_with_the_same_weights(tmp_path: os.PathLike) -> None:
    root, model_dir = str(tmp_path / "data"), str(tmp_path / "run")
    make_images(root)
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    args = [
        f"--dataset=folder:{root}",
        f"--model_dir={model_dir}",
        "--strategy=multi_worker",
        "--epochs=1",
        "--batch_size=8",  # Global batch: 4 images per worker, 4 steps per epoch.
        "--scale_factor=0.25",
        "--learning_rate=0.01",
        "--warmup_epochs=0",
        "--verbose=0",
    ]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2")
        processes.append(
            subprocess.Popen(
                [sys.executable, MAIN, *args],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]

    # The workers ran under Keras 2; their checkpoints are read with TensorFlow alone.
    chief_dir, worker_dir = model_dir, os.path.join(model_dir, "workers", "worker_1")
    chief = tf.train.load_checkpoint(os.path.join(chief_dir, "checkpoints", "epoch-0001"))
    worker = tf.train.load_checkpoint(os.path.join(worker_dir, "checkpoints", "epoch-0001"))
    names = sorted(chief.get_variable_to_shape_map())
    assert names == sorted(worker.get_variable_to_shape_map())
    kernels = [n for n in names if "kernel" in n and "optimizer" not in n and n.startswith("model/")]
    assert len(kernels) >= 50  # Every conv and dense kernel of the network is compared.
    initial = training.build_model(training.TrainConfig(scale_factor=0.25), 2, 1).get_weights()
    compared = 0
    for name in names:
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        np.testing.assert_array_equal(chief.get_tensor(name), worker.get_tensor(name), err_msg=name)
        compared += 1
    assert compared > len(initial)  # Weights and optimizer slots.
    for directory in (chief_dir, worker_dir):
        with open(os.path.join(directory, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        assert metrics["steps_per_epoch"] == 4 and metrics["epochs"] == 1 and metrics["keras"].startswith("2.")
    with open(os.path.join(chief_dir, "checkpoints", "state.json"), encoding="utf-8") as f:
        assert json.load(f)["epoch"] == 1
