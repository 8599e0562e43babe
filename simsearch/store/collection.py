"""A collection folder: manifest, generation files, Parquet metadata, FAISS vectors, atomic commit, writer lock.

Layout of ``indexes/<name>/``::

    manifest.json             names the current generation's files; replaced atomically on commit
    encoder/                  the model folder used (weights.safetensors + encoder.json)
    vectors-<gen>.faiss       CPU FAISS index (IndexIDMap2); ids equal the metadata ``id`` column
    meta-<gen>.parquet        one row per image, with its embedding
    skipped-<gen>.parquet     files that could not be indexed, with the reason
    rebuild.json              an unfinished ``index --rebuild``: the manifest of a whole collection of its own,
                              written beside the live one, renamed over ``manifest.json`` when complete
    .simsearch.json           the marker: this folder is a collection (simsearch writes in no other folder)
    .pending.json             the journal: the files a commit is writing or replacing, while it runs
    .lock                     held by the one process allowed to write
    map/                      what ``simsearch map`` drew of the collection, when it was asked to
    training.ckpt             the state of an encoder ``index`` is training for it (an interrupted run resumes
                              from it); removed once the encoder is committed

``remove`` (``remove-collection``) takes the lock, names in the journal every file above, removes the manifest
(readers then find no collection), then those files, then the folder; a file no manifest or journal names is left
there, with the folder.

A commit names the files it will write or replace in the journal, writes the new generation's files, fsyncs
them, then renames a new ``manifest.json`` (which records each file's sha256) over the old one. A reader that
read the manifest sees one consistent generation; a crash at any moment leaves the previous generation intact.
Replaced generations are removed after the commit; a commit that fails removes what it wrote, and what a killed
writer left behind is removed by the next writer. simsearch deletes only files that a manifest or the journal
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simsearch import __version__, processes, progress
from simsearch.errors import CollectionError, CollectionLocked, CollectionNotFound, option
from simsearch.models.encoder import Encoder
from simsearch.store.formats import (
    FIXED_NAMES,
    FORMAT,
    GENERATION_KEYS,
    JOURNAL,
    LOCK,
    MANIFEST,
    MARKER,
    SKIPPED_SCHEMA,
    STAGING,
    TRAINING_CHECKPOINT,
    embeddings_of,
    int64_column,
    manifest_problems,
    meta_schema,
    meta_table,
)

# The formats are re-exported: callers import them from here.
__all__ = [
    "SKIPPED_SCHEMA",
    "Collection",
    "CollectionSummary",
    "Removal",
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
    index: Any  # faiss index on the CPU

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

    def load(self, attempts: int = 50) -> Snapshot:
        """Load the current generation.

        A commit removes the previous generation's files right after switching the manifest. The files are
        opened straight after the manifest is read (an open file stays readable after it is removed), so a
        reader loses the race only when a whole commit lands in between; it then reads the new manifest and
        tries again, as long as commits keep coming.
        """
        for attempt in range(attempts):
            manifest = self.read_manifest()
            try:
                return self._load_generation(manifest)
            except FileNotFoundError as exc:
                if self.read_manifest().get("generation") == manifest.get("generation") or attempt + 1 == attempts:
                    raise CollectionError(
                        f"the manifest names '{Path(exc.filename or '?').name}', which is missing",
                        file=self.path,
                        remedy=REBUILD,
                    ) from None
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    def _load_generation(self, manifest: dict[str, Any]) -> Snapshot:
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
        if not np.array_equal(np.sort(vectors.index_ids(index)), np.sort(ids)) or len(np.unique(ids)) != len(ids):
            raise CollectionError("the ids of the vectors and of the metadata differ", file=self.path, remedy=REBUILD)
        _check_embeddings(meta, index, ids, str(manifest["metric"]), paths)
        return Snapshot(self.path, manifest, meta, skipped, index)

    def load_encoder(self, manifest: dict[str, Any] | None = None, device: str = "cpu") -> Encoder:
        manifest = manifest or self.read_manifest()
        encoder = Encoder.load(self.path / manifest["files"]["encoder"], device=device)
        if encoder.fingerprint != manifest["encoder"]["fingerprint"]:
            raise CollectionError(
                "its encoder folder does not match the manifest's fingerprint",
                file=self.path,
                remedy=f"rebuild with {option('rebuild', 'true')}",
            )
        return encoder

    def describe(self, snapshot: Snapshot) -> dict[str, Any]:
        """What ``info --json`` prints (and a service answers) for ``snapshot`` of this collection: the manifest,
        the collection's path, how many files were skipped, and the unfinished rebuild (or None)."""
        return {
            **snapshot.manifest,
            "path": str(self.path),
            "skipped": snapshot.skipped.num_rows,
            "rebuild": self.rebuild_summary(),
        }

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
            files = json.loads((self.path / name).read_text()).get("files")
        except (OSError, ValueError, AttributeError, RecursionError):
            return []
        return [f for f in files.values() if isinstance(f, str) and _plain(f)] if isinstance(files, dict) else []

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
            current.update(manifest["files"].values())
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
            self._remove_stale({})

    def _remove_stale(self, files: dict[str, str]) -> None:
        """Remove the files the journal names that no manifest needs (``files`` included), then the journal.
        What cannot be removed now (a read-only folder) stays named, for a later writer."""
        progress.emit(progress.REMOVING_STALE)
        current = self._current_files()
        if current is not None:  # else a manifest that cannot be read: no file can be known to be stale
            current.update(files.values())
            left = [name for name in self._journal_names() if name not in current and not _remove(self.path / name)]
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
        for entry in os.scandir(self.path):
            match = GENERATION_NAME.match(entry.name)
            if match:
                numbers.append(int(match.group(1)))
        return max(numbers, default=0) + 1

    # --- commits ------------------------------------------------------------------------------------------------

    def commit(
        self,
        meta: pa.Table,
        skipped: pa.Table,
        index: Any,
        encoder: Encoder,
        previous: dict[str, Any] | None,
        roots: list[str],
        index_info: dict[str, Any] | None = None,
        write_encoder: bool = False,
    ) -> dict[str, Any]:
        """Write a new generation and switch the manifest to it. Call inside ``lock()``.

        ``previous`` is the manifest this one follows (its ids, creation date and encoder folder carry over).
        ``encoder`` is written into the collection when it is new (no ``previous`` manifest, or a different
        fingerprint), or when ``write_encoder`` says so (a rebuild: the old copy may be what was damaged).
        Returns the new manifest.
        """
        from simsearch import vectors

        if index.ntotal != meta.num_rows:
            raise AssertionError(f"index has {index.ntotal} vectors, metadata {meta.num_rows} rows")
        generation = self._next_generation(previous)
        gen = f"{generation:06d}"
        files = {
            "vectors": f"vectors-{gen}.faiss",
            "meta": f"meta-{gen}.parquet",
            "skipped": f"skipped-{gen}.parquet",
            "encoder": previous["files"]["encoder"] if previous else "encoder",
        }
        fingerprint = encoder.fingerprint
        new_encoder = write_encoder or previous is None or previous["encoder"]["fingerprint"] != fingerprint
        if new_encoder:
            files["encoder"] = "encoder" if generation == 1 else f"encoder-{gen}"
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        ids = int64_column(meta, "id")
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "count": meta.num_rows,
            "dim": encoder.dim,
            "metric": encoder.metric,
            "encoder": {"fingerprint": fingerprint, "family": encoder.family},
            "index": index_info or {"type": "flat", "exact": True, "factory": "IDMap2,Flat"},
            "next_id": max(int(ids.max()) + 1 if len(ids) else 0, int(previous.get("next_id", 0)) if previous else 0),
            "roots": roots,
            "created": previous.get("created", now) if previous else now,
            "updated": now,
            "simsearch_version": __version__,
            "files": files,
        }
        written = [files[key] for key in GENERATION_KEYS] + (
            [files["encoder"], _temporary(files["encoder"])] if new_encoder else []
        )
        written += [_temporary(files[key]) for key in GENERATION_KEYS] + [_temporary(self.manifest_name)]
        replaced = list((self._peek(self.manifest_name) or {}).get("files", {}).values())
        writing = JOURNAL
        try:
            journal_before = self._begin(written + replaced)
            writing = files["encoder"] if new_encoder else files["meta"]
            if new_encoder:
                self._write_dir(files["encoder"], encoder.write_into)
            checksums = {}
            for key, write in (
                ("meta", lambda p: _write_parquet(meta, p)),
                ("skipped", lambda p: _write_parquet(skipped, p)),
                ("vectors", lambda p: vectors.write_file(index, p)),
            ):
                writing = files[key]
                checksums[key] = self._write_file(writing, write)
            manifest["sha256"] = checksums
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
            self._remove_stale(files)
            return manifest
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
        self._remove_stale(staged["files"])
        return staged

    def discard_staging(self) -> None:
        """Drop an unfinished rebuild (its manifest first, then its files). Call inside ``lock()``."""
        self._begin(self._named_by(STAGING))
        (self.path / STAGING).unlink(missing_ok=True)
        _fsync_dir(self.path)
        self._remove_stale({})

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


