"""A fork server for crash and concurrency tests: real ``simsearch`` processes without paying torch's import each time.

Run as ``python -m tests.fork_server``. It imports simsearch once, then answers JSON lines on stdin:

- ``{"op": "start", "argv": [...], "log": PATH, "out": PATH, "kill_at": N, "pause_at": N, "release": PATH,
  "step_delay": S}`` forks a child that runs ``simsearch <argv>`` (the real CLI entry point) and answers
  ``{"pid": PID}``.
- ``{"op": "wait", "pid": PID, "timeout": S}`` waits for that child and answers ``{"exit": CODE}``, ``{"signal": SIG}``
  or, if it ran past ``timeout`` seconds (it is then killed), ``{"timeout": true}``.
- ``{"op": "poll", "pid": PID}`` answers ``{"running": true}`` at once if the child has not ended, else as ``wait``.

The child writes its stdout and stderr to ``out``, and appends one line per *event* to ``log`` (unbuffered, so a
killed child's log is complete up to its death): ``event <n> <what>`` for each event that simsearch's observer
(``simsearch.progress``) is told of — the journal written, a generation file or folder written under its
temporary name, renamed into place, stale files being removed and removed, a batch embedded — and
``embed <path>`` for every image it decodes to embed (``decoded`` events, which are not numbered). At event
``kill_at`` the child sends itself SIGKILL — the same death as ``kill -9`` from outside, at a known moment; at
``pause_at`` it waits (holding whatever it holds, such as the writer lock) until the file ``release`` exists;
``step_delay`` makes it sleep after every event (a slow writer, for readers to race with). Nothing here is part
of simsearch: the child installs the observer through simsearch's public ``progress.observe``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

import rich.progress  # noqa: F401 - imported by the index command
from PIL import Image

import simsearch.cli as cli
import simsearch.engines.local
import simsearch.indexing.sync
import simsearch.progress
import simsearch.search  # imported before forking, so that children start at once
import simsearch.store.collection

Image.init()  # Pillow imports its format plugins on first use: do it once here (it starts no threads)


def _install_hooks(request: dict[str, Any]) -> None:
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    kill_at, pause_at, release = request.get("kill_at"), request.get("pause_at"), request.get("release")
    step_delay = request.get("step_delay") or 0.0
    count = [0]

    def note(line: str) -> None:
        os.write(log_fd, (line.replace("\n", " ") + "\n").encode("utf-8", "backslashreplace"))

    def observer(event: str, subject: str) -> None:
        if event == simsearch.progress.DECODED:
            note(f"embed {subject}")
            return
        n = count[0]
        count[0] += 1
        note(f"event {n} {simsearch.progress.describe(event, subject)}")
        if n == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if n == pause_at:
            note("paused")
            while not os.path.exists(release):
                time.sleep(0.01)
        time.sleep(step_delay)

    simsearch.progress.observe(observer)


def _child(request: dict[str, Any]) -> None:
    code = 98
    try:
        out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        _install_hooks(request)
        sys.argv = ["simsearch", *request["argv"]]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply: dict[str, Any] = {"pid": pid}
        elif request["op"] == "wait":
            deadline = time.monotonic() + request.get("timeout", 120)
            while True:
                done, status = os.waitpid(request["pid"], os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:  # a hung child: end it, and say so
                    os.kill(request["pid"], signal.SIGKILL)
                    os.waitpid(request["pid"], 0)
                    status = -1
                    break
                time.sleep(0.005)
            if status == -1:
                reply = {"timeout": True}
            elif os.WIFSIGNALED(status):
                reply = {"signal": os.WTERMSIG(status)}
            else:
                reply = {"exit": os.WEXITSTATUS(status)}
        elif request["op"] == "poll":
            done, status = os.waitpid(request["pid"], os.WNOHANG)
            if not done:
                reply = {"running": True}
            elif os.WIFSIGNALED(status):
                reply = {"signal": os.WTERMSIG(status)}
            else:
                reply = {"exit": os.WEXITSTATUS(status)}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
