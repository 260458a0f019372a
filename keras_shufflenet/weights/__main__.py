"""Converts an official ShuffleNet v1 checkpoint into a Keras weights file.

Usage::

    python -m keras_shufflenet.weights convert CHECKPOINT OUT.weights.h5

Prints the configuration it found; the file loads with
``ShuffleNet(weights=OUT, scale_factor=..., groups=..., convention="official")``.
Exits with status 2 and one line on stderr when the checkpoint is not usable.
"""

from __future__ import annotations

import argparse
import sys

from keras_shufflenet import weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_shufflenet.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="official checkpoint -> Keras .weights.h5")
    convert_parser.add_argument("checkpoint", help="an official ShuffleNet v1 checkpoint (.pth.tar)")
    convert_parser.add_argument("output", help="the Keras weights file to write (*.weights.h5)")
    args = parser.parse_args(argv)

    from keras_shufflenet.checkpoint_conversion import convert  # Imports TensorFlow: after the arguments.

    try:
        checkpoint = convert(args.checkpoint, args.output)
    except (weights.CheckpointError, ValueError, OSError) as error:  # OSError: e.g. a read-only folder.
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{args.output}: ShuffleNet v1 {checkpoint.describe()}, {checkpoint.classes} classes. Load it with "
        f"ShuffleNet(weights={args.output!r}, scale_factor={checkpoint.scale_factor:g}, "
        f'groups={checkpoint.groups}, convention="official")'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
