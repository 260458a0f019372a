"""Failure probes: what a demanding new user gets for bad input, divergence, crashes and reruns.

Each probe runs in a fresh Python process against a checkout (default: this
one) and is judged from what the user sees:

* **clear**: refused early with a message that names the argument or the
  cause (or, where the input is legitimate, it just works);
* **awkward**: refused, but late, with a long traceback, or without naming it;
* **wrong**: accepted when it should not be, a process killed, or a run's
  record or model lost or overwritten.

    python -m benchmarks.failure_probes --output=docs/failure_probes.md
    python -m benchmarks.failure_probes --checkout=/path/to/older/checkout --json=before.json

Takes 5-15 minutes on 2 CPU cores (a few probes train a tiny model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import Any

from keras_shufflenet.run_dir import write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG_MESSAGE = 1500  # characters of stderr beyond which a refusal is awkward


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    work: str

    @property
    def last_line(self) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return lines[-1] if lines else ""


@dataclasses.dataclass
class Probe:
    name: str
    code: str  # Python run with the checkout on sys.path; {work} and {data} are formatted in.
    judge: Callable[[Result], str]
    cli: bool = False  # code is train/main.py's arguments instead of Python


def _refused(*words: str, max_seconds: float = 120) -> Callable[[Result], str]:
    """Clear when the process fails fast with every word in its last line; wrong when it succeeds."""

    def judge(r: Result) -> str:
        if r.returncode == 0:
            return "wrong"
        if r.returncode < 0:
            return "wrong"  # killed by a signal
        named = all(word.lower() in r.last_line.lower() for word in words)
        short = len(r.stderr) < LONG_MESSAGE or r.stderr.count("Traceback") <= 1 and len(r.last_line) < 600
        return "clear" if named and short and r.seconds < max_seconds else "awkward"

    return judge


def _succeeds(check: Callable[[Result], bool] = lambda r: True) -> Callable[[Result], str]:
    def judge(r: Result) -> str:
        if r.returncode < 0:
            return "wrong"
        if r.returncode != 0:
            return "awkward"
        return "clear" if check(r) else "wrong"

    return judge


def _file(work: str, *parts: str) -> str:
    return os.path.join(work, *parts)


def _unchanged(*names: str) -> Callable[[Result], bool]:
    """The run's files named here still hold what the trained run wrote (copied aside by the setup)."""

    def check(r: Result) -> bool:
        for name in names:
            with open(_file(r.work, "run", name), "rb") as a, open(_file(r.work, "pristine", name), "rb") as b:
                if a.read() != b.read():
                    return False
        return True

    return check


def _refused_keeping(words: Sequence[str], names: Sequence[str]) -> Callable[[Result], str]:
    refused = _refused(*words)

    def judge(r: Result) -> str:
        verdict = refused(r)
        return "wrong" if not _unchanged(*names)(r) else verdict

    return judge


_MODEL = "from keras_shufflenet import ShuffleNet\n"
_TINY = "dict(input_shape=(32, 32, 1), classes=4, scale_factor=0.25, groups=3)"
_EXPORT = textwrap.dedent(
    """
    import numpy as np
    from keras_shufflenet import ShuffleNet, micro
    model = ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.25, groups=3)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 1)).astype("float32")
    """
)
_TRAIN_ARGS = (
    "--dataset=folder:{data} --model_dir={work}/run --epochs=2 --batch_size=16 --input_size=32 "
    "--scale_factor=0.25 --learning_rate=0.01 --warmup_epochs=0 --verbose=0"
)

