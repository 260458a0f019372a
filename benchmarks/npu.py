"""The Arm Ethos-U NPU: ShuffleNet 0.5x g3 beside MobileNet a=0.25 at 96x96x3, 2 classes, as Vela estimates them.

Both models are converted to full int8 as ``micro.export`` converts them
(random weights, batch-norm statistics set on a random image), then compiled
by Arm's Vela (``ethos-u-vela``, its default system configuration and
memory mode for each accelerator) for an Ethos-U55 with 128 MACs per cycle
and an Ethos-U65 with 256: before and after the export's NPU rewrites
(:mod:`keras_shufflenet.micro.npu.graph`), one rewrite at a time. Every
rewritten model is run in TFLite Micro and compared with TFLite's reference
kernels on the unrewritten model (bit for bit). The cycles, times and
memory are Vela's estimates: no Ethos-U driver or simulator runs here.

    python -m benchmarks.npu [--output=docs/npu.md]

Also part of ``make bench`` (``benchmarks.run``, section ``npu``). Writes
``docs/npu.md`` and ``docs/npu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.common import convert_int8, markdown_table, mobilenet, set_batch_norm_statistics, shufflenet  # noqa: E402
from keras_shufflenet.micro import npu, verify  # noqa: E402
from keras_shufflenet.micro.npu import graph as npu_graph  # noqa: E402

INPUT_SHAPE = (96, 96, 3)
CLASSES = 2
SHUFFLENET = shufflenet(0.5, 3)
MOBILENET = mobilenet(0.25)  # The MLPerf Tiny visual-wake-words reference model.
ACCELERATORS = ("ethos-u55-128", "ethos-u65-256")
# The export's rewrites, cumulatively: none, the first, the first two, ...
STEPS: tuple[tuple[str, ...], ...] = tuple(npu_graph.REWRITES[:count] for count in range(len(npu_graph.REWRITES) + 1))
VERIFY_SAMPLES = 4
DEFAULT_OUTPUT = "docs/npu.md"


def _int8_model(spec: Any) -> bytes:
    model = spec.build(INPUT_SHAPE, CLASSES, batch_size=1)
    set_batch_norm_statistics(model)
    return convert_int8(model)


def _verify_rewrite(original: bytes, rewritten: bytes) -> int:
    """Samples on which TFLM on ``rewritten`` equals the reference kernels on ``original`` (raises otherwise)."""
    inputs = np.random.default_rng(0).integers(-128, 128, (VERIFY_SAMPLES, *INPUT_SHAPE)).astype(np.int8)
    reference = verify.run_reference(original, inputs)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "rewritten.tflite")
        with open(path, "wb") as handle:
            handle.write(rewritten)
        outputs = verify.run_tflm(path, verify.find_min_arena(path).recommended_bytes, inputs)
    if not np.array_equal(outputs.reshape(reference.shape), reference):
        raise verify.VerificationError("A rewritten model's TFLM outputs differ from the original's.")
    return VERIFY_SAMPLES


def measure() -> dict[str, Any]:
    """Vela's estimates for both models, every accelerator and every step of the rewrites."""
    results: dict[str, Any] = {"vela_version": npu.require_vela(), "models": {}}
    for spec in (SHUFFLENET, MOBILENET):
        original = _int8_model(spec)
        steps = []
        for rewrites in STEPS:
            model, counts = npu_graph.rewrite(original, rewrites)
            checked = _verify_rewrite(original, model) if rewrites and any(counts.values()) else 0
            per_accelerator = {accelerator: npu.compile_model(model, accelerator) for accelerator in ACCELERATORS}
            steps.append(
                {
                    "rewrites": list(rewrites),
                    "counts": counts,
                    "bit_exact_samples": checked,
                    "vela": {name: result.to_dict() for name, result in per_accelerator.items()},
                    "memory_bound_cycles": {
                        name: sum(layer.cycles for layer in result.layers if layer.memory_bound)
                        for name, result in per_accelerator.items()
                    },
                }
            )
        results["models"][spec.label] = steps
        if spec is SHUFFLENET:
            probe, folded = shortcut_folded(npu_graph.rewrite(original)[0])
            results["shortcut_fold_probe"] = {
                "folded_adds": folded,
                "vela": {accelerator: npu.compile_model(probe, accelerator).to_dict() for accelerator in ACCELERATORS},
            }
    return results


