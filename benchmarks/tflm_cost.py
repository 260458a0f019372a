"""TFLite Micro at 96x96x3, 2 classes (the MLPerf Tiny visual-wake-words setting): the cost on a microcontroller.

For every model, full int8:

* instructions of one inference: ``valgrind --tool=callgrind`` counts the
  instructions executed inside ``MicroInterpreter::Invoke()`` (TFLM's
  reference kernels, compiled for x86). Unlike wall-clock time on a shared
  machine they repeat (to within 0.01 % between runs), and they rank models as a microcontroller's
  cycle count would;
* the smallest tensor arena it runs in, found by bisection with each probe in
  a child process (TFLM aborts the process on some allocation failures);
* flash: the size of the ``.tflite`` flatbuffer;
* per-op shares: ``callgrind_annotate --inclusive=yes`` gives the
  instructions of each kernel's ``Eval`` function, mapped to its op type.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np

from benchmarks.common import (
    ModelSpec,
    convert_int8,
    markdown_table,
    mobilenet,
    set_batch_norm_statistics,
    shufflenet,
)
from keras_shufflenet.micro import flatbuffer, verify
from keras_shufflenet.micro.compact import compact_for_tflm
from keras_shufflenet.profiling import profile

INPUT_SHAPE = (96, 96, 3)
CLASSES = 2
MOBILENET_VWW = mobilenet(0.25)  # The MLPerf Tiny visual-wake-words reference model.
SHUFFLENET_05X_G3 = shufflenet(0.5, 3)
MODELS: tuple[ModelSpec, ...] = (
    shufflenet(0.25, 3),
    shufflenet(0.25, 8),
    SHUFFLENET_05X_G3,
    shufflenet(0.5, 8),
    MOBILENET_VWW,
)
# Int8 top-1 in TFLM of the quickstart export per weight quantization
# (measured by train/main.py --mode=export; see report()).
PER_TENSOR_QUICKSTART_TOP1 = {"per_channel": "98.0 %", "per_tensor": "98.1 %"}
# Models whose instructions are broken down per op.
PER_OP_MODELS: tuple[ModelSpec, ...] = (SHUFFLENET_05X_G3, MOBILENET_VWW)

# MACs of these Keras layer types run in these TFLite ops.
# (The export turns PointwiseGroupConv2D into a grouped CONV_2D and a Dense
# classifier into a 1x1 CONV_2D.)
_LAYER_TO_OP = {
    "Conv2D": "CONV_2D",
    "PointwiseGroupConv2D": "CONV_2D",
    "DepthwiseConv2D": "DEPTHWISE_CONV_2D",
    "Dense": "CONV_2D",
}


def macs_by_op(cost: Any) -> dict[str, int]:
    """MACs per TFLite op type, from a :func:`~keras_shufflenet.profiling.profile` of the Keras model."""
    op_macs: dict[str, int] = {}
    for layer in cost.layers:
        op = _LAYER_TO_OP.get(layer.type)
        if op and layer.macs:
            op_macs[op] = op_macs.get(op, 0) + layer.macs
    return op_macs


@dataclasses.dataclass
class TFLMCost:
    """The microcontroller cost of one model.

    Attributes:
      macs: Multiply-accumulates of one inference (``profile``).
      params: Parameters of the Keras model (``count_params``: weights,
        biases and batch-norm statistics, before batch norm is folded).
      flash_bytes: Size of the full-int8 ``.tflite`` file.
      arena_bytes: Smallest tensor arena (multiple of 16) in which it ran on this 64-bit host.
      instructions: Instructions executed in one ``MicroInterpreter::Invoke()``.
      op_instructions: Instructions per op type (inclusive, kernel Eval functions).
      op_macs: MACs per op type.
      op_counts: Number of ops of each type in the ``.tflite`` graph.
      flash_parts: :func:`keras_shufflenet.micro.flatbuffer.flash_breakdown` of the ``.tflite`` file.
      compact_flash_bytes: Size of the same model after
        :func:`keras_shufflenet.micro.compact.compact_for_tflm` (what
        ``micro.export`` flashes: no per-channel zero points, bias
        quantization or names; bit-identical outputs in TFLM).
      compact_arena_bytes: Smallest arena of the compact model.
      per_tensor_compact_flash_bytes: Size of the compact model converted
        with one weight scale per tensor (``weight_quantization="per_tensor"``).
    """

    macs: int
    params: int
    flash_bytes: int
    arena_bytes: int
    instructions: int
    op_instructions: dict[str, int]
    op_macs: dict[str, int]
    op_counts: dict[str, int]
    flash_parts: dict[str, int]
    compact_flash_bytes: int
    compact_arena_bytes: int
    per_tensor_compact_flash_bytes: int

    @property
    def compact_bytes_per_param(self) -> float:
        return self.compact_flash_bytes / self.params

    @property
    def instructions_per_mac(self) -> float:
        return self.instructions / self.macs

    @property
    def bytes_per_param(self) -> float:
        return self.flash_bytes / self.params


def _fixed_input(seed: int = 0) -> np.ndarray:
    """A fixed int8 input of the models (the same on every run, so the instruction counts repeat).

    The reference kernels' work does not depend on the values.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, size=(1, *INPUT_SHAPE), dtype=np.int64).astype(np.int8)[0]


