"""Load many images: read, hash, decode and preprocess, on threads or in forked worker processes that decode the
next batches while the caller embeds this one. Results keep input order; a failure is its ``ImageError``.
"""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simsearch import processes
from simsearch.errors import ImageError, option
from simsearch.io.channels import ChannelRefused, current_rule, current_tally, mismatch, refusal
from simsearch.io.decode import check_size, decode, is_grey, read_file
from simsearch.io.preprocess import Preprocess, to_array


@dataclass
class LoadedImage:
    """One image read from disk: its preprocessed pixels and the facts stored in the metadata."""

    array: np.ndarray  # (channels, H, W) float32
    sha256: str
    bytes: int
    width: int
    height: int
    grey: bool = field(default=True)
    #: Its colour differed from the model's input and it was converted (``channels``: the channel rule).
    converted: bool = False


def load_image(
    path: Path | bytes,
    spec: Preprocess,
    name: str | None = None,
    known_sha256: str | None = None,
    channels: str = "convert",
) -> LoadedImage | None:
    """Read, hash, decode and preprocess one image file (or a file's bytes, e.g. an upload, named ``name``);
    ``ImageError`` says why it failed.

    When the file's sha256 equals ``known_sha256`` it is not decoded at all and None is returned. ``channels``
    is the channel rule (``io.channels``): an image whose colour differs from ``spec``'s is converted (and marked
    ``converted``), or refused with ``strict``.
    """
    data = check_size(path, name or "image") if isinstance(path, bytes) else read_file(path, name)
    digest = hashlib.sha256(data).hexdigest()
    if digest == known_sha256:
        return None
    # A JPEG may be decoded reduced when the whole picture is letterboxed; a trimmed one keeps every pixel,
    # as the crop may be a small part of it.
    decoded = decode(data, name or str(path), draft=spec.size if spec.resize == "letterbox" else None)
    img = decoded.image
    grey = is_grey(img)
    converted = mismatch(spec.channels, grey)
    if converted and channels == "strict":
        raise refusal(spec.channels, name or str(path))
    return LoadedImage(
        array=to_array(img, spec),
        sha256=digest,
        bytes=len(data),
        width=decoded.width,
        height=decoded.height,
        grey=grey,
        converted=converted,
    )


def _counted(
    items: Iterable[LoadedImage | ImageError | None], spec: Preprocess
) -> Iterator[LoadedImage | ImageError | None]:
    """``items``, with each converted image counted in the caller's ``channel_rule`` tally (if any)."""
    tally = current_tally()
    for item in items:
        if tally is not None and isinstance(item, LoadedImage) and item.converted:
            tally.count(spec.channels, item.sha256)
        elif tally is not None and isinstance(item, ChannelRefused):
            tally.refused += 1
        yield item


def load_images(
    paths: Sequence[Path | bytes],
    spec: Preprocess,
    workers: int = 0,
    names: Sequence[str] | None = None,
    known_sha256: Sequence[str | None] | None = None,
    channels: str | None = None,
) -> Iterator[LoadedImage | ImageError | None]:
    """Load many images in input order, decoding on ``workers`` threads (0: one per core, at most 8).

    Yields for each path its ``LoadedImage``, the ``ImageError`` that says why it failed, or None when its
    hash equals the one given in ``known_sha256`` (unchanged: not decoded). Pillow releases the GIL while
    decoding, so threads give real parallelism here. ``channels``: the channel rule (default: the caller's
    ``channel_rule`` block's, else ``convert``); conversions are counted in that block's tally.
    """
    name_list = list(names) if names is not None else source_names(paths)
    known = list(known_sha256) if known_sha256 is not None else [None] * len(paths)
    rule = current_rule(channels)

    def one(i: int) -> LoadedImage | ImageError | None:
        return _load_or_error(paths[i], spec, name_list[i], known[i], rule)

    n_workers = _worker_count(workers)
    if n_workers <= 1 or len(paths) < 4:
        yield from _counted((one(i) for i in range(len(paths))), spec)
        return
    with ThreadPoolExecutor(n_workers) as pool:
        yield from _counted(pool.map(one, range(len(paths))), spec)


