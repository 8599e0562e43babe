"""The local engine: files decoded on threads or in forked worker processes, embedded in this process.

Worker processes (runs of ``io.PROCESS_MIN_IMAGES`` images or more) decode the next batches while the encoder
embeds this one (``io.load_batches``); they close the writer lock they inherit and end with this process.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Generator, Iterable, Iterator

import numpy as np

from simsearch import progress
from simsearch.engines import EmbeddedBatch, Result, Row, Skip
from simsearch.errors import ImageError
from simsearch.io import LoadedImage, LoadJob, load_batches
from simsearch.models.encoder import Encoder


class LocalEngine:
    """``workers`` decoding threads or processes (0: one per core, at most 8); ``batch_size`` images per call of
    the encoder."""

    def __init__(self, workers: int = 0, batch_size: int = 256) -> None:
        self.workers = workers
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers}, batch_size={self.batch_size})"

    def embed(self, encoder: Encoder, jobs: Iterable[LoadJob], total: int) -> Generator[EmbeddedBatch, None, None]:
        # load_batches reads ahead of what it yields: the jobs it took are queued to pair them with their results.
        taken: collections.deque[LoadJob] = collections.deque()

        def tap(jobs: Iterable[LoadJob]) -> Iterator[LoadJob]:
            for job in jobs:
                taken.append(job)
                yield job

        with contextlib.closing(load_batches(tap(jobs), encoder.preprocess, self.workers, total)) as batches:
            for loaded in batches:
                job = taken.popleft()
                ready = [(i, image) for i, image in enumerate(loaded) if isinstance(image, LoadedImage)]
                if progress.observer() is not None:
                    for i, _ in ready:
                        progress.emit(progress.DECODED, job.names[i])
                results: list[Result] = [
                    Skip.of(image, job.names[i]) if isinstance(image, ImageError) else None
                    for i, image in enumerate(loaded)
                ]
                if ready:
                    embeddings = encoder.embed(np.stack([image.array for _, image in ready]), self.batch_size)
                    for (i, image), embedding in zip(ready, embeddings, strict=True):
                        results[i] = Row.of(image, embedding)
                yield EmbeddedBatch(job, results)
