"""The Arm Ethos-U NPU target: the int8 model compiled by Vela, its C array and Vela's estimates.

Cortex-M55/M85 boards often carry an Ethos-U55 or U65 NPU. Arm's compiler
Vela (PyPI ``ethos-u-vela``) turns an int8 ``.tflite`` into one whose NPU
part is a single ``ethos-u`` custom operator (a command stream and encoded
weights); operators it cannot place on the NPU stay TFLite operators for
TFLite Micro to run on the CPU. Vela also estimates, per operator, the NPU
cycles, the SRAM and flash it needs: :func:`compile_model` returns them.

The NPU cannot run here (no Ethos-U driver or Fixed Virtual Platform), so
every cycle and memory figure is Vela's estimate. What is verified is the
model given to Vela: the export's NPU rewrites
(:mod:`keras_shufflenet.micro.npu.graph`) are checked bit-identical to the
unrewritten model in TFLite Micro.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from typing import Any

import numpy as np

from keras_shufflenet.micro import c_sources, verify
from keras_shufflenet.micro.export_config import ACCELERATORS
from keras_shufflenet.micro.npu import graph as npu_graph

VELA_REQUIREMENT = "ethos-u-vela==5.2.0"
_INSTALL_HINT = f"pip install {VELA_REQUIREMENT}` (or `pip install keras-shufflenet[npu]`)"
# Vela's compiled operator, which the firmware registers with `AddEthosU()`.
ETHOS_U_OP = "CUSTOM(ethos-u)"
# Seconds one Vela compilation may take (a small model takes a few).
_VELA_TIMEOUT_S = 600


class VelaNotInstalledError(ImportError):
    """The ``ethos-u-vela`` package is not installed."""


def check_npu(npu: Any) -> str | None:
    """Checks the ``npu`` argument: `None` or one of :data:`ACCELERATORS`.

    Raises:
      ValueError: Naming the value received and the allowed values.
    """
    if npu is None or (isinstance(npu, str) and npu in ACCELERATORS):
        return npu
    raise ValueError(f"`npu` must be None or one of {list(ACCELERATORS)}. Received: npu={npu!r}")


def require_vela() -> str:
    """Vela's version; raises :class:`VelaNotInstalledError` naming the pip command if it is missing."""
    try:
        import ethosu.vela  # noqa: F401

        return metadata.version("ethos-u-vela")
    except (ImportError, metadata.PackageNotFoundError) as error:
        raise VelaNotInstalledError(
            f"The Ethos-U NPU target needs Arm's compiler Vela, which is not installed: run `{_INSTALL_HINT}."
        ) from error


@dataclasses.dataclass(frozen=True)
class VelaLayer:
    """One row of Vela's per-layer report: an operator as Vela scheduled it."""

    original_op: str
    vela_op: str
    target: str
    cycles: int
    macs: int
    name: str
    npu_cycles: int = 0
    memory_cycles: int = 0

    @property
    def memory_bound(self) -> bool:
        """Whether Vela's estimate is set by memory traffic (e.g. weights read from flash), not by the NPU."""
        return self.memory_cycles > self.npu_cycles


