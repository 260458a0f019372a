"""The run directory: the names of the files a run writes, and the one way they are written.

Every file of a run (training, evaluation, the micro export, the CLI's
``flags.txt``) is written next to its final place and then moved there with
an atomic rename, so a run killed at any moment leaves either the old file or
the new one, never half of one. This module imports neither TensorFlow nor
Keras.

``model_dir`` after training (the chief worker's; other workers write the
same under ``model_dir/workers/worker_<id>``):

* ``flags.txt``: the flags the model was trained with (itself a flagfile:
  ``--flagfile=RUN/flags.txt`` reruns the training);
* ``config.json``: the same, as the resolved :class:`~keras_shufflenet.training.config.TrainConfig`;
* ``eval_flags.txt`` / ``export_flags.txt``: the flags of the last
  ``--mode=eval`` / ``--mode=export`` run, beside the training record,
  never over it;
* ``checkpoints/state.json`` + ``checkpoints/epoch-NNNN.*``: the last
  completed epoch and the history so far;
* ``logs/``: TensorBoard;
* ``model.keras``, ``saved_model/`` and ``weights.npz``: the trained float32 model;
* ``metrics.json`` (``eval_metrics.json`` after ``--mode=eval``), ``curves.png``;
* after a micro export: the ``.tflite`` files, ``tflm/``, ``report.json`` and ``report.md``.

A run that is refused (a bad flag, dataset or resume) writes none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

FLAGS_FILE = "flags.txt"
MODE_FLAGS_FILES = {"train": FLAGS_FILE, "eval": "eval_flags.txt", "export": "export_flags.txt"}
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
LOGS_DIR = "logs"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
WEIGHTS_FILE = "weights.npz"  # Portable between Keras 3 and tf_keras (see portable_weights).
METRICS_FILE = "metrics.json"
EVAL_METRICS_FILE = "eval_metrics.json"
CURVES_FILE = "curves.png"
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
FIRMWARE_DIR = "tflm"
WORKERS_DIR = "workers"


def worker_dir(model_dir: str, is_chief: bool, task_id: int) -> str:
    """Where a worker writes: ``model_dir`` for the chief, ``model_dir/workers/worker_<id>`` for the others."""
    return model_dir if is_chief else os.path.join(model_dir, WORKERS_DIR, f"worker_{task_id}")


def move_into_place(source: str, target: str, scratch: str) -> None:
    """Renames a finished file or directory ``source`` onto ``target``, atomically for files.

    A directory cannot be renamed over a non-empty one: an existing
    ``target`` directory is first moved into ``scratch`` (which the caller
    removes), so ``target`` is missing only between two renames.
    """
    if os.path.isdir(source) and os.path.isdir(target) and not os.path.islink(target):
        os.replace(target, os.path.join(scratch, f".old-{os.path.basename(target)}"))
    os.replace(source, target)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to ``path``; once the block succeeds, moves it onto ``path``.

    Works for files and directories (the block creates whichever it wants at
    the yielded path). An existing ``path`` is replaced only by a complete
    new one; if the block raises, ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
    try:
        tmp = os.path.join(scratch, os.path.basename(path))
        yield tmp
        move_into_place(tmp, path, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_flags(directory: str, mode: str, flat_config: dict[str, Any]) -> str:
    """Writes ``flat_config`` (flag name -> value) as the flagfile of a ``mode`` run; returns its path.

    Training writes ``flags.txt``; evaluation and export write their own file
    beside it (:data:`MODE_FLAGS_FILES`), so the training record is never
    overwritten.
    """
    lines = [f"--{name}={value}" for name, value in flat_config.items() if value is not None]
    path = os.path.join(directory, MODE_FLAGS_FILES[mode])
    write_text(path, "\n".join(lines) + "\n")
    return path


def write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON to ``path`` atomically (numpy scalars become numbers)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str) -> Any:
    """The JSON content of ``path``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and hasattr(value, "dtype"):  # A numpy scalar.
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Someone else's live process.
    return True


def remove_stale_staging_dirs(parent: str, prefix: str) -> list[str]:
    """Removes the staging directories ``parent/<prefix><pid>-*`` of exports whose process is gone.

    A killed export cannot clean up after itself; the next export to the
    same ``output_dir`` does. Directories of a live process (an export
    running now) and of unknown origin are left alone.

    Returns:
      The paths removed.
    """
    removed = []
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        path = os.path.join(parent, name)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def make_staging_dir(output_dir: str) -> str:
    """A scratch directory next to ``output_dir``, on the same filesystem, so its contents can be renamed in.

    Raises:
      OSError: Naming ``output_dir`` if it is not a writable directory.
    """
    parent = os.path.dirname(os.path.abspath(output_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise NotADirectoryError(f"{output_dir!r} exists and is not a directory")
        if os.path.isdir(output_dir) and not os.access(output_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{output_dir!r} is not writable")
        prefix = f".{os.path.basename(os.path.abspath(output_dir))}.export-"
        remove_stale_staging_dirs(parent, prefix)
        staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; it may become output_dir itself.
        return staging
    except OSError as error:
        raise OSError(f"`output_dir` {output_dir!r} cannot be written: {error}") from error


def commit_staged(staging: str, output_dir: str, artifacts: list[str]) -> None:
    """Moves finished ``artifacts`` from ``staging`` into ``output_dir``, each with an atomic rename.

    ``output_dir`` may hold other files (training checkpoints): only the named
    artifacts are replaced, in order (put the one whose presence means
    "complete" last). A missing ``output_dir`` becomes ``staging`` at once.
    """
    if not os.path.exists(output_dir):
        os.replace(staging, output_dir)
        return
    for artifact in artifacts:
        move_into_place(os.path.join(staging, artifact), os.path.join(output_dir, artifact), staging)
