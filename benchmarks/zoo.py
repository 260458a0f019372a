"""The model zoo table: MACs, parameters and int8 flash of every groups x scale configuration.

Usage:
  python -m benchmarks.zoo [--readme=README.md] [--output=docs/zoo.md]

Writes the table to ``--output`` and replaces what lies between
``<!-- zoo:start -->`` and ``<!-- zoo:end -->`` in ``--readme`` (nothing
else in that file changes; without the markers the README is left alone).
"""

from __future__ import annotations

import argparse
import os
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import Any  # noqa: E402

from benchmarks.common import convert_int8, markdown_table, set_batch_norm_statistics, shufflenet  # noqa: E402
from keras_shufflenet import ShuffleNet  # noqa: E402
from keras_shufflenet.keras_compat import keras  # noqa: E402
from keras_shufflenet.micro.compact import compact_for_tflm  # noqa: E402
from keras_shufflenet.profiling import profile  # noqa: E402

GROUPS = (1, 2, 3, 4, 8)
SCALES = (0.25, 0.5, 1.0, 1.5, 2.0)
INPUT_SHAPE = (224, 224, 3)
CLASSES = 1000
START_MARKER = "<!-- zoo:start -->"
END_MARKER = "<!-- zoo:end -->"

# ImageNet top-1 error (%) published in the paper: Table 2 (0.25x-1x, all
# groups) and Table 5 (1.5x and 2x, g=3). Not the accuracy of any weights of
# this package, which ships none.
PAPER_TOP1_ERROR: dict[tuple[float, int], float] = {
    **dict(zip([(1.0, g) for g in GROUPS], (33.6, 32.7, 32.6, 32.8, 32.4), strict=True)),
    **dict(zip([(0.5, g) for g in GROUPS], (45.1, 44.4, 43.2, 41.6, 42.3), strict=True)),
    **dict(zip([(0.25, g) for g in GROUPS], (57.1, 56.8, 55.0, 54.2, 52.7), strict=True)),
    (1.5, 3): 28.5,
    (2.0, 3): 26.3,
}
# Table 5's variants: builder arguments and the paper's ImageNet top-1 error (%).
VARIANTS: tuple[tuple[dict[str, Any], float], ...] = (
    ({"scale_factor": 0.5, "groups": 3, "shallow": True}, 42.8),
    ({"scale_factor": 2.0, "groups": 3, "squeeze_excite": True}, 24.7),
)


def _variant(kwargs: dict[str, Any]) -> Any:
    keras.utils.set_random_seed(0)
    image = keras.Input(batch_shape=(1, *INPUT_SHAPE), name="image")
    return ShuffleNet(input_tensor=image, weights=None, classes=CLASSES, **kwargs)


def _row(call: str, model: Any, convert: bool, error: float | None) -> list[str]:
    cost = profile(model)
    flash = compact = "—"
    if convert:
        set_batch_norm_statistics(model)
        tflite_model = convert_int8(model, num_samples=2)
        flash = f"{len(tflite_model) / 1e6:.2f}"
        compact = f"{len(compact_for_tflm(tflite_model).model) / 1e6:.2f}"
    print(f"  zoo {call}: {cost.macs / 1e6:.1f} MMACs, flash {flash} MB", flush=True)
    return [
        f"`{call}`",
        f"{cost.macs / 1e6:.1f}",
        f"{cost.trainable_params / 1e6:.2f}",
        flash,
        compact,
        f"{error:.1f}" if error is not None else "—",
    ]


def zoo_table(flash_groups: tuple[int, ...] = GROUPS) -> str:
    """Builds every configuration and returns the markdown table.

    Args:
      flash_groups: Groups whose int8 ``.tflite`` is converted for its size
        (a conversion takes seconds to tens of seconds); others show "—".
    """
    rows = []
    for groups in GROUPS:
        for scale in SCALES:
            model = shufflenet(scale, groups).build(INPUT_SHAPE, CLASSES, batch_size=1)
            call = f"ShuffleNet(scale_factor={scale:g}, groups={groups})"
            rows.append(_row(call, model, groups in flash_groups, PAPER_TOP1_ERROR.get((scale, groups))))
    for kwargs, error in VARIANTS:
        call = (
            "ShuffleNet("
            + ", ".join(
                f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in kwargs.items()
            )
            + ")"
        )
        rows.append(_row(call, _variant(kwargs), kwargs["groups"] in flash_groups, error))
    return markdown_table(
        ["model", "MMACs", "params (M)", "int8 flash (MB)", "TFLM flash (MB)", "paper's ImageNet top-1 error (%)"],
        rows,
        align="lrrrrr",
    )


def replace_between_markers(text: str, table: str) -> str | None:
    """``text`` with the part between the zoo markers replaced by ``table``; `None` without the markers."""
    pattern = re.compile(re.escape(START_MARKER) + r".*?" + re.escape(END_MARKER), re.DOTALL)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda _: f"{START_MARKER}\n{table}\n{END_MARKER}", text, count=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default="README.md", help="README whose zoo section is rewritten.")
    parser.add_argument("--output", default="docs/zoo.md", help="Markdown file that receives the table.")
    parser.add_argument(
        "--flash_groups",
        default=",".join(str(g) for g in GROUPS),
        help="Comma-separated groups whose int8 flash is measured (each conversion takes seconds).",
    )
    args = parser.parse_args()
    flash_groups = tuple(int(g) for g in args.flash_groups.split(",") if g.strip())

    started = time.perf_counter()
    table = zoo_table(flash_groups)
    intro = (
        "224×224×3 input, 1000 classes. MMACs and trainable parameters from `keras_shufflenet.profiling.profile`; "
        "int8 flash is the size of the full-int8 `.tflite` (per-channel weights, int8 input and output); TFLM flash "
        "is what `keras_shufflenet.micro.export` puts on the board (`compact_for_tflm`: the same model without the "
        "quantization bookkeeping TFLM never reads, bit-identical outputs). The "
        "error column is the paper's ImageNet result for that configuration (Tables 2 and 5; the last two rows are "
        "Table 5's shallow and squeeze-and-excitation variants), not a measurement "
        "of this package. Written by `python -m benchmarks.zoo`."
    )
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as output:
        output.write(f"# Model zoo\n\n{intro}\n\n{table}\n")
    print(table)
    if os.path.exists(args.readme):
        with open(args.readme) as readme:
            text = readme.read()
        updated = replace_between_markers(text, table)
        if updated is None:
            print(f"{args.readme} has no {START_MARKER} ... {END_MARKER} section; left unchanged.")
        elif updated != text:
            with open(args.readme, "w") as readme:
                readme.write(updated)
            print(f"Updated the zoo section of {args.readme}.")
    print(f"Wrote {args.output} in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