@dataclasses.dataclass
class VelaResult:
    """What Vela made of one int8 model (every number is Vela's estimate).

    Attributes:
      model: The compiled ``.tflite`` (the NPU part as an ``ethos-u`` operator).
      accelerator: The accelerator configuration, e.g. ``"ethos-u55-128"``.
      system_config: Vela's system configuration (clocks, memory bandwidths).
      memory_mode: Where the tensor arena and the weights live.
      clock_hz: The NPU clock of that system configuration.
      cycles: The estimated cycles of one inference.
      macs: The MACs Vela counts.
      sram_bytes: SRAM used (the tensor arena in a shared-SRAM system; the
        fast cache in a dedicated-SRAM one).
      flash_bytes: Off-chip flash, on-chip flash and DRAM used (weights and,
        with dedicated SRAM, the arena).
      arena_cache_bytes: The fast-memory cache Vela planned for (dedicated SRAM).
      npu_ops: Operators that run on the NPU.
      cpu_ops: Operators left to TFLite Micro on the CPU, by name.
      layers: Vela's per-layer rows, in order.
      summary: Vela's summary CSV row, as read.
    """

    model: bytes
    accelerator: str
    system_config: str
    memory_mode: str
    clock_hz: float
    cycles: int
    macs: int
    sram_bytes: int
    flash_bytes: int
    arena_cache_bytes: int
    npu_ops: int
    cpu_ops: list[str]
    layers: list[VelaLayer]
    summary: dict[str, str]

    @property
    def inference_ms(self) -> float:
        return 1e3 * self.cycles / self.clock_hz

    def by_op(self) -> dict[str, dict[str, int]]:
        """Cycles, MACs and Vela operators per original TFLite operator, largest cycles first."""
        totals: dict[str, dict[str, int]] = {}
        for layer in self.layers:
            entry = totals.setdefault(
                layer.original_op, {"cycles": 0, "macs": 0, "vela_ops": 0, "memory_bound_cycles": 0}
            )
            entry["cycles"] += layer.cycles
            entry["memory_bound_cycles"] += layer.cycles if layer.memory_bound else 0
            entry["macs"] += layer.macs
            entry["vela_ops"] += 1
        return dict(sorted(totals.items(), key=lambda item: -item[1]["cycles"]))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form for ``report.json`` (without the model bytes and the per-layer rows)."""
        return {
            "accelerator": self.accelerator,
            "system_config": self.system_config,
            "memory_mode": self.memory_mode,
            "clock_hz": self.clock_hz,
            "cycles": self.cycles,
            "inference_ms": round(self.inference_ms, 4),
            "macs": self.macs,
            "cycles_per_mac": round(self.cycles / self.macs, 5) if self.macs else None,
            "sram_bytes": self.sram_bytes,
            "flash_bytes": self.flash_bytes,
            "arena_cache_bytes": self.arena_cache_bytes,
            "npu_ops": self.npu_ops,
            "cpu_ops": self.cpu_ops,
            "vela_model_bytes": len(self.model),
            "by_op": self.by_op(),
        }


def _kib_to_bytes(value: str) -> int:
    return int(round(float(value) * 1024))


def _read_layers(path: str) -> list[VelaLayer]:
    with open(path, newline="") as handle:
        return [
            VelaLayer(
                original_op=row["Original Operator"].strip(),
                vela_op=row["NNG Operator"].strip(),
                target=row["Target"].strip(),
                cycles=int(row["Op Cycles"]),
                macs=int(row["MAC Count"]),
                name=row["Name"].strip(),
                npu_cycles=int(row["NPU"]),
                memory_cycles=max(int(row[key]) for key in ("SRAM AC", "DRAM AC", "OnFlash AC", "OffFlash AC")),
            )
            for row in csv.DictReader(handle)
        ]


def compile_model(
    tflite_model: bytes,
    accelerator: str,
    *,
    system_config: str | None = None,
    memory_mode: str | None = None,
    work_dir: str | None = None,
) -> VelaResult:
    """Compiles an int8 ``.tflite`` with Vela and reads its per-layer estimates.

    Vela runs in a child process (its command-line interface, as Arm
    documents it), writing into ``work_dir`` (a temporary directory if
    `None`).

    Args:
      tflite_model: A full-int8 flatbuffer.
      accelerator: One of :data:`ACCELERATORS`.
      system_config: A system configuration of Vela's ``vela.ini`` (e.g.
        ``"Ethos_U55_High_End_Embedded"``). Defaults to `None`: Vela's
        default for the accelerator.
      memory_mode: A memory mode of ``vela.ini`` (e.g. ``"Shared_Sram"``).
        Defaults to `None`: Vela's default for the accelerator.
      work_dir: Where Vela writes its files. Defaults to `None`.

    Returns:
      The :class:`VelaResult`.

    Raises:
      ValueError: For an unknown ``accelerator``.
      VelaNotInstalledError: If Vela is not installed.
      RuntimeError: If Vela fails; the message holds its output.
    """
    check_npu(accelerator)
    require_vela()
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = work_dir or scratch
        os.makedirs(out_dir, exist_ok=True)
        source = os.path.join(out_dir, "model.tflite")
        with open(source, "wb") as handle:
            handle.write(tflite_model)
        command = [
            sys.executable,
            "-c",
            "import sys; from ethosu.vela.vela import main; sys.exit(main())",
            source,
            f"--accelerator-config={accelerator}",
            f"--output-dir={out_dir}",
            "--verbose-performance",
        ]
        if system_config:
            command.append(f"--system-config={system_config}")
        if memory_mode:
            command.append(f"--memory-mode={memory_mode}")
        result = subprocess.run(command, capture_output=True, text=True, timeout=_VELA_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(
                f"Vela failed (exit {result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        summaries = glob.glob(os.path.join(out_dir, "model_summary_*.csv"))
        if len(summaries) != 1:
            raise RuntimeError(f"Vela wrote no summary CSV in its output directory:\n{result.stdout[-4000:]}")
        with open(summaries[0], newline="") as handle:
            summary = next(csv.DictReader(handle))
        layers = _read_layers(os.path.join(out_dir, "model_per-layer.csv"))
        with open(os.path.join(out_dir, "model_vela.tflite"), "rb") as handle:
            compiled = handle.read()
    counts = dict(re.findall(r"^(CPU|NPU) operators = (\d+)", result.stdout, re.MULTILINE))
    flash = sum(
        _kib_to_bytes(summary[key])
        for key in ("dram_memory_used", "on_chip_flash_memory_used", "off_chip_flash_memory_used")
    )
    return VelaResult(
        model=compiled,
        accelerator=accelerator,
        system_config=summary["system_config"],
        memory_mode=summary["memory_mode"],
        clock_hz=float(summary["core_clock"]),
        cycles=int(float(summary["cycles_total"])),
        macs=int(float(summary["nn_macs"])),
        sram_bytes=_kib_to_bytes(summary["sram_memory_used"]),
        flash_bytes=flash,
        arena_cache_bytes=int(float(summary["arena_cache_size"])),
        npu_ops=int(counts.get("NPU", 0)),
        cpu_ops=sorted({layer.original_op for layer in layers if layer.target != "NPU"}),
        layers=layers,
        summary=summary,
    )


def settings_header(result: VelaResult, model_bytes: int) -> str:
    """``ethos_u_settings.h``: what an Ethos-U TFLM build needs to know about the compiled model."""
    arena = -(-result.sram_bytes // 16) * 16
    dedicated = "dedicated" in result.memory_mode.lower()
    return (
        "// Written by keras_shufflenet.micro.export(npu=...); do not edit.\n"
        "#ifndef KERAS_SHUFFLENET_ETHOS_U_SETTINGS_H_\n#define KERAS_SHUFFLENET_ETHOS_U_SETTINGS_H_\n\n"
        "// The model in model_data.cc was compiled by Arm's Vela for this NPU and system:\n"
        f'constexpr const char* kEthosUAccelerator = "{result.accelerator}";\n'
        f'constexpr const char* kEthosUSystemConfig = "{result.system_config}";\n'
        f'constexpr const char* kEthosUMemoryMode = "{result.memory_mode}";\n'
        f"constexpr unsigned int kEthosUModelSize = {model_bytes};\n\n"
        "// Build TFLM with ETHOS_U (e.g. `make TARGET=cortex_m_corstone_300 CO_PROCESSOR=ethos_u`),\n"
        "// register the NPU operator with `resolver.AddEthosU()`, keep the model's array\n"
        "// 16-byte aligned (it is) and give the NPU the arena below.\n"
        f"// Vela's estimate: {result.cycles} NPU cycles per inference ({result.inference_ms:.3f} ms at\n"
        f"// {result.clock_hz / 1e6:.0f} MHz), {result.npu_ops} operators on the NPU, "
        f"{len(result.cpu_ops)} kinds on the CPU.\n"
        + (
            f"// Dedicated SRAM: the tensor arena lives in DRAM; Vela planned a fast-memory cache of\n"
            f"// {result.arena_cache_bytes} bytes (kEthosUCacheSize), of which it uses {result.sram_bytes}.\n"
            f"constexpr int kEthosUCacheSize = {result.arena_cache_bytes};\n"
            if dedicated
            else "// Shared SRAM: the tensor arena holds every tensor Vela placed in SRAM.\n"
        )
        + f"// SRAM Vela uses ({result.sram_bytes} bytes), rounded up to 16; TFLM adds its own\n"
        "// bookkeeping (a few kB): measure on the board and add a margin.\n"
        f"constexpr int kEthosUSramBytes = {arena};\n\n"
        "#endif  // KERAS_SHUFFLENET_ETHOS_U_SETTINGS_H_\n"
    )


# The directory of an export that holds the Ethos-U build's sources.
ETHOS_U_DIR = "ethos_u"


def _layers_csv(layers: list[VelaLayer]) -> str:
    lines = ["original_op,vela_op,target,cycles,macs,npu_cycles,memory_cycles,name"]
    lines += [
        f"{layer.original_op},{layer.vela_op},{layer.target},{layer.cycles},{layer.macs},"
        f'{layer.npu_cycles},{layer.memory_cycles},"{layer.name}"'
        for layer in layers
    ]
    return "\n".join(lines) + "\n"


def export_npu(
    staging: str,
    name: str,
    int8_tflite: bytes,
    accelerator: str,
    int8_inputs: Any,
    tflm_outputs: Any,
    arena_margin: float,
) -> tuple[dict[str, Any], list[str]]:
    """The NPU stage of :func:`keras_shufflenet.micro.export`: rewrite, verify, compile, write.

    Applies the NPU rewrites (:func:`keras_shufflenet.micro.npu.graph.rewrite`)
    to the standard int8 model and checks in TFLite Micro that the rewritten
    model gives ``tflm_outputs`` (the CPU model's TFLM outputs) bit for bit
    on every one of ``int8_inputs``. Vela then compiles both the unrewritten
    and the rewritten model (the first for the report's "before" column);
    the rewritten one is what the board gets. Written into ``staging``:
    ``<name>_int8_npu.tflite`` (the rewritten model given to Vela),
    ``<name>_vela.tflite`` and ``ethos_u/`` (``model_data.h/.cc``,
    ``ethos_u_settings.h``, ``vela_per_layer.csv``).

    Returns:
      The report's ``npu`` section and the names of the files written.

    Raises:
      keras_shufflenet.micro.verify.VerificationError: If a rewrite changed an output.
    """
    rewritten, counts = npu_graph.rewrite(int8_tflite)
    npu_model = f"{name}_int8_npu.tflite"
    npu_path = os.path.join(staging, npu_model)
    with open(npu_path, "wb") as handle:
        handle.write(rewritten)
    arena = verify.find_min_arena(npu_path, margin=arena_margin)
    outputs = verify.run_tflm(npu_path, arena.recommended_bytes, int8_inputs)
    expected = np.asarray(tflm_outputs).reshape(len(outputs), -1)
    differing = int(np.count_nonzero(np.any(outputs.reshape(len(outputs), -1) != expected, axis=1)))
    if differing:
        raise verify.VerificationError(
            f"The NPU rewrites {counts} changed the TFLM outputs on {differing} of {len(outputs)} samples."
        )
    before = compile_model(int8_tflite, accelerator)
    after = compile_model(rewritten, accelerator)
    vela_model = f"{name}_vela.tflite"
    with open(os.path.join(staging, vela_model), "wb") as handle:
        handle.write(after.model)
    os.mkdir(os.path.join(staging, ETHOS_U_DIR))
    sources = c_sources.model_data_sources(after.model, name)
    sources["ethos_u_settings.h"] = settings_header(after, len(after.model))
    sources["vela_per_layer.csv"] = _layers_csv(after.layers)
    for filename, text in sources.items():
        with open(os.path.join(staging, ETHOS_U_DIR, filename), "w", encoding="utf-8") as handle:
            handle.write(text)
    section = {
        "vela_version": require_vela(),
        "estimated": "Every cycle, time and memory figure is Vela's estimate; the NPU was not run.",
        "rewrites": counts,
        "rewrites_bit_exact_samples": len(outputs),
        **after.to_dict(),
        "before_rewrites": before.to_dict(),
    }
    files = [npu_model, vela_model] + [f"{ETHOS_U_DIR}/{filename}" for filename in sorted(sources)]
    return section, files


def markdown(section: dict[str, Any] | None) -> list[str]:
    """The ``report.md`` lines of the ``npu`` section (none without one)."""
    if not section:
        return []
    before = section["before_rewrites"]
    lines = [
        "",
        f"## Arm Ethos-U NPU ({section['accelerator']}, Vela {section['vela_version']})",
        "",
        f"System `{section['system_config']}`, memory mode `{section['memory_mode']}`. {section['estimated']} "
        f"The NPU rewrites {section['rewrites']} gave the CPU model's TFLM outputs bit for bit on "
        f"{section['rewrites_bit_exact_samples']} samples.",
        "",
        "| quantity | before rewrites | board's model |",
        "|---|---:|---:|",
    ]
    for label, key in (
        ("NPU cycles per inference", "cycles"),
        ("time at the NPU clock (ms)", "inference_ms"),
        ("SRAM bytes", "sram_bytes"),
        ("flash bytes", "flash_bytes"),
        ("operators on the NPU", "npu_ops"),
    ):
        lines.append(f"| {label} | {before[key]:,} | {section[key]:,} |")
    cpu_before, cpu_after = (", ".join(part["cpu_ops"]) or "none" for part in (before, section))
    lines.append(f"| operators on the CPU | {cpu_before} | {cpu_after} |")
    lines += ["", "| operator | cycles before | cycles | share | MACs |", "|---|---:|---:|---:|---:|"]
    for op, entry in section["by_op"].items():
        old = before["by_op"].get(op, {}).get("cycles", 0)
        share = 100 * entry["cycles"] / section["cycles"]
        lines.append(f"| {op} | {old:,} | {entry['cycles']:,} | {share:.1f} % | {entry['macs']:,} |")
    for op, entry in before["by_op"].items():
        if op not in section["by_op"]:
            lines.append(f"| {op} | {entry['cycles']:,} | 0 | 0.0 % | 0 |")
    return lines
