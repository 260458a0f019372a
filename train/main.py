"""Trains and evaluates ShuffleNet: a thin absl entry point over keras_shufflenet.training.

Usage:
  python train/main.py --flagfile=train/configs/quickstart.flags
  python train/main.py --flagfile=train/configs/quickstart.flags --mode=eval

Every flag is a field of ``keras_shufflenet.training.TrainConfig``. The
resolved flags are written to ``model_dir/flags.txt``, itself a flagfile.
Pruning, quantization-aware training and multi-worker training need Keras 2
(tf_keras): for them the script restarts itself with ``TF_USE_LEGACY_KERAS=1``
before TensorFlow is imported.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags

# Nothing here may import TensorFlow: the Keras flavour is chosen at import.

flags.DEFINE_string("dataset", "mnist5k", "A TFDS name (mnist5k, cifar10, imagenet2012, ...) or folder:PATH.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (manual downloads in data_dir/downloads/manual).")
flags.DEFINE_string("model_dir", "runs/default", "Directory for checkpoints, logs, the saved model and metrics.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "export"],
    "train (resumes if model_dir has a checkpoint), eval, or export (the micro export of a trained model_dir).",
)
flags.DEFINE_integer("epochs", 10, "Training epochs (ignored when --train_steps > 0).", lower_bound=1)
flags.DEFINE_integer("train_steps", 0, "Total training steps (rounded up to whole epochs); 0: --epochs.", lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "Global batch size, divisible by the number of replicas.", lower_bound=1)
flags.DEFINE_integer("eval_batch_size", 0, "Eval batch size; 0 uses --batch_size.", lower_bound=0)
flags.DEFINE_integer("input_size", 32, "Model input height and width (>= 32); images are resized.", lower_bound=1)
flags.DEFINE_integer("channels", 0, "Model input channels (1 or 3); 0 takes the dataset's.")
flags.DEFINE_integer("groups", 3, "Groups of the pointwise convolutions: 1, 2, 3, 4 or 8.")
flags.DEFINE_float("scale_factor", 0.5, "Width multiplier 's' of the paper (0.25, 0.5, 1, 1.5, 2, ...).")
flags.DEFINE_enum("optimizer", "adam", ["sgd", "adam"], "sgd (with --momentum) or adam.")
flags.DEFINE_float("learning_rate", 0.005, "Peak learning rate (after warmup).")
flags.DEFINE_enum("lr_schedule", "cosine", ["linear", "cosine", "constant"], "Decay to 0 over the run, or constant.")
flags.DEFINE_float("warmup_epochs", 1.0, "Linear learning-rate warmup from 0, in epochs.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 4e-5, "L2 weight decay on conv and dense kernels (gradient += wd * kernel).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy, in [0, 1).")
flags.DEFINE_enum(
    "augment",
    "shift",
    ["none", "shift", "scale"],
    "none; shift: random translation (small images); scale: random-area crops with center-crop eval (ImageNet).",
)
flags.DEFINE_bool("random_flip", False, "Random horizontal flips in training (not for digits or text).")
flags.DEFINE_float("min_crop_area", 0.25, "Smallest crop area fraction of --augment=scale.")
flags.DEFINE_float("eval_crop_fraction", 0.875, "Center-crop fraction of --augment=scale eval (224 of 256).")
flags.DEFINE_bool("cache", True, "Cache decoded, resized images in memory (turn off for datasets larger than RAM).")
flags.DEFINE_integer("shuffle_buffer", 10_000, "Shuffle buffer size in images.", lower_bound=1)
flags.DEFINE_float("holdout_fraction", 0.1, "Eval fraction held out per class when the data has no eval split.")
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker", "tpu"],
    "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.",
)
flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.DEFINE_bool("mixed_precision", False, "float16 compute (bfloat16 on TPU) with float32 variables.")
flags.DEFINE_bool("deterministic", False, "Deterministic TensorFlow ops (slower); the seed is always applied.")
flags.DEFINE_integer("seed", 0, "Seed of initialization, shuffling, augmentation and held-out splits.")
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per tf.function call.", lower_bound=1)
flags.DEFINE_integer("validation_freq", 1, "Evaluate on the eval split every N epochs during training.", lower_bound=1)
flags.DEFINE_integer("verbose", 1, "Keras output: 0 silent, 1 progress bar, 2 one line per epoch.")
flags.DEFINE_string("eval_model", "", "Model for --mode=eval; empty uses model_dir/model.keras.")
flags.DEFINE_float("prune_sparsity", 0.0, "Magnitude-pruning target sparsity of the micro export (0 = no pruning).")
flags.DEFINE_integer("prune_epochs", 2, "Fine-tuning epochs for pruning and QAT in the micro export.", lower_bound=0)
flags.DEFINE_enum("quantize", "none", ["none", "ptq", "qat"], "Micro export: none, post-training int8, or QAT int8.")
flags.DEFINE_enum(
    "weight_quantization",
    "per_channel",
    ["per_channel", "per_tensor"],
    "int8 weight scales of the micro export: per output channel, or one per tensor (smaller, PTQ only).",
)
flags.DEFINE_integer("representative_samples", 200, "Training images that calibrate int8 quantization.", lower_bound=0)
flags.DEFINE_string("export_dir", "", "Directory of the micro export; empty uses --model_dir.")

FLAGS = flags.FLAGS
# The flags of this file, in order; each is a TrainConfig field of the same name.
CONFIG_FLAGS = [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])]
LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"


def needs_legacy_keras() -> bool:
    """Whether the whole run needs Keras 2 (tf_keras).

    Keras 3's ``fit`` does not run under MultiWorkerMirroredStrategy
    (keras-team/keras#20585), and ``--mode=export`` with pruning or QAT uses
    tensorflow-model-optimization, which accepts only Keras 2 models. (A
    training run with pruning or QAT trains in Keras 3 and starts its export
    in a Keras 2 child process.)
    """
    needs_tfmot = FLAGS.quantize != "none" and (FLAGS.prune_sparsity > 0 or FLAGS.quantize == "qat")
    return FLAGS.strategy == "multi_worker" or (FLAGS.mode == "export" and needs_tfmot)


def write_flagfile(model_dir: str) -> None:
    """Writes the resolved flags to ``model_dir/flags.txt`` (atomically)."""
    os.makedirs(model_dir, exist_ok=True)
    lines = []
    for name in CONFIG_FLAGS:
        value = FLAGS[name].value
        if value is not None:
            lines.append(FLAGS[name].serialize())
    fd, tmp = tempfile.mkstemp(prefix=".tmp-flags-", dir=model_dir)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private.
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(model_dir, "flags.txt"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if needs_legacy_keras() and os.environ.get(LEGACY_KERAS_ENV, "").lower() not in ("1", "true", "yes"):
        env = dict(os.environ, **{LEGACY_KERAS_ENV: "1"})
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_shufflenet import training

    config = training.TrainConfig(**{name: FLAGS[name].value for name in CONFIG_FLAGS})
    try:
        config.validate()
        write_flagfile(config.model_dir)
        if config.mode == "train":
            metrics = training.train(config)
        elif config.mode == "eval":
            metrics = training.evaluate(config)
        else:
            metrics = {"micro": training.export_trained(config)}
    except (training.ConfigError, training.TrainingDivergedError) as e:
        raise SystemExit(f"error: {e}") from None
    summary = {
        k: metrics[k] for k in ("eval_top1", "eval_top5", "train_images_per_sec", "wall_seconds") if k in metrics
    }
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    micro = metrics.get("micro")
    if micro:
        print(training.micro_summary(micro, config.export_dir or config.model_dir))


if __name__ == "__main__":
    app.run(main)
