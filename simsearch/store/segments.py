"""Format 2: a collection's rows in immutable segments, with the deletions kept apart, merged in tiers.

A commit adds one segment (``segment-<gen>.parquet``: the rows it embedded, with their embeddings) and, when rows
were removed, a new deletions file (``deleted-<gen>.parquet``: segment name and id of every row that is no longer
live): it writes what changed, not the collection. A row's id is never reused (a changed image gets a new id), so
an id names one embedding for good.

Small segments are merged in tiers: a segment's tier is how many times ``factor`` its live rows are of
``TIER_FLOOR`` (every smaller segment is in tier 0), and ``factor`` segments of one tier merge into one of the next.
A row is so rewritten about log_factor(N / TIER_FLOOR) times over the collection's life, and a commit never waits
for a merge: ``collection.Merge`` runs it on a thread beside the writer, and a later commit installs the result.
This module holds the state and the policy as data; ``collection.py`` reads and writes the files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simsearch.store.formats import DELETED_SCHEMA, arrow_array, int64_column

#: Segments merged together when ``factor`` of them share a tier (``index --merge-factor``; 0: never in the
#: background, ``simsearch compact`` on demand).
MERGE_FACTOR = 10
#: Live rows below which every segment is in the lowest tier.
TIER_FLOOR = 1000
#: Rows per Parquet row group: the writer holds one encoded row group in memory, so this bounds what a commit
#: adds to the peak (pyarrow's default, a million rows, would buffer the whole table of most collections).
ROW_GROUP_ROWS = 16_384


@dataclass(frozen=True)
class Segment:
    """One segment file as a manifest names it, with every id it holds (sorted, deleted ones included)."""

    name: str
    rows: int
    bytes: int
    sha256: str
    ids: np.ndarray = field(repr=False, compare=False)

    def entry(self) -> dict[str, Any]:
        """What the manifest records of it."""
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class SegmentSet:
    """The segments of one generation, in order, and the ids each no longer holds live (sorted arrays)."""

    segments: tuple[Segment, ...] = ()
    deleted: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(s.rows for s in self.segments) - sum(len(d) for d in self.deleted.values())

    def live(self, segment: Segment) -> int:
        return segment.rows - len(self.deleted.get(segment.name, ()))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def deleted_table(self) -> pa.Table:
        """The deletions as a table (``deleted-<gen>.parquet``), in segment order."""
        names = [s.name for s in self.segments if len(self.deleted.get(s.name, ()))]
        return pa.table(
            {
                "segment": [name for name in names for _ in range(len(self.deleted[name]))],
                "id": np.concatenate([self.deleted[name] for name in names]) if names else np.zeros(0, np.int64),
            },
            schema=DELETED_SCHEMA,
        )

    def without(self, ids: Iterable[int]) -> SegmentSet:
        """This set with the rows ``ids`` deleted (an id that is not live in any segment is left alone)."""
        gone = np.unique(np.fromiter(ids, np.int64))
        if not len(gone):
            return self
        deleted = dict(self.deleted)
        for segment in self.segments:
            mine = gone[np.isin(gone, segment.ids, assume_unique=True)]
            if len(mine):
                deleted[segment.name] = np.union1d(deleted.get(segment.name, np.zeros(0, np.int64)), mine)
        return SegmentSet(self.segments, deleted)

    def plus(self, segment: Segment) -> SegmentSet:
        return SegmentSet((*self.segments, segment), self.deleted)

    def merged(self, merge: MergedSegment) -> SegmentSet:
        """This set with ``merge``'s sources replaced by its segment, where the first of them was; rows deleted
        from the sources since the merge read them are deleted from the merged segment."""
        sources = set(merge.sources)
        since = [
            np.setdiff1d(self.deleted.get(name, np.zeros(0, np.int64)), merge.deleted_before.get(name, ()))
            for name in merge.sources
        ]
        later = np.unique(np.concatenate(since)) if since else np.zeros(0, np.int64)
        segments: list[Segment] = []
        for segment in self.segments:
            if segment.name == merge.sources[0]:
                segments.append(merge.segment)
            elif segment.name not in sources:
                segments.append(segment)
        deleted = {name: ids for name, ids in self.deleted.items() if name not in sources}
        if len(later):
            deleted[merge.segment.name] = later
        return SegmentSet(tuple(segments), deleted)

    def includes(self, merge: MergedSegment) -> bool:
        """Whether every source of ``merge`` is still a segment of this set (then it can be installed)."""
        return set(merge.sources) <= set(self.names)

    def to_merge(self, factor: int) -> list[str]:
        """The segments the tier policy merges now: ``factor`` of the lowest tier that has that many (the oldest
        first), with any segment that is at least half deleted; none when ``factor`` is 0."""
        if factor < 2:
            return []
        tiers: dict[int, list[Segment]] = {}
        for segment in self.segments:
            tiers.setdefault(tier(self.live(segment), factor), []).append(segment)
        for level in sorted(tiers):
            if len(tiers[level]) >= factor:
                chosen = {s.name for s in tiers[level][:factor]}
                chosen |= {s.name for s in self.segments if s.rows and self.live(s) * 2 <= s.rows}
                return [s.name for s in self.segments if s.name in chosen]
        return []


def tier(rows: int, factor: int) -> int:
    """A segment's tier: 0 below ``TIER_FLOOR`` live rows, then one more for every ``factor`` times as many."""
    level, size = 0, TIER_FLOOR
    while rows >= size:
        level, size = level + 1, size * factor
    return level


