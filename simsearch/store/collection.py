"""A collection folder: manifest, segments, deletions, FAISS file, atomic commit, merges, writer lock.

Layout of ``indexes/<name>/`` (format 2; ``segments.py`` has the segment state and the merge policy)::

    manifest.json             names the current generation's files and segments; replaced atomically on commit
    encoder/                  the model folder used (weights.safetensors + encoder.json)
    segment-<gen>.parquet     the rows one commit added, with their embeddings (immutable)
    segment-<gen>-merged.parquet  segments merged into one (by a merge that started after generation <gen>)
    deleted-<gen>.parquet     the rows of each segment that are no longer live (segment, id)
    skipped-<gen>.parquet     files that could not be indexed, with the reason
    vectors-<gen>.faiss       the approximate index types' CPU FAISS index, written when a run finishes (a flat
                              index is filled from the segments on load)
    rebuild.json              an unfinished ``index --rebuild``: the manifest of a whole collection of its own,
                              written beside the live one, renamed over ``manifest.json`` when complete
    .simsearch.json           the marker: this folder is a collection (simsearch writes in no other folder)
    .pending.json             the journal: the files a commit or a merge is writing or replacing, while it runs
    .lock                     held by the one process allowed to write
    map/                      what ``simsearch map`` drew of the collection, when it was asked to
    training.ckpt             the state of an encoder ``index`` is training for it (an interrupted run resumes
                              from it); removed once the encoder is committed

Format 1 (``meta-<gen>.parquet`` with every row, ``vectors-<gen>.faiss`` with every vector, rewritten at every
commit) is read as before; the next commit writes its rows as one segment.

``remove`` (``remove-collection``) takes the lock, names in the journal every file above, removes the manifest
(readers then find no collection), then those files, then the folder; a file no manifest or journal names is left
there, with the folder.

A commit names the files it will write or replace in the journal, writes what changed (a new segment; the
deletions and the skipped list when they changed; the index file when given), fsyncs them, then renames a new
``manifest.json`` (which records each file's sha256) over the old one. A reader that read the manifest sees one
consistent generation; a crash at any moment leaves the previous generation intact. Files no manifest names any
more are removed after the commit; a commit that fails removes what it wrote, and what a killed writer left behind
is removed by the next writer. A merge (``start_merge``) writes its segment on a thread, named in the journal
first; commits leave it alone until one installs it. simsearch deletes only files that a manifest or the journal
names, and writes only in a folder that is new, empty, or carries the marker (or a manifest).
Each step of a commit (journal written, a file written under its temporary name, renamed into place, stale files
removed) is told to the process's observer when one is installed (``simsearch.progress.observe``).
The formats themselves (manifest fields, Parquet schemas) are in ``formats.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simsearch import __version__, processes, progress
from simsearch.errors import CollectionError, CollectionLocked, CollectionNotFound, option
from simsearch.store.formats import (
    DELETED_SCHEMA,
    FIXED_NAMES,
    FORMAT,
    FORMAT_1,
    GENERATION_KEYS,
    JOURNAL,
    LOCK,
    MANIFEST,
    MARKER,
    NOT_SEARCHED,
    SEGMENTED_KEYS,
    SKIPPED_SCHEMA,
    STAGING,
    TRAINING_CHECKPOINT,
    all_distinct,
    arrow_array,
    embeddings_of,
    int64_column,
    manifest_files,
    manifest_problems,
    meta_schema,
    meta_table,
    searching_table,
)
from simsearch.store.segments import (
    MergedSegment,
    OpenedFile,
    Segment,
    SegmentSet,
    live_mask,
    live_rows,
    sorted_ids,
    write_parquet,
    write_segment,
)

if TYPE_CHECKING:  # torch is imported by what loads an encoder, not by what reads a manifest (``info``)
    from simsearch.models.encoder import Encoder

# The formats are re-exported: callers import them from here.
__all__ = [
    "SKIPPED_SCHEMA",
    "Collection",
    "CollectionSummary",
    "Removal",
    "SegmentSet",
    "Snapshot",
    "collection_names",
    "embeddings_of",
    "int64_column",
    "list_collections",
    "meta_schema",
    "meta_table",
    "remove_collection",
    "resolve_path",
]

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is a few kilobytes; anything this large is not one
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
T = TypeVar("T")
REBUILD = f"index the images again with {option('rebuild', 'true')}"  # the remedy for a damaged collection


def resolve_path(name: str, home: Path) -> Path:
    """A collection name (``faces``) lives under ``home``; anything with a slash is a path of its own."""
    if "/" in name or os.sep in name:
        return Path(name)
    if not NAME_PATTERN.match(name):
        raise CollectionError(
            f"'{name}' is not a valid collection name", remedy="use letters, digits, '.', '_' and '-', or a path"
        )
    return Path(home) / name


@dataclass
class Snapshot:
    """One consistent generation of a collection, fully loaded."""

    path: Path
    manifest: dict[str, Any]
    meta: pa.Table
    skipped: pa.Table
    #: The FAISS index on the CPU as it was read; None for a flat index, which ``index`` fills from the embeddings
    #: when it is first asked for (a searcher that needs no FAISS copy of them never makes one).
    stored_index: Any
    #: Format 2: the segments the rows came from, and their deletions (None for a format-1 collection, whose
    #: next write converts it, and for a load for searching, which no commit follows).
    segments: SegmentSet | None = None
    #: An approximate index whose file did not hold exactly the live rows (checkpoints since a run finished, or
    #: an interrupted run): brought up to date in memory; ``compact`` writes it.
    index_stale: bool = False

    @property
    def index(self) -> Any:
        """The FAISS index on the CPU (a flat one is made from the embeddings on first use)."""
        if self.stored_index is None:
            from simsearch import vectors

            index = vectors.new_index(self.dim, self.metric)
            vectors.add_vectors(index, embeddings_of(self.meta), int64_column(self.meta, "id"), self.metric)
            self.stored_index = index
        return self.stored_index

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    @property
    def encoder_dir(self) -> Path:
        return self.path / self.manifest["files"]["encoder"]


class Collection:
    """An index folder. Reading needs no lock; writing happens inside ``with collection.lock():``.

    ``manifest_name`` is ``manifest.json`` for the live collection; ``staging()`` is the unfinished rebuild
    beside it (``rebuild.json``), written by the process that holds the live collection's lock.
    """

    def __init__(self, path: Path, manifest_name: str = MANIFEST) -> None:
        self.path = Path(path)
        self.manifest_name = manifest_name
        #: Files a merge is writing on its thread (named in the journal, not yet by a manifest): a commit's
        #: clean-up leaves them alone.
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        #: The small tables the current generation names (``skipped``, ``deleted``), with their file and sha256:
        #: a commit that does not change one names the same file again instead of writing a copy.
        self._small: dict[str, tuple[pa.Table, str, str]] = {}

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / self.manifest_name

    def staging(self) -> Collection:
        """The unfinished rebuild of this collection (it exists when ``rebuild.json`` does)."""
        return Collection(self.path, STAGING)

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise self.not_found()
        try:
            if self.manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ValueError(f"over {MAX_MANIFEST_BYTES:,} bytes")
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON; deep nesting
            raise CollectionError(
                f"unreadable ({type(exc).__name__}: {str(exc)[:200]})", file=self.manifest_path, remedy=REBUILD
            ) from None
        problems = manifest_problems(manifest)
        if problems:
            raise CollectionError(problems, file=self.manifest_path, remedy=REBUILD)
        return manifest

    def present(self) -> bool:
        """Whether the folder holds a collection or what is left of one: a manifest, an unfinished rebuild, or
        the marker alone (an interrupted first index or removal)."""
        return any((self.path / name).is_file() for name in (MANIFEST, STAGING, MARKER))

    def not_found(self) -> CollectionNotFound:
        """The error for a collection that does not exist, naming the collections beside it (under the same
        home) that do."""
        if self.manifest_name != MANIFEST:
            return CollectionNotFound(f"no unfinished rebuild at '{self.path}'")
        home = self.path.parent
        names = collection_names(home)
        if not names:
            return CollectionNotFound(
                f"no collection at '{self.path}'",
                remedy=f"index a folder into it first (there is no collection under '{home}')",
            )
        listed = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        return CollectionNotFound(
            f"no collection at '{self.path}'",
            remedy=f"index a folder into it first, or choose a {option('name')} under '{home}': {listed}",
        )

    def summary(self) -> CollectionSummary:
        """What ``collections`` lists of this collection, read from its manifest alone (nothing else is loaded):
        images, encoder family, index type, size on disk, last update; or why the manifest cannot be read."""
        size = folder_bytes(self.path)
        if not self.exists():
            staged = self._peek(STAGING)
            problem = (
                "an unfinished rebuild and no committed generation"
                if staged
                else "nothing committed: an interrupted first index or removal"
            )
            return CollectionSummary(
                self.path.name, str(self.path), None, None, None, size, None, staged is not None, problem
            )
        try:
            manifest = self.read_manifest()
        except (CollectionNotFound, CollectionError) as exc:  # removed meanwhile, or damaged
            return CollectionSummary(self.path.name, str(self.path), None, None, None, size, None, False, exc.what)
        return CollectionSummary(
            name=self.path.name,
            path=str(self.path),
            images=int(manifest["count"]),
            encoder=str(manifest["encoder"].get("family") or "?"),
            index=str((manifest.get("index") or {}).get("type", "flat")),
            bytes=size,
            updated=manifest.get("updated"),
            rebuild=(self.path / STAGING).is_file(),
        )

    def remove(self, wait: bool = False) -> Removal:
        """Remove this collection for good, under its writer lock (``CollectionLocked`` while another process
        writes to it, unless ``wait``). The journal first names every file to go (what the manifests and the
        journal name, their temporary names, the map); then the manifest goes, so from that moment readers find
        no collection; then the files, then the folder's own files and the folder. A file no manifest or journal
        names is simsearch's to delete no more than in any commit: it is left there, with the folder, and listed in
        the result. A removal that was interrupted is finished by running it again (or by the next writer, which
        removes what the journal names)."""
        if not self.present():
            raise self.not_found()
        images = (self._peek(MANIFEST) or {}).get("count")
        size = folder_bytes(self.path)
        with self.lock(wait=wait):
            named = {*self._named_by(MANIFEST), *self._named_by(STAGING), *self._journal_names()}
            named |= {_temporary(name) for name in named} | {MAP_FOLDER, _temporary(MANIFEST), _temporary(STAGING)}
            named |= {TRAINING_CHECKPOINT, f"{TRAINING_CHECKPOINT}.tmp"}
            doomed = sorted(name for name in named if _plain(name) and os.path.lexists(self.path / name))
            self._begin(doomed)
            for name in (MANIFEST, STAGING):  # from here readers see no collection
                (self.path / name).unlink(missing_ok=True)
            _fsync_dir(self.path)
            stuck = [name for name in doomed if not _remove(self.path / name)]
            if stuck:
                raise CollectionError(
                    f"the collection is gone, but {len(stuck)} of its files could not be removed ({stuck[0]}, …)",
                    file=self.path,
                    remedy="make the folder writable, then remove it again",
                )
            kept = sorted(entry.name for entry in os.scandir(self.path) if entry.name not in FIXED_NAMES)
            for name in (JOURNAL, *(() if kept else (MARKER, LOCK))):
                (self.path / name).unlink(missing_ok=True)
        if not kept:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # fails only if a new writer has just created its lock: the folder stays
        return Removal(str(self.path), images, size, kept)

    def load(self, attempts: int = 50, *, searching: bool = False) -> Snapshot:
        """Load the current generation.

        ``searching``: the rows as a searcher keeps them (``formats.searching_table``: no file times, sha256 as
        32 bytes, roots dictionary-encoded), made segment by segment; a writer needs them whole (the default).

        A commit removes the previous generation's files right after switching the manifest. The files are
        opened straight after the manifest is read (an open file stays readable after it is removed), so a
        reader loses the race only when a whole commit lands in between; it then reads the new manifest and
        tries again, as long as commits keep coming.
        """
        return self._read_current(lambda manifest: self._load_generation(manifest, searching), attempts)

    def _read_current(self, read: Callable[[dict[str, Any]], T], attempts: int = 50) -> T:
        """``read`` of the current manifest; when a file it names is gone, the manifest is read again: a commit
        that landed meanwhile removed it (then ``read`` runs on the new generation), else the collection is
        damaged and the error names the file."""
        for attempt in range(attempts):
            manifest = self.read_manifest()
            try:
                return read(manifest)
            except FileNotFoundError as exc:
                if self.read_manifest().get("generation") == manifest.get("generation") or attempt + 1 == attempts:
                    raise CollectionError(
                        f"the manifest names '{Path(exc.filename or '?').name}', which is missing",
                        file=self.path,
                        remedy=REBUILD,
                    ) from None
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    def _load_generation(self, manifest: dict[str, Any], searching: bool = False) -> Snapshot:
        if manifest["format"] == FORMAT_1:
            return self._load_format_1(manifest, searching)
        return self._load_segmented(manifest, searching)

    def _load_segmented(self, manifest: dict[str, Any], searching: bool = False) -> Snapshot:
        """Format 2: every file named is opened straight after the manifest was read, its sha256 checked,
        then parsed; the live rows are the segments' rows less the deletions, and the FAISS index is
        built from them (flat) or read and brought up to date with them (the approximate types, whose file is
        written when a run finishes)."""

        files, dim, metric = manifest["files"], int(manifest["dim"]), str(manifest["metric"])
        checksums = manifest.get("sha256") or {}
        expected = {segment["name"]: segment["sha256"] for segment in manifest["segments"]}
        for key in SEGMENTED_KEYS:
            if files.get(key):
                expected[files[key]] = str(checksums.get(key, ""))
        opened: dict[str, OpenedFile] = {}
        try:
            for name in expected:
                opened[name] = OpenedFile(self.path / name)
        except FileNotFoundError:
            _close_all(opened)
            raise  # removed by a commit since the manifest was read: load() reads the new one
        except (OSError, ValueError) as exc:
            _close_all(opened)
            raise CollectionError(f"a collection file is unreadable ({exc})", file=self.path, remedy=REBUILD) from None
        try:
            for name, file in opened.items():
                _check_sha256(file, expected[name])
            skipped = self._parse(opened[files["skipped"]], SKIPPED_SCHEMA)
            deletions = self._parse(opened[files["deleted"]], DELETED_SCHEMA) if files.get("deleted") else None
            meta, segments, deleted = self._read_segments(manifest, opened, deletions, searching)
            ids = int64_column(meta, "id")
            if meta.num_rows != manifest["count"] or not all_distinct(ids):
                raise CollectionError(
                    f"the segments hold {meta.num_rows} live rows (the manifest says {manifest['count']}), or an "
                    "id twice",
                    file=self.path,
                    remedy=REBUILD,
                )
            paths = {"meta": opened[segments[0].name].path if segments else self.path}
            if files.get("vectors"):
                paths["vectors"] = opened[files["vectors"]].path
                index = self._read_index(opened[files["vectors"]], dim, metric)
                index, stale = _brought_up_to_date(index, meta, ids, manifest, paths)
                _check_embeddings(meta, index, ids, metric, paths)
            else:  # flat: the index is made from the embeddings when it is asked for (Snapshot.index)
                _check_embeddings(meta, None, ids, metric, paths)
                index, stale = None, False
        finally:
            _close_all(opened)
        self._small = {"skipped": (skipped, files["skipped"], expected[files["skipped"]])}
        if deletions is not None:
            self._small["deleted"] = (deletions, files["deleted"], expected[files["deleted"]])
        segment_set = None if searching else SegmentSet(tuple(segments), deleted)
        return Snapshot(self.path, manifest, meta, skipped, index, segment_set, stale)

    def _read_segments(
        self,
        manifest: dict[str, Any],
        files: dict[str, OpenedFile],
        deletions: pa.Table | None,
        searching: bool = False,
    ) -> tuple[pa.Table, list[Segment], dict[str, np.ndarray]]:
        """The live rows of every segment as one table, its embeddings in one array made to size: the other
        columns are read first (``searching``: made a searcher's, segment by segment), then the embeddings a row
        group at a time into that array, so that loading holds the embeddings once (no copy of a whole
        segment's, nor a concatenation). The ids are one array (``int64_column`` is then a view of it)."""
        dim = int(manifest["dim"])
        schema = meta_schema(dim)
        others = [name for name in schema.names if name != "embedding" and not (searching and name in NOT_SEARCHED)]
        parts, segments = [], []
        for entry in manifest["segments"]:
            file = files[entry["name"]]
            try:
                reader = file.parquet()
                _check_schema(reader.schema_arrow, schema, file)
                table = reader.read(columns=others)
                table = searching_table(table) if searching else table
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise CollectionError(
                    f"a collection file is unreadable ({exc})", file=file.path, remedy=REBUILD
                ) from None
            ids = sorted_ids(table)
            if table.num_rows != entry["rows"] or (len(ids) > 1 and not (np.diff(ids) > 0).all()):
                raise CollectionError(
                    f"it holds {table.num_rows} rows (the manifest says {entry['rows']}), or an id twice",
                    file=file.path,
                    remedy=REBUILD,
                )
            parts.append(table)
            del reader  # the embeddings are read by a reader of their own, below: this one's buffers go now
            segments.append(Segment(entry["name"], table.num_rows, int(entry.get("bytes", 0)), entry["sha256"], ids))
        deleted = self._deletions(deletions, segments, files.get(manifest["files"].get("deleted") or ""))
        if searching:  # each segment's ids are for a writer's next commit: a searcher lets them go (80 MB at 10M)
            segments = [replace(segment, ids=np.zeros(0, np.int64)) for segment in segments]
        keep = [live_mask(t, deleted.get(s.name)) for t, s in zip(parts, segments, strict=True)]
        live = sum(t.num_rows if k is None else int(k.sum()) for t, k in zip(parts, keep, strict=True))
        embeddings = np.empty((live, dim), np.float32)
        at = unreleased = 0
        for entry, mask in zip(manifest["segments"], keep, strict=True):
            file, start = files[entry["name"]], 0
            try:
                batches = file.parquet().iter_batches(
                    batch_size=EMBEDDING_BATCH_ROWS, columns=["embedding"], use_threads=False
                )
                for batch in batches:
                    values = embeddings_of(pa.Table.from_batches([batch]))
                    if mask is not None:
                        values = values[mask[start : start + len(values)]]
                    embeddings[at : at + len(values)] = values
                    start, at = start + batch.num_rows, at + len(values)
                    unreleased += batch.nbytes
                    if unreleased > RELEASE_BYTES:
                        # Arrow's allocator keeps the pages of the batches read for a next use that does not come
                        # (a segment's embeddings, 0.26 GB at 1M × 64, held until the file was read): handed back
                        # to the system as they go, they stay out of the peak.
                        pa.default_memory_pool().release_unused()
                        unreleased = 0
            except (OSError, pa.ArrowException) as exc:
                raise CollectionError(
                    f"a collection file is unreadable ({exc})", file=file.path, remedy=REBUILD
                ) from None
        tables = [t if k is None else t.filter(arrow_array(k)) for t, k in zip(parts, keep, strict=True)]
        del parts
        if not tables:
            empty = schema.empty_table().drop_columns(["embedding"])
            tables = [searching_table(empty) if searching else empty]
        rest = pa.concat_tables(tables)
        del tables
        at = rest.schema.get_field_index("id")
        rest = rest.set_column(at, schema.field("id"), rest.column("id").combine_chunks())
        # Arrow's allocator keeps what it freed (the ids' chunks, just copied) for a next use that may not come:
        # handed back to the system, it stays out of the peak.
        pa.default_memory_pool().release_unused()
        column = pa.FixedSizeListArray.from_arrays(arrow_array(embeddings.reshape(-1)), dim)
        return rest.append_column(schema.field("embedding"), column), segments, deleted

    def _parse(self, file: OpenedFile, schema: pa.Schema) -> pa.Table:
        try:
            table = file.table()
        except (OSError, pa.ArrowException) as exc:
            raise CollectionError(f"a collection file is unreadable ({exc})", file=file.path, remedy=REBUILD) from None
        _check_schema(table.schema, schema, file)
        return table

    def _read_index(self, file: OpenedFile, dim: int, metric: str) -> Any:
        from simsearch import vectors

        try:
            index = file.faiss_index()
        except (RuntimeError, MemoryError):
            raise CollectionError("not a valid FAISS index (damaged?)", file=file.path, remedy=REBUILD) from None
        problem = vectors.index_problem(index, dim, metric)
        if problem:
            raise CollectionError(problem, file=file.path, remedy=REBUILD)
        return index

    @staticmethod
    def _deletions(table: pa.Table | None, segments: list[Segment], file: OpenedFile | None) -> dict[str, np.ndarray]:
        """The deleted ids of each segment, checked: every one names a row its segment holds."""
        if table is None or not table.num_rows:
            return {}
        by_name = {segment.name: segment for segment in segments}
        encoded = table.column("segment").combine_chunks().dictionary_encode()
        codes = np.frombuffer(encoded.indices.buffers()[1], np.int32, len(encoded), encoded.indices.offset * 4)
        ids = int64_column(table, "id")
        deleted: dict[str, np.ndarray] = {}
        for code, name in enumerate(encoded.dictionary.to_pylist()):
            mine = np.unique(ids[codes == code])
            segment = by_name.get(name)
            if segment is None or not np.isin(mine, segment.ids, assume_unique=True).all():
                raise CollectionError(
                    f"it deletes rows that segment {str(name)[:60]!r} does not hold",
                    file=file.path if file else None,
                    remedy=REBUILD,
                )
            deleted[name] = mine
        return deleted

    def _load_format_1(self, manifest: dict[str, Any], searching: bool = False) -> Snapshot:
        from simsearch import vectors

        files = manifest["files"]
        paths = {key: self.path / files[key] for key in GENERATION_KEYS}
        try:
            with contextlib.ExitStack() as stack:
                handles = {key: stack.enter_context(open(path, "rb")) for key, path in paths.items()}
                data = {key: handle.read() for key, handle in handles.items()}
        except FileNotFoundError:
            raise  # removed by a commit since the manifest was read: load() reads the new one
        except OSError as exc:
            raise CollectionError(f"a generation file is unreadable ({exc})", file=self.path, remedy=REBUILD) from None
        checksums = manifest.get("sha256") or {}  # absent from manifests written before checksums were kept
        for key in GENERATION_KEYS:
            if key in checksums and hashlib.sha256(data[key]).hexdigest() != checksums[key]:
                raise CollectionError(
                    f"its sha256 does not match {MANIFEST}",
                    file=paths[key],
                    remedy=f"the file was changed or damaged; {REBUILD}",
                )
        dim = int(manifest["dim"])
        try:
            # ParquetFile rather than read_table: read_table imports pyarrow.dataset (and pandas with it).
            meta = pq.ParquetFile(pa.BufferReader(data["meta"])).read()
            skipped = pq.ParquetFile(pa.BufferReader(data["skipped"])).read()
        except (OSError, pa.ArrowException) as exc:
            raise CollectionError(f"a generation file is unreadable ({exc})", file=self.path, remedy=REBUILD) from None
        for key, table, schema in (("meta", meta, meta_schema(dim)), ("skipped", skipped, SKIPPED_SCHEMA)):
            if not table.schema.equals(schema):
                raise CollectionError(
                    "its columns are not those of a simsearch collection", file=paths[key], remedy=REBUILD
                )
        try:
            index = vectors.deserialize(data["vectors"])
        except (RuntimeError, MemoryError):
            raise CollectionError("not a valid FAISS index (damaged?)", file=paths["vectors"], remedy=REBUILD) from None
        problem = vectors.index_problem(index, dim, str(manifest["metric"]))
        if problem:
            raise CollectionError(problem, file=paths["vectors"], remedy=REBUILD)
        if not index.ntotal == meta.num_rows == manifest["count"]:
            raise CollectionError(
                f"the vectors ({index.ntotal}), the metadata ({meta.num_rows} rows) and the manifest "
                f"(count {manifest['count']}) disagree",
                file=self.path,
                remedy=REBUILD,
            )
        ids = int64_column(meta, "id")
        if not np.array_equal(np.sort(vectors.index_ids(index)), np.sort(ids)) or not all_distinct(ids):
            raise CollectionError("the ids of the vectors and of the metadata differ", file=self.path, remedy=REBUILD)
        _check_embeddings(meta, index, ids, str(manifest["metric"]), paths)
        if searching:
            try:
                meta = searching_table(meta)
            except ValueError as exc:
                raise CollectionError(
                    f"a collection file is unreadable ({exc})", file=paths["meta"], remedy=REBUILD
                ) from None
        self._small = {}
        return Snapshot(self.path, manifest, meta, skipped, index)

    def load_encoder(self, manifest: dict[str, Any] | None = None, device: str = "cpu") -> Encoder:
        manifest = manifest or self.read_manifest()
        from simsearch.models.encoder import Encoder

        encoder = Encoder.load(self.path / manifest["files"]["encoder"], device=device)
        if encoder.fingerprint != manifest["encoder"]["fingerprint"]:
            raise CollectionError(
                "its encoder folder does not match the manifest's fingerprint",
                file=self.path,
                remedy=f"rebuild with {option('rebuild', 'true')}",
            )
        return encoder

    def describe(self, manifest: dict[str, Any], skipped: int) -> dict[str, Any]:
        """What ``info --json`` prints (and a service answers) for the generation of ``manifest``: the manifest,
        the collection's path, how many files were skipped, and the unfinished rebuild (or None)."""
        return {**manifest, "path": str(self.path), "skipped": skipped, "rebuild": self.rebuild_summary()}

    def inspect(self, skipped: bool = True) -> tuple[dict[str, Any], pa.Table | None]:
        """What ``info`` shows, without loading the collection (its cost does not grow with it): the manifest,
        checked to name files that all exist, and the skipped list (checksum first; not read without
        ``skipped`` when the manifest has its count: None). A commit that lands in between makes it read the new
        manifest, as ``load`` does."""
        return self._read_current(lambda manifest: self._inspect(manifest, skipped))

    def _inspect(self, manifest: dict[str, Any], skipped: bool) -> tuple[dict[str, Any], pa.Table | None]:
        missing = [name for name in manifest_files(manifest) if not os.path.lexists(self.path / name)]
        if missing:
            raise FileNotFoundError(2, "No such file or directory", missing[0])
        if not skipped and "skipped_count" in manifest:
            return manifest, None
        file = OpenedFile(self.path / manifest["files"]["skipped"])
        try:
            expected = (manifest.get("sha256") or {}).get("skipped")
            if expected is not None:  # absent from format-1 manifests written before checksums were kept
                _check_sha256(file, expected)
            return manifest, self._parse(file, SKIPPED_SCHEMA)
        finally:
            file.close()

    def rebuild_summary(self) -> dict[str, Any] | None:
        """What an unfinished ``index --rebuild`` has done so far (from ``rebuild.json``), or None."""
        staged = self._peek(STAGING)
        if staged is None:
            return None
        keys = ("generation", "count", "encoder", "roots", "updated")
        return {key: staged[key] for key in keys if key in staged}

    # --- ownership -------------------------------------------------------------------------------------------

    def _check_ours(self) -> None:
        """Refuse a folder that is not a collection: simsearch writes and deletes only in its own folders.

        Ours: a folder with the marker, a collection written before markers were kept (its manifest), an empty
        folder, or one that holds only the lock an earlier run left."""
        try:
            names = {entry.name for entry in os.scandir(self.path)}
        except NotADirectoryError:
            raise CollectionError(
                f"'{self.path}' is a file, not a collection folder", remedy=f"choose another {option('name')}"
            ) from None
        except OSError as exc:
            raise CollectionError(
                f"cannot read the folder ({os.strerror(exc.errno) if exc.errno else exc})",
                file=self.path,
                remedy=f"make it readable, or choose another {option('name')}",
            ) from None
        if MARKER in names or names <= {LOCK} or (MANIFEST in names and self._peek(MANIFEST) is not None):
            return
        others = sorted(names - {LOCK})
        shown = ", ".join(repr(name) for name in others[:3]) + (
            f" and {len(others) - 3} more" if len(others) > 3 else ""
        )
        raise CollectionError(
            f"'{self.path}' is not a simsearch collection (it holds {shown})",
            remedy=f"simsearch will not write there; choose another {option('name')}, or a new or empty folder",
        )

    def training_checkpoint(self) -> Path:
        """Where ``index`` keeps the state of an encoder it trains for this collection, so that an interrupted
        run resumes its training (``training.checkpoint``): ``training.ckpt`` in the folder, which is marked as a
        collection first (call it under the writer lock)."""
        self._mark()
        return self.path / TRAINING_CHECKPOINT

    def _mark(self) -> None:
        """Write the marker that says this folder is a collection (once; a read-only folder is left as it is)."""
        if (self.path / MARKER).exists():
            return
        with contextlib.suppress(OSError):
            text = json.dumps(
                {"format": FORMAT, "kind": "simsearch collection folder", "simsearch_version": __version__}
            )
            _write_now(self.path / MARKER, text + "\n")

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the writer lock. Without ``wait``, a held lock raises ``CollectionLocked`` at once.

        The folder must be a collection, new or empty (``_check_ours``). What an interrupted writer left behind
        is removed as the lock is taken (``_recover``)."""
        created = not self.path.exists()
        if not created:
            self._check_ours()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle: IO[bytes] = open(self.path / LOCK, "ab")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            if not (self.path / LOCK).is_file():
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise CollectionError(
                    f"cannot write to the collection folder ({reason})",
                    file=self.path,
                    remedy=f"make it writable, or choose another {option('home')} or {option('name')}",
                ) from None
            # A read-only folder: a read-only descriptor still takes the lock, and a run with nothing to
            # commit succeeds; a commit fails with its own clear error.
            handle = open(self.path / LOCK, "rb")  # noqa: SIM115
        processes.parent_only(handle.fileno())  # decoding workers must not inherit (and so hold) the lock
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise CollectionLocked(
                    f"another simsearch process is writing to '{self.path}'",
                    remedy=f"wait for it to finish, or pass {option('wait', 'true')} to queue behind it",
                ) from None
            self._mark()
            self._recover()
            yield
        finally:
            processes.release(handle.fileno())
            handle.close()
            if created and not self.exists() and not self.staging().exists():
                for name in (JOURNAL, MARKER, LOCK):
                    with contextlib.suppress(OSError):
                        (self.path / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only if empty: nothing but what this run made is removed

    # --- what is current, and the journal ---------------------------------------------------------------------

    def _peek(self, name: str) -> dict[str, Any] | None:
        """The manifest ``name`` (``manifest.json`` or ``rebuild.json``) if it exists and is valid, else None."""
        if not (self.path / name).is_file():
            return None
        try:
            return Collection(self.path, name).read_manifest()
        except (CollectionNotFound, CollectionError):
            return None

    def _named_by(self, name: str) -> list[str]:
        """The plain file names a manifest of this folder names, even one that fails its checks (a damaged
        manifest that a rebuild replaces still says which files were its own)."""
        try:
            manifest = json.loads((self.path / name).read_text())
            files, segments = manifest.get("files"), manifest.get("segments")
        except (OSError, ValueError, AttributeError, RecursionError):
            return []
        names = list(files.values()) if isinstance(files, dict) else []
        names += [s.get("name") for s in segments if isinstance(s, dict)] if isinstance(segments, list) else []
        return [name for name in names if isinstance(name, str) and _plain(name)]

    def _current_files(self) -> set[str] | None:
        """Every name a manifest of this folder needs (live and unfinished rebuild), with the folder's own
        files; None when a manifest exists but cannot be read (then nothing can be known to be stale)."""
        current = set(FIXED_NAMES)
        for name in (MANIFEST, STAGING):
            if not (self.path / name).exists():
                continue
            manifest = self._peek(name)
            if manifest is None:
                return None
            current.update(manifest_files(manifest))
        return current

    def _journal_names(self) -> list[str]:
        try:
            names = json.loads((self.path / JOURNAL).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError, RecursionError):
            return []  # none, or cut short by a crash before anything it names was written
        return [n for n in names if isinstance(n, str) and _plain(n)] if isinstance(names, list) else []

    def _begin(self, names: list[str]) -> list[str]:
        """Record in the journal the files about to be written or replaced (fsynced before any of them is
        touched), keeping what an earlier journal named. Returns the earlier journal's names."""
        existed = (self.path / JOURNAL).exists()
        before = self._journal_names() if existed else []
        try:
            _write_now(self.path / JOURNAL, json.dumps({"files": sorted({*before, *names})}) + "\n")
        except OSError:
            with contextlib.suppress(OSError):
                if existed:
                    _write_now(self.path / JOURNAL, json.dumps({"files": before}) + "\n")
                else:
                    (self.path / JOURNAL).unlink(missing_ok=True)
            raise
        progress.emit(progress.JOURNAL_WRITTEN, JOURNAL)
        return before

    def _recover(self) -> None:
        """Remove what an interrupted writer left: the files its journal names that no manifest names."""
        if (self.path / JOURNAL).exists():
            self._remove_stale(set())

    def _remove_stale(self, keep: set[str]) -> None:
        """Remove the files the journal names that no manifest needs (``keep`` included), then the journal.
        What cannot be removed now (a read-only folder) stays named, for a later writer, and so do the files a
        merge is writing on its thread."""
        progress.emit(progress.REMOVING_STALE)
        current = self._current_files()
        if current is not None:  # else a manifest that cannot be read: no file can be known to be stale
            with self._in_flight_lock:
                in_flight = set(self._in_flight)
            current.update(keep)
            left = [
                name
                for name in self._journal_names()
                if name in in_flight or (name not in current and not _remove(self.path / name))
            ]
            with contextlib.suppress(OSError):
                if left:
                    _write_now(self.path / JOURNAL, json.dumps({"files": left}) + "\n")
                else:
                    (self.path / JOURNAL).unlink(missing_ok=True)
        progress.emit(progress.REMOVED_STALE)

    def _next_generation(self, previous: dict[str, Any] | None) -> int:
        """One more than any generation this folder has used: a generation's file names are never reused, so
        the live collection and an unfinished rebuild beside it never write the same name."""
        numbers = [int(previous["generation"])] if previous else []
        for name in (MANIFEST, STAGING):
            manifest = self._peek(name)
            if manifest is not None:
                numbers.append(int(manifest["generation"]))
        for name in [entry.name for entry in os.scandir(self.path)] + self._journal_names():
            match = GENERATION_NAME.match(name)
            if match:
                numbers.append(int(match.group(1)))
        return max(numbers, default=0) + 1

    # --- commits ------------------------------------------------------------------------------------------------

    def commit(
        self,
        added: pa.Table,
        removed: Sequence[int],
        skipped: pa.Table,
        encoder: Encoder,
        previous: dict[str, Any] | None,
        roots: list[str],
        *,
        segments: SegmentSet | None,
        index: Any = None,
        index_info: dict[str, Any] | None = None,
        write_encoder: bool = False,
        merges: Sequence[MergedSegment] = (),
    ) -> tuple[dict[str, Any], SegmentSet]:
        """Write a new generation and switch the manifest to it. Call inside ``lock()``.

        The generation follows ``segments`` (the live state the caller holds, None: none, the rows all in
        ``added``): ``added`` (its new rows) becomes a new segment, the ids ``removed`` are deleted from the
        segments that hold them, and the merges done meanwhile (``merges``, from ``start_merge``) replace their
        sources. ``index`` is written as the vectors file when given (the approximate types, when a run finishes);
        otherwise a flat collection names none and an approximate one keeps the file it had. The skipped list and
        the deletions are written only when they changed.

        ``previous`` is the manifest this one follows (its ids, creation date and encoder folder carry over).
        ``encoder`` is written into the collection when it is new (no ``previous`` manifest, or a different
        fingerprint), or when ``write_encoder`` says so (a rebuild: the old copy may be what was damaged).
        Returns the new manifest and segments.
        """
        from simsearch import vectors

        generation = self._next_generation(previous)
        gen = f"{generation:06d}"
        state = (segments or SegmentSet()).without(removed)
        for merge in merges:
            if state.includes(merge):
                state = state.merged(merge)
        info = index_info or {"type": "flat", "exact": True, "factory": "IDMap2,Flat"}
        old_files = (previous or {}).get("files", {}) if (previous or {}).get("format") == FORMAT else {}
        files: dict[str, Any] = {
            "encoder": previous["files"]["encoder"] if previous else "encoder",
            "skipped": f"skipped-{gen}.parquet",
            "deleted": None,
            "vectors": None,
        }
        fingerprint = encoder.fingerprint
        new_encoder = write_encoder or previous is None or previous["encoder"]["fingerprint"] != fingerprint
        if new_encoder:
            files["encoder"] = "encoder" if generation == 1 else f"encoder-{gen}"
        checksums: dict[str, str] = {}
        writes: list[tuple[str, Any]] = []  # (file name, how to write it), in the order they are written
        segment_name = f"segment-{gen}.parquet"
        if added.num_rows:
            writes.append((segment_name, lambda p: write_segment(added, p)))
        for key, table in (("skipped", skipped), ("deleted", state.deleted_table())):
            known = self._small.get(key)
            if known is not None and known[0].equals(table):
                files[key], checksums[key] = known[1], known[2]
            elif table.num_rows or key == "skipped":
                files[key] = f"{key}-{gen}.parquet"
                writes.append((files[key], lambda p, t=table: write_parquet(t, p)))
        if index is not None:
            files["vectors"] = f"vectors-{gen}.faiss"
            writes.append((files["vectors"], lambda p: vectors.write_file(index, p)))
        elif info.get("type", "flat") != "flat" and old_files.get("vectors"):
            files["vectors"] = old_files["vectors"]
            checksums["vectors"] = previous["sha256"]["vectors"]  # type: ignore[index]
        written = [name for name, _ in writes] + (
            [files["encoder"], _temporary(files["encoder"])] if new_encoder else []
        )
        written += [_temporary(name) for name, _ in writes] + [_temporary(self.manifest_name)]
        replaced = manifest_files(previous_here) if (previous_here := self._peek(self.manifest_name)) else []
        writing = JOURNAL
        try:
            journal_before = self._begin(written + replaced)
            if new_encoder:
                writing = files["encoder"]
                self._write_dir(files["encoder"], encoder.write_into)
            digests = {}
            for name, write in writes:
                writing = name
                digests[name] = self._write_file(name, write)
            if added.num_rows:
                size = (self.path / segment_name).stat().st_size
                state = state.plus(
                    Segment(segment_name, added.num_rows, size, digests[segment_name], sorted_ids(added))
                )
            for key in SEGMENTED_KEYS:
                if files[key] in digests:
                    checksums[key] = digests[files[key]]
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            next_id = max(
                [int(previous.get("next_id", 0)) if previous else 0]
                + [int(segment.ids[-1]) + 1 for segment in state.segments if len(segment.ids)]
            )
            manifest = {
                "format": FORMAT,
                "generation": generation,
                "count": state.count,
                "dim": encoder.dim,
                "metric": encoder.metric,
                "encoder": {"fingerprint": fingerprint, "family": encoder.family},
                "index": info,
                "next_id": next_id,
                "roots": roots,
                "created": previous.get("created", now) if previous else now,
                "updated": now,
                "simsearch_version": __version__,
                "files": files,
                "segments": [segment.entry() for segment in state.segments],
                "sha256": checksums,
                "skipped_count": skipped.num_rows,
            }
            writing = self.manifest_name
            self._write_file(self.manifest_name, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))
        except OSError as exc:
            # Raised below, outside this block: the OSError's frames (and the half-written file a library may
            # still hold open in them) must not live on in the new error's context.
            failure = (
                os.strerror(exc.errno) if exc.errno else str(exc),
                writing != JOURNAL and self._discard_unless_current(generation, written, journal_before),
            )
        except BaseException:
            if writing != JOURNAL:
                self._discard_unless_current(generation, written, journal_before)
            raise
        else:
            for merge in merges:  # installed (or left out: its sources are gone), the file is no longer in flight
                self._release(merge.segment.name)
            self._small = {"skipped": (skipped, files["skipped"], checksums["skipped"])}
            if files["deleted"]:
                self._small["deleted"] = (state.deleted_table(), files["deleted"], checksums["deleted"])
            self._remove_stale(set(manifest_files(manifest)))
            return manifest, state
        reason, switched = failure
        if switched:
            raise CollectionError(
                f"generation {generation} was committed, but then {reason} ({writing})",
                file=self.path,
                remedy="check the disk before trusting this collection",
            )
        live = previous if self.manifest_name == MANIFEST else self._peek(MANIFEST)
        kept = "the collection is as it was " + (
            f"(generation {live['generation']}, {live['count']} images)" if live else "(still empty)"
        )
        staged = self._peek(STAGING) if self.manifest_name == STAGING else None
        if staged:
            kept += f", and the rebuild keeps the {staged['count']} images it committed"
        raise CollectionError(
            f"could not write {writing} ({reason})",
            file=self.path,
            remedy=f"{kept}; free some space or make the folder writable, then run the same command again",
        )

    # --- merges: on a thread beside the writer ------------------------------------------------------------------

    def start_merge(self, segments: SegmentSet, factor: int) -> Merge | None:
        """Start merging what the tier policy picks from ``segments`` (``SegmentSet.to_merge``) on a thread, or
        return None when there is nothing to merge. Call inside ``lock()``: the merged segment's name is put in
        the journal first, so that a writer killed before it is installed leaves nothing behind; a later commit
        installs it (``commit(merges=...)``), and the segments it replaces are then removed."""
        sources = segments.to_merge(factor)
        if not sources:
            return None
        # Named after the generation it follows: one merge at most starts after each commit.
        name = f"segment-{(self._peek(self.manifest_name) or {}).get('generation', 0):06d}-merged.parquet"
        self._begin([name, _temporary(name)])
        with self._in_flight_lock:
            self._in_flight |= {name, _temporary(name)}
        return Merge(self, name, segments, sources)

    def merge_done(self, merge: Merge) -> None:
        """``merge`` was installed by a commit, or dropped: its file is no longer this writer's to protect (a
        dropped one is stale, removed by the next clean-up)."""
        self._release(merge.name)

    def _release(self, name: str) -> None:
        with self._in_flight_lock:
            self._in_flight -= {name, _temporary(name)}

    def compact(self, wait: bool = False) -> Compaction:
        """Merge every segment into one without the deleted rows, and write an approximate index afresh when its
        file no longer holds exactly the live rows; a format-1 collection is converted. Takes the writer lock
        (``CollectionLocked`` while another process writes, unless ``wait``). Nothing is done to a collection
        that is one segment without deletions, with an index file that is up to date."""
        with self.lock(wait=wait):
            snapshot = self.load()
            state, manifest = snapshot.segments, snapshot.manifest
            before = Compaction(
                str(self.path),
                int(manifest["generation"]),
                len(state.segments) if state else 0,
                sum(len(d) for d in state.deleted.values()) if state else 0,
                folder_bytes(self.path),
                manifest["format"],
            )
            if state is not None and len(state.segments) <= 1 and not state.deleted and not snapshot.index_stale:
                return before
            approximate = (manifest.get("index") or {}).get("type", "flat") != "flat"
            after, _ = self.commit(
                snapshot.meta,
                [],
                snapshot.skipped,
                self.load_encoder(manifest),
                manifest,
                list(manifest.get("roots", [])),
                segments=None,
                index=snapshot.index if approximate else None,
                index_info=manifest.get("index"),
            )
        return replace(before, generation_after=int(after["generation"]), bytes_after=folder_bytes(self.path))

    def _discard_unless_current(self, generation: int, written: list[str], journal_before: list[str]) -> bool:
        """After a failed commit: remove the files it wrote, unless the manifest already names them (the
        failure came after the switch), and put the journal back as it was. Returns whether the switch
        happened."""
        current = self._peek(self.manifest_name)
        if current is not None and current.get("generation") == generation:
            return True
        left = [name for name in written if not _remove(self.path / name)]
        with contextlib.suppress(OSError):
            if left or journal_before:
                _write_now(self.path / JOURNAL, json.dumps({"files": sorted({*left, *journal_before})}) + "\n")
            else:
                (self.path / JOURNAL).unlink(missing_ok=True)
        return False

    def adopt_staging(self) -> dict[str, Any]:
        """Finish a rebuild: its manifest (``rebuild.json``) replaces ``manifest.json`` in one rename, so readers
        go from the whole old collection to the whole new one. Call inside ``lock()``. Returns the manifest."""
        staged = self.staging().read_manifest()
        self._begin(self._named_by(MANIFEST))
        os.replace(self.path / STAGING, self.path / MANIFEST)
        _fsync_dir(self.path)
        self._remove_stale(set(manifest_files(staged)))
        return staged

    def discard_staging(self) -> None:
        """Drop an unfinished rebuild (its manifest first, then its files). Call inside ``lock()``."""
        self._begin(self._named_by(STAGING))
        (self.path / STAGING).unlink(missing_ok=True)
        _fsync_dir(self.path)
        self._remove_stale(set())

    def _write_file(self, name: str, write: Any) -> str:
        """Write to a temporary name, fsync, rename into place, fsync the folder. Returns the file's sha256.

        Files are created with the process's umask (mode 0666 before it), so a collection can be shared."""
        tmp = self.path / _temporary(name)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
            write(tmp)
            progress.emit(progress.WROTE_TEMPORARY, name)
            digest = hashlib.sha256()
            with open(tmp, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
            _fsync_dir(self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        progress.emit(progress.RENAMED, name)
        return digest.hexdigest()

    def _write_dir(self, name: str, write: Any) -> None:
        tmp = self.path / _temporary(name)
        _remove(tmp)  # what a killed writer left under this name (the journal names it)
        tmp.mkdir()
        try:
            write(tmp)
            progress.emit(progress.WROTE_TEMPORARY, f"{name}/")
            _fsync_dir(tmp)
            _remove(self.path / name)
            tmp.rename(self.path / name)
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress.emit(progress.RENAMED, f"{name}/")


@dataclass
class CollectionSummary:
    """One collection as ``collections`` lists it (``Collection.summary``): from its manifest alone. ``images``,
    ``encoder`` (the family), ``index`` (the type) and ``updated`` are None when the manifest cannot be read, and
    ``problem`` says why; ``bytes`` is the size of every file in the folder; ``rebuild``: an unfinished
    ``index --rebuild`` waits beside it."""

    name: str
    path: str
    images: int | None
    encoder: str | None
    index: str | None
    bytes: int
    updated: str | None
    rebuild: bool = False
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Removal:
    """What ``Collection.remove`` removed: the folder, its images (None when it held no readable manifest), the
    bytes its files held, and the names of the files it kept because simsearch did not write them (the folder is
    then kept too)."""

    path: str
    images: int | None
    bytes: int
    kept: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Compaction:
    """What ``Collection.compact`` found and did: the segments and deleted rows it merged away, the folder's bytes
    before and after, the format it found; ``generation_after`` None: there was nothing to do."""

    path: str
    generation: int
    segments: int
    deleted: int
    bytes: int
    format: str
    generation_after: int | None = None
    bytes_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Merge:
    """A merge on its thread (``Collection.start_merge``): the live rows of ``sources`` read from their files
    (checksums first) and written as the segment ``name``; ``result`` gives it to the commit that installs it."""

    def __init__(self, collection: Collection, name: str, segments: SegmentSet, sources: list[str]) -> None:
        self.collection, self.name, self.sources = collection, name, tuple(sources)
        by_name = {segment.name: segment for segment in segments.segments}
        self._segments = [by_name[source] for source in sources]
        self.deleted_before = {n: segments.deleted.get(n, np.zeros(0, np.int64)) for n in sources}
        self._result: MergedSegment | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"simsearch merge {name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Merge({self.name!r}, {len(self.sources)} segments)"

    def _run(self) -> None:
        try:
            tables = []
            for segment in self._segments:
                file = OpenedFile(self.collection.path / segment.name)
                try:
                    _check_sha256(file, segment.sha256)
                    tables.append(live_rows(file.table(), self.deleted_before[segment.name]))
                finally:
                    file.close()
            table = pa.concat_tables(tables)
            digest = self.collection._write_file(self.name, lambda p: write_segment(table, p))
            size = (self.collection.path / self.name).stat().st_size
            segment = Segment(self.name, table.num_rows, size, digest, sorted_ids(table))
            self._result = MergedSegment(segment, self.sources, self.deleted_before)
        except BaseException as exc:  # told to the writer, which drops the merge: the next one tries again
            self.error = exc

    def result(self, wait: bool = False) -> MergedSegment | None:
        """The merged segment when the merge is done (waiting for it with ``wait``); None while it runs, or when
        it failed (``error`` says why)."""
        if wait:
            self._thread.join()
        return None if self._thread.is_alive() else self._result


def collection_names(home: Path) -> list[str]:
    """The names of the collections under ``home`` (folders with a manifest), sorted; none when ``home`` cannot
    be read."""
    try:
        entries = list(os.scandir(home))
    except OSError:
        return []
    return sorted(
        e.name
        for e in entries
        if NAME_PATTERN.match(e.name)
        and e.is_dir(follow_symlinks=False)
        and os.path.isfile(os.path.join(e.path, MANIFEST))
    )


def list_collections(home: Path) -> list[CollectionSummary]:
    """Every collection under ``home``, by name: what ``Collection.summary`` reads from its manifest. A folder that
    carries the collection marker but has no manifest (an interrupted first index or removal) is listed too, with
    its problem; other folders are not collections and are left out."""
    try:
        entries = sorted(os.scandir(home), key=lambda e: e.name)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not (NAME_PATTERN.match(entry.name) and entry.is_dir(follow_symlinks=False)):
            continue
        collection = Collection(Path(entry.path))
        if collection.present():
            found.append(collection.summary())
    return found


def remove_collection(name: str, home: Path, wait: bool = False) -> Removal:
    """Remove the collection ``name`` (under ``home``, or a path) for good: ``Collection.remove``."""
    return Collection(resolve_path(name, home)).remove(wait=wait)


def folder_bytes(path: Path) -> int:
    """The bytes of every file under ``path`` (links not followed); 0 when it cannot be read."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


#: Rows of embeddings decoded at a time when a collection is loaded (a few MB: the loader's transient memory).
EMBEDDING_BATCH_ROWS = 2048
#: How many bytes of embeddings a load reads before handing Arrow's freed pages back to the system.
RELEASE_BYTES = 32 << 20

#: What ``simsearch map`` writes into a collection's folder (``latent.map.MAP_FOLDER``).
MAP_FOLDER = "map"


#: A generation's number in one of its file names (``meta-000003.parquet``, ``encoder-000003``).
GENERATION_NAME = re.compile(
    r"^\.?(?:vectors|meta|skipped|deleted|segment|encoder)-(\d+)(?:-merged)?(?:\.faiss|\.parquet)?(?:\.tmp)?$"
)


def _temporary(name: str) -> str:
    """The name a file or folder is written under before it is renamed into place."""
    return f".{name}.tmp"


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..", *FIXED_NAMES)


def _remove(path: Path) -> bool:
    """Remove a file or folder of the collection's; True when it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _write_now(path: Path, text: str) -> None:
    """Write a small file in place and fsync it and its folder (the marker and the journal)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _check_sha256(file: OpenedFile, expected: str) -> None:
    """Refuse a file whose content is not what the manifest vouches for (before anything parses it)."""
    if file.sha256() != expected:
        raise CollectionError(
            f"its sha256 does not match {MANIFEST}",
            file=file.path,
            remedy=f"the file was changed or damaged; {REBUILD}",
        )


def _check_schema(schema: pa.Schema, expected: pa.Schema, file: OpenedFile) -> None:
    if not schema.equals(expected):
        raise CollectionError("its columns are not those of a simsearch collection", file=file.path, remedy=REBUILD)


def _close_all(files: dict[str, OpenedFile]) -> None:
    for file in files.values():
        file.close()


def _brought_up_to_date(
    index: Any, meta: pa.Table, ids: np.ndarray, manifest: dict[str, Any], paths: Any
) -> tuple[Any, bool]:
    """An approximate index read from its file, made to hold exactly the live rows: it was written when a run
    last finished, and checkpoints since then added segments and deletions. Ids are never reused, so the id sets
    say what changed: ids it holds that are no longer live are removed, live ids it lacks are added. A graph
    (HNSW) cannot drop vectors: it is built again from the embeddings."""
    from simsearch import vectors

    held = vectors.index_ids(index)
    extra = np.setdiff1d(held, ids)
    missing = np.setdiff1d(ids, held)
    if not len(extra) and not len(missing):
        return index, False
    metric = str(manifest["metric"])
    if len(extra) and not vectors.supports_removal(index):
        spec = vectors.IndexSpec.from_json(manifest.get("index") or {"type": "flat"})
        try:
            return vectors.build_index(spec, embeddings_of(meta), ids, metric), True
        except RuntimeError as exc:
            raise CollectionError(
                f"its {spec.type} index could not be brought up to date ({str(exc).strip()[:200]})",
                file=paths["vectors"],
                remedy=f"run 'simsearch compact' on a machine that can build it, or {REBUILD}",
            ) from None
    vectors.remove_ids(index, extra)
    if len(missing):
        rows = vectors.lookup(np.arange(len(ids)), ids)(missing)
        vectors.add_vectors(index, embeddings_of(meta)[rows], missing, metric)
    return index, True


def _check_embeddings(meta: pa.Table, index: Any, ids: np.ndarray, metric: str, paths: dict[str, Path]) -> None:
    """Every stored embedding is finite, and equals the vector FAISS holds under its id wherever FAISS holds
    the vector itself (flat, HNSW and IVF-Flat indexes; PQ codes are approximations). ``index`` None: the
    index is built from these very embeddings, so only their finiteness is checked."""
    from simsearch import vectors

    embeddings = embeddings_of(meta)
    step = max(1, (4 << 20) // max(1, embeddings.shape[1]))  # 4M values at a time: no n×d array of flags
    finite = np.concatenate(
        [np.isfinite(embeddings[i : i + step]).all(axis=1) for i in range(0, len(embeddings), step)] or [[]]
    ).astype(bool)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise CollectionError(
            f"row {row} (id {ids[row]}, {meta.column('path')[row].as_py()!r}) holds a NaN or "
            f"infinite embedding ({int((~finite).sum())} rows in all)",
            file=paths["meta"],
            remedy=REBUILD,
        )
    if index is None:
        return
    row_of = vectors.lookup(np.arange(len(ids)), ids)
    for stored_ids, stored in vectors.stored_vectors(index):
        rows = row_of(stored_ids)
        expected = vectors.prepare(embeddings[rows], metric)
        wrong = (stored != expected).any(axis=1)  # the same float32 computation gives the same bits
        if wrong.any():
            row = int(rows[np.flatnonzero(wrong)[0]])
            raise CollectionError(
                f"the vector of id {ids[row]} ({meta.column('path')[row].as_py()!r}) differs "
                f"from its embedding in {paths['meta'].name}",
                file=paths["vectors"],
                remedy=REBUILD,
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