def shortcut_folded(rewritten: bytes) -> tuple[bytes, int]:
    """A cost probe, not an export rewrite: each residual ADD folded into the unit's last grouped 1x1 convolution.

    On a model after :func:`~keras_shufflenet.micro.npu.graph.split_grouped_convs`,
    ``relu(concat_k(conv_k(branch_k)) + x)`` becomes
    ``concat_k(relu(conv'_k(concat(branch_k, x_k))))``, where ``conv'_k`` is
    ``conv_k``'s kernel with an identity block (int8 127) for ``x_k``. Its
    outputs are not the model's (the identity would need the shortcut's own
    scale): it only asks Vela what the shape of that graph costs.

    Returns:
      The probe's flatbuffer and how many ADDs it folded.
    """
    import copy

    from tensorflow.lite.tools import flatbuffer_utils
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

    builtin = schema_fb.BuiltinOperator
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(rewritten))
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors
    split_code = npu_graph.opcode_index(model, builtin.SPLIT)
    concat_code = npu_graph.opcode_index(model, builtin.CONCATENATION)
    producer = {int(index): op for op in subgraph.operators for index in op.outputs}

    def is_op(op: Any, code: int) -> bool:
        return op is not None and npu_graph.is_op(model, op, code)

    def operator(code: int, inputs: list[int], outputs: list[int], options_type: int, options: Any) -> Any:
        op = schema_fb.OperatorT()
        op.opcodeIndex, op.builtinOptionsType, op.builtinOptions = code, options_type, options
        op.inputs, op.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        return op

    operators, folded = list(subgraph.operators), 0
    for add in subgraph.operators:
        if not is_op(add, builtin.ADD):
            continue
        for side in (0, 1):
            concat = producer.get(int(add.inputs[side]))
            convs = (
                [producer.get(int(index)) for index in concat.inputs] if is_op(concat, builtin.CONCATENATION) else []
            )
            if convs and all(is_op(conv, builtin.CONV_2D) for conv in convs):
                break
        else:
            continue
        shortcut, output = int(add.inputs[1 - side]), tensors[add.outputs[0]]
        groups, channels = len(convs), int(tensors[add.inputs[1 - side]].shape[-1])
        per_group = channels // groups
        axis = npu_graph.add_tensor(model, subgraph, tensors[convs[0].inputs[1]], "probe/axis", [], np.int32(3))
        tensors[axis].type, tensors[axis].quantization = schema_fb.TensorType.INT32, None
        like = tensors[shortcut]
        parts = [
            npu_graph.add_tensor(model, subgraph, like, f"probe/x{k}", [*like.shape[:-1], per_group], None)
            for k in range(groups)
        ]
        split_options = schema_fb.SplitOptionsT()
        split_options.numSplits = groups
        new_ops = [operator(split_code, [axis, shortcut], parts, schema_fb.BuiltinOptions.SplitOptions, split_options)]
        outputs = []
        for k, conv in enumerate(convs):
            branch = tensors[conv.inputs[0]]
            joined = npu_graph.add_tensor(
                model, subgraph, branch, f"probe/in{k}", [*branch.shape[:-1], int(branch.shape[-1]) + per_group], None
            )
            concat_options = schema_fb.ConcatenationOptionsT()
            concat_options.axis = 3
            new_ops.append(
                operator(
                    concat_code,
                    [int(conv.inputs[0]), parts[k]],
                    [joined],
                    schema_fb.BuiltinOptions.ConcatenationOptions,
                    concat_options,
                )
            )
            kernel = tensors[conv.inputs[1]]
            identity = np.eye(per_group, dtype=np.int8)[:, None, None, :] * np.int8(127)
            weights = np.concatenate([npu_graph.constant(model, kernel, np.int8), identity], axis=-1)
            wide = npu_graph.add_tensor(model, subgraph, kernel, f"probe/kernel{k}", list(weights.shape), weights)
            out = npu_graph.add_tensor(model, subgraph, output, f"probe/out{k}", [*output.shape[:-1], per_group], None)
            probe = copy.deepcopy(conv)
            probe.inputs = np.asarray([joined, wide, *conv.inputs[2:]], np.int32)
            probe.outputs = np.asarray([out], np.int32)
            probe.builtinOptions.fusedActivationFunction = schema_fb.ActivationFunctionType.RELU
            new_ops.append(probe)
            outputs.append(out)
        final = copy.deepcopy(concat)
        final.inputs, final.outputs = np.asarray(outputs, np.int32), add.outputs
        new_ops.append(final)
        position = operators.index(add)
        operators[position : position + 1] = new_ops
        for op in [*convs, concat]:
            operators.remove(op)
        folded += 1
    subgraph.operators = operators
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), folded