@dataclass(frozen=True)
class MergedSegment:
    """A merge's result, written but not yet named by a manifest: its segment, the sources it replaces, and the
    deletions of those sources it left out (rows deleted later are carried over when it is installed)."""

    segment: Segment
    sources: tuple[str, ...]
    deleted_before: Mapping[str, np.ndarray]


def write_segment(table: pa.Table, path: Path) -> None:
    """A segment file: zstd for the metadata, the embeddings as plain floats (they do not compress, and plain
    pages decode at memory speed)."""
    compression = {name: "zstd" for name in table.column_names}
    compression["embedding"] = "none"
    # The file is opened here, not by pyarrow: when a write fails (a full disk), it is closed all the same.
    with pa.OSFile(str(path), "wb") as sink:
        pq.write_table(
            table,
            sink,
            compression=compression,
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=["root", "label"],
            write_statistics=["id"],
        )


def write_parquet(table: pa.Table, path: Path) -> None:
    """A small table (skipped files, deletions; format 1's metadata)."""
    with pa.OSFile(str(path), "wb") as sink:
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)


class OpenedFile:
    """A file of the collection, opened as soon as the manifest that names it was read (an open file stays
    readable after a commit removes it). Its sha256 is checked before anything parses it; both stream it, so
    neither a copy of its bytes nor its pages stay in this process's memory: only what is parsed from it.
    Arrow's own file object (not Python's: Parquet reads it from Arrow's threads, which must not call back
    into Python while the interpreter exits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = pa.OSFile(str(path), "rb")
        except FileNotFoundError:  # removed by a commit since the manifest was read: named, as Python names it
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None

    def sha256(self) -> str:
        digest = hashlib.sha256()
        self._file.seek(0)
        while chunk := self._file.read(1 << 22):
            digest.update(chunk)
        return digest.hexdigest()

    def table(self) -> pa.Table:
        """The Parquet table the file holds (raises ``OSError`` or ``pa.ArrowException`` when it is not one)."""
        self._file.seek(0)
        # ParquetFile rather than read_table: read_table imports pyarrow.dataset (and pandas with it).
        return pq.ParquetFile(self._file).read()

    def parquet(self) -> pq.ParquetFile:
        """The file as Parquet, to read column by column and row group by row group."""
        self._file.seek(0)
        # Buffered: pages are read as they are decoded, never a whole column chunk (a row group's embeddings).
        return pq.ParquetFile(self._file, buffer_size=1 << 20)

    def faiss_index(self) -> Any:
        """The FAISS index the file holds, read in chunks (``RuntimeError`` when it is not one)."""
        import faiss

        self._file.seek(0)
        reader = faiss.PyCallbackIOReader(self._file.read, 1 << 22)  # type: ignore[attr-defined]
        return faiss.read_index(reader)

    def close(self) -> None:
        self._file.close()


def sorted_ids(table: pa.Table) -> np.ndarray:
    ids = np.sort(int64_column(table, "id"))
    ids.flags.writeable = False
    return ids


def live_mask(table: pa.Table, deleted: np.ndarray | None) -> np.ndarray | None:
    """Which rows of a segment's table are live (None: all of them)."""
    if deleted is None or not len(deleted):
        return None
    return ~np.isin(int64_column(table, "id"), deleted)


def live_rows(table: pa.Table, deleted: np.ndarray | None) -> pa.Table:
    """The rows of ``table`` whose id is not one of ``deleted``, in order; its record batches that hold none of
    them are kept as they are, not copied (a writer's table is one batch per segment and checkpoint: a removal
    copies the batches it touches, not every embedding)."""
    if deleted is None or not len(deleted):
        return table
    batches = []
    for batch in table.to_batches():
        mask = live_mask(pa.Table.from_batches([batch]), deleted)
        batches.append(batch if mask is None or mask.all() else batch.filter(arrow_array(mask)))
    return pa.Table.from_batches(batches, schema=table.schema)
