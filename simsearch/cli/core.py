"""The ``simsearch`` Typer app, its entry point (``main``) and how every command ends: one ``Error:`` line and the
error's exit code, or one true line on Ctrl-C (130) and SIGTERM (143).

Library modules (and so torch and faiss) are imported inside the commands, so ``simsearch --help`` starts fast.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

from simsearch import __version__
from simsearch.cli.options import cli_spelling
from simsearch.cli.render import err, out
from simsearch.errors import SimsearchError

if TYPE_CHECKING:
    pass


app = typer.Typer(
    name="simsearch",
    help="Offline image similarity search: train encoders on your images, index them with FAISS, query by example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Terminated(KeyboardInterrupt):
    """Raised by ``main``'s SIGTERM handler: the command stops as on Ctrl-C (clean-up runs), exit code 143."""


KEPT = "work committed so far is kept; run the same command again to resume"


def _unchanged(command: str) -> str:
    return f"{command} stopped before it finished and nothing was changed; run the same command again for its results"


@dataclass
class _Stop:
    """What an interrupted command leaves, said after "Interrupted:" or "Terminated:"; a command updates it as
    its work changes what would be true."""

    left: str


@contextlib.contextmanager
def _errors(left: str, exit_code: int | None = None) -> Iterator[_Stop]:
    """Turn library errors into one ``Error:`` line and the error's exit code (or ``exit_code`` for every
    error, as ``verify`` keeps 1 for "no match"); Ctrl-C into exit 130 and SIGTERM into 143, each with one line
    that says what is ``left`` (what the yielded ``_Stop`` says by then)."""
    stop = _Stop(left)
    try:
        yield stop
    except SimsearchError as exc:
        err.print(f"Error: {exc.render(cli_spelling)}")
        raise typer.Exit(exit_code or exc.exit_code) from None
    except OSError as exc:  # disk full, read-only folder, permissions: the OS's words, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"Error: {where}{exc.strerror or exc} — free space or fix permissions, then run again")
        raise typer.Exit(exit_code or 1) from None
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        err.print(f"{'Terminated' if terminated else 'Interrupted'}: {stop.left}.")
        raise typer.Exit(143 if terminated else 130) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"simsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Offline image similarity search.

    Two commands take a folder of images to answers:

        simsearch index ./images

        simsearch query img.png -k 9
    """


def _stop_on_sigterm() -> list[bool]:
    """Make SIGTERM stop a command the way Ctrl-C does: raise ``Terminated`` in the main thread, so that clean-up
    (``finally`` and ``except BaseException`` blocks: temporary files, locks, worker pools) runs, and
    ``_errors`` says what is left and exits 143. A second SIGTERM ends the process at once, as before. Forked
    worker processes, which inherit the handler, still end at once on it. Returns a flag set on SIGTERM."""
    received: list[bool] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return received
    owner = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != owner:  # a forked worker: die the default way
            os.kill(os.getpid(), signal.SIGTERM)
            return
        received.append(True)
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    return received


def main() -> None:
    """Console-script entry point."""
    # images.py refuses over-large images itself, right after Pillow reads the header; Pillow's own warning
    # about them would only add noise to the skipped-files table.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # torch's OpenMP threads spin between operations by default, taking the cores from the processes that
    # decode the next batches; passive waiting made `index` 1.35× faster on 2 cores, training no slower.
    # Read when torch is imported, which the commands do later; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    terminated = _stop_on_sigterm()
    try:
        app()
    except BrokenPipeError:  # e.g. `simsearch query … | head`
        sys.stderr.close()
        sys.exit(1)
    except SystemExit as exc:
        # SIGTERM outside a command's work (while the options are parsed): typer turns it into a silent 130.
        if terminated and exc.code == 130:
            err.print("Terminated: simsearch stopped before it began any work; nothing was changed.")
            sys.exit(143)
        raise


def entry() -> None:
    """The ``simsearch`` executable (and ``python -m simsearch``): ``main``, then the process ends at once instead
    of tearing down the interpreter. Unloading torch, FAISS and PyArrow module by module took 0.9 s of a 3.1 s
    ``query`` on this project's 2-core machine, after the command had finished its work and printed its answer.

    What the normal exit does that matters still happens first: the ``atexit`` handlers run (Ray's shutdown,
    multiprocessing's clean-up, temporary folders), and standard output and error are flushed. When another thread
    is still running, or ``main`` raised anything but ``SystemExit``, the normal exit is taken instead (it waits
    for the thread). In-process callers (tests) call ``main``, which only raises."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a reader gone (`… | head`)
            stream.flush()
    os._exit(code)


def _exit_status(code: object) -> int:
    """The exit status Python gives ``SystemExit(code)``: None is 0, an int itself, anything else is printed to
    standard error and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(OSError, ValueError):
        print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    entry()