PROBES: tuple[Probe, ...] = (
    Probe("classifier_activation='bogus'", _MODEL + f"ShuffleNet(classifier_activation='bogus', **{_TINY})",
          _refused("classifier_activation")),
    Probe("groups=3.0", _MODEL + "ShuffleNet(groups=3.0, input_shape=(32, 32, 1), classes=4)", _refused("groups")),
    Probe("groups=True", _MODEL + "ShuffleNet(groups=True, input_shape=(32, 32, 1), classes=4)", _refused("groups")),
    Probe("input_shape with non-integers", _MODEL + "ShuffleNet(input_shape=(32.5, 32, 3))", _refused("input_shape")),
    Probe("scale_factor=inf", _MODEL + "ShuffleNet(scale_factor=float('inf'))", _refused("scale_factor")),
    Probe("scale_factor=0.01", _MODEL + "ShuffleNet(scale_factor=0.01, input_shape=(32, 32, 1), classes=4)",
          _refused("scale_factor")),
    Probe("weights= a file of another configuration",
          _MODEL + f"ShuffleNet(**{_TINY}).save_weights('{{work}}/g3.weights.h5')\n"
          "ShuffleNet(input_shape=(32, 32, 1), classes=4, scale_factor=0.25, groups=8, weights='{work}/g3.weights.h5')",
          _refused("weights", "groups")),
    Probe("weights= a file that is not HDF5",
          "open('{work}/x.weights.h5', 'w').write('text')\n"
          + _MODEL + f"ShuffleNet(weights='{{work}}/x.weights.h5', **{_TINY})",
          _refused("weights")),
    Probe("export: representative data in 0..255",
          _EXPORT + "micro.export(model, [images * 127.5 + 127.5], '{work}/out')",
          _refused("preprocess_input")),
    Probe("export: output_dir=''", _EXPORT + "micro.export(model, [images], '')",
          _refused("output_dir", max_seconds=40)),
    Probe("export: one 4-D array of images", _EXPORT + "micro.export(model, images, '{work}/out', num_verify=2)",
          _succeeds()),
    Probe("export: an op without a TFLite kernel in a Lambda",
          "import numpy as np, tensorflow as tf\nfrom keras_shufflenet import micro\n"
          "from keras_shufflenet.keras_compat import keras\n"
          "i = keras.Input((8, 8, 1)); x = keras.layers.Conv2D(4, 3)(i)\n"
          "x = keras.layers.Lambda(lambda t: tf.math.erf(t), name='gelu_like')(x)\n"
          "m = keras.Model(i, keras.layers.Dense(2)(keras.layers.Flatten()(x)))\n"
          "micro.export(m, [np.zeros((2, 8, 8, 1), 'float32')], '{work}/out')",
          _refused("Erf", "gelu_like")),
    Probe("export: staging folder of a killed export",
          _EXPORT + "import os\nos.makedirs('{work}/.out.export-999999-x')\n"
          "micro.export(model, [images], '{work}/out', num_verify=2)\n"
          "assert not os.path.exists('{work}/.out.export-999999-x'), 'stale staging folder left'",
          _succeeds()),
    Probe("train: one-class image folder",
          "--dataset=folder:{one_class} --model_dir={work}/one --epochs=1 --batch_size=4 --verbose=0",
          _refused("class"), cli=True),
    Probe("train: --representative_samples=0 --quantize=ptq",
          _TRAIN_ARGS.replace("{work}/run", "{work}/r0") + " --quantize=ptq --representative_samples=0",
          _refused("representative_samples", max_seconds=40), cli=True),
    Probe("train: --model_dir naming a file", "--model_dir={work}/afile --epochs=1 --verbose=0",
          _refused("model_dir", max_seconds=40), cli=True),
    Probe("train: Adam at a huge learning rate",
          _TRAIN_ARGS.replace("{work}/run", "{work}/div") + " --learning_rate=1e4",
          lambda r: "wrong" if r.returncode == 0 or os.path.exists(_file(r.work, "div", "model.keras"))
          else _refused("loss")(r), cli=True),
    Probe("train: SGD at a huge learning rate",
          _TRAIN_ARGS.replace("{work}/run", "{work}/div_sgd") + " --optimizer=sgd --learning_rate=1e6",
          lambda r: "wrong" if r.returncode == 0 or os.path.exists(_file(r.work, "div_sgd", "model.keras"))
          else _refused("loss")(r), cli=True),
    Probe("resume with another --groups", _TRAIN_ARGS + " --groups=2 --epochs=3",
          _refused_keeping(["groups"], ["flags.txt", "config.json"]), cli=True),
    Probe("--mode=export without --quantize", _TRAIN_ARGS + " --mode=export",
          _refused_keeping(["quantize"], ["flags.txt", "config.json"]), cli=True),
    Probe("--mode=eval keeps the training record", _TRAIN_ARGS + " --mode=eval",
          _succeeds(_unchanged("flags.txt", "config.json")), cli=True),
    Probe("resume after the newest checkpoint's data file was lost",
          "import glob, os, shutil\nshutil.copytree('{work}/run', '{work}/damaged')\n"
          "[os.remove(p) for p in glob.glob('{work}/damaged/checkpoints/epoch-0002.data*')]\n"
          "import subprocess, sys\n"
          "args = '" + _TRAIN_ARGS.replace("{work}/run", "{work}/damaged") + " --epochs=3'.split()\n"
          "r = subprocess.run([sys.executable, 'train/main.py', *args], capture_output=True, text=True)\n"
          "sys.stderr.write(r.stderr[-3000:]); assert r.returncode == 0, 'resume failed'",
          _succeeds()),
    Probe("a folder run warns 'Your input ran out of data'", "",
          lambda r: "wrong" if "ran out of data" in _setup_log(r.work) else "clear"),
    Probe("weights.npz has the run's file mode", "",
          lambda r: "clear" if len({os.stat(_file(r.work, "run", n)).st_mode & 0o777
                                   for n in ("weights.npz", "config.json", "metrics.json")}) == 1 else "awkward"),
)  # fmt: skip


def _setup_log(work: str) -> str:
    with open(_file(work, "setup.log"), encoding="utf-8") as handle:
        return handle.read()


