"""Engines: what turns image files into embeddings for ``index``.

An ``Embedder`` takes load jobs (a batch of paths, the names errors use, and the sha256 each file had when it
was indexed) and gives back, batch by batch and in order, what became of each file: a ``Row`` (its facts and
its embedding), a ``Skip`` (why it cannot be used), or None (its content is unchanged: not decoded). It decides
where decoding and embedding run; what to load and what to do with the results is the indexing run's business
(``simsearch.indexing``), which this package never imports.

``local.LocalEngine`` is the default: threads or forked decoding processes, and the encoder in this process.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from simsearch.errors import ImageError
from simsearch.io import LoadedImage, LoadJob

if TYPE_CHECKING:  # torch only where an engine embeds: the Ray engine starts its actors before importing it
    from simsearch.models.encoder import Encoder


@dataclass(frozen=True)
class Row:
    """A file decoded and embedded: the facts the metadata stores, and its embedding."""

    sha256: str
    bytes: int
    width: int
    height: int
    embedding: np.ndarray  # (dim,) float32, exactly as the encoder gave it (NaN included: the run checks)

    @classmethod
    def of(cls, image: LoadedImage, embedding: np.ndarray) -> Row:
        return cls(image.sha256, image.bytes, image.width, image.height, embedding)


@dataclass(frozen=True)
class Skip:
    """A file that cannot be used, and why (the reason alone: the skipped list names the file)."""

    reason: str

    @classmethod
    def of(cls, error: ImageError, name: str) -> Skip:
        """The reason of ``error``, raised for the file named ``name``: what went wrong and the remedy, without
        the file (the whole message when the error names another file, or none)."""
        return cls(error.reason() if error.file == name else str(error))


#: What became of one file: embedded, skipped, or None when its sha256 equals the one its job gave (unchanged).
Result = Row | Skip | None


@dataclass(frozen=True)
class EmbeddedBatch:
    """What an ``Embedder`` made of one ``LoadJob``: one result per path, in the job's order."""

    job: LoadJob
    results: list[Result]

    @property
    def rows(self) -> int:
        """How many files of the batch were embedded."""
        return sum(isinstance(result, Row) for result in self.results)


class Embedder(Protocol):
    """Turns load jobs into embeddings with a given encoder."""

    def embed(self, encoder: Encoder, jobs: Iterable[LoadJob], total: int) -> Generator[EmbeddedBatch, None, None]:
        """One ``EmbeddedBatch`` per job of ``jobs`` (consumed lazily; ``total`` files in all), in their order.

        Every embedding is made by ``encoder`` from ``encoder.preprocess``'s arrays; a file whose sha256 equals
        its job's ``known_sha256`` is neither decoded nor embedded. The caller applies each batch before it asks
        for the next, and closes the generator when it stops early: whatever the engine started (threads, worker
        processes) must end then. An engine that can tell emits ``progress.DECODED`` for each file it decoded."""
        ...
