"""Checkpoints after every epoch, the state a killed run resumes from, and the divergence guard.

``checkpoints/state.json`` is replaced atomically after the checkpoint files
of an epoch are complete, so it always names a whole checkpoint. Each
checkpoint also has its own ``epoch-NNNN.state.json``: when the newest state
or checkpoint is damaged anyway (a full disk, a copy cut short),
:func:`read_state` resumes from the newest older one that is whole.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any

import tensorflow as tf

from keras_shufflenet import run_dir
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.training.config import ConfigError

_log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
STATE_SUFFIX = ".state.json"  # epoch-NNNN.state.json: the state that names epoch-NNNN
# Training stops when the loss exceeds this many times its value on the first
# batch (at least 1.0): a loss that explodes without reaching NaN, as Adam at
# a huge learning rate does, whose weights would otherwise be saved.
EXPLOSION_FACTOR = 100.0


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch; guards against divergence.

    The checkpoint files are written first, then ``state.json`` is replaced
    atomically, so a run killed at any moment resumes from a whole epoch.
    Training stops before anything is saved for the epoch, so the last good
    checkpoint stays in place, when the training loss is NaN or infinite or
    exceeds :data:`EXPLOSION_FACTOR` times its first batch's value (at least
    1), or when the validation loss is NaN or infinite. ``divergence`` then
    says which, and ``diverged_at`` where.

    Args:
      checkpoint: A ``tf.train.Checkpoint`` of the model and optimizer.
      directory: Where this worker writes checkpoints.
      history: Metrics of earlier epochs (from a resumed state); extended in place.
      keep: Checkpoints kept on disk.
      extra_state: More entries for ``state.json`` (e.g. the optimizer name).
    """

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        directory: str,
        history: dict[str, list[Any]],
        keep: int = KEEP_CHECKPOINTS,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.extra_state = dict(extra_state or {})
        self.checkpoint = checkpoint
        self.directory = directory
        self.history = history
        self.keep = keep
        self.diverged_at: tuple[int, int] | None = None
        self.divergence = ""
        self.loss_bound: float | None = None
        self.last_saved_epoch: int | None = None
        self._epoch = 0
        self._epoch_start = 0.0
        self._last_batch_time = 0.0
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._epoch_start = self._last_batch_time = time.perf_counter()

    def _diverged(self, loss: Any, what: str = "loss") -> str:
        """Why ``loss`` means divergence, or ``""``."""
        if loss is None:
            return ""
        value = float(loss)
        if not math.isfinite(value):
            return f"{what} became NaN or infinite"
        if what == "loss" and self.loss_bound is not None and value > self.loss_bound:
            return (
                f"loss exploded to {value:.3g}, more than {EXPLOSION_FACTOR:g}x its first batch's value "
                f"(bound {self.loss_bound:.3g})"
            )
        return ""

    def _stop(self, reason: str, epoch: int, step: int) -> None:
        self.divergence = reason
        self.diverged_at = (epoch, step)
        self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._last_batch_time = time.perf_counter()
        loss = (logs or {}).get("loss")
        if self.loss_bound is None and loss is not None and math.isfinite(float(loss)):
            self.loss_bound = EXPLOSION_FACTOR * max(1.0, float(loss))
        reason = self._diverged(loss)
        if reason and self.diverged_at is None:
            self._stop(reason, self._epoch + 1, batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        reason = self._diverged(logs.get("loss")) or self._diverged(logs.get("val_loss"), "validation loss")
        if self.diverged_at is not None or reason:
            if self.diverged_at is None:
                self._stop(reason, epoch + 1, 0)
            self.model.stop_training = True
            return
        # Training time of the epoch, without validation.
        self.epoch_seconds.append(self._last_batch_time - self._epoch_start)
        self.history.setdefault("epoch", []).append(epoch + 1)
        known = set(self.history) - {"epoch"}
        for key in sorted(known | set(logs)):
            value = logs.get(key)
            column = self.history.setdefault(key, [None] * (len(self.history["epoch"]) - 1))
            column.append(None if value is None else float(value))
        self.save(epoch + 1)

    def save(self, epoch: int) -> None:
        """Writes the checkpoint of ``epoch``, then ``state.json`` naming it, then drops old checkpoints."""
        os.makedirs(self.directory, exist_ok=True)
        prefix = os.path.join(self.directory, f"epoch-{epoch:04d}")
        self.checkpoint.write(prefix)
        state = {**self.extra_state, "epoch": epoch, "checkpoint": os.path.basename(prefix), "history": self.history}
        # A copy beside the checkpoint: the fallback when a newer state or checkpoint is damaged.
        run_dir.write_json(prefix + STATE_SUFFIX, state)
        run_dir.write_json(os.path.join(self.directory, run_dir.STATE_FILE), state)
        self.last_saved_epoch = epoch
        self._remove_old(epoch)

    def _remove_old(self, epoch: int) -> None:
        for name in os.listdir(self.directory):
            if name.startswith("epoch-"):
                with contextlib.suppress(ValueError, OSError):
                    if int(name[len("epoch-") :].split(".")[0]) <= epoch - self.keep:
                        os.remove(os.path.join(self.directory, name))


def _checkpoint_complete(directory: str, state: Any) -> bool:
    """Whether ``state`` is a checkpoint state whose checkpoint files can be read."""
    if not isinstance(state, dict) or "epoch" not in state or "checkpoint" not in state:
        return False
    try:  # Every tensor is read: the index alone does not show a missing or truncated data shard.
        reader = tf.train.load_checkpoint(os.path.join(directory, str(state["checkpoint"])))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, OSError):
        return False
    return True


def _try_read(path: str) -> Any:
    try:
        return run_dir.read_json(path)
    except (OSError, ValueError):
        return None


def read_state(directory: str) -> dict[str, Any] | None:
    """The state of the newest complete checkpoint in a checkpoint directory, or `None` when there is none.

    ``state.json`` names the newest epoch. If it, or the checkpoint it names,
    is damaged (a truncated file, a missing ``.data`` shard), the newest older
    checkpoint whose files and ``epoch-NNNN.state.json`` are whole is used
    instead, with a warning.

    Raises:
      ConfigError: If the directory has checkpoint files but none is whole.
    """
    path = os.path.join(directory, run_dir.STATE_FILE)
    if not os.path.isdir(directory):
        return None
    candidates = sorted((name for name in os.listdir(directory) if name.endswith(STATE_SUFFIX)), reverse=True)
    if not os.path.exists(path) and not candidates:
        return None
    state = _try_read(path) if os.path.exists(path) else None
    if _checkpoint_complete(directory, state):
        return state
    for name in candidates:
        older = _try_read(os.path.join(directory, name))
        if _checkpoint_complete(directory, older):
            _log.warning(
                "%s or the checkpoint it names is damaged; resuming from the older whole checkpoint %s (epoch %d).",
                path,
                older["checkpoint"],
                older["epoch"],
            )
            return older
    raise ConfigError(
        f"no whole checkpoint in {directory}: {run_dir.STATE_FILE} or the checkpoint files are damaged and no "
        "older checkpoint is readable; remove the directory to start over."
    )
