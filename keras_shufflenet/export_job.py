"""``python -m keras_shufflenet.export_job MODEL_DIR``: the micro export of a trained run.

Reads ``MODEL_DIR/config.json`` (written by :func:`keras_shufflenet.training.train`)
and runs :func:`keras_shufflenet.training.export_trained`. Training starts it
with ``TF_USE_LEGACY_KERAS=1`` when pruning or QAT needs Keras 2.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m keras_shufflenet.export_job MODEL_DIR", file=sys.stderr)
        return 2
    from keras_shufflenet import training

    config_path = os.path.join(argv[1], training.CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = training.TrainConfig(**json.load(handle))
        training.export_trained(config)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