def _per_mac(step: dict[str, Any], accelerator: str, macs: int) -> float:
    return step["vela"][accelerator]["cycles"] / macs


def to_markdown(results: dict[str, Any], heading: str = "###") -> str:
    """The tables: before/after per accelerator, the ratio to MobileNet per MAC, and where the cycles go.

    ``heading`` marks the subsections (``"##"`` in ``docs/npu.md``, ``"###"`` inside docs/benchmarks.md).
    """
    shuffle_steps = results["models"][SHUFFLENET.label]
    mobile = results["models"][MOBILENET.label][-1]
    # MACs: Vela's count on each unrewritten model (a rewrite moves no MAC; Vela counts a ReLU pass as MACs).
    shuffle_macs = shuffle_steps[0]["vela"][ACCELERATORS[0]]["macs"]
    mobile_macs = results["models"][MOBILENET.label][0]["vela"][ACCELERATORS[0]]["macs"]
    lines = [
        f"Vela {results['vela_version']}, default system configuration and memory mode of each accelerator; "
        f"{INPUT_SHAPE[0]}×{INPUT_SHAPE[1]}×{INPUT_SHAPE[2]} input, {CLASSES} classes, full int8, random weights. "
        "**Every cycle, time and memory figure is Vela's estimate**: the NPU was not run (no Ethos-U driver or "
        "simulator here). **Verified**: each rewritten model gives, in TFLite Micro, the outputs of TFLite's "
        f"reference kernels on the unrewritten model, bit for bit, on {VERIFY_SAMPLES} random int8 inputs "
        "(and `micro.export(npu=...)` checks it on every export sample).",
        "",
        "The rewrites (`keras_shufflenet.micro.npu.graph`, applied only to the model given to Vela): "
        "`split_grouped_convs` writes each grouped CONV_2D as SPLIT + one CONV_2D per group + CONCATENATION "
        "(Vela otherwise applies a grouped convolution's fused ReLU in a separate pass over the whole output); "
        "`flatten_concatenations` merges a concatenation that only feeds another into it (Vela copies a "
        "concatenation that feeds a concatenation: the stride-2 units' branch).",
        "",
    ]
    for accelerator in ACCELERATORS:
        rows = []
        for label, steps, macs in (
            (SHUFFLENET.label, shuffle_steps, shuffle_macs),
            (MOBILENET.label, [results["models"][MOBILENET.label][0], mobile], mobile_macs),
        ):
            for step in steps if label == SHUFFLENET.label else steps[-1:]:
                vela = step["vela"][accelerator]
                ratio = _per_mac(step, accelerator, macs) / _per_mac(mobile, accelerator, mobile_macs)
                total_ops = vela["npu_ops"] + len(vela["cpu_ops"])
                rows.append(
                    [
                        label,
                        (
                            " + ".join(step["rewrites"])
                            if any(step["counts"].values())
                            else ("none: no grouped conv" if step["rewrites"] else "none (as converted)")
                        ),
                        f"{macs / 1e6:.2f}",
                        f"{100 * vela['npu_ops'] / total_ops:.0f} %" if total_ops else "n/a",
                        f"{vela['cycles']:,}",
                        f"{vela['inference_ms']:.3f}",
                        f"{1e3 * vela['cycles'] / macs:.1f}",
                        f"{ratio:.2f}",
                        f"{vela['flash_bytes'] / 1024:.1f}",
                        f"{vela['sram_bytes'] / 1024:.1f}",
                    ]
                )
        first = shuffle_steps[0]["vela"][accelerator]
        system = f"{first['system_config']}, {first['memory_mode']}, {first['clock_hz'] / 1e6:.0f} MHz"
        lines += [
            f"{heading} {accelerator} ({system})",
            "",
            markdown_table(
                [
                    "model",
                    "NPU rewrites",
                    "MMACs",
                    "NPU ops",
                    "cycles",
                    "ms",
                    "cycles per kMAC",
                    "per MAC / MobileNet",
                    "flash KiB",
                    "SRAM KiB",
                ],
                rows,
                align="llrrrrrrrr",
            ),
            "",
            "Cycles by TFLite operator (Vela's per-layer estimates summed; they add up to its totals). "
            "“Memory-bound” is the part of an operator's cycles in layers whose estimate is set by memory "
            "traffic (weights read from flash), not by the NPU's compute:",
            "",
        ]
        before, after = shuffle_steps[0]["vela"][accelerator], shuffle_steps[-1]["vela"][accelerator]
        reference = mobile["vela"][accelerator]
        ops = list(dict.fromkeys([*after["by_op"], *before["by_op"], *reference["by_op"]]))
        rows = []
        for op in ops:
            b, a, m = (part["by_op"].get(op, {}) for part in (before, after, reference))
            rows.append(
                [
                    op,
                    f"{b.get('cycles', 0):,}",
                    f"{a.get('cycles', 0):,}",
                    f"{100 * a.get('cycles', 0) / after['cycles']:.1f} %",
                    f"{a.get('memory_bound_cycles', 0):,}",
                    f"{m.get('cycles', 0):,}",
                    f"{100 * m.get('cycles', 0) / reference['cycles']:.1f} %",
                ]
            )
        rows.append(
            [
                "**total**",
                f"{before['cycles']:,}",
                f"{after['cycles']:,}",
                "100 %",
                f"{shuffle_steps[-1]['memory_bound_cycles'][accelerator]:,}",
                f"{reference['cycles']:,}",
                "100 %",
            ]
        )
        lines += [
            markdown_table(
                [
                    "operator",
                    "ShuffleNet before",
                    "ShuffleNet after",
                    "share after",
                    "of which memory-bound",
                    "MobileNet",
                    "MobileNet share",
                ],
                rows,
            ),
            "",
        ]
    lines += [f"{heading} Where the remaining cycles go", "", _where_the_gap_is(results, shuffle_macs, mobile_macs)]
    return "\n".join(lines).rstrip() + "\n"


