"""What many test modules share: the command line run in-process, its error lines, and the Hypothesis strategies
that make damaged and random image files. (Fixtures live in conftest.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from typer.testing import CliRunner

from simsearch.cli import app


def invoke(*args: object) -> Any:
    """``simsearch *args`` in this process; an exception that is not a clean exit fails the test."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def error_lines(result: Any) -> list[str]:
    """The non-blank lines a command printed on stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


@st.composite
def mutated(draw: Any, source: st.SearchStrategy[bytes], operations: int = 4, cut: int = 16) -> bytes:
    """A file from ``source`` with 1..``operations`` bytes changed, runs of up to ``cut`` bytes cut out, or its end
    cut off."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, operations))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["set", "cut", "truncate"]))
        if operation == "set":
            data[at] = draw(st.integers(0, 255))
        elif operation == "cut":
            del data[at : at + draw(st.integers(1, cut))]
        else:
            del data[at:]
    return bytes(data)


def after_magic(magics: Sequence[bytes], max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes after one of ``magics``: what a reader that trusts the first bytes of a file must survive."""
    return st.tuples(st.sampled_from(list(magics)), st.binary(max_size=max_size)).map(lambda t: t[0] + t[1])


class Payload:
    """A pickle payload: unpickling it runs ``Path.touch(marker)``, so the marker file proves whether it ran (what
    a model file that is secretly a pickle must never do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))
