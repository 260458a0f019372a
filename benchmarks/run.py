"""Runs every benchmark and writes the report (``make bench``).

Usage:
  python -m benchmarks.run --output=docs/benchmarks.md [--sections=fidelity,keras,tflite,tflm,firmware,npu]

The plot goes next to the report (``docs/benchmarks_cost_vs_macs.png``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import Any

# Quiet TensorFlow's C++ start-up logging; must be set before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import fidelity, firmware_cost, keras_speed, npu, plots, tflite_latency, tflm_cost  # noqa: E402
from benchmarks.common import (  # noqa: E402
    COMPRESSION_BLOCK,
    MOBILENET_050,
    SHUFFLENET_1X_G3,
    SHUFFLENET_1X_G8,
    machine_description,
    markdown_table,
    marked_block,
)

SECTIONS = ("fidelity", "keras", "tflite", "tflm", "firmware", "npu")
# Sections written after the block of docs/benchmarks.md that benchmarks.compression writes (section 6).
AFTER_COMPRESSION = ("npu",)
PLOT_NAME = "benchmarks_cost_vs_macs.png"


def _where_instructions_go(tflm: dict[Any, tflm_cost.TFLMCost]) -> str:
    """The paragraph and table on ShuffleNet's TFLM instructions, written from the measured numbers."""
    shufflenet = tflm.get(tflm_cost.SHUFFLENET_05X_G3)
    mobilenet = tflm.get(tflm_cost.MOBILENET_VWW)
    if shufflenet is None or mobilenet is None:
        return ""

    def share(cost: tflm_cost.TFLMCost, op: str) -> float:
        return 100 * cost.op_instructions.get(op, 0) / cost.instructions

    def per_op_mac(cost: tflm_cost.TFLMCost, op: str) -> float:
        return cost.op_instructions.get(op, 0) / cost.op_macs[op] if cost.op_macs.get(op) else float("nan")

    def no_mac_share(cost: tflm_cost.TFLMCost) -> float:
        return sum(share(cost, op) for op in cost.op_instructions if op not in cost.op_macs and op != "(interpreter)")

    top = sorted(shufflenet.op_instructions.items(), key=lambda item: -item[1])[:5]
    top_text = ", ".join(f"{op} {100 * n / shufflenet.instructions:.1f} %" for op, n in top)
    shuffle_share = share(shufflenet, "TRANSPOSE") + share(shufflenet, "RESHAPE")
    quantization_share = 100 * shufflenet.flash_parts["quantization"] / shufflenet.flash_bytes
    mobilenet_quantization_share = 100 * mobilenet.flash_parts["quantization"] / mobilenet.flash_bytes
    paragraph = (
        f"ShuffleNet 0.5× g3 executes {shufflenet.instructions / 1e6:.1f} M instructions for "
        f"{shufflenet.macs / 1e6:.2f} M MACs ({shufflenet.instructions_per_mac:.2f} per MAC), MobileNet α=0.25 "
        f"{mobilenet.instructions / 1e6:.1f} M for {mobilenet.macs / 1e6:.2f} M ({mobilenet.instructions_per_mac:.2f} "
        f"per MAC). ShuffleNet's top ops: {top_text}. Per MAC of their own, CONV_2D costs "
        f"{per_op_mac(shufflenet, 'CONV_2D'):.2f} instructions in ShuffleNet and "
        f"{per_op_mac(mobilenet, 'CONV_2D'):.2f} in MobileNet, DEPTHWISE_CONV_2D "
        f"{per_op_mac(shufflenet, 'DEPTHWISE_CONV_2D'):.2f} and {per_op_mac(mobilenet, 'DEPTHWISE_CONV_2D'):.2f}. "
        f"Ops that do no MACs take {no_mac_share(shufflenet):.1f} % of ShuffleNet's instructions and "
        f"{no_mac_share(mobilenet):.1f} % of MobileNet's; in ShuffleNet the residual ADD alone is "
        f"{share(shufflenet, 'ADD'):.1f} % (an int8 add rescales both inputs and the output, element by element) "
        f"and the channel shuffle (TRANSPOSE and its RESHAPEs) {shuffle_share:.1f} %. "
        f"In flash, the quantization parameters (a float32 scale and an int64 zero point per output channel of "
        f"every convolution) are {quantization_share:.0f} % of ShuffleNet's file against "
        f"{mobilenet_quantization_share:.0f} % of MobileNet's."
    )
    # The instructions-per-MAC gap, op by op: each op's instructions divided by the model's total MACs.
    ops = sorted(
        set(shufflenet.op_instructions) | set(mobilenet.op_instructions),
        key=lambda op: -(shufflenet.op_instructions.get(op, 0) / shufflenet.macs),
    )
    rows = []
    for op in ops:
        s = shufflenet.op_instructions.get(op, 0) / shufflenet.macs
        m = mobilenet.op_instructions.get(op, 0) / mobilenet.macs
        rows.append([op, f"{s:.2f}", f"{m:.2f}", f"{s - m:+.2f}"])
    rows.append(
        [
            "**total**",
            f"{shufflenet.instructions_per_mac:.2f}",
            f"{mobilenet.instructions_per_mac:.2f}",
            f"{shufflenet.instructions_per_mac - mobilenet.instructions_per_mac:+.2f}",
        ]
    )
    table = markdown_table(
        ["op", "ShuffleNet 0.5x g3", "MobileNet a=0.25", "difference"],
        rows,
    )
    return (
        f"{paragraph}\n\nThe gap in instructions per MAC, op by op (each op's instructions divided by the "
        f"model's MACs; the differences add up to the total's):\n\n{table}"
    )