def write_pattern_folder(root: str, classes: int = 4, per_class: int = 12, test_per_class: int = 4) -> None:
    """An image folder of 32x32 gray images: class k is a bright square in quadrant k, on noise.

    ``root/train/class<k>/*.png`` and ``root/test/class<k>/*.png``; up to four
    classes. The training tests use it too.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label in range(classes):
            for i in range(count):
                image = rng.integers(0, 60, (32, 32, 1), dtype=np.uint8)
                top, left = 16 * (label // 2), 16 * (label % 2)
                image[top + 3 : top + 13, left + 3 : left + 13] = 230
                path = os.path.join(root, split, f"class{label}", f"{i:02d}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tf.io.write_file(path, tf.io.encode_png(image))


def _run(command: list[str], checkout: str, work: str, timeout: float = 600) -> Result:
    env = dict(os.environ, PYTHONPATH=checkout, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        code, out, err = 124, str(expired.stdout or ""), str(expired.stderr or "") + "\ntimed out"
    return Result(code, out, err, time.perf_counter() - started, work)


def run_probes(checkout: str = REPO, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the probes against ``checkout``; returns one row per probe (name, verdict, seconds, last line)."""
    work = tempfile.mkdtemp(prefix="failure-probes-")
    data, one_class = os.path.join(work, "data"), os.path.join(work, "one_class")
    write_pattern_folder(data)
    write_pattern_folder(one_class, classes=1)
    with open(os.path.join(work, "afile"), "w") as handle:
        handle.write("not a directory")
    fields = {"work": work, "data": data, "one_class": one_class}
    setup = _run([sys.executable, "train/main.py", *_TRAIN_ARGS.format(**fields).split()], checkout, work)
    with open(os.path.join(work, "setup.log"), "w", encoding="utf-8") as handle:
        handle.write(setup.stdout + setup.stderr)
    if setup.returncode:
        raise RuntimeError(f"the probes' training run failed:\n{setup.stderr[-3000:]}")
    shutil.copytree(os.path.join(work, "run"), os.path.join(work, "pristine"))
    rows = []
    try:
        for probe in PROBES:
            if names and probe.name not in names:
                continue
            if probe.cli:
                command = [sys.executable, "train/main.py", *probe.code.format(**fields).split()]
            else:
                command = [sys.executable, "-c", probe.code.format(**fields)]
            result = _run(command, checkout, work) if probe.code else Result(0, "", "", 0.0, work)
            verdict = probe.judge(result)
            rows.append(
                {
                    "probe": probe.name,
                    "verdict": verdict,
                    "seconds": round(result.seconds, 1),
                    "message": result.last_line.replace(work, "WORK")[:200] if result.returncode else "",
                }
            )
            print(f"{verdict:8s} {probe.name}: {result.last_line[:160]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def report(after: Sequence[dict[str, Any]], before: Sequence[dict[str, Any]] | None = None) -> str:
    """The markdown table (with a "before" column when ``before`` is given) and the counts."""
    by_name = {row["probe"]: row for row in before or []}
    lines = ["# Failure probes", "", *(part.strip() + "\n" for part in __doc__.split("\n\n")[1:3])]
    if before:
        lines += [
            'Generated by `python -m benchmarks.failure_probes`; "before" is the same probes run against the '
            "release before these fixes (`--checkout` of that commit). WORK stands for the probes' temporary folder.",
            "",
        ]
    header = "| probe | " + ("before | " if before else "") + "now | what the user sees now |"
    lines += [header, "|---|" + ("---|" if before else "") + "---|---|"]
    for row in after:
        earlier = by_name.get(row["probe"], {}).get("verdict", "–")
        fallback = "(accepted, or the run's files changed)" if row["verdict"] == "wrong" else "(ran as expected)"
        message = row["message"].replace("|", "\\|") or fallback
        lines.append(f"| {row['probe']} | " + (f"{earlier} | " if before else "") + f"{row['verdict']} | {message} |")
    for label, rows in (("before", before), ("now", after)):
        if rows:
            counts = {v: sum(r["verdict"] == v for r in rows) for v in ("clear", "awkward", "wrong")}
            lines += ["", f"{label}: " + ", ".join(f"{n} {v}" for v, n in counts.items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failure_probes", description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=REPO, help="The checkout to probe (its train/main.py and package).")
    parser.add_argument("--before", default=None, help="JSON rows of an earlier run, shown beside these.")
    parser.add_argument("--json", default=None, help="Write the rows here.")
    parser.add_argument("--output", default=None, help="Write the markdown table here.")
    parser.add_argument("--from_json", default=None, help="Rewrite the page from the rows of an earlier --json.")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            rows = json.load(handle)
    else:
        rows = run_probes(os.path.abspath(args.checkout))
    before = None
    if args.before:
        with open(args.before, encoding="utf-8") as handle:
            before = json.load(handle)
    text = report(rows, before)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1))
    if args.output:
        write_text(args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
