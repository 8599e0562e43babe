"""Errors the user can act on. Each message says what went wrong, which file, and what to do next.

The CLI prints ``Error: <message>`` and exits with ``exit_code``; the library never prints or exits.
"""

from __future__ import annotations


class SimsearchError(Exception):
    """Base class: an error the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ImageError(SimsearchError):
    """An image file could not be found, read or decoded."""


class ModelError(SimsearchError):
    """A model folder is missing, malformed, tampered with, or does not fit the data."""


class CollectionNotFound(SimsearchError):
    """No collection at the given name or path."""


class CollectionError(SimsearchError):
    """A collection exists but is malformed, locked, or does not match the request."""


class CollectionLocked(CollectionError):
    """Another process holds the collection's writer lock."""


class DataError(SimsearchError):
    """A folder holds no usable images, or too few to train on."""


class UsageError(SimsearchError):
    """A bad combination of options (exit code 2, like a usage error)."""

    exit_code = 2
