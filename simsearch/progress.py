"""Progress reporting without printing: long operations call a ``Progress`` callback, the CLI renders it.

Beside it, the ``Observer``: one callable per process, told of each step that matters to durability — a
file written under its temporary name, renamed into place, the journal written, stale files removed, a batch
embedded, an image decoded. Collection commits and ``index`` runs call ``emit`` at those steps; with no observer
installed (the default) that is one global lookup and nothing more. Tests install one to stop or kill a real
process at a chosen step (tests/fork_server.py); tools may log with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    def __call__(self, task: str, done: int, total: int | None, note: str = "") -> None:
        """``task`` has done ``done`` of ``total`` steps (None: unknown); ``note`` is a short status."""


def no_progress(task: str, done: int, total: int | None, note: str = "") -> None:
    """The default: report nothing."""


# --- the observer: steps that matter to durability, in the order they happen ------------------------------------

#: A generation file, or a folder (its name ends in ``/``), was written under its temporary name (not yet fsynced).
WROTE_TEMPORARY = "wrote temporary"
#: That file or folder was fsynced, renamed into place, and its folder fsynced.
RENAMED = "renamed"
#: The journal (``.pending.json``), naming every file a commit will write or replace, was written and fsynced.
JOURNAL_WRITTEN = "journal written"
#: About to remove the files the journal names that no manifest needs (after a commit, or a killed writer's).
REMOVING_STALE = "removing stale files"
#: Done removing them (the journal removed, or left naming what could not be removed).
REMOVED_STALE = "removed stale files"
#: A batch of images came back embedded, before any of it is applied; the subject is how many images.
EMBEDDED = "embedded a batch of"
#: One image was decoded to be embedded (its content was new or changed); the subject is its name.
DECODED = "decoded"

EVENTS = (WROTE_TEMPORARY, RENAMED, JOURNAL_WRITTEN, REMOVING_STALE, REMOVED_STALE, EMBEDDED, DECODED)


class Observer(Protocol):
    def __call__(self, event: str, subject: str) -> None:
        """``event`` (one of ``EVENTS``) happened to ``subject`` (a file or folder name, an image name, a count;
        empty for the stale-file events). Called in the process that does the step, as it happens; whatever it
        raises propagates like any failure of that step."""


_observer: Observer | None = None


def observer() -> Observer | None:
    """The observer installed in this process, or None."""
    return _observer


def observe(new: Observer | None) -> Observer | None:
    """Install ``new`` as this process's observer (None: remove it). Returns the one it replaces."""
    global _observer
    old, _observer = _observer, new
    return old


@contextlib.contextmanager
def observing(new: Observer | None) -> Iterator[None]:
    """``observe(new)`` for the duration of a ``with`` block, then put back the one before."""
    old = observe(new)
    try:
        yield
    finally:
        observe(old)


def emit(event: str, subject: str = "") -> None:
    """Tell the observer, if one is installed, that ``event`` happened to ``subject``."""
    if _observer is not None:
        _observer(event, subject)


def describe(event: str, subject: str = "") -> str:
    """One line for an event: ``renamed meta-000002.parquet``, ``embedded a batch of 256``, ``removed stale files``."""
    return f"{event} {subject}" if subject else event