#: What ``simsearch map`` writes into a collection's folder (``latent.map.MAP_FOLDER``).
MAP_FOLDER = "map"


#: A generation's number in one of its file names (``meta-000003.parquet``, ``encoder-000003``).
GENERATION_NAME = re.compile(r"^\.?(?:vectors|meta|skipped|encoder)-(\d+)(?:\.faiss|\.parquet)?(?:\.tmp)?$")


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


def _check_embeddings(meta: pa.Table, index: Any, ids: np.ndarray, metric: str, paths: dict[str, Path]) -> None:
    """Every stored embedding is finite, and equals the vector FAISS holds under its id wherever FAISS holds
    the vector itself (flat, HNSW and IVF-Flat indexes; PQ codes are approximations)."""
    from simsearch import vectors

    embeddings = embeddings_of(meta)
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise CollectionError(
            f"row {row} (id {ids[row]}, {meta.column('path')[row].as_py()!r}) holds a NaN or "
            f"infinite embedding ({int((~finite).sum())} rows in all)",
            file=paths["meta"],
            remedy=REBUILD,
        )
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


#: Rows per Parquet row group: the writer holds one encoded row group in memory, so this bounds what a commit
#: adds to the peak (pyarrow's default, a million rows, would buffer the whole table of most collections).
ROW_GROUP_ROWS = 16_384


def _write_parquet(table: pa.Table, path: Path) -> None:
    # The file is opened here, not by pyarrow: when a write fails (a full disk), it is closed all the same.
    with pa.OSFile(str(path), "wb") as sink:
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
