"""The cost of reading an official ShuffleNet v1 checkpoint: the built-in reader against ``torch.load``.

Writes a random-weight 2.0x g8 checkpoint (the largest release, 6.5 M
parameters) in both of torch's layouts with tests/official_reference.py,
then reads each, in a fresh process per reading, with

* ``builtin``: :func:`keras_shufflenet.weights.reader.read_checkpoint`
  (this package's interpreter);
* ``torch``: ``torch.load(..., weights_only=True)`` and ``.numpy()``
  (a Python with PyTorch: ``--torch_python``, default ``/usr/bin/python3``).

Reports the import time of the reader's module, the read time (best of
``--repeats``) and the process's peak resident memory over the import's::

    python -m benchmarks.checkpoint_readers --torch_python=/usr/bin/python3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_PROBE = r"""
import json, resource, sys, time
started = time.perf_counter()
kind = sys.argv[1]
if kind == "torch":
    import torch
else:
    from keras_shufflenet.weights.reader import read_checkpoint
imported = time.perf_counter()
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best = float("inf")
for _ in range(int(sys.argv[3])):
    begin = time.perf_counter()
    if kind == "torch":
        state = torch.load(sys.argv[2], map_location="cpu", weights_only=True)["state_dict"]
        arrays = {k: v.numpy() for k, v in state.items()}
    else:
        arrays = read_checkpoint(sys.argv[2])["state_dict"]
    best = min(best, time.perf_counter() - begin)
    del arrays
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"import_s": imported - started, "read_s": best, "import_rss_mb": baseline / 1024,
                  "read_peak_extra_mb": (peak - baseline) / 1024}))
"""


def measure(python: str, kind: str, path: str, repeats: int, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [python, "-c", _PROBE, kind, path, str(repeats)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch_python", default="/usr/bin/python3")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own_env = dict(os.environ, PYTHONPATH=repo)
    torch_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [args.torch_python, os.path.join(repo, "tests", "official_reference.py"), work, "2.0x:3", "2.0x:8"],
            check=True,
            env=torch_env,
        )
        rows = []
        # g3 is written in the legacy layout, g8 in the zip layout (see tests/official_reference.py).
        for layout, name in (("legacy", "2.0x_g3"), ("zip", "2.0x_g8")):
            path = os.path.join(work, f"{name}.pth.tar")
            size_mb = os.path.getsize(path) / 1e6
            for kind, python, env in (("builtin", sys.executable, own_env), ("torch", args.torch_python, torch_env)):
                result = measure(python, kind, path, args.repeats, env)
                rows.append({"layout": layout, "checkpoint": name, "file_mb": size_mb, "reader": kind, **result})
    print("| checkpoint | layout | MB | reader | import s | read s | import RSS MB | read peak +MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['checkpoint']} | {r['layout']} | {r['file_mb']:.1f} | {r['reader']} | {r['import_s']:.2f} | "
            f"{r['read_s']:.3f} | {r['import_rss_mb']:.0f} | {r['read_peak_extra_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
