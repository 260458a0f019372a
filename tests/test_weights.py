"""Official ShuffleNet v1 checkpoints: reader, key mapping, exactness against PyTorch, bad input, export, fine-tuning.

The exactness tests compare with a PyTorch model written from the official
implementation's description (tests/official_reference.py), run by a Python
that has PyTorch: ``$SHUFFLENET_TORCH_PYTHON``, else ``/usr/bin/python3``
(Debian's ``python3-torch``). Without one they skip and say so. The other
tests write checkpoints in torch's two file layouts without PyTorch
(tests/torch_format.py).
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
import torch_format

from keras_shufflenet import ShuffleNet, decode_predictions
from keras_shufflenet.checkpoint_conversion import convert
from keras_shufflenet.imagenet import class_names, wordnet_ids
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.layers import ChannelShuffle
from keras_shufflenet.weights import (
    CheckpointError,
    load_official_weights,
    official,
    read_official_checkpoint,
)
from keras_shufflenet.weights.__main__ import main as weights_main

TESTS = os.path.dirname(os.path.abspath(__file__))
TORCH_PYTHON = os.environ.get("SHUFFLENET_TORCH_PYTHON", "/usr/bin/python3")
# The official `stage_out_channels` table (ShuffleNetV1/network.py): stem, stages 2-4.
OFFICIAL_WIDTHS = {
    (0.5, 3): (12, 120, 240, 480),
    (1.0, 3): (24, 240, 480, 960),
    (1.5, 3): (24, 360, 720, 1440),
    (2.0, 3): (48, 480, 960, 1920),
    (0.5, 8): (16, 192, 384, 768),
    (1.0, 8): (24, 384, 768, 1536),
    (1.5, 8): (24, 576, 1152, 2304),
    (2.0, 8): (48, 768, 1536, 3072),
}
CONFIGS = sorted(OFFICIAL_WIDTHS, key=lambda c: (c[1], c[0]))


def random_state(scale: float, groups: int, seed: int = 0, classes: int = 1000) -> dict[str, np.ndarray]:
    """A state dict of the official layout (``module.`` keys) with random values."""
    rng = np.random.default_rng(seed)
    shapes = official.expected_shapes(official.official_spec(scale, groups), classes)
    state = {}
    for key, shape in shapes.items():
        value = rng.normal(0, 0.1, shape).astype(np.float32)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        state[f"module.{key}"] = value
        if key.endswith("running_var"):
            state[f"module.{key[: -len('running_var')]}num_batches_tracked"] = np.array(7, np.int64)
    return state


@pytest.fixture(scope="module")
def small_checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, scale, groups, save in (
        ("legacy_g3", 0.5, 3, torch_format.save_legacy),
        ("zip_g8", 0.5, 8, torch_format.save_zip),
    ):
        paths[name] = str(root / f"{name}.pth.tar")
        save(paths[name], random_state(scale, groups))
    return paths


# ------------------------------------------------------------------ fast


@pytest.mark.parametrize("scale, groups", CONFIGS)
def test_the_width_rule_gives_the_official_table(scale: float, groups: int) -> None:
    spec = official.official_spec(scale, groups)
    assert (spec.stem_channels, *spec.stage_out_channels) == OFFICIAL_WIDTHS[(scale, groups)]


def test_official_shuffle_order_is_the_inverse_of_the_papers() -> None:
    groups, channels = 3, 12
    x = np.arange(2 * 2 * 2 * channels, dtype=np.float32).reshape(2, 2, 2, channels)
    # The official code on NCHW: reshape (C / g, g), swap, flatten.
    expected = x.reshape(2, 2, 2, channels // groups, groups).transpose(0, 1, 2, 4, 3).reshape(x.shape)
    official_out = np.asarray(ChannelShuffle(groups, order="official")(x))
    paper_out = np.asarray(ChannelShuffle(groups)(x))
    np.testing.assert_array_equal(official_out, expected)
    np.testing.assert_array_equal(np.asarray(ChannelShuffle(groups)(official_out)), x)
    assert not np.array_equal(official_out, paper_out)
    layer = ChannelShuffle.from_config(ChannelShuffle(groups, order="official").get_config())
    assert layer.order == "official"
    with pytest.raises(ValueError, match=r"`order` must be one of \('paper', 'official'\). Received: order='x'"):
        ChannelShuffle(3, order="x")


def test_both_file_layouts_read_to_the_saved_arrays(small_checkpoints) -> None:
    for name, (scale, groups) in (("legacy_g3", (0.5, 3)), ("zip_g8", (0.5, 8))):
        checkpoint = read_official_checkpoint(small_checkpoints[name])
        assert (checkpoint.scale_factor, checkpoint.groups, checkpoint.classes) == (scale, groups, 1000)
        expected = random_state(scale, groups)
        assert set(checkpoint.tensors) == {k[len("module.") :] for k in expected if "num_batches" not in k}
        for key, value in checkpoint.tensors.items():
            np.testing.assert_array_equal(value, expected[f"module.{key}"])


def test_every_tensor_maps_onto_its_keras_layer(small_checkpoints) -> None:
    checkpoint = read_official_checkpoint(small_checkpoints["legacy_g3"])
    model = ShuffleNet(weights=small_checkpoints["legacy_g3"], input_shape=(64, 64, 3))
    t = checkpoint.tensors
    np.testing.assert_array_equal(
        model.get_layer("conv1").get_weights()[0], t["first_conv.0.weight"].transpose(2, 3, 1, 0)
    )
    bn = model.get_layer("stage3_unit2_dwconv_bn").get_weights()
    for got, suffix in zip(bn, official.BN_SUFFIXES, strict=True):
        np.testing.assert_array_equal(got, t[f"features.5.branch_main_1.4.{suffix}"])
    depthwise = t["features.5.branch_main_1.3.weight"]  # (C, 1, 3, 3)
    np.testing.assert_array_equal(
        model.get_layer("stage3_unit2_dwconv").get_weights()[0][1, 2, :, 0], depthwise[:, 0, 1, 2]
    )
    grouped = t["features.15.branch_main_2.0.weight"]  # (out, in / g, 1, 1)
    np.testing.assert_array_equal(model.get_layer("stage4_unit4_gconv2").get_weights()[0][0, 0], grouped[:, :, 0, 0].T)
    kernel, bias = model.get_layer("predictions").get_weights()
    np.testing.assert_array_equal(kernel, t["classifier.0.weight"].T)
    np.testing.assert_array_equal(bias, 0)


def test_arguments_that_differ_from_the_checkpoint_are_named(small_checkpoints) -> None:
    path = small_checkpoints["legacy_g3"]
    with pytest.raises(ValueError, match=r"`groups`=8 does not match .* 0\.5x g3 and needs groups=3"):
        ShuffleNet(weights=path, groups=8)
    with pytest.raises(ValueError, match=r"`scale_factor`=1\.0 does not match .* needs scale_factor=0\.5"):
        ShuffleNet(weights=path, scale_factor=1.0)
    with pytest.raises(ValueError, match=r"`convention`='paper' does not match .* needs convention='official'"):
        ShuffleNet(weights=path, convention="paper")
    with pytest.raises(ValueError, match=r"layer 'predictions' .* 1000 classes"):
        ShuffleNet(weights=path, classes=10, input_shape=(64, 64, 3))
    backbone = ShuffleNet(weights=path, include_top=False, input_shape=(64, 64, 3))
    assert backbone.output_shape == (None, 2, 2, 480)


def test_a_mismatch_loads_nothing(small_checkpoints) -> None:
    checkpoint = read_official_checkpoint(small_checkpoints["legacy_g3"])
    model = ShuffleNet(convention="official", groups=3, scale_factor=0.5, classes=10, input_shape=(64, 64, 3))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="predictions"):
        load_official_weights(model, checkpoint)  # The classifier comes last: every other layer was checked.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_a_pickle_that_asks_to_run_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    legacy = tmp_path / "exploit.pth.tar"
    legacy.write_bytes(pickle.dumps(Exploit(), protocol=2))
    packed = tmp_path / "exploit_zip.pth.tar"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Exploit()}, protocol=2))
    for path in (legacy, packed):
        with pytest.raises(CheckpointError, match=r"asks for (posix|os)\.system, which this reader refuses"):
            read_official_checkpoint(path)
        with pytest.raises(ValueError, match=r"`weights`: .*refuses"):
            ShuffleNet(weights=str(path))
    assert not marker.exists()


def test_files_that_are_not_checkpoints_are_named(tmp_path, small_checkpoints) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    keras_zip = tmp_path / "model.keras.zip"
    with zipfile.ZipFile(keras_zip, "w") as archive:
        archive.writestr("config.json", "{}")
    h5 = tmp_path / "model.weights.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint: it starts neither"):
        read_official_checkpoint(text)
    with pytest.raises(CheckpointError, match=r"is a zip file but not a PyTorch checkpoint"):
        read_official_checkpoint(keras_zip)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_official_checkpoint(h5)
    with pytest.raises(ValueError, match="does not fit the model"):
        ShuffleNet(weights=str(text))  # Not a checkpoint: the Keras weights path, with its own error.
    assert weights_main(["convert", str(text), str(tmp_path / "out.weights.h5")]) == 2
    assert not (tmp_path / "out.weights.h5").exists()


@pytest.mark.parametrize("name", ["legacy_g3", "zip_g8"])
@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_a_truncated_checkpoint_is_named(tmp_path, small_checkpoints, name: str, keep: float) -> None:
    data = open(small_checkpoints[name], "rb").read()
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"truncat|damaged|incomplete|not a readable zip|shorter"):
        read_official_checkpoint(cut)


def test_checkpoints_of_other_architectures_are_named(tmp_path) -> None:
    v2 = tmp_path / "shufflenetv2.pth.tar"
    rng = np.random.default_rng(0)
    torch_format.save_legacy(
        v2,
        {
            "module.first_conv.0.weight": rng.normal(size=(24, 3, 3, 3)).astype(np.float32),
            "module.features.0.branch_main.0.weight": rng.normal(size=(24, 24, 1, 1)).astype(np.float32),
            "module.conv_last.0.weight": rng.normal(size=(1024, 464, 1, 1)).astype(np.float32),
        },
    )
    with pytest.raises(
        CheckpointError, match=r"not an official ShuffleNet v1 checkpoint \(it looks like ShuffleNet v2"
    ):
        read_official_checkpoint(v2)
    # ShuffleNet v1 whose stage 4 is of another width than stage 2 implies.
    state = random_state(0.5, 3)
    state["module.features.15.branch_main_2.0.weight"] = np.zeros((500, 40, 1, 1), np.float32)
    odd = tmp_path / "odd.pth.tar"
    torch_format.save_zip(odd, state)
    with pytest.raises(CheckpointError, match=r"not an official ShuffleNet v1 checkpoint of 0\.5x g3 .*1 wrong shape"):
        read_official_checkpoint(odd)
    # A state dict with a key the architecture does not have.
    state = random_state(0.5, 8)
    state["module.extra.weight"] = np.zeros(3, np.float32)
    extra = tmp_path / "extra.pth.tar"
    torch_format.save_zip(extra, state)
    with pytest.raises(CheckpointError, match=r"1 unexpected \(first: extra.weight\)"):
        read_official_checkpoint(extra)


def test_convert_writes_a_keras_weights_file_of_the_same_model(tmp_path, small_checkpoints, capsys) -> None:
    out = tmp_path / "snet.weights.h5"
    assert weights_main(["convert", small_checkpoints["zip_g8"], str(out)]) == 0
    assert "0.5x g8, 1000 classes" in capsys.readouterr().out
    direct = ShuffleNet(weights=small_checkpoints["zip_g8"], classifier_activation=None)
    converted = ShuffleNet(
        weights=str(out), groups=8, scale_factor=0.5, convention="official", classifier_activation=None
    )
    x = np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(direct.predict(x, verbose=0), converted.predict(x, verbose=0))
    # The file records its convention: a paper-convention model of the same shapes refuses it.
    with pytest.raises(ValueError, match=r"converted for convention='official' and the model is built with"):
        ShuffleNet(weights=str(out), groups=8, scale_factor=0.5, convention="paper")
    with pytest.raises(ValueError, match=r"`output_path` must end in '\.weights\.h5'"):
        convert(small_checkpoints["zip_g8"], tmp_path / "x.h5")


def test_default_models_are_unchanged_by_the_official_convention() -> None:
    default = ShuffleNet(scale_factor=0.5, input_shape=(64, 64, 3))
    names = [layer.name for layer in default.layers]
    assert not any(name.endswith("_pad") for name in names)
    assert names.index("stage3_unit2_shuffle") < names.index("stage3_unit2_dwconv")
    official_model = ShuffleNet(scale_factor=0.5, input_shape=(64, 64, 3), convention="official")
    names = [layer.name for layer in official_model.layers]
    assert {"conv1_pad", "maxpool_pad", "stage2_unit1_dwconv_pad", "stage2_unit1_shortcut_pad"} <= set(names)
    assert names.index("stage3_unit2_shuffle") > names.index("stage3_unit2_dwconv_bn")
    assert official_model.count_params() == default.count_params()


def test_decode_predictions_names_the_imagenet_classes() -> None:
    names = class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[1], names[281], names[999]) == ("tench", "goldfish", "tabby", "toilet tissue")
    scores = np.zeros((2, 1000), np.float32)
    scores[0, [281, 1, 0]] = [0.7, 0.2, 0.1]
    scores[1, 999] = 1.0
    decoded = decode_predictions(scores, top=2)
    # keras.applications' tuples: (WordNet id, name, score); the ids are the sorted synsets.
    assert decoded[0] == [("n02123045", "tabby", pytest.approx(0.7)), ("n01443537", "goldfish", pytest.approx(0.2))]
    assert decoded[1][0] == ("n15075141", "toilet tissue", 1.0)
    wnids = wordnet_ids()
    assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764"
    with pytest.raises(ValueError, match=r"`preds` must have shape \(batch, 1000\)"):
        decode_predictions(np.zeros((1, 10)))


# ------------------------------------------------------------------ against PyTorch


def _torch_python() -> str | None:
    try:
        done = subprocess.run([TORCH_PYTHON, "-c", "import torch"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return TORCH_PYTHON if done.returncode == 0 else None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Callable[..., str]:
    """Makes the PyTorch reference of the given ``(scale, groups)`` configurations once; returns their folder.

    Each configuration is made when a test first asks for it, so that the
    default tier, which checks one, does not pay for all eight.
    """
    python = _torch_python()
    if python is None:
        pytest.skip(
            f"no PyTorch importable by {TORCH_PYTHON} (set SHUFFLENET_TORCH_PYTHON, or apt-get install python3-torch)"
        )
    out = tmp_path_factory.mktemp("reference")
    made: set[tuple[float, int]] = set()

    def make(*configs: tuple[float, int]) -> str:
        missing = [c for c in configs if c not in made]
        if missing:
            args = [f"{scale:.1f}x:{groups}" for scale, groups in missing]
            done = subprocess.run(
                [python, os.path.join(TESTS, "official_reference.py"), str(out), *args],
                capture_output=True,
                text=True,
                timeout=900,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )
            assert done.returncode == 0, done.stderr[-3000:]
            made.update(missing)
        return str(out)

    return make


# The default tier checks one configuration against PyTorch; `make test-rest` the others.
@pytest.mark.parametrize(
    "scale, groups", [pytest.param(*c, marks=pytest.mark.e2e if c == (0.5, 3) else pytest.mark.slow) for c in CONFIGS]
)
def test_logits_match_the_official_pytorch_model(reference: Callable[..., str], scale: float, groups: int) -> None:
    name = f"{scale:.1f}x_g{groups}"
    folder = reference((scale, groups))
    checkpoint = os.path.join(folder, f"{name}.pth.tar")
    model = ShuffleNet(weights=checkpoint, classifier_activation=None)
    images = np.load(os.path.join(folder, f"{name}_input.npy"))
    expected = np.load(os.path.join(folder, f"{name}_logits.npy"))
    logits = model.predict(images, verbose=0)
    difference = float(np.abs(logits - expected).max())
    print(f"{name}: largest logit difference {difference:.3g} (logits up to {np.abs(expected).max():.3g})")
    assert difference < 1e-4
    # Parameters as PyTorch counts them: no batch-norm statistics, no classifier bias.
    torch_params = int(open(os.path.join(folder, f"{name}_params.txt")).read())
    statistics = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    assert model.count_params() - statistics - 1000 == torch_params
    assert round(torch_params / 1e6, 1) == official.OFFICIAL_PARAMS_M[(scale, groups)]


_COMPARE_READERS = """
import sys
import numpy as np
from keras_shufflenet.weights import read_official_checkpoint
for path in sys.argv[1:]:
    builtin = read_official_checkpoint(path)
    with_torch = read_official_checkpoint(path, reader="torch")
    assert builtin.tensors.keys() == with_torch.tensors.keys(), path
    for key, value in builtin.tensors.items():
        assert value.dtype == with_torch.tensors[key].dtype, key
        np.testing.assert_array_equal(value, with_torch.tensors[key])
    print(path, builtin.describe(), len(builtin.tensors))
