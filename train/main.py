"""Trains and evaluates ShuffleNet: a thin absl entry point over keras_shufflenet.training.

Usage:
  python train/main.py --flagfile=train/configs/quickstart.flags
  python train/main.py --flagfile=train/configs/quickstart.flags --mode=eval

Every flag is a field of ``keras_shufflenet.training.config.TrainConfig`` (or
of the pipeline and micro-export configs it nests), generated from its
default, help text and allowed values. A training run records its flags in
``model_dir/flags.txt`` (itself a flagfile); ``--mode=eval`` and
``--mode=export`` record theirs beside it (``eval_flags.txt``,
``export_flags.txt``); a refused run writes nothing. After training, ``--quantize``
runs the micro export (``keras_shufflenet.export_job``). Multi-worker
training and ``--mode=export`` with pruning or QAT need Keras 2 (tf_keras):
for them the script restarts itself with ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is imported.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags

# Nothing here may import TensorFlow: the Keras flavour is chosen at import.
# (keras_compat and training.config are TensorFlow-free.)
from keras_shufflenet import console, run_dir
from keras_shufflenet.keras_compat import LEGACY_KERAS_ENV, legacy_keras_selected
from keras_shufflenet.training import config as config_lib

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines one flag per config field (choices become enums); returns the names in order."""
    names = []
    # The defaults of a training run (quantize="none": no export unless asked), typed by the field's own.
    defaults = config_lib.TrainConfig().flat()
    for name, _, field in config_lib.flag_fields():
        default, help_text, choices = defaults[name], field.metadata["help"], field.metadata["choices"]
        if isinstance(field.default, bool):
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif isinstance(field.default, str) and choices:
            flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=flag_values)
        elif isinstance(field.default, int):
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif isinstance(field.default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        names.append(name)
    return names


CONFIG_FLAGS = define_flags()


def config_from_flags() -> config_lib.TrainConfig:
    """The :class:`TrainConfig` of the parsed flags."""
    return config_lib.TrainConfig.from_flat({name: FLAGS[name].value for name in CONFIG_FLAGS})


def _summary_line(metrics: dict[str, Any]) -> str:
    keys = ("eval_top1", "eval_top5", "train_images_per_sec", "wall_seconds")
    return " ".join(
        f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys if k in metrics
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
        config.validate()
    except config_lib.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if config_lib.needs_legacy_keras(config) and not legacy_keras_selected():
        env = dict(os.environ, **{LEGACY_KERAS_ENV: "1"})
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    # Before TensorFlow is imported: its start-up lines come at import.
    console.quiet(config.verbose)
    if config.verbose < console.LIBRARY_LOGS_VERBOSITY:
        console.quiet_python_logs()  # Again: app.run set absl's verbosity from its flags.

    from keras_shufflenet import export_job
    from keras_shufflenet.training import distribute, loop

    micro = None
    try:
        if config.mode == "train":  # training records flags.txt once the run is accepted
            strategy = distribute.make_strategy(config.strategy, config.tpu)
            metrics = loop.train(config, strategy)
            print(_summary_line(metrics))
            is_chief, _ = distribute.worker_identity(strategy)
            if config.micro.enabled and is_chief:
                micro = export_job.export_run(config)
        elif config.mode == "eval":
            print(_summary_line(loop.evaluate(config)))
            run_dir.write_flags(config.model_dir, "eval", config.flat())
        else:
            micro = export_job.export_trained(config)
            run_dir.write_flags(config.model_dir, "export", config.flat())
    except (config_lib.ConfigError, loop.TrainingDivergedError) as e:
        raise SystemExit(f"error: {e}") from None
    if micro:
        print(export_job.micro_summary(micro, config.resolved_export_dir))


if __name__ == "__main__":
    app.run(main)
