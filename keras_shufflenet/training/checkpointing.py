"""Checkpoints after every epoch, the state a killed run resumes from, and the NaN guard.

``checkpoints/state.json`` is replaced atomically after the checkpoint files
of an epoch are complete, so it always names a whole checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import tensorflow as tf

from keras_shufflenet import run_dir
from keras_shufflenet.keras_compat import keras
from keras_shufflenet.training.config import ConfigError

KEEP_CHECKPOINTS = 2
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
        run_dir.write_json(
            os.path.join(self.directory, run_dir.STATE_FILE),
            {**self.extra_state, "epoch": epoch, "checkpoint": os.path.basename(prefix), "history": self.history},
        )
        self.last_saved_epoch = epoch
        self._remove_old(epoch)

    def _remove_old(self, epoch: int) -> None:
        for name in os.listdir(self.directory):
            if name.startswith("epoch-"):
                with contextlib.suppress(ValueError, OSError):
                    if int(name[len("epoch-") :].split(".")[0]) <= epoch - self.keep:
                        os.remove(os.path.join(self.directory, name))


def read_state(directory: str) -> dict[str, Any] | None:
    """The last completed epoch's state in a checkpoint directory, or `None`.

    Raises:
      ConfigError: If ``state.json`` exists but is not a checkpoint state.
    """
    path = os.path.join(directory, run_dir.STATE_FILE)
    if not os.path.exists(path):
        return None
    state = run_dir.read_json(path)
    if not isinstance(state, dict) or "epoch" not in state or "checkpoint" not in state:
        raise ConfigError(f"{path} is not a checkpoint state file; remove it to start over.")
    return state
