"""Flash against accuracy: dense, pruned and clustered int8 exports, stored compressed for TFLite Micro.

Each row is one ``micro.export`` of the same trained model: dense; pruned
to 30, 50 and 70 % (2 fine-tuning epochs); clustered to 16, 8 and 4 values
per kernel (batch norms folded first, 2 fine-tuning epochs, weights
quantized per tensor: one LUT table per tensor); pruned and clustered.
Every compressed model's TFLM outputs are checked equal, bit for bit, to the
same model stored dense, on the 1,000 held-out images. For each: flash
(model bytes, dense and as stored), the smallest TFLM arena (64-bit host),
TFLM instructions per inference (x86 callgrind, reference kernels: dense,
stored, and the DECODE operators'), float and int8 TFLM top-1.

    python -m benchmarks.compression --run_dir=runs/quickstart --output=docs/compression.md
    python -m benchmarks.compression --imagenet --output=docs/compression_imagenet.md

``--run_dir`` takes a trained run (``make demo`` trains the quickstart);
``--imagenet`` exports ShuffleNet 1x g3 at 224x224x3 with 1,000 classes,
untrained (batch-norm statistics set, fine-tuned on random images): its
flash, arena and instructions are those of the real model, its accuracy is
not measured. The process must run under Keras 2 (``TF_USE_LEGACY_KERAS=1``,
set here) for tensorflow-model-optimization.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if __name__ == "__main__":
    # tfmot (pruning, clustering) needs Keras 2, chosen before TensorFlow is imported. Only when run:
    # importing this module (the tests do) must not switch the importing process's children to Keras 2.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

from benchmarks.common import COMPRESSION_BLOCK, markdown_table, with_marked_block  # noqa: E402
from keras_shufflenet.run_dir import atomic_path, write_json, write_text  # noqa: E402

BENCHMARKS_PAGE = "docs/benchmarks.md"

# The dense int8 quickstart model of the goal: flash at most half of it.
DENSE_QUICKSTART_BYTES = 305_832

# (label, export keyword arguments).
CONFIGURATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("dense", {}),
    ("pruned 30 %", {"prune_sparsity": 0.3}),
    ("pruned 50 %", {"prune_sparsity": 0.5}),
    ("pruned 70 %", {"prune_sparsity": 0.7}),
    ("clustered 16", {"clusters": 16}),
    ("clustered 8", {"clusters": 8}),
    ("clustered 4", {"clusters": 4}),
    ("clustered 16, stage 4: 4", {"clusters": 16, "layer_clusters": {"stage4": 4}}),
    ("pruned 50 % + clustered 8", {"prune_sparsity": 0.5, "clusters": 8}),
)


def export_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``ExportConfig`` settings of one configuration: pruning fine-tunes 2 epochs, clustering is per tensor.

    Clustering fine-tunes for ``ExportConfig``'s default epochs and learning rate unless the settings name them.
    """
    arguments = dict(settings)
    if settings.get("prune_sparsity"):
        arguments.setdefault("prune_epochs", 2)
    if settings.get("clusters"):
        arguments.setdefault("weight_quantization", "per_tensor")
    return arguments


