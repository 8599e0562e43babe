"""Progress reporting without printing: long operations call a ``Progress`` callback, the CLI renders it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, task: str, done: int, total: int | None, note: str = "") -> None:
        """``task`` has done ``done`` of ``total`` steps (None: unknown); ``note`` is a short status."""


def no_progress(task: str, done: int, total: int | None, note: str = "") -> None:
    """The default: report nothing."""
