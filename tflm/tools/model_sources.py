#!/usr/bin/env python3
"""Lists the TFLM sources that one model's application needs, for tflm/Makefile.

A TFLM tree holds about 120 kernel files and, with CMSIS-NN, about 110 more
of Arm's; a model registers a dozen operators. For the quickstart's dense
model this lists 58 of the reference tree's 150 sources (109 of 263 with
CMSIS-NN). Compiling only what it uses
makes a cold library build a few minutes shorter per target and kernel set.

What is listed:

* the framework: every source outside ``tensorflow/lite/micro/kernels/``
  and ``third_party/cmsis_nn/`` (interpreter, allocator, flatbuffer parsing);
* for each ``resolver.AddXxx(`` that ``op_resolver.h`` calls, the kernel file
  that defines the default registration named in TFLM's
  ``micro_mutable_op_resolver.h`` (``AddConv2D`` -> ``Register_CONV_2D``);
* what those kernels and the framework use, followed to a fixed point: a
  kernel header ``kernels/<stem>.h`` they include brings ``<stem>.cc`` and
  ``<stem>_common.cc``; a CMSIS-NN function ``arm_xxx`` they name brings the
  CMSIS-NN source that defines it; CMSIS-NN's sources of data only (its
  tables) always come with CMSIS-NN.

The linker of the application still has the last word: a source this misses
fails the link with the missing symbol named, and ``TFLM_SOURCES=all`` builds
the whole tree instead.

Usage: model_sources.py TREE OP_RESOLVER_H [--compression] [--all] [--uses=SOURCE ...]
Prints one path per line, relative to TREE, sorted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

KERNELS_DIR = "tensorflow/lite/micro/kernels"
CMSIS_NN_DIR = "third_party/cmsis_nn"
# Never part of the library: tests, test doubles, examples and tools.
_EXCLUDED = re.compile(
    r"(_test\.cc|test_helper|fake_micro_context|mock_micro_graph|/kissfft/|/examples/|/benchmarks/|/tools/)"
)
# TFLM's compression support: compiled only when the model decodes weights.
_COMPRESSION = re.compile(r"/(compression|decompress|decode)")

_RESOLVER_CALL = re.compile(r"\bresolver\.(Add\w+)\(")
_KERNEL_INCLUDE = re.compile(r'^#include "tensorflow/lite/micro/kernels/([\w/]+)\.h"', re.M)
# A CMSIS-NN definition starts a line: `arm_cmsis_nn_status arm_convolve_s8(`.
_C_DEFINITION = re.compile(r"^(?:[A-Za-z_]\w*\s+)+\**(arm_\w+)\s*\(", re.M)
_ARM_NAME = re.compile(r"\barm_\w+\b")


def tree_sources(tree: str, compression: bool) -> list[str]:
    """Every library source of the tree, as the whole-tree build compiles them."""
    sources = []
    for top in ("tensorflow", "third_party"):
        for folder, _, files in os.walk(os.path.join(tree, top)):
            for name in files:
                path = os.path.relpath(os.path.join(folder, name), tree).replace(os.sep, "/")
                if not name.endswith((".cc", ".c")) or _EXCLUDED.search(path):
                    continue
                if not compression and _COMPRESSION.search(path):
                    continue
                sources.append(path)
    return sorted(sources)


def _read(tree: str, path: str) -> str:
    with open(os.path.join(tree, path), encoding="utf-8", errors="replace") as handle:
        return handle.read()


def registrations(tree: str) -> dict[str, str]:
    """``{"AddConv2D": "Register_CONV_2D", ...}`` from the tree's MicroMutableOpResolver."""
    header = _read(tree, "tensorflow/lite/micro/micro_mutable_op_resolver.h")
    methods = list(re.finditer(r"TfLiteStatus (Add\w+)\(", header))
    result = {}
    for method, following in zip(methods, [*methods[1:], None], strict=True):
        body = header[method.end() : following.start() if following else len(header)]
        default = re.search(r"\b(Register_\w+)\(\)", body)
        if default:
            result[method.group(1)] = default.group(1)
    return result


def model_sources(tree: str, resolver_header: str, compression: bool, uses: Sequence[str] = ()) -> list[str]:
    """The sources of ``tree`` that the model whose ``op_resolver.h`` is given needs.

    Raises:
      SystemExit: The resolver calls a method the tree's TFLM does not have,
        or no kernel file defines its registration.
    """
    everything = tree_sources(tree, compression)
    kernels = [p for p in everything if p.startswith(KERNELS_DIR + "/")]
    cmsis = [p for p in everything if p.startswith(CMSIS_NN_DIR + "/")]
    selected = {p for p in everything if p not in kernels and p not in cmsis}

    with open(resolver_header, encoding="utf-8") as handle:
        methods = sorted(set(_RESOLVER_CALL.findall(handle.read())))
    known = registrations(tree)
    pending = []
    for method in methods:
        if method not in known:
            # The application's compile names this clearly ("has no member named"); list nothing extra.
            continue
        definition = re.compile(rf"\bTFLMRegistration\s+{known[method]}\s*\(\s*\)\s*\{{")
        files = [p for p in kernels if definition.search(_read(tree, p))]
        if not files and method == "AddDecode" and not compression:
            sys.exit("model_sources.py: the model registers DECODE (compressed weights): build with TFLM_COMPRESSION=1")
        if not files:
            sys.exit(f"model_sources.py: no kernel file of {tree} defines {known[method]}() for {method}()")
        pending += files

    cmsis_definitions = {}
    for path in cmsis:
        names = _C_DEFINITION.findall(_read(tree, path))
        for name in names:
            cmsis_definitions.setdefault(name, path)
        if not names:
            # A source of data only (arm_nntables.c: the sigmoid and tanh tables), which no `arm_` name leads to.
            pending.append(path)
    kernel_set = set(kernels)
    # The framework's own kernel includes count too (with compression,
    # micro_context.cc uses kernels/decompress.h).
    pending += sorted(selected)
    # Sources outside the tree (the project's kernels) that call into it.
    outside = {}
    for path in uses:
        with open(path, encoding="utf-8") as handle:
            outside[path] = handle.read()
    pending += list(outside)
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        text = outside[path] if path in outside else _read(tree, path)
        for stem in _KERNEL_INCLUDE.findall(text):
            for candidate in (f"{KERNELS_DIR}/{stem}.cc", f"{KERNELS_DIR}/{stem}_common.cc"):
                if candidate in kernel_set:
                    pending.append(candidate)
        for name in set(_ARM_NAME.findall(text)):
            if name in cmsis_definitions:
                pending.append(cmsis_definitions[name])
    return sorted((selected | seen) - set(outside))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree")
    parser.add_argument("op_resolver_h")
    parser.add_argument("--compression", action="store_true", help="include TFLM's compression (DECODE) sources")
    parser.add_argument("--all", action="store_true", help="every library source of the tree")
    parser.add_argument(
        "--uses", action="append", default=[], help="a source outside the tree whose TFLM and CMSIS-NN uses count too"
    )
    args = parser.parse_args()
    if args.all:
        sources = tree_sources(args.tree, args.compression)
    else:
        sources = model_sources(args.tree, args.op_resolver_h, args.compression, args.uses)
    print("\n".join(sources))


if __name__ == "__main__":
    main()