def _row(label: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    storage = report["weight_storage"]
    return {
        "label": label,
        "flash_bytes": report["flash_bytes"],
        "dense_flash_bytes": storage["dense_model_bytes"],
        "arena_min_bytes": report["arena"]["min_bytes"],
        "dense_arena_min_bytes": storage.get("dense_arena_min_bytes", report["arena"]["min_bytes"]),
        "instructions": report["tflm_instructions_per_inference"],
        "dense_instructions": storage.get("dense_instructions", report["tflm_instructions_per_inference"]),
        "decode_instructions": storage.get("decode_instructions", 0),
        "float_top1": report["float_top1"],
        "int8_top1": report["int8_top1"],
        "lossless_samples": storage.get("lossless_samples"),
        "by_encoding": storage["by_encoding"],
        "sparsity": report["sparsity"]["prunable_overall"],
        "seconds": round(seconds, 1),
    }


def _quickstart(run_dir: str) -> tuple[Any, dict[str, Any]]:
    """The trained model of ``run_dir`` and the export's data arguments."""
    from keras_shufflenet import data, portable_weights
    from keras_shufflenet.run_dir import CONFIG_FILE, WEIGHTS_FILE, read_json
    from keras_shufflenet.training.config import TrainConfig
    from keras_shufflenet.training.loop import build_model, load_source

    config = TrainConfig.from_flat(read_json(os.path.join(run_dir, CONFIG_FILE)))
    source = load_source(config)
    model = build_model(config, source.num_classes, source.channels)
    portable_weights.load(model, os.path.join(run_dir, WEIGHTS_FILE))
    pipeline = config.data
    return model, {
        # A list: every export reads it again.
        "representative_data": list(data.representative_batches(source, pipeline, 200)),
        "eval_data": data.make_eval_dataset(source, pipeline, config.eval_batch),
        "train_data": data.make_train_dataset(source, pipeline, config.batch_size, repeat=False),
        "labels": source.class_names,
    }


def _imagenet_shaped() -> tuple[Any, dict[str, Any]]:
    """Untrained ShuffleNet 1x g3 at 224x224x3 (1,000 classes) and random data of its shape."""
    import numpy as np
    import tensorflow as tf

    from benchmarks.common import set_batch_norm_statistics
    from keras_shufflenet import ShuffleNet

    model = ShuffleNet(scale_factor=1.0, groups=3, input_shape=(224, 224, 3), classes=1000, weights=None)
    set_batch_norm_statistics(model)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 224, 224, 3)).astype(np.float32)
    labels = rng.integers(0, 1000, 64)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    return model, {"representative_data": [images[:32]], "eval_data": batches, "train_data": batches}


# The configurations of the 224x224 model (each export takes minutes there).
IMAGENET_CONFIGURATIONS = ("dense", "pruned 50 %", "clustered 8", "pruned 50 % + clustered 8")

# `make demo`'s configuration, also run with several random seeds (k-means++ initialization, fine-tuning): one
# run's top-1 on 1,000 images moves by tenths of a point, so one run does not tell whether the demo meets its goal.
# Run "(seed i)" seeds Keras with i.
DEMO_LABEL = "clustered 16, stage 4: 4"


def _runs(imagenet: bool, repeats: int) -> list[tuple[str, dict[str, Any]]]:
    """The exports to measure: every configuration, and the demo's ``repeats`` more times with seeds 1, 2, ..."""
    if imagenet:
        return [(label, settings) for label, settings in CONFIGURATIONS if label in IMAGENET_CONFIGURATIONS]
    runs = []
    for label, settings in CONFIGURATIONS:
        runs.append((label, settings))
        if label == DEMO_LABEL:
            runs += [(f"{label} (seed {i})", {**settings, "seed": i}) for i in range(1, repeats + 1)]
    return runs