#: Below this many images a run decodes on threads: starting worker processes would cost more than it saves.
PROCESS_MIN_IMAGES = 2_000


@dataclass(frozen=True)
class LoadJob:
    """One batch of files to load: their paths, the names errors use, and the sha256 each had (or None)."""

    paths: Sequence[Path]
    names: Sequence[str]
    known_sha256: Sequence[str | None]


def source_names(sources: Sequence[Path | bytes]) -> list[str]:
    """How messages name image sources: a file by its path, bytes (an upload) by their place in the list."""
    return [f"image {n + 1}" if isinstance(s, bytes) else str(s) for n, s in enumerate(sources)]


def _load_or_error(
    path: Path | bytes, spec: Preprocess, name: str, known: str | None, channels: str = "convert"
) -> LoadedImage | ImageError | None:
    """``load_image``, with the ``ImageError`` that says why it failed returned rather than raised."""
    try:
        return load_image(path, spec, name, known, channels)
    except ImageError as exc:
        return exc


def _worker_count(workers: int) -> int:
    """``--workers``: 0 means one per core, at most 8."""
    return workers or min(8, os.cpu_count() or 1)


def _load_chunk(
    spec: Preprocess, paths: Sequence[Path], names: Sequence[str], known: Sequence[str | None], channels: str
) -> list:
    return [
        _load_or_error(path, spec, name, sha, channels) for path, name, sha in zip(paths, names, known, strict=True)
    ]


def load_batches(
    jobs: Iterable[LoadJob],
    spec: Preprocess,
    workers: int = 0,
    total: int = 0,
    ahead: int = 2,
    channels: str | None = None,
) -> Generator[list[LoadedImage | ImageError | None], None, None]:
    """``load_images`` for a stream of batches, decoded ``ahead`` batches in front of the caller.

    With ``total`` ≥ ``PROCESS_MIN_IMAGES`` images and more than one worker, each batch is split across
    worker processes (hashing, decoding and resizing hold the GIL in part, and the caller's embedding runs
    meanwhile), and at most ``ahead + 1`` batches are held in memory at once. Smaller runs decode each batch on
    threads when it is asked for. Results come back in input order, one list per job. ``channels``: as for
    ``load_images`` (the rule is read once, when the first batch is asked for).
    """
    n_workers = _worker_count(workers)
    rule = current_rule(channels)
    if n_workers <= 1 or total < PROCESS_MIN_IMAGES:
        for job in jobs:
            yield list(load_images(job.paths, spec, workers, job.names, job.known_sha256, rule))
        return
    # Forked workers, as torch's DataLoader does on Linux: they only decode (Pillow and numpy, never torch), and
    # unlike spawned ones they need no `if __name__ == "__main__"` guard in the caller's script.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # Workers close the writer lock they inherit and end with this process (processes.child_init): a killed
    # `index` leaves no orphan holding the collection.
    with ProcessPoolExecutor(
        n_workers, mp_context=context, initializer=processes.child_init, initargs=(os.getpid(),)
    ) as pool:
        queue: collections.deque[list[Future]] = collections.deque()
        iterator = iter(jobs)

        def submit() -> bool:
            job = next(iterator, None)
            if job is None:
                return False
            step = -(-len(job.paths) // n_workers)
            queue.append(
                [
                    pool.submit(
                        _load_chunk,
                        spec,
                        job.paths[i : i + step],
                        job.names[i : i + step],
                        job.known_sha256[i : i + step],
                        rule,
                    )
                    for i in range(0, len(job.paths), step)
                ]
            )
            return True

        try:
            for _ in range(ahead + 1):
                if not submit():
                    break
            while queue:
                futures = queue.popleft()
                try:
                    batch = [result for future in futures for result in future.result()]
                except BrokenProcessPool:
                    raise ImageError(
                        "a decoding worker process died (killed, or out of memory?)",
                        remedy=f"run again, with fewer {option('workers')}",
                    ) from None
                submit()
                yield list(_counted(batch, spec))
        finally:
            for futures in queue:
                for future in futures:
                    future.cancel()
