"""Flash and RAM of a linked firmware ELF, from its section headers and symbols (GNU binutils)."""

from __future__ import annotations

import re
import subprocess

from keras_shufflenet.micro.firmware.tflm_app import binutil, require_tool


def symbols(elf: str, target: str) -> dict[str, tuple[int, int]]:
    """Symbol -> (address, size) for the defined symbols of ``elf``."""
    proc = subprocess.run(
        [require_tool(binutil(target, "nm")), "-S", "-C", "--defined-only", elf],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4:
            found[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        elif len(parts) == 3:
            found[parts[2]] = (int(parts[0], 16), 0)
    return found


def elf_sizes(elf: str, target: str) -> dict[str, int]:
    """Flash and static RAM of an ELF from its section headers.

    Flash is every allocated section with contents (code, read-only data,
    the initial values of ``.data``); static RAM is ``.data`` plus every
    allocated section without contents (``.bss``, which holds the arena).
    """
    proc = subprocess.run(
        [require_tool(binutil(target, "readelf")), "-S", "-W", elf], capture_output=True, text=True, check=True
    )
    flash = data = bss = 0
    for line in proc.stdout.splitlines():
        match = re.match(r"^\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if not match or "A" not in match.group(4):
            continue
        name, kind, size = match.group(1), match.group(2), int(match.group(3), 16)
        if kind == "NOBITS":
            bss += size
            continue
        flash += size
        if name.startswith(".data") or name.startswith(".tdata"):
            data += size
    table = symbols(elf, target)
    model = next((size for name, (_, size) in table.items() if re.fullmatch(r"g_\w+_model_data", name)), 0)
    # The test images and their expected outputs are the demo's, not the product's.
    samples = sum(table.get(name, (0, 0))[1] for name in ("g_sample_input_data", "g_sample_expected_output"))
    return {
        "flash_bytes": flash,
        "model_bytes": model,
        "sample_bytes": samples,
        "code_bytes": flash - model - samples,
        "data_bytes": data,
        "bss_bytes": bss,
    }