def measure(
    model: Any,
    data_arguments: dict[str, Any],
    work_dir: str,
    imagenet: bool,
    repeats: int = 1,
    done: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Exports every configuration (the demo's ``repeats`` times) not among ``done``; returns the rows in order."""
    from keras_shufflenet import micro
    from keras_shufflenet.keras_compat import keras

    finished = {row["label"]: row for row in done}
    rows = []
    extra = {"num_eval": 16, "num_verify": 4, "num_representative": 32} if imagenet else {}
    for label, settings in _runs(imagenet, repeats):
        if label in finished:
            rows.append(finished[label])
            continue
        if "seed" in settings:
            keras.utils.set_random_seed(settings["seed"])
        started = time.perf_counter()
        report = micro.export(
            model,
            output_dir=os.path.join(work_dir, f"export_{len(rows)}"),
            count_instructions=True,
            **data_arguments,
            **export_arguments(settings),
            **extra,
        )
        rows.append(_row(label, report, time.perf_counter() - started))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def firmware_comparison(run_dir: str, target: str = "cortex-m4", kernels: str = "cmsis_nn") -> dict[str, Any]:
    """The export in ``run_dir`` on a core, stored compressed and dense: flash, RAM and instructions per inference.

    The dense build is the export's ``tflm/`` with the same model stored
    dense (``*_int8_tflm_dense.tflite``): same samples, same expected
    outputs (the export checked them equal).
    """
    import shutil

    from keras_shufflenet.micro import c_sources, firmware, flatbuffer
    from keras_shufflenet.run_dir import REPORT_JSON, read_json

    report = read_json(os.path.join(run_dir, REPORT_JSON))
    if not report["weight_storage"]["compressed"]:
        raise ValueError(f"The export in {run_dir!r} stores its weights dense: nothing to compare.")
    name = report["name"]
    with open(os.path.join(run_dir, f"{name}_int8_tflm_dense.tflite"), "rb") as handle:
        dense_model = handle.read()
    builds = {}
    with tempfile.TemporaryDirectory() as scratch:
        dense_dir = os.path.join(scratch, "tflm")
        shutil.copytree(os.path.join(run_dir, "tflm"), dense_dir)
        files = {**c_sources.model_data_sources(dense_model, name)}
        files.update(c_sources.op_resolver_source(sorted(flatbuffer.op_histogram(dense_model))))
        for filename, text in files.items():
            with open(os.path.join(dense_dir, filename), "w", encoding="utf-8") as handle:
                handle.write(text)
        for label, model_dir in (("stored", os.path.join(run_dir, "tflm")), ("dense", dense_dir)):
            out = os.path.join(scratch, f"firmware_{label}")
            result = firmware.build_and_measure(model_dir, target, kernels, out, check_arena=False)
            by_type = firmware.instructions_by_op_type(result["per_op"])
            builds[label] = {
                "flash_bytes": result["flash_bytes"],
                "model_bytes": result["model_bytes"],
                "ram_bytes": result["ram_bytes"],
                "arena_used_bytes": result["arena_used_bytes"],
                "instructions": result["instructions_per_invoke"],
                "decode_instructions": sum(n for op, n in by_type.items() if "DECODE" in op),
                "output_matches_host": result["output_matches_host"],
            }
    return {"target": target, "kernels": kernels, **builds}


def firmware_markdown(comparison: dict[str, Any]) -> str:
    stored, dense = comparison["stored"], comparison["dense"]
    quantities = (
        ("firmware flash (B)", "flash_bytes"),
        ("model (B)", "model_bytes"),
        ("RAM (B)", "ram_bytes"),
        ("arena used (B)", "arena_used_bytes"),
        ("instructions per inference", "instructions"),
    )
    rows = []
    for label, key in quantities:
        extra = f" (DECODE {stored['decode_instructions']:,})" if key == "instructions" else ""
        rows.append([label, f"{dense[key]:,}", f"{stored[key]:,}{extra}", stored[key] / dense[key]])
    return "\n".join(
        [
            f"### The demo's configuration on {comparison['target']} "
            f"({comparison['kernels'].replace('_', '-')} kernels)",
            "",
            "The firmware (`make firmware`) of an export clustered as `make demo`'s (16 values per kernel, 4 in "
            "stage 4), built with TFLM's DECODE support, against the "
            "same model stored dense; both run in qemu and give the host TFLM's outputs on every sample "
            f"({'yes' if stored['output_matches_host'] and dense['output_matches_host'] else 'NO'}).",
            "",
            markdown_table(["", "dense", "stored compressed", "ratio"], [[*r[:3], f"{r[3]:.3f}"] for r in rows]),
            "",
        ]
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def report(rows: Sequence[dict[str, Any]], title: str, accuracy: bool, plot_path: str | None = None) -> str:
    """The markdown page (and the flash-against-accuracy plot, when ``plot_path`` is given)."""
    from keras_shufflenet.micro.weight_storage import Compression

    dense = rows[0]
    header = [
        "export",
        "flash (B)",
        "vs dense",
        "arena (B)",
        "instructions",
        "of which DECODE",
        "vs dense",
        "float top-1",
        "int8 TFLM top-1",
        "stored as",
    ]
    table = []
    for r in rows:
        encodings = ", ".join(f"{k} {v['tensors']}" for k, v in r["by_encoding"].items())
        table.append(
            [
                r["label"],
                f"{r['flash_bytes']:,}",
                f"{r['flash_bytes'] / dense['flash_bytes']:.3f}",
                f"{r['arena_min_bytes']:,} ({r['arena_min_bytes'] - r['dense_arena_min_bytes']:+,})",
                f"{r['instructions']:,}",
                f"{r['decode_instructions']:,}",
                f"{r['instructions'] / r['dense_instructions']:.3f}",
                _pct(r["float_top1"]) if accuracy else "n/a",
                _pct(r["int8_top1"]) if accuracy else "n/a",
                encodings,
            ]
        )
    lines = [
        f"# {title}",
        "",
        "Generated by `python -m benchmarks.compression`. Each row is one `micro.export` of the same model. "
        "*flash* is the model the board gets (weights stored compressed where that is smaller, decoded by TFLM's "
        "DECODE operator); *vs dense* divides it by the dense export's. *arena* is the smallest that ran on the "
        "64-bit host, with its change from the same model stored dense (decoded weights need RAM). "
        "*instructions* are x86 instructions of one TFLM `Invoke()` (callgrind, reference kernels), *of which "
        "DECODE* the decoding, and *vs dense* divides by the same model stored dense. Every compressed model's "
        "TFLM outputs equal the dense model's bit for bit on every eval sample. "
        + (
            "*float top-1* is the model as exported: after pruning or clustering (the dense row: the trained model). "
            if accuracy
            else "The model is untrained (random weights and data): no accuracy. "
        )
        + "*stored as*: weight tensors per encoding."
        + (" The dashed line of the plot is half the dense quickstart's flash." if plot_path and accuracy else ""),
        "",
        "Pruning: magnitude pruning of conv and dense kernels, 2 fine-tuning epochs. Clustering: batch norms "
        "folded into the convolutions, then tfmot's k-means++ clusters per kernel, 2 fine-tuning epochs (Adam "
        f"from {Compression.learning_rate:g} to 0 on a cosine, unless a row says otherwise), weights quantized per "
        "tensor (one LUT table per tensor).",
        "",
        markdown_table(header, table),
        "",
    ]
    if accuracy:
        lines += [demo_accuracy(rows), ""]
    if plot_path and accuracy:
        _plot(rows, plot_path)
        lines += [f"![flash against int8 top-1]({os.path.basename(plot_path)})", ""]
    return "\n".join(lines)


def demo_accuracy(rows: Sequence[dict[str, Any]]) -> str:
    """The int8 top-1 drop against the trained float model (the dense row): the demo's, and each seeded run's."""
    trained = rows[0]["float_top1"]
    demo = [r for r in rows if r["label"] == DEMO_LABEL]
    seeded = [r for r in rows if r["label"].startswith(f"{DEMO_LABEL} (seed ")]
    lines = []
    if demo:
        r = demo[0]
        lines.append(
            f"`make demo`'s configuration ({DEMO_LABEL}): int8 TFLM top-1 drop against the trained float model "
            f"({_pct(trained)}) of {100 * (trained - r['int8_top1']):+.1f} points; flash {r['flash_bytes']:,} bytes, "
            f"{100 * r['flash_bytes'] / DENSE_QUICKSTART_BYTES:.1f} % of the dense int8 quickstart "
            f"({DENSE_QUICKSTART_BYTES:,})."
        )
    if seeded:
        drops = [100 * (trained - r["int8_top1"]) for r in seeded]
        lines.append(
            f"The same with {len(drops)} seeds: drops of {', '.join(f'{d:+.1f}' for d in drops)} points (mean "
            f"{sum(drops) / len(drops):+.2f}, worst {max(drops):+.1f})."
        )
    return " ".join(lines) if lines else f"`make demo`'s configuration ({DEMO_LABEL}) was not measured."


def benchmarks_section(page: str, page_path: str) -> str:
    """docs/benchmarks.md's section: the quickstart's table and plot, from the page this benchmark wrote."""
    body = page.split("\n", 2)[2]  # Without the page's title.
    return (
        "## 6. Compressed weights: flash against accuracy (the quickstart)\n\n"
        f"From `python -m benchmarks.compression` ([{os.path.basename(page_path)}]({os.path.basename(page_path)}); "
        "the 224×224 model: [compression_imagenet.md](compression_imagenet.md)).\n" + body
    )


def _plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.2))
    families = {"dense": "o", "pruned": "s", "clustered": "^"}
    for family, marker in families.items():
        points = [r for r in rows if r["label"].startswith(family) and "+" not in r["label"] and "," not in r["label"]]
        axis.scatter(
            [r["flash_bytes"] / 1e3 for r in points],
            [100 * r["int8_top1"] for r in points],
            marker=marker,
            label=family,
        )
    for marker, label, points in (
        ("D", "pruned + clustered", [r for r in rows if "+" in r["label"]]),
        ("*", "clustered by stage", [r for r in rows if "," in r["label"]]),
    ):
        axis.scatter(
            [r["flash_bytes"] / 1e3 for r in points], [100 * r["int8_top1"] for r in points], marker=marker, label=label
        )
    for r in rows:
        if "(seed " in r["label"]:
            continue  # The demo's seeded repeats: points without a label of their own, around the demo's.
        by_stage = "," in r["label"]  # Labelled below and to the left, clear of the uniform counts' labels.
        axis.annotate(
            r["label"].replace("pruned ", "p").replace("clustered ", "c"),
            (r["flash_bytes"] / 1e3, 100 * r["int8_top1"]),
            xytext=(-4, -10) if by_stage else (4, 3),
            textcoords="offset points",
            horizontalalignment="right" if by_stage else "left",
            fontsize=7,
        )
    axis.axvline(DENSE_QUICKSTART_BYTES / 2e3, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xlabel("flash: model bytes (K)")
    axis.set_ylabel("int8 TFLM top-1 (%)")
    axis.set_title("Quickstart (ShuffleNet 0.5x g3, mnist5k): flash against accuracy", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows from a JSON list (``--json``) or from JSON lines among other lines (the rows this prints to stderr)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"label": ')]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression", description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default="runs/quickstart", help="A trained run (the quickstart by default).")
    parser.add_argument("--imagenet", action="store_true", help="ShuffleNet 1x g3 at 224x224x3, untrained.")
    parser.add_argument("--output", default="docs/compression.md")
    parser.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    parser.add_argument("--from_json", default=None, help="Rewrite the page from the rows of an earlier --json.")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="Keep the exports here (export_<row>/, e.g. for --firmware_run) instead of in a temporary folder.",
    )
    parser.add_argument(
        "--reuse_json",
        default=None,
        help="Rows (JSON lines or a list, e.g. from an interrupted run's log) to keep instead of measuring again.",
    )
    parser.add_argument("--repeats", type=int, default=3, help=f"Seeded runs of '{DEMO_LABEL}'; quickstart only.")
    parser.add_argument(
        "--firmware_run",
        default=None,
        help="Also build this export (e.g. runs/quickstart after make demo) for the Cortex-M4 with CMSIS-NN, "
        "stored compressed and dense, and add the comparison.",
    )
    args = parser.parse_args(argv)
    title = (
        "Compressed weights: ShuffleNet 1x g3 at 224x224x3 (untrained)"
        if args.imagenet
        else "Compressed weights: the quickstart (ShuffleNet 0.5x g3, mnist5k)"
    )
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            rows = json.load(handle)
    else:
        model, data_arguments = _imagenet_shaped() if args.imagenet else _quickstart(args.run_dir)
        done = read_rows(args.reuse_json) if args.reuse_json else []
        if args.work_dir:
            rows = measure(model, data_arguments, args.work_dir, args.imagenet, args.repeats, done)
        else:
            with tempfile.TemporaryDirectory() as work_dir:
                rows = measure(model, data_arguments, work_dir, args.imagenet, args.repeats, done)
    text = report(rows, title, accuracy=not args.imagenet, plot_path=os.path.splitext(args.output)[0] + ".png")
    if args.firmware_run:
        comparison = firmware_comparison(args.firmware_run)
        print(json.dumps(comparison), file=sys.stderr, flush=True)
        text += "\n" + firmware_markdown(comparison)
    write_text(args.output, text)
    if not args.imagenet and os.path.exists(BENCHMARKS_PAGE):
        with open(BENCHMARKS_PAGE, encoding="utf-8") as handle:
            page = handle.read()
        write_text(BENCHMARKS_PAGE, with_marked_block(page, COMPRESSION_BLOCK, benchmarks_section(text, args.output)))
    if args.json:
        write_json(args.json, rows)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
