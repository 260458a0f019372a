"""Runs pytest on one test file for a Bazel `py_test` target (see BUILD).

Usage: pytest_runner.py --tier={fast,slow} tests/test_x.py [pytest args...]

`fast` selects the unit tests (neither `slow` nor `e2e`), `slow` the end-to-end
tests (`make test` runs the `e2e` ones, `make test-rest` the `slow` ones). Tests marked
`legacy_keras` run in a second pytest process with TF_USE_LEGACY_KERAS=1,
because that variable only takes effect before TensorFlow is first imported.
"""

import argparse
import os
import subprocess
import sys

# pytest's exit code when the marker expression selects nothing.
NO_TESTS_COLLECTED = 5


def _pytest(test_file, marks, extra_args, env):
    cmd = [sys.executable, "-m", "pytest", test_file, "-m", marks, "-p", "no:cacheprovider", "-ra"]
    if os.path.exists("pyproject.toml"):
        cmd += ["-c", "pyproject.toml", "--rootdir", os.getcwd()]
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        # The runfiles tree is read-only; keep pytest's tmp_path under Bazel's scratch directory.
        cmd += ["--basetemp", os.path.join(tmp, "pytest-" + ("legacy" if "TF_USE_LEGACY_KERAS" in env else "main"))]
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd + extra_args, env=env)
    return 0 if rc == NO_TESTS_COLLECTED else rc


def _mentions_legacy_keras(test_file):
    # Saves a second TensorFlow start-up for files without such tests; the marker is applied in the file itself.
    with open(test_file, encoding="utf-8") as f:
        return "legacy_keras" in f.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=["fast", "slow"], required=True)
    parser.add_argument("test_file")
    args, extra = parser.parse_known_args()

    tier = "not (slow or e2e)" if args.tier == "fast" else "slow or e2e"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        # Bazel's sandbox leaves HOME read-only: give the caches Keras and matplotlib write a scratch home.
        env.setdefault("KERAS_HOME", os.path.join(tmp, "keras"))
        env.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))
    rc = _pytest(args.test_file, f"({tier}) and not legacy_keras", extra, env)
    if _mentions_legacy_keras(args.test_file):
        legacy_rc = _pytest(args.test_file, f"({tier}) and legacy_keras", extra, dict(env, TF_USE_LEGACY_KERAS="1"))
        rc = rc or legacy_rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
