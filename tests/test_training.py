"""Tests of training, evaluation, resume, export and the train/main.py entry point."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_shufflenet
from benchmarks.failure_probes import write_pattern_folder as make_pattern_folder
from keras_shufflenet import data, export_job, training
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.micro.weight_storage import Compression
from keras_shufflenet.training import checkpointing, optimization
from keras_shufflenet.training import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "train", "main.py")


def tiny_config(dataset_root: str, model_dir: str, **changes: object) -> training.TrainConfig:
    config = training.TrainConfig.from_flat(
        dict(
            dataset=f"folder:{dataset_root}",
            model_dir=model_dir,
            epochs=2,
            batch_size=16,
            input_size=32,
            groups=3,
            scale_factor=0.25,
            learning_rate=0.01,
            warmup_epochs=0,
            verbose=0,
        )
    )
    return config.replace(**changes)


def config_flags(config: training.TrainConfig) -> list[str]:
    return [f"--{name}={value}" for name, value in config.flat().items() if value is not None]


def run_main(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MAIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
        cwd=REPO,
    )


# ------------------------------------------------------------------ fast


def test_every_flag_is_a_config_field_with_help() -> None:
    names = [name for name, _, _ in config_lib.flag_fields()]
    assert len(names) == len(set(names))  # Flat names are unique across the nested configs.
    assert list(training.TrainConfig().flat()) == names
    for name, _, field in config_lib.flag_fields():
        assert field.metadata["help"], name
    config = training.TrainConfig.from_flat({"augment": "scale", "quantize": "ptq", "epochs": 3})
    assert (config.data.augment, config.micro.quantize, config.epochs) == ("scale", "ptq", 3)
    assert training.TrainConfig.from_flat(config.flat()) == config
    with pytest.raises(training.ConfigError, match="unknown configuration field 'no_such_flag'"):
        config.replace(no_such_flag=1)


def test_the_shipped_flagfiles_name_only_config_fields() -> None:
    names = {name for name, _, _ in config_lib.flag_fields()}
    for filename in os.listdir(os.path.join(REPO, "train", "configs")):
        with open(os.path.join(REPO, "train", "configs", filename), encoding="utf-8") as f:
            used = re.findall(r"^--(\w+)=", f.read(), re.M)
        assert used and set(used) <= names, filename


def test_the_config_module_imports_no_tensorflow() -> None:
    code = "import sys, keras_shufflenet.training.config, keras_shufflenet.run_dir; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_schedule_warms_up_then_decays_to_zero() -> None:
    cosine = optimization.WarmupDecaySchedule(0.5, total_steps=110, warmup_steps=10, decay="cosine")
    linear = optimization.WarmupDecaySchedule(0.5, total_steps=110, warmup_steps=10, decay="linear")
    values = {step: (float(cosine(step)), float(linear(step))) for step in (0, 4, 10, 35, 60, 110, 200)}
    assert values[0] == pytest.approx((0.05, 0.05)) and values[4] == pytest.approx((0.25, 0.25))
    assert values[10] == pytest.approx((0.5, 0.5))
    assert values[35] == pytest.approx((0.5 * 0.5 * (1 + np.cos(np.pi / 4)), 0.375))
    assert values[60] == pytest.approx((0.25, 0.25))
    assert values[110] == pytest.approx((0.0, 0.0), abs=1e-7) and values[200] == pytest.approx((0.0, 0.0), abs=1e-7)
    constant = optimization.WarmupDecaySchedule(0.1, total_steps=50, decay="constant")
    assert float(constant(0)) == pytest.approx(0.1) and float(constant(49)) == pytest.approx(0.1)


def test_weight_decay_is_l2_on_conv_and_dense_kernels_only() -> None:
    model = keras_shufflenet.ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.25)
    optimization.add_kernel_weight_decay(model, 4e-5)
    expected = 0.0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            kernel = layer.get_weights()[0]
            assert kernel.ndim in (2, 4)
            expected += 2e-5 * float(np.sum(kernel.astype(np.float64) ** 2))
    got = float(tf.add_n([tf.cast(loss, tf.float32) for loss in model.losses]))
    assert len(model.losses) == 1 + 16 * 3 + 1  # conv1, three convs per unit, predictions.
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "serve"}, "mode must be one of"),
        ({"strategy": "horovod"}, "strategy must be one of"),
        ({"groups": 5}, r"groups must be one of \(1, 2, 3, 4, 8\). Received: groups=5"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"input_size": 7}, "input_size must be >= 8 for ShuffleNet with any output stride. Received: input_size=7"),
        ({"input_size": 16, "output_stride": 32}, "input_size must be >= 32 for ShuffleNet with output_stride=32"),
        ({"output_stride": 4}, r"output_stride must be one of \(0, 8, 16, 32\). Received: output_stride=4"),
        ({"shallow": "yes"}, "shallow must be True or False"),
        ({"quantize": "ptq", "representative_samples": 0}, "representative_samples must be >= 1 with --quantize=ptq"),
        ({"model_dir": __file__}, "model_dir must be a directory path, not an existing file"),
        ({"scale_factor": 0.01}, "scale_factor must be >= 0.056 with groups=3"),
        ({"label_smoothing": 1.5}, "label_smoothing must be in"),
        ({"quantize": "int4"}, "quantize must be one of"),
        ({"weight_quantization": "per_layer"}, "weight_quantization must be one of"),
        ({"quantize": "qat", "weight_quantization": "per_tensor"}, "weight_quantization must be 'per_channel' with"),
        ({"quantize": "ptq", "npu": "ethos-u99"}, r"npu must be one of \('none', 'ethos-u55-32'"),
        ({"npu": "ethos-u55-128"}, "npu must be 'none' without a micro export"),
    ],
)
def test_bad_config_values_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(training.ConfigError, match=message):
        training.TrainConfig().replace(**changes).validate()


@pytest.mark.parametrize(
    "input_size, output_stride, line",
    [
        (32, 0, "Input 32x32: output stride 16 (conv1 stride 2, no max pool), final feature map 2x2 (chosen for"),
        (56, 0, "Input 56x56: output stride 32 (conv1 stride 2, 3x3/2 max pool), final feature map 2x2 (chosen"),
        (16, 0, "Input 16x16: output stride 8 (conv1 stride 1, no max pool), final feature map 2x2 (chosen"),
        (32, 8, "Input 32x32: output stride 8 (conv1 stride 1, no max pool), final feature map 4x4 (set by"),
    ],
)
def test_the_trainer_chooses_and_names_the_stem_for_the_input_size(input_size, output_stride, line) -> None:
    config = training.TrainConfig().replace(input_size=input_size, output_stride=output_stride)
    assert training.describe_configuration(config).startswith(line)
    model = training.build_model(config, 10, 1)
    expected_stride = output_stride or {32: 16, 56: 32, 16: 8}[input_size]
    assert model.get_layer("conv1").strides[0] == (1 if expected_stride == 8 else 2)
    assert any(layer.name == "maxpool" for layer in model.layers) == (expected_stride == 32)


def _guard(tmp_path: os.PathLike) -> checkpointing.EpochCheckpoint:
    guard = checkpointing.EpochCheckpoint(checkpoint=None, directory=str(tmp_path), history={})
    guard.set_model(types.SimpleNamespace(stop_training=False))
    guard.on_epoch_begin(0)
    return guard


def test_divergence_guard_stops_on_a_finite_loss_that_explodes(tmp_path: os.PathLike) -> None:
    guard = _guard(tmp_path)
    guard.on_train_batch_end(0, {"loss": 2.3})  # the bound: 100x the first batch's loss
    assert guard.loss_bound == pytest.approx(230.0)
    guard.on_train_batch_end(1, {"loss": 50.0})
    assert guard.diverged_at is None and not guard.model.stop_training
    guard.on_train_batch_end(2, {"loss": 3.2e12})
    assert guard.diverged_at == (1, 3) and guard.model.stop_training
    assert guard.divergence.startswith("loss exploded to 3.2e+12, more than 100x")
    guard.on_epoch_end(0, {"loss": 3.2e12})  # nothing is saved (checkpoint=None would fail)
    assert guard.last_saved_epoch is None and not os.listdir(tmp_path)


def test_divergence_guard_bound_is_at_least_100_and_stops_on_a_nan_validation_loss(tmp_path: os.PathLike) -> None:
    guard = _guard(tmp_path)
    guard.on_train_batch_end(0, {"loss": 0.01})
    assert guard.loss_bound == pytest.approx(100.0)
    guard.on_epoch_end(0, {"loss": 0.5, "val_loss": float("nan")})
    assert guard.diverged_at == (1, 0) and guard.divergence == "validation loss became NaN or infinite"
    assert guard.last_saved_epoch is None and not os.listdir(tmp_path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_whole_one(tmp_path: os.PathLike) -> None:
    directory = str(tmp_path / "checkpoints")
    saver = checkpointing.EpochCheckpoint(tf.train.Checkpoint(v=tf.Variable(1.0)), directory, history={})
    saver.save(1)
    saver.save(2)
    assert checkpointing.read_state(directory)["epoch"] == 2
    state_path = os.path.join(directory, "state.json")
    with open(state_path, "r+", encoding="utf-8") as f:  # truncated mid-write by a full disk
        f.truncate(10)
    assert checkpointing.read_state(directory)["epoch"] == 2  # from epoch-0002.state.json
    for name in os.listdir(directory):
        if name.startswith("epoch-0002.data"):
            os.remove(os.path.join(directory, name))
    assert checkpointing.read_state(directory)["epoch"] == 1
    for name in os.listdir(directory):
        if name.startswith("epoch-0001.data"):
            os.remove(os.path.join(directory, name))
    with pytest.raises(training.ConfigError, match="no whole checkpoint in .*remove the directory"):
        checkpointing.read_state(directory)
    assert checkpointing.read_state(str(tmp_path / "none")) is None


def test_batch_size_must_divide_across_replicas(tmp_path: os.PathLike) -> None:
    two_replicas = types.SimpleNamespace(num_replicas_in_sync=2)
    config = training.TrainConfig(model_dir=str(tmp_path), batch_size=33, verbose=0)
    with pytest.raises(training.ConfigError, match="batch_size=33 is not divisible by the 2 replicas"):
        training.train(config, strategy=two_replicas)


def test_clustering_flags_become_the_exports_compression_without_tfmot() -> None:
    flags = {"quantize": "ptq", "weight_quantization": "per_tensor", "clusters": 16, "layer_clusters": "stage4:4"}
    micro_config = training.TrainConfig.from_flat(flags).micro
    assert micro_config.compression == Compression(clusters=16, layer_clusters={"stage4": 4})
    # Clustering runs in the training process; only pruning and QAT need tfmot's Keras 2 child.
    assert not micro_config.needs_tfmot
    assert training.TrainConfig.from_flat({**flags, "prune_sparsity": 0.5}).micro.needs_tfmot
    tuned = training.TrainConfig.from_flat({**flags, "cluster_epochs": 4, "cluster_learning_rate": 3e-4}).micro
    assert tuned.compression == Compression(clusters=16, layer_clusters={"stage4": 4}, epochs=4, learning_rate=3e-4)
    with pytest.raises(training.ConfigError, match="cluster_learning_rate"):
        training.TrainConfig.from_flat({**flags, "cluster_learning_rate": 0})
    with pytest.raises(training.ConfigError, match="layer_clusters"):
        training.TrainConfig.from_flat({**flags, "layer_clusters": "stage4=4"})


def test_micro_export_gets_the_agreed_arguments(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "data")
    make_pattern_folder(root, per_class=4, test_per_class=2)
    calls = []
    fake_micro = types.SimpleNamespace(export=lambda *args, **kwargs: calls.append((args, kwargs)) or {"ok": True})
    monkeypatch.setitem(sys.modules, "keras_shufflenet.micro", fake_micro)
    monkeypatch.setattr(keras_shufflenet, "micro", fake_micro, raising=False)
    config = tiny_config(root, str(tmp_path / "run"), quantize="ptq", representative_samples=5, batch_size=4)
    source = data.load_source(config.dataset)
    model = training.build_model(config, source.num_classes, source.channels)
    assert export_job.run_micro_export(config, model, source) == {"ok": True}
    ((args, kwargs),) = calls
    model_arg, representative, output_dir, export_config = args
    assert model_arg is model and output_dir == config.model_dir
    # The run's ExportConfig as it is: no settings mapped by hand.
    assert export_config is config.micro
    assert set(kwargs) == {"eval_data", "train_data", "labels", "verbose", "progress"}
    assert kwargs["verbose"] == 0 and kwargs["progress"] is None  # --verbose=0: no stage lines either.
    assert (export_config.quantize, export_config.weight_quantization, export_config.npu) == (
        "ptq",
        "per_channel",
        "none",
    )
    # No clustering; weights stored in the smallest encoding that shrinks them.
    assert export_config.compression == Compression(clusters=0, store="auto")
    assert kwargs["labels"] == ["class0", "class1", "class2", "class3"]
    batches = list(representative)
    assert sum(len(b) for b in batches) == 5 and batches[0].shape[1:] == (32, 32, 1)
    assert batches[0].dtype == np.float32 and batches[0].min() >= -1 and batches[0].max() <= 1
    images, labels = next(iter(kwargs["eval_data"]))
    assert images.shape[1:] == (32, 32, 1) and labels.dtype == tf.int32
    assert sum(int(tf.shape(y)[0]) for _, y in kwargs["train_data"]) == 16  # 4 batches, one pass.


def test_cli_rejects_unknown_flag_values_in_one_line() -> None:
    result = run_main(["--mode=serve"], timeout=60)
    assert result.returncode != 0
    assert "flag --mode=serve" in result.stderr and "train" in result.stderr


def test_cli_reads_a_flagfile_and_rejects_an_unknown_dataset_in_one_line(tmp_path: os.PathLike) -> None:
    flagfile = os.path.join(tmp_path, "bad.flags")
    with open(flagfile, "w", encoding="utf-8") as f:
        f.write(f"# A comment line.\n--dataset=no_such_dataset_xyz\n--model_dir={tmp_path}\n")
    result = run_main([f"--flagfile={flagfile}"], timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: dataset 'no_such_dataset_xyz' is not a TensorFlow Datasets name"), last
    assert sorted(os.listdir(tmp_path)) == ["bad.flags"]  # A refused run writes nothing.


# ------------------------------------------------------------------ slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[training.TrainConfig, dict]:
    root = str(tmp_path_factory.mktemp("data"))
    make_pattern_folder(root)
    with open(os.path.join(root, "train", "class0", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    config = tiny_config(root, str(tmp_path_factory.mktemp("run")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = training.train(config)
    metrics["_warnings"] = [str(w.message) for w in caught]
    return config, metrics


def _copy_of_trained_run(config: training.TrainConfig, model_dir: str) -> training.TrainConfig:
    """The trained run copied to ``model_dir`` (tests change the copy, never the shared run)."""
    shutil.copytree(config.model_dir, model_dir)
    return config.replace(model_dir=model_dir)


@pytest.mark.slow
def test_training_writes_metrics_model_checkpoint_and_plot(trained: tuple[training.TrainConfig, dict]) -> None:
    config, metrics = trained
    with open(os.path.join(config.model_dir, "metrics.json"), encoding="utf-8") as f:
        on_disk = json.load(f)
    for key in ("eval_top1", "eval_top5", "train_images_per_sec", "wall_seconds", "resumed_from_epoch"):
        assert on_disk[key] == pytest.approx(metrics[key])
    assert on_disk["resumed_from_epoch"] == 0 and on_disk["skipped_images"] == 1
    assert 0 <= on_disk["eval_top1"] <= on_disk["eval_top5"] == 1.0  # 4 classes: top-5 covers all.
    assert on_disk["train_images_per_sec"] > 0 and on_disk["epochs"] == 2
    assert on_disk["steps_per_epoch"] == 48 // 16 and on_disk["num_train_images"] == 48
    with open(os.path.join(config.model_dir, "checkpoints", "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    assert state["epoch"] == 2 and state["history"]["epoch"] == [1, 2] and len(state["history"]["val_top1"]) == 2
    with open(os.path.join(config.model_dir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isdir(os.path.join(config.model_dir, "logs", "train"))
    with open(os.path.join(config.model_dir, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["scale_factor"] == 0.25

    # The .keras file and the SavedModel compute the same function.
    model = training.load_saved_model(os.path.join(config.model_dir, "model.keras"))
    images = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
    saved = tf.saved_model.load(os.path.join(config.model_dir, "saved_model"))
    np.testing.assert_allclose(saved.serve(images).numpy(), model.predict(images, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_a_folder_run_does_not_warn_that_its_input_ran_out(trained: tuple[training.TrainConfig, dict]) -> None:
    _, metrics = trained
    assert not [w for w in metrics["_warnings"] if "ran out of data" in w]


@pytest.mark.slow
def test_eval_export_and_refused_runs_keep_the_training_record(
    trained: tuple[training.TrainConfig, dict], tmp_path: os.PathLike
) -> None:
    original, _ = trained
    config = _copy_of_trained_run(original, str(tmp_path / "run"))
    model_dir = config.model_dir

    def record() -> dict[str, bytes]:
        names = ("flags.txt", "config.json", "checkpoints/state.json", "weights.npz")
        return {name: open(os.path.join(model_dir, name), "rb").read() for name in names}

    trained_record = record()
    with open(os.path.join(model_dir, "flags.txt"), encoding="utf-8") as f:
        flags_txt = f.read().splitlines()
    assert "--epochs=2" in flags_txt and "--mode=train" in flags_txt and "--output_stride=0" in flags_txt
    # Refused: a resume with other groups, an export without quantization.
    refused = run_main(config_flags(config.replace(groups=2, epochs=3)), timeout=240)
    assert refused.returncode == 1 and "trained with groups=3, not 2" in refused.stderr.strip().splitlines()[-1]
    refused = run_main(config_flags(config.replace(mode="export")), timeout=240)
    assert refused.returncode == 1 and "needs --quantize" in refused.stderr
    assert record() == trained_record
    assert not os.path.exists(os.path.join(model_dir, "export_flags.txt"))
    # Accepted: an evaluation records its flags beside the training record.
    result = run_main(config_flags(config.replace(mode="eval")), timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert record() == trained_record
    with open(os.path.join(model_dir, "eval_flags.txt"), encoding="utf-8") as f:
        assert "--mode=eval" in f.read().splitlines()
    # The training record is a flagfile that reproduces the run's configuration.
    parsed = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['x', '--flagfile=' + sys.argv[1]]; "
         "sys.path.insert(0, 'train'); import main; main.FLAGS(sys.argv); print(main.config_from_flags().flat())",
         os.path.join(model_dir, "flags.txt")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    assert ast.literal_eval(parsed.stdout.strip()) == original.flat()  # (recorded where it trained)
    # Files of a run share one permission mode (weights.npz was once private).
    modes = {name: os.stat(os.path.join(model_dir, name)).st_mode & 0o777 for name in os.listdir(model_dir)
             if os.path.isfile(os.path.join(model_dir, name))}  # fmt: skip
    assert len(set(modes.values())) == 1, modes


@pytest.mark.slow
def test_eval_mode_reproduces_the_training_eval(trained: tuple[training.TrainConfig, dict]) -> None:
    config, metrics = trained
    result = training.evaluate(config.replace(mode="eval", input_size=64))
    assert result["eval_top1"] == pytest.approx(metrics["eval_top1"])
    assert result["eval_top5"] == pytest.approx(metrics["eval_top5"])
    assert result["num_eval_images"] == 16
    assert os.path.exists(os.path.join(config.model_dir, "eval_metrics.json"))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    trained: tuple[training.TrainConfig, dict], tmp_path: os.PathLike
) -> None:
    config, _ = trained
    model_dir = str(tmp_path / "diverging")
    # Adam moves every weight by about the learning rate: 1e30 overflows at once.
    diverging = _copy_of_trained_run(config, model_dir).replace(epochs=4, learning_rate=1e30)
    with pytest.raises(
        training.TrainingDivergedError,
        match=r"(NaN or infinite|exploded to .*) at epoch 3, step \d+.*Last good checkpoint: epoch 2",
    ):
        training.train(diverging)
    with open(os.path.join(model_dir, "checkpoints", "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    assert state["epoch"] == 2 and state["checkpoint"] == "epoch-0002"
    with pytest.raises(
        training.ConfigError, match="trained with optimizer='adam', not 'sgd'; resume with --optimizer=adam"
    ):
        training.train(diverging.replace(optimizer="sgd"))
    # A stem change keeps every weight's shape: only the recorded flags can refuse it.
    with pytest.raises(
        training.ConfigError, match="trained with output_stride=16, not 32; resume with --output_stride=16"
    ):
        training.train(diverging.replace(output_stride=32))
    with pytest.raises(training.ConfigError, match="trained with groups=3, not 2"):
        training.train(diverging.replace(groups=2))
    two_classes = str(tmp_path / "two_classes")
    shutil.copytree(config.dataset[len("folder:") :], two_classes)
    for split in ("train", "test"):
        for name in ("class2", "class3"):
            shutil.rmtree(os.path.join(two_classes, split, name))
    with pytest.raises(training.ConfigError, match="trained on data with num_classes=4, but dataset=.* gives num_cl"):
        training.train(diverging.replace(dataset=f"folder:{two_classes}"))
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "epoch-0002.index"))
    assert not os.path.exists(os.path.join(model_dir, "checkpoints", "epoch-0003.index"))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, learning_rate", [("adam", 1e4), ("sgd", 1e6)])
def test_a_diverging_run_saves_no_model(optimizer: str, learning_rate: float, tmp_path: os.PathLike) -> None:
    root = str(tmp_path / "data")
    make_pattern_folder(root)
    config = tiny_config(root, str(tmp_path / "run"), optimizer=optimizer, learning_rate=learning_rate, epochs=3)
    with pytest.raises(training.TrainingDivergedError, match=r"(NaN or infinite|exploded).* at epoch 1"):
        training.train(config)
    for name in ("model.keras", "weights.npz", "metrics.json"):
        assert not os.path.exists(os.path.join(config.model_dir, name))
    assert not os.path.exists(os.path.join(config.model_dir, "checkpoints", "epoch-0001.index"))


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_last_completed_epoch(tmp_path: os.PathLike) -> None:
    root = str(tmp_path / "data")
    make_pattern_folder(root, per_class=24)
    model_dir = str(tmp_path / "run")
    # 6 steps per epoch; the process is killed as soon as epoch 1 is checkpointed.
    args = config_flags(tiny_config(root, model_dir, epochs=4, batch_size=16))
    state_path = os.path.join(model_dir, "checkpoints", "state.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen([sys.executable, MAIN, *args], env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(state_path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the first run must be killed, not finish"
    with open(state_path, encoding="utf-8") as f:
        killed_at = json.load(f)["epoch"]
    assert 1 <= killed_at < 4
    assert not os.path.exists(os.path.join(model_dir, "metrics.json"))

    result = run_main(args, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["resumed_from_epoch"] == killed_at
    with open(state_path, encoding="utf-8") as f:
        assert json.load(f)["history"]["epoch"] == [1, 2, 3, 4]
    with open(os.path.join(model_dir, "flags.txt"), encoding="utf-8") as f:
        assert "--epochs=4" in f.read().splitlines()


@pytest.mark.e2e  # Train -> export -> TFLM parity: the default tier's path through training and export.
def test_pruned_export_trains_in_keras_3_and_prunes_in_keras_2(tmp_path: os.PathLike) -> None:
    root = str(tmp_path / "data")
    make_pattern_folder(root, per_class=8, test_per_class=2)
    model_dir = str(tmp_path / "run")
    config = tiny_config(
        root, model_dir, epochs=1, prune_sparsity=0.5, prune_epochs=1, quantize="ptq", representative_samples=8
    ).replace(verbose=2)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run(
        [sys.executable, MAIN, *config_flags(config)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    # Training ran in Keras 3; the export (tfmot pruning) in a tf_keras child from the portable weights.
    assert metrics["keras"].startswith("3.")
    assert metrics["micro"]["keras"] == "tf_keras (Keras 2)"
    assert abs(metrics["micro"]["sparsity"]["prunable_overall"] - 0.5) < 0.02
    assert metrics["micro"]["tflm_bit_exact"]["bit_exact"]
    assert os.path.exists(os.path.join(model_dir, "tflm", "model_data.cc"))
    assert "Microcontroller export in" in result.stdout
    # What the user sees: one line per export stage with its time, and none of TensorFlow's start-up chatter
    # (from this process or from the Keras 2 child).
    stages = [line for line in result.stdout.splitlines() if line.startswith("  export: ")]
    names = [re.match(r"  export: (.+?)(?:: | \()", s).group(1) for s in stages if s.endswith(" s)")]
    assert names[:3] == ["read data", "profile", "prune"]
    assert any(s.startswith("  export: verify in TFLM: ") and "bit-identical" in s for s in stages)
    for noise in ("cuInit", "cudart_stub", "absl::InitializeLog", "Sharding callback", "XNNPACK", "I0000"):
        assert noise not in result.stderr + result.stdout


def test_the_run_summary_shows_the_int8_drop_from_the_trained_model_and_sparsity_only_when_pruned() -> None:
    from keras_shufflenet.export_job import micro_summary

    report = {
        "float_top1": 0.974,
        "int8_top1": 0.973,
        "accuracy": {"float_top1_before_clustering": 0.978},
        "flash_bytes": 142_672,
        "arena_bytes": 114_128,
        "weight_storage": {},
        "tflm_bit_exact": {"bit_exact": True, "samples": 100},
        "sparsity": {"target": 0.0, "prunable_overall": 0.0},
    }
    lines = micro_summary(report, "runs/quickstart").splitlines()
    assert lines[1] == (
        "  top-1: trained float 97.80 %, clustered float 97.40 %, int8 in TFLite Micro 97.30 % (-0.50 points)"
    )
    assert not any("sparsity" in line for line in lines)
    pruned = dict(report, accuracy={"float_top1_before_pruning": 0.98, "float_top1_before_clustering": 0.975})
    pruned["sparsity"] = {"target": 0.5, "prunable_overall": 0.5}
    lines = micro_summary(pruned, "runs/quickstart").splitlines()
    assert "trained float 98.00 %, pruned and clustered float 97.40 %" in lines[1] and lines[1].endswith(
        "(-0.70 points)"
    )
    assert "  sparsity of pruned kernels: 50.00 %" in lines
    plain = dict(report, accuracy={})
    assert micro_summary(plain, "r").splitlines()[1] == "  top-1: float 97.40 %, int8 in TFLite Micro 97.30 %"


def test_an_eval_model_that_is_weights_or_damaged_is_refused_by_name(tmp_path: os.PathLike) -> None:
    weights_file = os.path.join(tmp_path, "model.weights.h5")
    damaged = os.path.join(tmp_path, "model.keras")
    for path in (weights_file, damaged):
        with open(path, "wb") as handle:
            handle.write(b"not a model")
    with pytest.raises(training.ConfigError, match=r"--eval_model must be a saved model \(\.keras"):
        training.load_saved_model(weights_file)
    with pytest.raises(training.ConfigError, match=r"model\.keras' is not a readable saved model"):
        training.load_saved_model(damaged)
