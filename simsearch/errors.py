"""Errors the user can act on, in the library's own terms, for any front end to render.

Each error carries what went wrong (``what``), the file it concerns (``file``, or None) and what to do next
(``remedy``). Where the remedy names an option, it names the library's field (``option("index_type", "flat")``),
never a command-line flag: the command line spells it ``--type flat``, a service ``index_type=flat``, the Python
API ``index_type='flat'`` (``render``). ``str(error)`` is the Python API's rendering. Each class says which exit
code the command line uses and which HTTP status a service answers with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

#: An option named in a message: ``⟨name⟩`` or ``⟨name=value⟩`` (see ``option``).
OPTION = re.compile(r"⟨([a-z_]+)(?:=([^⟩]*))?⟩")

#: How a front end spells an option: (field name, value or None) → text.
Spelling = Callable[[str, "str | None"], str]


def option(name: str, value: object = None) -> str:
    """An option named in an error message (a field of ``IndexConfig``, ``TrainConfig``, ``EvalConfig`` … or of a
    command), with the value the remedy suggests, for the front end to spell."""
    return f"⟨{name}⟩" if value is None else f"⟨{name}={value}⟩"


def python_spelling(name: str, value: str | None) -> str:
    """The Python API's spelling: ``index_type='flat'``, ``rebuild=True``, or the bare field name; a value in
    capitals is a placeholder (``threshold=NUMBER``)."""
    if value is None:
        return name
    if value == "true":
        return f"{name}=True"
    if value.isupper():
        return f"{name}={value}"
    try:
        float(value)
    except ValueError:
        return f"{name}={value!r}"
    return f"{name}={value}"


def field_spelling(name: str, value: str | None) -> str:
    """A service's spelling, as request fields: ``index_type=flat``, ``rebuild=true``, or the bare field name."""
    return name if value is None else f"{name}={value}"


def spell(text: str, spelling: Spelling = python_spelling) -> str:
    """``text`` with every option it names (``option``) spelled by ``spelling``: for messages, and for any other
    text the library writes for a front end to show (a family's description)."""
    return OPTION.sub(lambda m: spelling(m.group(1), m.group(2)), text)


class SimsearchError(Exception):
    """Base class: an error the user can fix. ``exit_code``: what the command line exits with; ``http_status``:
    what a service answers with."""

    exit_code = 1
    http_status = 400

    def __init__(self, what: str, *, file: str | Path | None = None, remedy: str = "") -> None:
        self.what, self.file, self.remedy = what, None if file is None else str(file), remedy
        super().__init__(self.render())

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled as what, file and remedy (decoding workers send ``ImageError``s back to the parent), not as
        the rendered message ``Exception`` keeps in ``args``."""
        return _restore, (type(self), self.what, self.file, self.remedy), self.__dict__ or None

    def render(self, spelling: Spelling = python_spelling) -> str:
        """The one-line message, options spelled by ``spelling``: ``file: what — remedy``."""
        reason = self.reason(spelling)
        return f"{self.file}: {reason}" if self.file else reason

    def reason(self, spelling: Spelling = python_spelling) -> str:
        """What went wrong and the remedy, without the file: ``what — remedy`` (a skipped-file list names the
        file apart)."""
        return spell(f"{self.what} — {self.remedy}" if self.remedy else self.what, spelling)

    def options(self) -> list[str]:
        """The options this message names (for a front end to check it can spell them all)."""
        return [m.group(1) for m in OPTION.finditer(f"{self.what} {self.remedy}")]

    def to_json(self) -> dict[str, str | None]:
        """What a service answers: ``error`` (what went wrong, with its file) and ``remedy``, options spelled as
        request fields (``index_type=flat``)."""
        what = spell(self.what, field_spelling)
        return {
            "error": f"{self.file}: {what}" if self.file else what,
            "remedy": spell(self.remedy, field_spelling) or None,
        }


def _restore(cls: type[SimsearchError], what: str, file: str | None, remedy: str) -> SimsearchError:
    """An error unpickled (see ``SimsearchError.__reduce__``)."""
    return cls(what, file=file, remedy=remedy)


class ImageError(SimsearchError):
    """An image file could not be found, read or decoded."""

    http_status = 415


class ImageTooLarge(ImageError):
    """An image over the size limits: too many bytes, or a header that declares too many pixels (a possible
    decompression bomb)."""

    http_status = 413


class ModelError(SimsearchError):
    """A model folder is missing, malformed, tampered with, or does not fit the data."""

    http_status = 422


class CollectionNotFound(SimsearchError):
    """No collection at the given name or path."""

    http_status = 404


class CollectionError(SimsearchError):
    """A collection exists but is malformed, locked, or does not match the request."""

    http_status = 409


class CollectionLocked(CollectionError):
    """Another process holds the collection's writer lock."""

    http_status = 423


class DataError(SimsearchError):
    """A folder holds no usable images, or too few to train on."""

    http_status = 422


class UsageError(SimsearchError):
    """A bad value or combination of options (exit code 2, like a usage error)."""

    exit_code = 2
    http_status = 422
