"""Settings declared once: a dataclass field with its default, help text and allowed values.

:func:`option` declares a field, :func:`check_fields` checks a dataclass's
values against what it declared, and :class:`ConfigError` names the field,
the value received and what is allowed. The training, data and export
configurations are built on it, and ``train/main.py`` generates one absl flag
per field from the same metadata. TensorFlow-free: the command line reads the
configurations before it chooses which Keras the process runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names it, the value received and what is allowed."""


def option(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, interval: str | None = None) -> Any:
    """A config field with its help text and allowed values (read by :func:`check_fields` and the flags).

    Args:
      default: The default value; its type is the field's (``None``: a string).
      help: One line for ``--help``.
      choices: The allowed values, if they are a list.
      interval: The allowed range, e.g. ``"[0, 1)"`` or ``"(0, inf)"``.
    """
    metadata = {"help": help, "choices": choices, "interval": _parse_interval(interval) if interval else None}
    return dataclasses.field(default=default, metadata=metadata)


def _parse_interval(text: str) -> tuple[float, float, bool, bool]:
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "(", text[-1] == ")"


def _describe_interval(interval: tuple[float, float, bool, bool], integer: bool) -> str:
    low, high, low_open, high_open = interval
    prefix = "an integer " if integer else ""
    if math.isinf(high):
        return f"{prefix}{'>' if low_open else '>='} {low:g}"
    return f"{prefix}in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _in_interval(value: float, interval: tuple[float, float, bool, bool]) -> bool:
    low, high, low_open, high_open = interval
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def bad_value(name: str, value: Any, allowed: str) -> ConfigError:
    """The error for field ``name``: what was received and what is allowed."""
    return ConfigError(f"{name} must be {allowed}. Received: {name}={value!r}")


def check_fields(config: Any) -> None:
    """Checks every field of a config dataclass against its :func:`option` metadata.

    Raises:
      ConfigError: Naming the first field whose value is not allowed.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) or field.metadata.get("help") is None:
            continue
        default = field.default
        choices, interval = field.metadata["choices"], field.metadata["interval"]
        if choices is not None and value not in choices:
            raise bad_value(field.name, value, f"one of {choices}")
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise bad_value(field.name, value, "True or False")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad_value(field.name, value, "an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_value(field.name, value, "a number")
        if interval is not None and not _in_interval(value, interval):
            raise bad_value(field.name, value, _describe_interval(interval, isinstance(default, int)))
