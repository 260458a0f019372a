"""The package's shape: short functions, deferred imports that say why (the import contracts: `make lint`)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_shufflenet"
# The longest function body, in lines, docstring excluded. A function made long by a table of data
# would be listed here with its reason; none is.
MAX_FUNCTION_LINES = 80


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = function.body[0]
    has_docstring = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    start = function.body[1].lineno if has_docstring and len(function.body) > 1 else first.lineno
    return function.end_lineno - start + 1


def test_no_function_in_the_package_is_longer_than_80_lines() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({_body_lines(node)} lines)")
    assert not long, long


def test_every_deferred_import_says_why() -> None:
    # A function-level import is a deliberate deferral (a heavy or optional package): it carries a comment.
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line, before = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                    if "#" not in line and not before.startswith("#"):
                        silent.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {line.strip()}")
    assert not silent, silent


def test_the_package_declares_ranges_and_the_constraints_pin_what_is_tested() -> None:
    import re

    root = PACKAGE.parent
    setup_text = (root / "setup.py").read_text(encoding="utf-8")
    # Every quoted requirement with a version specifier (setup.py's install_requires and extras).
    declared = re.findall(r'"([A-Za-z][A-Za-z0-9_.-]*)([<>=!~][^"]*)"', setup_text)
    requirements = {name.lower().replace("_", "-"): spec for name, spec in declared}
    assert "tensorflow" in requirements and "tflite-micro" in requirements
    # A library that pins exactly cannot be installed beside anything else.
    assert not [name for name, spec in requirements.items() if spec.startswith("==")], requirements
    pins = {}
    for line in (root / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins exact versions: {line!r}"
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    assert set(requirements) <= set(pins), sorted(set(requirements) - set(pins))
    assert "-c constraints.txt" in (root / "Makefile").read_text(encoding="utf-8")
