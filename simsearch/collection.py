"""A collection folder: manifest, generation files, Parquet metadata, FAISS vectors, atomic commit, writer lock.

Layout of ``indexes/<name>/``::

    manifest.json             names the current generation's files; replaced atomically on commit
    encoder/                  the model folder used (weights.safetensors + encoder.json)
    vectors-<gen>.faiss       CPU FAISS index (IndexIDMap2); ids equal the metadata ``id`` column
    meta-<gen>.parquet        one row per image, with its embedding
    skipped-<gen>.parquet     files that could not be indexed, with the reason
    .lock                     held by the one process allowed to write

A commit writes the new generation's files, fsyncs them, then renames a new ``manifest.json`` (which records
each file's sha256) over the old one. A reader that read the manifest sees one consistent generation; a crash
at any moment leaves the previous generation intact. Older generations are removed after the commit; a commit
that fails removes what it wrote, and what a killed writer left behind is removed by the next ``index``.
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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simsearch import __version__
from simsearch.encoder import Encoder
from simsearch.errors import CollectionError, CollectionLocked, CollectionNotFound
from simsearch.formats import (
    FORMAT,
    GENERATION_KEYS,
    LOCK,
    MANIFEST,
    SKIPPED_SCHEMA,
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
    "Snapshot",
    "embeddings_of",
    "int64_column",
    "meta_schema",
    "meta_table",
    "resolve_path",
]

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is a few kilobytes; anything this large is not one
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
GENERATION_FILE = re.compile(r"^(vectors|meta|skipped)-(\d+)\.(faiss|parquet)$")
REBUILD = "rebuild with 'simsearch index IMAGES --rebuild'"  # the remedy for a damaged collection


def resolve_path(name: str, home: Path) -> Path:
    """A collection name (``faces``) lives under ``home``; anything with a slash is a path of its own."""
    if "/" in name or os.sep in name:
        return Path(name)
    if not NAME_PATTERN.match(name):
        raise CollectionError(
            f"'{name}' is not a valid collection name — use letters, digits, '.', '_' and '-', or a path"
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
    """An index folder. Reading needs no lock; writing happens inside ``with collection.lock():``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise CollectionNotFound(
                f"no collection at '{self.path}' — build it first with 'simsearch index IMAGES"
                + (f" --name {self.path.name}'" if self.path.name != "default" else "'")
            )
        try:
            if self.manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ValueError(f"over {MAX_MANIFEST_BYTES:,} bytes")
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON; deep nesting
            raise CollectionError(
                f"{self.manifest_path}: unreadable ({type(exc).__name__}: {str(exc)[:200]}) — {REBUILD}"
            ) from None
        problems = manifest_problems(manifest)
        if problems:
            raise CollectionError(f"{self.manifest_path}: {problems} — {REBUILD}")
        return manifest

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
                        f"{self.path}: the manifest names '{Path(exc.filename or '?').name}', which is missing — "
                        f"{REBUILD}"
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
            raise CollectionError(f"{self.path}: a generation file is unreadable ({exc}) — {REBUILD}") from None
        checksums = manifest.get("sha256") or {}  # absent from manifests written before checksums were kept
        for key in GENERATION_KEYS:
            if key in checksums and hashlib.sha256(data[key]).hexdigest() != checksums[key]:
                raise CollectionError(
                    f"{paths[key]}: its sha256 does not match {MANIFEST} — the file was changed or damaged; {REBUILD}"
                )
        dim = int(manifest["dim"])
        try:
            # ParquetFile rather than read_table: read_table imports pyarrow.dataset (and pandas with it).
            meta = pq.ParquetFile(pa.BufferReader(data["meta"])).read()
            skipped = pq.ParquetFile(pa.BufferReader(data["skipped"])).read()
        except (OSError, pa.ArrowException) as exc:
            raise CollectionError(f"{self.path}: a generation file is unreadable ({exc}) — {REBUILD}") from None
        for key, table, schema in (("meta", meta, meta_schema(dim)), ("skipped", skipped, SKIPPED_SCHEMA)):
            if not table.schema.equals(schema):
                raise CollectionError(f"{paths[key]}: its columns are not those of a simsearch collection — {REBUILD}")
        try:
            index = vectors.deserialize(data["vectors"])
        except (RuntimeError, MemoryError):
            raise CollectionError(f"{paths['vectors']}: not a valid FAISS index (damaged?) — {REBUILD}") from None
        problem = vectors.index_problem(index, dim, str(manifest["metric"]))
        if problem:
            raise CollectionError(f"{paths['vectors']}: {problem} — {REBUILD}")
        if not index.ntotal == meta.num_rows == manifest["count"]:
            raise CollectionError(
                f"{self.path}: the vectors ({index.ntotal}), the metadata ({meta.num_rows} rows) and the manifest "
                f"(count {manifest['count']}) disagree — {REBUILD}"
            )
        ids = int64_column(meta, "id")
        if not np.array_equal(np.sort(vectors.index_ids(index)), np.sort(ids)) or len(np.unique(ids)) != len(ids):
            raise CollectionError(f"{self.path}: the ids of the vectors and of the metadata differ — {REBUILD}")
        return Snapshot(self.path, manifest, meta, skipped, index)

    def load_encoder(self, manifest: dict[str, Any] | None = None, device: str = "cpu") -> Encoder:
        manifest = manifest or self.read_manifest()
        encoder = Encoder.load(self.path / manifest["files"]["encoder"], device=device)
        if encoder.fingerprint != manifest["encoder"]["fingerprint"]:
            raise CollectionError(
                f"{self.path}: its encoder folder does not match the manifest's fingerprint — rebuild with --rebuild"
            )
        return encoder

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the writer lock. Without ``wait``, a held lock raises ``CollectionLocked`` at once."""
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle: IO[bytes] = open(self.path / LOCK, "ab")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            if not (self.path / LOCK).is_file():
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise CollectionError(
                    f"{self.path}: cannot write to the collection folder ({reason}) — make it writable, "
                    "or choose another --home or --name"
                ) from None
            # A read-only folder: a read-only descriptor still takes the lock, and a run with nothing to
            # commit succeeds; a commit fails with its own clear error.
            handle = open(self.path / LOCK, "rb")  # noqa: SIM115
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise CollectionLocked(
                    f"another simsearch process is writing to '{self.path}' — wait for it to finish, "
                    "or pass --wait to queue behind it"
                ) from None
            yield
        finally:
            handle.close()
            if created and not self.exists():
                shutil.rmtree(self.path, ignore_errors=True)

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

        ``encoder`` is written into the collection when it is new (no ``previous`` manifest, or a different
        fingerprint), or when ``write_encoder`` says so (a rebuild: the old copy may be what was damaged).
        Returns the new manifest.
        """
        from simsearch import vectors

        if index.ntotal != meta.num_rows:
            raise AssertionError(f"index has {index.ntotal} vectors, metadata {meta.num_rows} rows")
        generation = int(previous["generation"]) + 1 if previous else 1
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
            files["encoder"] = "encoder" if previous is None else f"encoder-{gen}"
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
        writing = files["encoder"] if new_encoder else files["meta"]
        try:
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
            writing = MANIFEST
            self._write_file(MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))
        except OSError as exc:
            # Raised below, outside this block: the OSError's frames (and the half-written file a library may
            # still hold open in them) must not live on in the new error's context.
            failure = (
                os.strerror(exc.errno) if exc.errno else str(exc),
                self._discard_unless_current(generation, files, new_encoder),
            )
        except BaseException:
            self._discard_unless_current(generation, files, new_encoder)
            raise
        else:
            self._remove_stale(files)
            return manifest
        reason, switched = failure
        if switched:
            raise CollectionError(
                f"{self.path}: generation {generation} was committed, but then {reason} ({writing}) — "
                "check the disk before trusting this collection"
            )
        kept = f"generation {previous['generation']}, {previous['count']} images" if previous else "still empty"
        raise CollectionError(
            f"{self.path}: could not write {writing} ({reason}) — the collection is as it was ({kept}); "
            "free some space or make the folder writable, then run the same command again"
        )

    def _discard_unless_current(self, generation: int, files: dict[str, str], new_encoder: bool) -> bool:
        """After a failed commit: remove the files it wrote, unless the manifest already names them (the
        failure came after the switch). Returns whether the switch happened."""
        try:
            current = json.loads(self.manifest_path.read_text()).get("generation") if self.exists() else None
        except (OSError, ValueError, AttributeError):
            current = None
        if current == generation:
            return True
        for key in GENERATION_KEYS:
            with contextlib.suppress(OSError):
                (self.path / files[key]).unlink(missing_ok=True)
        if new_encoder:
            shutil.rmtree(self.path / files["encoder"], ignore_errors=True)
        return False

    def _write_file(self, name: str, write: Any) -> str:
        """Write to a temporary name, fsync, rename into place, fsync the folder. Returns the file's sha256."""
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
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
        return digest.hexdigest()

    def _write_dir(self, name: str, write: Any) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.path))
        try:
            write(tmp)
            _fsync_dir(tmp)
            if (self.path / name).exists():
                shutil.rmtree(self.path / name)
            tmp.rename(self.path / name)
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_leftovers(self, snapshot: Snapshot) -> None:
        """Remove what an interrupted writer left behind: temporary files, and the previous generation when it
        died between the manifest swap and the clean-up. Call inside ``lock()``, with the snapshot just
        loaded and after its encoder loaded: only a generation that loaded whole is known to be the one to keep."""
        self._remove_stale(snapshot.manifest["files"])

    def _remove_stale(self, files: dict[str, str]) -> None:
        """Remove older generations' files, superseded encoder folders, and leftovers of crashed writes."""
        keep = set(files.values()) | {MANIFEST, LOCK}
        for entry in self.path.iterdir():
            name = entry.name
            if name in keep:
                continue
            stale = (
                GENERATION_FILE.match(name)
                or (name.startswith("encoder") and entry.is_dir())
                or (name.startswith(".") and name.endswith(".tmp"))
            )
            if stale:  # what cannot be removed now (a read-only folder) is removed by a later commit
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink(missing_ok=True)


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
