"""The README's Python examples run as written."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_examples():
    assert len(_python_blocks()) >= 2


def test_every_documented_command_gives_its_flagfile_first():
    # absl reads flags in order: flags before a --flagfile are overridden by the file's own
    # (the quickstart's --model_dir would silently win over the one given).
    docs = [README, *(os.path.join(os.path.dirname(README), "docs", n) for n in ("compression.md", "small_inputs.md"))]
    commands = []
    for path in docs:
        with open(path, encoding="utf-8") as f:
            commands += [line for line in f.read().splitlines() if "train/main.py" in line and "--flagfile" in line]
    assert len(commands) >= 3
    for line in commands:
        flags = re.findall(r"(--\w+)", line.split("train/main.py", 1)[1])
        assert flags[0] == "--flagfile", line


@pytest.mark.slow
def test_readme_examples_run(tmp_path):
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(_python_blocks()))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(8, 10)" in result.stdout
    assert "(None, 14, 14, 240)" in result.stdout
    assert (tmp_path / "runs" / "readme_example" / "report.json").exists()