def _goals(keras_results: Any, tflite_results: Any, tflm: Any, firmware: Any = None, npu_results: Any = None) -> str:
    """The deployment-efficiency goals, each with its measured ratio."""
    rows = []
    if npu_results:
        for accelerator, ratio in npu.goal_ratios(npu_results).items():
            rows.append(
                [
                    f"{accelerator} (Vela estimate): ShuffleNet 0.5x g3 / MobileNet a=0.25, cycles per MAC",
                    "≤ 1",
                    f"{ratio:.2f}",
                ]
            )
    if firmware:
        for name, ratio in firmware_cost.goal_ratios(firmware).items():
            rows.append([f"Cortex-M4, CMSIS-NN: ShuffleNet 0.5x g3 / MobileNet a=0.25, {name}", "≤ 1", f"{ratio:.2f}"])
        rows += firmware_cost.kernel_goals(firmware)
    if tflm and tflm_cost.SHUFFLENET_05X_G3 in tflm and tflm_cost.MOBILENET_VWW in tflm:
        s, m = tflm[tflm_cost.SHUFFLENET_05X_G3], tflm[tflm_cost.MOBILENET_VWW]
        ratio = s.instructions_per_mac / m.instructions_per_mac
        rows.append(["TFLM: ShuffleNet 0.5x g3 / MobileNet a=0.25, instructions per MAC", "≤ 1", f"{ratio:.2f}"])
        ratio = s.bytes_per_param / m.bytes_per_param
        rows.append(["TFLM: ShuffleNet 0.5x g3 / MobileNet a=0.25, flash bytes per param", "≤ 1", f"{ratio:.2f}"])
        ratio = s.compact_bytes_per_param / m.compact_bytes_per_param
        rows.append(["… both compacted as `micro.export` writes them (`compact_for_tflm`)", "≤ 1", f"{ratio:.2f}"])
        ratio = s.compact_bytes_per_param / m.bytes_per_param
        rows.append(["… ShuffleNet compacted / MobileNet as the converter writes it", "≤ 1", f"{ratio:.2f}"])
    if tflite_results and SHUFFLENET_1X_G8 in tflite_results and MOBILENET_050 in tflite_results:
        ratio = tflite_results[SHUFFLENET_1X_G8]["int8 ms"] / tflite_results[MOBILENET_050]["int8 ms"]
        rows.append(["TFLite int8: ShuffleNet 1x g8 / MobileNet a=0.5, latency", "≤ 1", f"{ratio:.2f}"])
    if keras_results and SHUFFLENET_1X_G3 in keras_results and MOBILENET_050 in keras_results:
        for mode in keras_speed.MODES:
            ratio = keras_results[SHUFFLENET_1X_G3][mode] / keras_results[MOBILENET_050][mode]
            rows.append([f"Keras: ShuffleNet 1x g3 / MobileNet a=0.5, images/s, {mode}", "≥ 1", f"{ratio:.2f}"])
    for row in rows:
        value = float(row[2])
        row.append("met" if (value <= 1 if row[1].startswith("≤") else value >= 1) else "not met")
    return markdown_table(["goal", "target", "measured", ""], rows, align="lrrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="docs/benchmarks.md", help="Markdown report to write.")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"Comma-separated sections to run, from {', '.join(SECTIONS)}.",
    )
    args = parser.parse_args()
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"Unknown sections {unknown}; choose from {SECTIONS}.")

    started = time.perf_counter()
    machine = machine_description()
    texts: dict[str, str] = {}
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {}
    runners = {
        "fidelity": fidelity.run,
        "keras": keras_speed.run,
        "tflite": tflite_latency.run,
        "tflm": tflm_cost.run,
        "firmware": firmware_cost.run,
        "npu": lambda: npu.run(os.path.join(os.path.dirname(args.output) or ".", "npu.md")),
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        print(f"[bench] {name} ...", flush=True)
        section_start = time.perf_counter()
        texts[name], results[name] = runners[name]()
        seconds[name] = time.perf_counter() - section_start
        print(f"[bench] {name} done in {seconds[name]:.0f} s", flush=True)

    output_dir = os.path.dirname(args.output) or "."
    plot_path = None
    if any(name in results for name in ("keras", "tflite", "tflm")):
        plot_path = plots.cost_against_macs(
            results.get("keras"), results.get("tflite"), results.get("tflm"), os.path.join(output_dir, PLOT_NAME)
        )
    total = time.perf_counter() - started

    titles = {
        "fidelity": "1. Fidelity: MACs and parameters against the published numbers",
        "keras": "2. Keras float32 on the CPU",
        "tflite": "3. TFLite on the CPU (float32 and int8, 1 thread)",
        "tflm": "4. TFLite Micro, 96×96×3, 2 classes (MLPerf Tiny visual wake words)",
        "firmware": "5. The firmware on emulated Cortex-M4/M7/M55 cores (96×96×3, 2 classes)",
        "npu": "7. The Arm Ethos-U NPU, 96×96×3, 2 classes (Vela's estimates; also docs/npu.md)",
    }
    lines = [
        "# Benchmarks: ShuffleNet beside MobileNet and the paper",
        "",
        f"Written by `python -m benchmarks.run` (`make bench`) on {datetime.date.today().isoformat()}; "
        f"the whole run took {total / 60:.1f} min "
        f"({', '.join(f'{name} {s:.0f} s' for name, s in seconds.items())}). All models have random weights "
        "(`weights=None`): cost does not depend on the weights' values. Wall-clock numbers swing by tens of "
        "percent on a shared machine, so every model is timed in interleaved rounds within one run and the "
        "comparisons are ratios; TFLite Micro is measured in instructions, which repeat to within 0.01 % between runs.",
        "",
        "## Machine",
        "",
        machine,
        "",
    ]
    if any(name in results for name in ("keras", "tflite", "tflm", "firmware", "npu")):
        lines += [
            "## Deployment-efficiency goals",
            "",
            _goals(
                results.get("keras"),
                results.get("tflite"),
                results.get("tflm"),
                results.get("firmware"),
                results.get("npu"),
            ),
            "",
        ]
    for name in SECTIONS:
        if name in texts and name not in AFTER_COMPRESSION:
            lines += [f"## {titles[name]}", "", texts[name], ""]
            if name == "tflm":
                paragraph = _where_instructions_go(results[name])
                if paragraph:
                    lines += ["### Where ShuffleNet's instructions go", "", paragraph, ""]
    if plot_path:
        lines += [
            "## Cost against MACs",
            "",
            f"![Cost against MACs: Keras, TFLite and TFLite Micro]({os.path.basename(plot_path)})",
            "",
        ]
    os.makedirs(output_dir, exist_ok=True)
    text = "\n".join(lines)
    # Sections other benchmarks write into this page (benchmarks.compression) stay.
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as previous:
            kept = marked_block(previous.read(), COMPRESSION_BLOCK)
        if kept:
            text = text.rstrip("\n") + "\n\n" + kept + "\n"
    for name in AFTER_COMPRESSION:
        if name in texts:
            text = text.rstrip("\n") + f"\n\n## {titles[name]}\n\n{texts[name].strip()}\n"
    with open(args.output, "w") as report:
        report.write(text)
    print(f"[bench] wrote {args.output} in {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
