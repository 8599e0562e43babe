"""Training that keeps its work: a checkpoint file written atomically every little while, from which an interrupted
``train`` or ``index`` (Ctrl-C, SIGTERM, a crash, ``kill -9``) resumes where it was.

One file holds everything a run needs to go on exactly as if it had never stopped: the *stage* being trained
(``model``, or ``fold 2`` and ``final`` when the threshold is cross-fitted), that stage's model, optimiser,
learning-rate schedule, moving average, best weights so far, history, early-stopping count and random states, the
results of the stages already done, and the training time spent. It is keyed by what was trained (the images'
bytes, their labels and every option but the device): a run with other images or options starts afresh and says
so. Resuming on the CPU with the same seed ends with the same weights as a run that was never interrupted.

The file is written under a temporary name, fsynced and renamed over the previous one, at the end of an epoch
at most every ``every_seconds``; a crash at any moment leaves the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simsearch.progress import emit

#: The observer event sent when a checkpoint file is in place (its subject: the stage and epoch).
CHECKPOINT_WRITTEN = "training checkpoint written"
FORMAT = 1


def training_key(images: np.ndarray, labels: Any, config: Any) -> str:
    """What a checkpoint belongs to: the training images' bytes, their labels, and every option but the device
    (where a run trains does not change what it trains)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).view(np.uint8).data)
    digest.update(json.dumps([None if v is None else str(v) for v in labels]).encode())
    options = {k: v for k, v in asdict(config).items() if k != "device"}
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class TrainingCheckpoint:
    """The checkpoint file of one training run at ``path``.

    ``open(key)`` reads what a previous run of the same training left (anything else there is set aside);
    ``stage(name)`` is the state to resume that stage from (None: start it), ``save`` writes a stage's state,
    ``finish_stage`` records a stage's result (``result(name)`` gives it back to a resumed run), ``remove``
    deletes the file once the trained model is safely saved. ``resumed`` says what was found, in words;
    ``on_save`` is told, after each write, what the file now keeps (for a message that must stay true)."""

    path: Path
    every_seconds: float = 30.0
    on_save: Callable[[str], None] | None = None
    key: str = ""
    done: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] | None = None
    elapsed_before: float = 0.0  # training seconds spent by the runs before this one
    resumed: str | None = None  # "stage, epoch" found to resume from
    discarded: str | None = None  # why a file found there was not used
    saved: str | None = None  # the last stage and epoch written by this run
    _opened_at: float = field(default_factory=time.monotonic)
    _last_save: float = field(default_factory=time.monotonic)

    def open(self, key: str) -> TrainingCheckpoint:
        self.key = key
        self._opened_at = self._last_save = time.monotonic()
        if not self.path.is_file():
            return self
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file is never trusted: training starts afresh
            self.discarded = f"it could not be read ({type(exc).__name__})"
            return self
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            self.discarded = "it is of another format"
        elif data.get("key") != key:
            self.discarded = "it was made from other images or options"
        else:
            self.done = dict(data.get("done") or {})
            self.current = data.get("current")
            self.elapsed_before = float(data.get("elapsed", 0.0))
            where = [*self.done] + (
                [f"{self.current['stage']} epoch {self.current['state']['epoch']}"] if self.current else []
            )
            self.resumed = ", ".join(where) if where else None
        return self

    def elapsed(self) -> float:
        """Training seconds spent on this training, this run's and the interrupted runs' together."""
        return self.elapsed_before + (time.monotonic() - self._opened_at)

    def stage(self, name: str) -> dict[str, Any] | None:
        """The saved state of stage ``name`` to resume from, or None."""
        if self.current is not None and self.current.get("stage") == name:
            return dict(self.current["state"])
        return None

    def result(self, name: str) -> Any:
        """What a finished stage left (``finish_stage``), or None if it has not finished."""
        return self.done.get(name)

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every_seconds

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write stage ``name``'s ``state`` (atomically: temporary file, fsync, rename, folder fsync)."""
        self.current = {"stage": name, "state": state}
        self._write()
        self.saved = f"{name} epoch {state['epoch']}"
        emit(CHECKPOINT_WRITTEN, self.saved)

    def finish_stage(self, name: str, result: Any) -> None:
        self.done[name] = result
        self.current = None
        self._write()
        self.saved = f"{name} done"
        emit(CHECKPOINT_WRITTEN, self.saved)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp")  # one writer: the lock or the model folder's owner
        data = {
            "format": FORMAT,
            "key": self.key,
            "done": self.done,
            "current": self.current,
            "elapsed": self.elapsed(),
        }
        try:
            with open(tmp, "wb") as handle:
                torch.save(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._last_save = time.monotonic()
        if self.on_save is not None:
            self.on_save(self.describe())

    def describe(self) -> str:
        """What the file keeps, in words: ``fold 1 and fold 2 epoch 14`` (finished stages, then the current one)."""
        where = [*self.done]
        if self.current is not None:
            where.append(f"{self.current['stage']} epoch {self.current['state']['epoch']}")
        return ", ".join(where)

    def remove(self) -> None:
        """Delete the file (the trained model is saved); ``on_save`` is told it keeps nothing (``""``)."""
        self.path.unlink(missing_ok=True)
        self.current, self.done = None, {}
        if self.on_save is not None:
            self.on_save("")


def checkpoint_path(model_folder: Path) -> Path:
    """Where training a model into ``model_folder`` keeps its checkpoint: a hidden file beside the folder."""
    return model_folder.with_name(f".{model_folder.name}.training.ckpt")


def rng_state(objective: Any) -> dict[str, Any]:
    """The random states training draws from: the objective's numpy and torch generators, torch's global one."""
    return {
        "numpy": json.dumps(objective.rng.bit_generator.state),
        "torch": objective.generator.get_state(),
        "global": torch.get_rng_state(),
    }


def set_rng_state(objective: Any, state: dict[str, Any]) -> None:
    objective.rng.bit_generator.state = json.loads(state["numpy"])
    objective.generator.set_state(state["torch"])
    torch.set_rng_state(state["global"])
