"""Worker processes that end with their parent and never hold what it holds.

``index`` decodes images in forked worker processes. A forked child inherits every open file descriptor,
the collection's writer lock among them (an ``flock`` lives as long as any descriptor of its open file), and
it outlives a parent that is killed (``kill -9``, SIGTERM, out of memory). Left alone, such orphans would
hold the lock for good. So descriptors that must stay the parent's are registered here, and ``child_init``,
run first in every worker, closes them and ties the worker's life to its parent's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

#: File descriptors a forked worker must not keep open (the writer lock).
_parent_only: set[int] = set()

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_only(fd: int) -> None:
    """Register ``fd`` as one that worker processes close as they start."""
    _parent_only.add(fd)


def release(fd: int) -> None:
    """Forget ``fd`` (call before closing it)."""
    _parent_only.discard(fd)


def child_init(parent: int) -> None:
    """Run first in a forked worker of process ``parent``: close the parent's registered descriptors, ignore
    Ctrl-C (it reaches the whole process group; the parent stops the run), and die when the parent dies."""
    for fd in list(_parent_only):
        with contextlib.suppress(OSError):
            os.close(fd)
    _parent_only.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _die_with(parent):
        # No parent-death signal on this system: watch the parent instead.
        threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()


def _die_with(parent: int) -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; exit at once if it already has."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    return True


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