"""


@pytest.mark.slow
def test_the_torch_reader_reads_what_the_builtin_reader_reads(small_checkpoints, reference: Callable[..., str]) -> None:
    # In the PyTorch Python: the reader and the mapping import neither TensorFlow nor Keras.
    folder = reference((0.5, 3), (0.5, 8))
    files = [*small_checkpoints.values(), *(os.path.join(folder, f"0.5x_g{g}.pth.tar") for g in (3, 8))]
    done = subprocess.run(
        [_torch_python(), "-c", _COMPARE_READERS, *files],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(TESTS)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" 246\n") == len(files)


# ------------------------------------------------------------------ export and fine-tuning


@pytest.mark.slow
def test_an_official_convention_model_exports_to_tflm(tmp_path, small_checkpoints) -> None:
    from keras_shufflenet.micro import export

    model = ShuffleNet(
        weights=small_checkpoints["legacy_g3"], include_top=False, pooling="avg", input_shape=(32, 32, 3)
    )
    head = keras.layers.Dense(4, activation="softmax", name="predictions")(model.output)
    model = keras.Model(model.input, head)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    report = export(model, [images], str(tmp_path / "run"), num_verify=4, name="official")
    assert "PAD" in report["ops"]
    assert os.path.exists(tmp_path / "run" / "official_int8.tflite")


@pytest.mark.slow
def test_fine_tuning_starts_from_the_checkpoints_backbone(tmp_path, small_checkpoints) -> None:
    from benchmarks.failure_probes import write_pattern_folder
    from keras_shufflenet import training
    from keras_shufflenet.training import loop

    root = tmp_path / "data"
    write_pattern_folder(str(root), per_class=8, test_per_class=2)
    config = training.TrainConfig.from_flat(
        dict(
            dataset=f"folder:{root}",
            model_dir=str(tmp_path / "run"),
            epochs=1,
            batch_size=8,
            input_size=64,
            channels=3,
            groups=3,
            scale_factor=0.5,
            convention="official",
            preprocessing="official",
            init_weights=small_checkpoints["legacy_g3"],
            learning_rate=1e-7,
            warmup_epochs=0,
            verbose=0,
        )
    )
    checkpoint = read_official_checkpoint(small_checkpoints["legacy_g3"])
    # Before training: every backbone weight is the checkpoint's, the classifier is new.
    model = loop.build_model(config, num_classes=4, channels=3)
    loop.load_init_weights(model, config)
    expected = official.layer_weights(checkpoint.tensors, official.official_spec(0.5, 3), include_top=False)
    for layer_name, arrays in expected.items():
        for got, want in zip(model.get_layer(layer_name).get_weights(), arrays, strict=True):
            np.testing.assert_array_equal(got, want)
    assert model.get_layer("predictions").get_weights()[0].shape == (480, 4)
    with pytest.raises(training.ConfigError, match=r"needs --groups=3\. Received: groups=8"):
        loop.load_init_weights(model, config.replace(groups=8))
    # One short epoch at a tiny learning rate: the saved model keeps the backbone, with 4 classes.
    training.train(config)
    saved = keras.models.load_model(str(tmp_path / "run" / "model.keras"), compile=False)
    assert saved.output_shape == (None, 4)
    np.testing.assert_allclose(
        saved.get_layer("stage4_unit4_gconv2").get_weights()[0], expected["stage4_unit4_gconv2"][0], atol=1e-4
    )


@pytest.mark.slow
def test_eval_mode_evaluates_an_official_checkpoint(tmp_path) -> None:
    from benchmarks.failure_probes import write_pattern_folder
    from keras_shufflenet import data, training

    root = tmp_path / "data"
    write_pattern_folder(str(root), per_class=2, test_per_class=3)
    four_classes = tmp_path / "four_classes.pth.tar"
    torch_format.save_legacy(four_classes, random_state(0.5, 3, classes=4))
    config = training.TrainConfig.from_flat(
        dict(
            dataset=f"folder:{root}",
            model_dir=str(tmp_path / "eval"),
            mode="eval",
            eval_model=str(four_classes),
            input_size=64,
            channels=3,
            preprocessing="official",
            batch_size=4,
        )
    )
    metrics = training.evaluate(config)
    assert metrics["num_eval_images"] == 12 and 0 <= metrics["eval_top1"] <= 1
    # The same top-1 from the model built directly, on the same pipeline's images.
    source = data.load_source(config.dataset, channels=3, holdout_fraction=0.1, seed=0)
    model = ShuffleNet(weights=str(four_classes), input_shape=(64, 64, 3), classes=4)
    hits = [
        np.argmax(model.predict(images, verbose=0), axis=1) == labels
        for images, labels in data.make_eval_dataset(source, config.data, 4).as_numpy_iterator()
    ]
    assert metrics["eval_top1"] == pytest.approx(float(np.mean(np.concatenate(hits))))
    with pytest.raises(training.ConfigError, match=r"eval_model: .*not an official ShuffleNet v1"):
        other = tmp_path / "other.pth.tar"
        torch_format.save_zip(other, {"module.conv.weight": np.zeros((2, 3), np.float32)})
        training.evaluate(config.replace(eval_model=str(other)))


def test_init_weights_from_a_keras_weights_file_keeps_the_backbone(tmp_path) -> None:
    from keras_shufflenet import training
    from keras_shufflenet.training import loop

    source = ShuffleNet(groups=3, scale_factor=0.5, convention="official", input_shape=(64, 64, 3))
    path = str(tmp_path / "imagenet.weights.h5")
    source.save_weights(path)
    config = training.TrainConfig.from_flat(
        dict(
            dataset="folder:unused",
            model_dir=str(tmp_path / "run"),
            groups=3,
            scale_factor=0.5,
            convention="official",
            input_size=64,
            channels=3,
            init_weights=path,
        )
    )
    model = loop.build_model(config, num_classes=4, channels=3)
    loop.load_init_weights(model, config)
    for layer in ("conv1", "stage2_unit1_gconv1_bn", "stage4_unit4_gconv2"):
        for got, want in zip(model.get_layer(layer).get_weights(), source.get_layer(layer).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    assert model.get_layer("predictions").get_weights()[0].shape == (480, 4)


def test_shuffle_unit_takes_the_official_convention() -> None:
    from keras_shufflenet import ShuffleUnit

    unit = ShuffleUnit(60, groups=3, strides=2, convention="official", name="unit")
    x = np.random.default_rng(0).uniform(0, 1, (1, 7, 7, 24)).astype(np.float32)
    assert tuple(unit(x).shape) == (1, 4, 4, 60)
    assert [layer.name for layer in unit._unit.values()][:7] == [
        "unit_gconv1",
        "unit_gconv1_bn",
        "unit_gconv1_relu",
        "unit_dwconv_pad",
        "unit_dwconv",
        "unit_dwconv_bn",
        "unit_shuffle",
    ]
    clone = ShuffleUnit.from_config(unit.get_config())
    assert clone.convention == "official"
    with pytest.raises(ValueError, match=r"`convention` must be one of \('paper', 'official'\)"):
        ShuffleUnit(60, convention="tf")


def test_convert_into_a_folder_it_cannot_write_is_one_line_of_error(tmp_path, small_checkpoints, capsys) -> None:
    # A "folder" that is a file (a read-only one does not stop root, which the tests may run as).
    (tmp_path / "a_file").write_text("")
    unwritable = tmp_path / "a_file" / "snet.weights.h5"
    assert weights_main(["convert", small_checkpoints["zip_g8"], str(unwritable)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