def _where_the_gap_is(results: dict[str, Any], shuffle_macs: int, mobile_macs: int) -> str:
    """A paragraph from the numbers: how far the goal (per MAC at most MobileNet's) is, and why."""
    parts = []
    for accelerator in ACCELERATORS:
        after = results["models"][SHUFFLENET.label][-1]["vela"][accelerator]
        before = results["models"][SHUFFLENET.label][0]["vela"][accelerator]
        mobile = results["models"][MOBILENET.label][-1]["vela"][accelerator]
        mobile_per_mac = mobile["cycles"] / mobile_macs
        budget = mobile_per_mac * shuffle_macs  # ShuffleNet's cycles at MobileNet's cycles per MAC.
        conv = after["by_op"].get("Conv2D", {}).get("cycles", 0)
        add = after["by_op"].get("Add", {}).get("cycles", 0)
        parts.append(
            f"On {accelerator}, the rewrites take ShuffleNet from {before['cycles']:,} to {after['cycles']:,} cycles "
            f"({100 * (after['cycles'] / before['cycles'] - 1):+.1f} %), "
            f"{after['cycles'] / shuffle_macs / mobile_per_mac:.2f}× MobileNet's cycles per MAC "
            f"(goal ≤ 1.0×, i.e. ≤ {budget:,.0f} cycles). Its CONV_2D layers alone take {conv:,} cycles "
            f"({conv / budget:.2f}× that budget), and the residual ADDs, which MobileNet does not have, {add:,}."
        )
    bound_text = (
        "Of ShuffleNet's CONV_2D cycles after the rewrites, "
        + ", ".join(
            f"{conv['memory_bound_cycles']:,} of {conv['cycles']:,} "
            f"({100 * conv['memory_bound_cycles'] / conv['cycles']:.0f} %) on {accelerator}"
            for accelerator in ACCELERATORS
            for conv in [results["models"][SHUFFLENET.label][-1]["vela"][accelerator]["by_op"]["Conv2D"]]
        )
        + " are in layers whose estimate is set by reading their weights (memory-bound), not by the MACs."
    )
    probe = results.get("shortcut_fold_probe")
    probe_text = ""
    if probe:
        changes = ", ".join(
            f"{results['models'][SHUFFLENET.label][-1]['vela'][accelerator]['cycles']:,} → "
            f"{probe['vela'][accelerator]['cycles']:,} cycles on {accelerator}"
            for accelerator in ACCELERATORS
        )
        concat = probe["vela"][ACCELERATORS[0]]["by_op"].get("Concat", {}).get("cycles", 0)
        probe_text = (
            f" Measured and not kept: the identity shortcut folded into each unit's last grouped 1×1 convolution "
            f"(each group a convolution over `[branch group, x group]` with an identity block, "
            f"{probe['folded_adds']} ADDs removed; a cost probe of that graph's shape, `shortcut_folded`): "
            f"{changes}. The ADDs go, but Vela runs every `[branch group, x group]` concatenation as a memory "
            f"copy ({concat:,} cycles on {ACCELERATORS[0]}), and the widened convolutions cost more."
        )
    return (
        " ".join(parts)
        + " The goal is not reached with what the export controls. "
        + bound_text
        + " Splitting or reordering a weight-bound convolution does not change its cycles (at 96×96 a stage-3 "
        "or stage-4 weight is used at only 12×12 or 3×3 positions), and the elementwise ADDs run at a fraction "
        "of the MAC array's throughput."
        + probe_text
        + " Not built (rejected by arithmetic): the channel shuffle pushed into the next grouped convolution's "
        "input channels (each of its groups would read every group before it: a dense convolution with g× the "
        "MACs, to remove a TRANSPOSE under 4 % of the cycles); the average-pool shortcut as a depthwise "
        "convolution (TFLite's average pool divides a border window by the pixels inside the image, a "
        "convolution by 9: not the same outputs; AVERAGE_POOL is under 4 % of the cycles)."
    )


