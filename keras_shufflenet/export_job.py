"""The micro export of a trained run: the step after training, and ``--mode=export``.

``train/main.py`` calls :func:`export_run` after
:func:`~keras_shufflenet.training.loop.train` returns when ``--quantize`` is
set, and :func:`export_trained` for ``--mode=export``. The model is rebuilt
from the run's configuration and takes the portable weights training saved
(``weights.npz``), so a model trained in Keras 3 can be pruned or
quantization-aware trained in tf_keras: pruning and QAT
(``ExportConfig.needs_tfmot``) need Keras 2, which a process selects
before importing TensorFlow, so a Keras 3 process runs them in a child,
``python -m keras_shufflenet.export_job MODEL_DIR``, which reads
``MODEL_DIR/config.json``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from keras_shufflenet import console, data, portable_weights, run_dir
from keras_shufflenet.keras_compat import LEGACY_KERAS_ENV, USE_LEGACY_KERAS
from keras_shufflenet.training.config import ConfigError, TrainConfig
from keras_shufflenet.training.loop import build_model, load_source

_log = logging.getLogger(__name__)


def run_micro_export(config: TrainConfig, model: Any, source: data.DataSource) -> dict[str, Any]:
    """Calls :func:`keras_shufflenet.micro.export` with the data and settings of ``config``.

    Returns:
      The export report.
    """
    from keras_shufflenet import micro  # The micro extra is optional for training.

    pipeline = config.data
    return micro.export(
        model,
        data.representative_batches(source, pipeline, config.micro.representative_samples),
        config.resolved_export_dir,
        config.micro,
        eval_data=data.make_eval_dataset(source, pipeline, config.eval_batch),
        train_data=data.make_train_dataset(source, pipeline, config.batch_size, repeat=False),
        labels=source.class_names,
        verbose=min(config.verbose, 2),
        progress=_print_progress if config.verbose else None,
    )


def _print_progress(line: str) -> None:
    print(f"  export: {line}", flush=True)


def export_trained(config: TrainConfig) -> dict[str, Any]:
    """Runs the micro export of the model trained in ``config.model_dir``, in this process.

    Also adds the report to ``metrics.json`` under ``"micro"``.

    Returns:
      The export report.

    Raises:
      ConfigError: If ``config`` asks for no export, or the run has no trained weights.
    """
    config.validate()
    if not config.micro.enabled:
        raise ConfigError("mode=export needs --quantize=ptq or --quantize=qat. Received: quantize='none'")
    weights_path = os.path.join(config.model_dir, run_dir.WEIGHTS_FILE)
    if not os.path.exists(weights_path):
        raise ConfigError(f"no trained weights at {weights_path!r}; train first.")
    source = load_source(config)
    model = build_model(config, source.num_classes, source.channels)
    portable_weights.load(model, weights_path)
    report = run_micro_export(config, model, source)
    metrics_path = os.path.join(config.model_dir, run_dir.METRICS_FILE)
    if os.path.exists(metrics_path):
        run_dir.write_json(metrics_path, {**run_dir.read_json(metrics_path), "micro": report})
    return report


def export_run(config: TrainConfig) -> dict[str, Any]:
    """The micro export of a run that just trained: here, or in a Keras 2 child when this process lacks tfmot.

    Returns:
      The export report.

    Raises:
      RuntimeError: If the child process fails (its messages are on stderr).
    """
    if not (config.micro.needs_tfmot and not USE_LEGACY_KERAS):
        return export_trained(config)
    # Training ran in Keras 3 (faster); tfmot needs tf_keras, which a process
    # selects before importing TensorFlow: export in a child.
    command = [sys.executable, "-m", "keras_shufflenet.export_job", config.model_dir]
    _log.info("Micro export under Keras 2 (tf_keras): %s", " ".join(command))
    if config.verbose:
        _print_progress("in a Keras 2 (tf_keras) process, which tensorflow-model-optimization needs")
    result = subprocess.run(command, env=dict(os.environ, **{LEGACY_KERAS_ENV: "1"}), check=False)
    if result.returncode:
        raise RuntimeError(f"the micro export failed (exit code {result.returncode}); see the messages above.")
    return run_dir.read_json(os.path.join(config.resolved_export_dir, run_dir.REPORT_JSON))


def _storage_line(storage: dict[str, Any]) -> str:
    """Dense against compressed flash (and arena), or why the weights stayed dense."""
    if not storage.get("compressed"):
        return "  weights stored dense (no encoding made a tensor smaller)"
    dense, stored = storage["dense_model_bytes"], storage["model_bytes"]
    encodings = ", ".join(f"{name} {entry['tensors']}" for name, entry in storage["by_encoding"].items())
    line = (
        f"  weights stored compressed (TFLM DECODE; tensors: {encodings}): flash {dense:,} dense -> {stored:,} "
        f"bytes ({stored / dense:.1%})"
    )
    if "arena_growth_bytes" in storage:
        line += f", arena {storage['arena_growth_bytes']:+,} bytes; outputs bit-identical to dense"
    return line


def micro_summary(report: dict[str, Any], output_dir: str) -> str:
    """A few lines on a micro export report, for the end of a run."""
    exact = report.get("tflm_bit_exact", {})
    sparsity = report.get("sparsity", {})
    return "\n".join(
        [
            f"Microcontroller export in {output_dir}:",
            _accuracy_line(report),
            f"  flash: {report['flash_bytes']:,} bytes (model); tensor arena: {report['arena_bytes']:,} bytes",
            _storage_line(report.get("weight_storage", {})),
            f"  TFLM vs TFLite reference kernels: {'bit-identical' if exact.get('bit_exact') else 'DIFFERENT'}"
            f" on {exact.get('samples', 0)} samples",
            *(
                [f"  sparsity of pruned kernels: {_pct(sparsity.get('prunable_overall'))}"]
                if sparsity.get("target")
                else []
            ),
            f"  firmware files: {os.path.join(output_dir, run_dir.FIRMWARE_DIR)}/",
            *_npu_lines(report.get("npu"), output_dir),
        ]
    )


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _accuracy_line(report: dict[str, Any]) -> str:
    """Float and int8 top-1; after pruning or clustering, also the trained model's and the int8 drop from it."""
    int8, accuracy = report.get("int8_top1"), report.get("accuracy") or {}
    steps = [step for step in ("pruning", "clustering") if accuracy.get(f"float_top1_before_{step}") is not None]
    if not steps or int8 is None:
        return f"  top-1: float {_pct(report.get('float_top1'))}, int8 in TFLite Micro {_pct(int8)}"
    trained = accuracy[f"float_top1_before_{steps[0]}"]
    done = " and ".join({"pruning": "pruned", "clustering": "clustered"}[step] for step in steps)
    return (
        f"  top-1: trained float {_pct(trained)}, {done} float {_pct(report.get('float_top1'))}, "
        f"int8 in TFLite Micro {_pct(int8)} ({100 * (int8 - trained):+.2f} points)"
    )


def _npu_lines(npu: dict[str, Any] | None, output_dir: str) -> list[str]:
    if not npu:
        return []
    return [
        f"  Ethos-U NPU ({npu['accelerator']}, Vela's estimate): {npu['cycles']:,} cycles, "
        f"{npu['inference_ms']:.2f} ms; SRAM {npu['sram_bytes']:,} bytes, flash {npu['flash_bytes']:,} bytes; "
        f"on the CPU: {', '.join(npu['cpu_ops']) or 'none'}",
        f"  Ethos-U firmware files: {os.path.join(output_dir, 'ethos_u')}/",
    ]


def main(argv: list[str]) -> int:
    """``python -m keras_shufflenet.export_job MODEL_DIR``: :func:`export_trained` from ``MODEL_DIR/config.json``."""
    if len(argv) != 2:
        print("usage: python -m keras_shufflenet.export_job MODEL_DIR", file=sys.stderr)
        return 2
    try:
        config = TrainConfig.from_flat(run_dir.read_json(os.path.join(argv[1], run_dir.CONFIG_FILE)))
        if os.environ.get(console.QUIET_ENV):  # Started by a quiet trainer: stay quiet.
            console.quiet(config.verbose)
        export_trained(config)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