def _smallest_arena(model_path: str) -> int:
    """The smallest tensor arena, a multiple of 16 bytes, in which the model runs (the export's search)."""
    return verify.find_min_arena(model_path, margin=0.0).min_bytes


def measure(models: tuple[ModelSpec, ...] = MODELS, work_dir: str | None = None) -> dict[ModelSpec, TFLMCost]:
    """Converts every model to full int8 and measures it in TFLite Micro.

    Args:
      models: The models, built at 96x96x3 with 2 classes and a static batch of 1.
      work_dir: Where the ``.tflite`` files go; a temporary
        directory if `None`.

    Returns:
      The cost of every model.
    """
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        directory = work_dir or temporary
        for spec in models:
            model = spec.build(INPUT_SHAPE, CLASSES, batch_size=1)
            cost = profile(model)
            op_macs = macs_by_op(cost)
            set_batch_norm_statistics(model)
            tflite_model = convert_int8(model)
            stem = re.sub(r"\W+", "_", spec.label).strip("_").lower()
            path = os.path.join(directory, f"{stem}_int8.tflite")
            with open(path, "wb") as file:
                file.write(tflite_model)
            arena = _smallest_arena(path)
            counted = verify.count_instructions_by_op(path, arena, _fixed_input())
            if counted is None:
                raise RuntimeError("valgrind is not installed: the TFLM benchmark counts instructions with callgrind.")
            instructions, op_instructions = counted.total, counted.by_op
            compact_model = compact_for_tflm(tflite_model).model
            compact_path = os.path.join(directory, f"{stem}_int8_tflm.tflite")
            with open(compact_path, "wb") as file:
                file.write(compact_model)
            results[spec] = TFLMCost(
                macs=cost.macs,
                params=model.count_params(),
                flash_bytes=len(tflite_model),
                arena_bytes=arena,
                instructions=instructions,
                op_instructions=op_instructions,
                op_macs=op_macs,
                op_counts=flatbuffer.op_histogram(tflite_model),
                flash_parts=flatbuffer.flash_breakdown(tflite_model),
                compact_flash_bytes=len(compact_model),
                compact_arena_bytes=_smallest_arena(compact_path),
                per_tensor_compact_flash_bytes=len(
                    compact_for_tflm(convert_int8(model, weight_quantization="per_tensor")).model
                ),
            )
            print(f"  TFLM {spec.label}: {instructions:,} instructions, arena {arena:,} B", flush=True)
    return results