def run(output: str = DEFAULT_OUTPUT) -> tuple[str, dict[str, Any]]:
    """Measures, writes ``output`` and its ``.json``, and returns the markdown body and the results."""
    results = measure()
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(
            "# The Arm Ethos-U NPU: ShuffleNet beside MobileNet (Vela estimates)\n\n"
            f"Written by `python -m benchmarks.npu` (part of `make bench`) on {datetime.date.today().isoformat()}.\n\n"
            + to_markdown(results, heading="##")
        )
    with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    return to_markdown(results), results


def goal_ratios(results: dict[str, Any]) -> dict[str, float]:
    """Per accelerator: ShuffleNet's cycles per MAC (after the rewrites) over MobileNet's."""
    shuffle, mobile = results["models"][SHUFFLENET.label], results["models"][MOBILENET.label]
    ratios = {}
    for accelerator in ACCELERATORS:
        per_mac = [
            steps[-1]["vela"][accelerator]["cycles"] / steps[0]["vela"][accelerator]["macs"]
            for steps in (shuffle, mobile)
        ]
        ratios[accelerator] = per_mac[0] / per_mac[1]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="Markdown report to write (and its .json).")
    args = parser.parse_args()
    run(args.output)
    print(f"[npu] wrote {args.output}")


if __name__ == "__main__":
    main()
