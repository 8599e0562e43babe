"""The diff of a folder against a collection, as data: what to load (with the sha256 each file had), which ids
to remove, the next id, and a moved folder to take over — planned before anything is trained, decoded or written.

``plan_sync`` also refuses, at that point, a run that would empty the collection of a folder that only looks
empty (a drive not mounted), a folder with no images at all, and an index type the collection is too small for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from simsearch import vectors
from simsearch.errors import DataError, option
from simsearch.io import ImageFileEntry, LoadJob


@dataclass(frozen=True)
class ToLoad:
    """A file of the folder, and the row it has in the collection (None, None: a new file). A file whose content
    still has that sha256 is unchanged: it is read and hashed, never decoded."""

    entry: ImageFileEntry
    row_id: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a run does to bring the collection in line with the folder ``root``."""

    root: str
    load: tuple[ToLoad, ...]  # every image file found, in path order
    remove: tuple[int, ...]  # ids of the folder's rows whose files are gone
    next_id: int  # the id of the first new row (ids are never reused)
    moved_from: str | None = None  # a folder indexed from a path that is gone, whose rows move to ``root``
    moved: int = 0  # how many of its files were found under ``root``

    def jobs(self, size: int) -> Iterator[LoadJob]:
        """The files to load as jobs of ``size`` files (the last one smaller), in order."""
        for start in range(0, len(self.load), size):
            batch = self.load[start : start + size]
            yield LoadJob([t.entry.path for t in batch], [t.entry.rel for t in batch], [t.sha256 for t in batch])


def rows_of_root(meta: pa.Table, root: str) -> dict[str, tuple[int, str]]:
    """path → (id, sha256) for the rows that came from the folder ``root``."""
    # The columns read, then the rows: filtering the whole table would copy every embedding.
    mine = meta.select(["path", "id", "sha256"]).filter(pc.equal(meta.column("root"), root))
    return {
        path: (int(row_id), sha)
        for path, row_id, sha in zip(
            mine.column("path").to_pylist(),
            mine.column("id").to_pylist(),
            mine.column("sha256").to_pylist(),
            strict=True,
        )
    }


def moved_root(
    root: str, rels: set[str], meta: pa.Table, roots: Sequence[str], exists: Callable[[str], bool]
) -> tuple[str, int] | None:
    """A folder indexed before from a path that no longer exists, most of whose files are now under ``root``
    (it was moved or renamed), with how many of them are: the one with the most, or None."""
    best: tuple[int, str] | None = None
    for other in roots:
        if other == root or exists(other):
            continue
        rows = rows_of_root(meta, other)
        overlap = len(rels & rows.keys())
        if rows and overlap * 2 >= len(rows) and (best is None or overlap > best[0]):
            best = (overlap, other)
    return (best[1], best[0]) if best else None


def plan_sync(
    root: str,
    entries: Sequence[ImageFileEntry],
    meta: pa.Table | None,
    roots: Sequence[str],
    next_id: int,
    *,
    allow_empty: bool = False,
    index_type: str = "auto",
    exists: Callable[[str], bool] = lambda path: Path(path).exists(),
) -> Plan:
    """The plan for the images ``entries`` found under ``root``, against the collection whose rows are ``meta``
    (None: none yet) from the folders ``roots``, whose next id is ``next_id``.

    Raises ``DataError`` for a folder with no images (one that had some: unless ``allow_empty``), and
    ``UsageError`` when ``index_type`` needs more images than the collection would hold."""
    old = rows_of_root(meta, root) if meta is not None else {}
    moved: tuple[str, int] | None = None
    if meta is not None and not old and entries:
        moved = moved_root(root, {e.rel for e in entries}, meta, roots, exists)
        if moved:
            old = rows_of_root(meta, moved[0])
    if not entries and old and not allow_empty:
        raise DataError(
            f"'{root}' holds no images now, but the collection has {len(old)} images from it",
            remedy="if it is a drive that is not mounted, mount it and run again; to remove them from the collection, "
            f"pass {option('allow_empty', 'true')}",
        )
    if not entries and not old:
        raise DataError(f"no images found under '{root}'", remedy="check the path (images are recognised by content)")
    most = (meta.num_rows if meta is not None else 0) - len(old) + len(entries)
    problem = vectors.too_few(index_type, most) if index_type != "auto" else None
    if problem is not None:
        raise problem
    load = tuple(ToLoad(e, *old[e.rel]) if e.rel in old else ToLoad(e) for e in entries)
    current = {e.rel for e in entries}
    return Plan(
        root=root,
        load=load,
        remove=tuple(row_id for rel, (row_id, _) in old.items() if rel not in current),
        next_id=next_id,
        moved_from=moved[0] if moved else None,
        moved=moved[1] if moved else 0,
    )