def _per_op_table(cost: TFLMCost) -> str:
    rows = []
    for op, instructions in sorted(cost.op_instructions.items(), key=lambda item: -item[1]):
        macs = cost.op_macs.get(op, 0)
        rows.append(
            [
                op,
                cost.op_counts.get(op, "—"),
                f"{instructions / 1e6:.2f}",
                f"{100 * instructions / cost.instructions:.1f} %",
                f"{macs / 1e6:.2f}" if macs else "—",
                f"{instructions / macs:.2f}" if macs else "—",
            ]
        )
    return markdown_table(["op", "ops in graph", "M instructions", "share", "MMACs", "instructions / MAC"], rows)


def report(results: dict[ModelSpec, TFLMCost]) -> str:
    """The markdown section: cost per model, ratios to MobileNet, per-op shares."""
    reference = results.get(MOBILENET_VWW)
    rows = []
    for spec, c in results.items():
        rows.append(
            [
                spec.label,
                f"{c.macs / 1e6:.2f}",
                f"{c.params:,}",
                f"{c.instructions / 1e6:.1f}",
                f"{c.instructions_per_mac:.2f}",
                f"{c.flash_bytes:,}",
                f"{c.bytes_per_param:.3f}",
                f"{c.arena_bytes:,}",
            ]
        )
    parts = [
        "96×96×3 input, 2 classes, full int8 (int8 input and output), static batch of 1, random weights "
        "calibrated on random images; batch-norm statistics are set from one random image so that "
        "activations and the folded biases look like a trained network's (with fresh statistics MobileNet's "
        "logits collapse to ~0, the int8 softmax aborts TFLM, and the converter shares identical all-zero bias "
        "buffers, which understates flash). Instructions: one `MicroInterpreter::Invoke()` under callgrind "
        "(TFLM's reference kernels, built for x86-64, so the counts rank models as a microcontroller's cycle "
        "counts would, without being them). Arena: the smallest tensor arena (16-byte steps) in which the "
        "model ran, by bisection in child processes, on this 64-bit host. Flash: `.tflite` bytes. Params: "
        "Keras `count_params()` (batch-norm statistics included, before folding).",
        markdown_table(
            [
                "model",
                "MMACs",
                "params",
                "M instructions",
                "instructions / MAC",
                "flash bytes",
                "bytes / param",
                "arena bytes",
            ],
            rows,
        ),
    ]
    if reference is not None:
        ratio_rows = []
        for spec, c in results.items():
            if spec == MOBILENET_VWW:
                continue
            ratio_rows.append(
                [
                    f"{spec.label} / {MOBILENET_VWW.label}",
                    f"{c.macs / reference.macs:.2f}",
                    f"{c.instructions / reference.instructions:.2f}",
                    f"{c.instructions_per_mac / reference.instructions_per_mac:.2f}",
                    f"{c.flash_bytes / reference.flash_bytes:.2f}",
                    f"{c.bytes_per_param / reference.bytes_per_param:.2f}",
                    f"{c.arena_bytes / reference.arena_bytes:.2f}",
                ]
            )
        parts += [
            "Ratios to MobileNetV1 α=0.25, the MLPerf Tiny reference (< 1: ShuffleNet costs less).",
            markdown_table(
                ["pair", "MACs", "instructions", "instructions / MAC", "flash", "bytes / param", "arena"],
                ratio_rows,
            ),
        ]
    compact_rows = []
    for spec, c in results.items():
        row = [
            spec.label,
            f"{c.flash_bytes:,}",
            f"{c.compact_flash_bytes:,}",
            f"{100 * (1 - c.compact_flash_bytes / c.flash_bytes):.0f} %",
            f"{c.compact_bytes_per_param:.3f}",
            f"{c.compact_arena_bytes:,}",
        ]
        if reference is not None:
            row += [
                f"{c.compact_bytes_per_param / reference.compact_bytes_per_param:.2f}",
                f"{c.compact_bytes_per_param / reference.bytes_per_param:.2f}",
            ]
        compact_rows.append(row)
    parts += [
        "**Flash of the compact model that `keras_shufflenet.micro.export` writes.** "
        "`compact_for_tflm` keeps one zero point per symmetric per-channel weight tensor (TFLM repeats it for "
        "every channel), drops the quantization parameters of per-channel int32 biases (the kernels never read "
        "them) and the tensor names; TFLM's outputs stay bit-identical (checked by every export against TFLite's "
        "reference kernels on the standard file). The last two columns compare bytes per parameter with "
        "MobileNet compacted the same way, and with MobileNet as the standard converter writes it.",
        markdown_table(
            [
                "model",
                "standard flash",
                "compact flash",
                "saved",
                "compact bytes / param",
                "compact arena",
                "÷ MobileNet compact",
                "÷ MobileNet standard",
            ],
            compact_rows,
        ),
    ]
    if reference is not None:
        reference_per_tensor = reference.per_tensor_compact_flash_bytes / reference.params
        per_tensor_rows = [
            [
                spec.label,
                f"{c.compact_flash_bytes:,}",
                f"{c.per_tensor_compact_flash_bytes:,}",
                f"{c.per_tensor_compact_flash_bytes / c.params:.3f}",
                f"{c.per_tensor_compact_flash_bytes / c.params / reference.compact_bytes_per_param:.2f}",
                f"{c.per_tensor_compact_flash_bytes / c.params / reference_per_tensor:.2f}",
            ]
            for spec, c in results.items()
        ]
        parts += [
            '**Per-tensor weight scales (the export\'s `weight_quantization="per_tensor"` option).** Per-channel '
            "quantization stores a float32 scale for every output channel of every convolution next to its int32 "
            "bias; grouped and depthwise convolutions have few weights per output channel, so this costs ShuffleNet "
            "more per parameter than MobileNet. One scale per tensor removes it. It changes accuracy: on the "
            "quickstart (ShuffleNet 0.5× g3, mnist5k, PTQ, no pruning) int8 top-1 in TFLM was "
            f"{PER_TENSOR_QUICKSTART_TOP1['per_channel']} with per-channel and "
            f"{PER_TENSOR_QUICKSTART_TOP1['per_tensor']} with per-tensor weights "
            "(`train/main.py --flagfile=train/configs/quickstart.flags --mode=export --quantize=ptq "
            "--weight_quantization=...`; float 98.0 %). Digits are an easy task: on harder data per-tensor "
            "weights lose more, the depthwise convolutions first, so measure it on yours. Compact flash in "
            "bytes; ratios of bytes per parameter.",
            markdown_table(
                [
                    "model",
                    "per-channel compact",
                    "per-tensor compact",
                    "per-tensor bytes / param",
                    "÷ MobileNet per-channel compact",
                    "÷ MobileNet per-tensor compact",
                ],
                per_tensor_rows,
            ),
        ]
    kinds = list(next(iter(results.values())).flash_parts) if results else []
    flash_rows = [
        [
            spec.label,
            *(f"{c.flash_parts[kind]:,} ({100 * c.flash_parts[kind] / c.flash_bytes:.0f} %)" for kind in kinds),
        ]
        for spec, c in results.items()
    ]
    parts += [
        "**What the flash holds** (bytes of the `.tflite` file; quantization parameters are a float32 scale "
        "and an int64 zero point per channel of every per-channel tensor).",
        markdown_table(["model", *kinds], flash_rows),
    ]
    for spec in PER_OP_MODELS:
        if spec in results:
            parts += [
                f"**Where the instructions go: {spec.label}** ({results[spec].instructions / 1e6:.1f} M). "
                "Inclusive instructions of each kernel's Eval function; `(interpreter)` is the rest of "
                "`Invoke()` (the loop over the ops).",
                _per_op_table(results[spec]),
            ]
    return "\n\n".join(parts)


def run() -> tuple[str, dict[ModelSpec, TFLMCost]]:
    results = measure()
    return report(results), results


def _main(argv: list[str]) -> Any:
    del argv
    text, _ = run()
    print(text)


if __name__ == "__main__":
    _main(sys.argv)
