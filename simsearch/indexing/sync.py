"""Sync a collection with an image folder: embed what is new or changed, drop what is gone, commit.

Files are compared by content hash: an unchanged file is read and hashed but never decoded or embedded.
Work is committed in checkpoints, so an interrupted run loses at most one checkpoint and the next run
resumes where it stopped (the committed files now hash as unchanged). Each checkpoint adds a segment
(``store.segments``); segments are merged on a thread while the run goes on, and the last commit installs a
merge still running. A changed file gets a new id.

A run plans the diff first (``plan.plan_sync``: data, checked before anything is trained or written), has an
``Embedder`` (``simsearch.engines``; by default the local one) decode and embed the files, applies its
results batch by batch in path order, and commits checkpoints; at the end it re-types the index when needed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simsearch import vectors
from simsearch.engines import Embedder, Result, Row, Skip
from simsearch.engines.local import LocalEngine
from simsearch.errors import CollectionError, DataError, ModelError, UsageError, option
from simsearch.indexing.baselines import BaselineCheck, compare_with_baselines
from simsearch.indexing.plan import Plan, ToLoad, plan_sync
from simsearch.io import ChannelTally, ImageFileEntry, Skipped, channel_rule, check_rule, find_images
from simsearch.io.channels import REFUSED
from simsearch.models.encoder import TRAINED_FOLDER, Encoder, is_model_folder, resolve_device
from simsearch.progress import EMBEDDED, Progress, emit, no_progress
from simsearch.store.collection import (
    SKIPPED_SCHEMA,
    Collection,
    Merge,
    SegmentSet,
    Snapshot,
    embeddings_of,
    int64_column,
    meta_schema,
    meta_table,
)
from simsearch.store.segments import MERGE_FACTOR, live_rows
from simsearch.training import TRAINABLE, TrainConfig, TrainingCheckpoint, train_encoder

#: Why a file whose embedding came back NaN or infinite is skipped.
NAN_EMBEDDING = "the encoder gave a NaN or infinite embedding"
#: The remedy for a file that ``strict`` refuses.
STRICT = f"fix or remove it, or drop {option('strict')}"
#: The remedy for an image that ``strict`` refuses for its colour (``channels`` strict).
REFUSED_STRICT = f"pass {option('channels', 'convert')} to convert such images, or drop {option('strict')} to skip them"


@dataclass(frozen=True)
class IndexConfig:
    """Options of ``simsearch index``. ``model``: a model folder, a family to train (``autoencoder``,
    ``pca``, ``pixels``), or None (the collection's own encoder, or a new autoencoder)."""

    model: str | None = None
    rebuild: bool = False
    strict: bool = False
    wait: bool = False
    workers: int = 0
    batch_size: int = 256
    checkpoint_every: int = 10_000
    device: str = "auto"
    index_type: str = "auto"  # auto, flat, ivf, ivfpq, hnsw or cagra (see vectors.plan)
    allow_empty: bool = False  # a folder with no images removes its images from the collection
    #: The channel rule (``io.channels``) for images indexed with an existing encoder (the collection's, or a model
    #: folder's): ``convert`` or ``strict``. An encoder trained or fitted on this folder took its channels from it.
    channels: str = "convert"
    #: Training a new encoder saves its state at the end of an epoch at most this often (seconds; 0: every epoch),
    #: in the collection's ``training.ckpt``: an interrupted run resumes its training (``training.checkpoint``).
    checkpoint_seconds: float = 30.0
    #: Segments of one size tier merged into one, on a thread while the run goes on (``store.segments``); 0:
    #: never during a run (``simsearch compact`` merges on demand).
    merge_factor: int = MERGE_FACTOR

    def __post_init__(self) -> None:
        check_rule(self.channels)
        if self.merge_factor == 1 or self.merge_factor < 0:
            raise UsageError(f"{option('merge_factor')} must be 0 (never merge during a run) or at least 2")
        if self.index_type not in ("auto", *vectors.INDEX_TYPES):
            raise UsageError(
                f"{option('index_type')} must be auto, {', '.join(vectors.INDEX_TYPES)}; not {self.index_type!r}"
            )
        if self.index_type == "cagra" and not vectors.cagra_available():
            raise UsageError(
                f"{option('index_type', 'cagra')} needs a GPU and a FAISS build with cuVS (faiss-gpu-cuvs)",
                remedy=f"use {option('index_type', 'hnsw')} on this machine",
            )

    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class IndexReport:
    """What one ``index`` run did."""

    collection: Path
    root: str
    found: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    count: int = 0
    generation: int = 0
    committed: bool = False
    trained: bool = False
    encoder_family: str = ""
    encoder_fingerprint: str = ""
    encoder_dim: int = 0
    input_shape: tuple[int, int, int] = (0, 0, 0)
    device: str = "cpu"
    seconds: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    rebuilding: bool = False  # built beside the live collection, swapped in when complete
    resumed: bool = False  # an unfinished rebuild was resumed
    discarded_rebuild: bool = False  # an unfinished rebuild with another encoder was dropped
    rebuild_waiting: bool = False  # an unfinished rebuild waits beside the collection (left alone)
    moved_from: str | None = None  # a folder indexed from a path that is gone, found here
    moved: int = 0  # how many of its images were found here
    #: What the channel rule did to this run's images (None when the encoder was trained on them now).
    channels: ChannelTally | None = None
    #: An encoder trained now on a labelled folder: its held-out vote accuracy beside PCA's and pixels' (or why not).
    baselines: BaselineCheck | None = None

    @property
    def embedded(self) -> int:
        return self.added + self.updated


def choose_encoder(
    collection: Collection,
    previous: dict[str, Any] | None,
    entries: list[ImageFileEntry],
    config: IndexConfig,
    progress: Progress,
    checkpoint: TrainingCheckpoint | None = None,
) -> tuple[Encoder, bool]:
    """The encoder this run uses, and whether it was trained now (resuming from ``checkpoint`` what an
    interrupted run of the same training saved there)."""
    model = config.model
    if previous is not None:
        current = collection.load_encoder(previous)
        if model is None or model == current.family:
            return current, False
        candidate = load_model_arg(model)
        if candidate is None or candidate.fingerprint != current.fingerprint:
            raise CollectionError(
                f"collection '{collection.path}' was built with the {current.family} encoder "
                f"{current.fingerprint[:12]} (d={current.dim}); {option('model', model)} is a different encoder",
                remedy=f"pass {option('rebuild', 'true')} to re-index everything with it, or choose another "
                f"{option('name')}",
            )
        return current, False
    model = model or "autoencoder"
    loaded = load_model_arg(model)
    if loaded is not None:
        return loaded, False
    if not entries:
        raise DataError("no images found to train an encoder on", remedy=f"check the folder, or pass {option('model')}")
    return train_encoder(entries, replace(config.train, family=model), progress, checkpoint), True


def load_model_arg(model: str) -> Encoder | None:
    """A model folder's encoder, or None when ``model`` names a family to train."""
    if model in TRAINABLE:
        return None
    path = Path(model)
    if not path.exists():
        raise ModelError(f"no model folder at '{model}'", remedy=f"{TRAINED_FOLDER}, or one of: {', '.join(TRAINABLE)}")
    if not is_model_folder(path):
        raise ModelError(f"'{model}' holds no encoder.json", remedy=TRAINED_FOLDER)
    return Encoder.load(path)


class _Pending:
    """Changes not yet committed: ids to remove, and new rows with their embeddings."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.clear()

    def clear(self) -> None:
        self.remove: list[int] = []
        self.rows: dict[str, list[Any]] = {
            k: [] for k in ("id", "path", "root", "label", "sha256", "bytes", "mtime", "width", "height")
        }
        self.embeddings: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.rows["id"]) + len(self.remove)

    def add(self, row_id: int, entry: ImageFileEntry, root: str, row: Row) -> None:
        for key, value in (
            ("id", row_id),
            ("path", entry.rel),
            ("root", root),
            ("label", entry.label),
            ("sha256", row.sha256),
            ("bytes", row.bytes),
            ("mtime", entry.mtime),
            ("width", row.width),
            ("height", row.height),
        ):
            self.rows[key].append(value)
        self.embeddings.append(row.embedding[None])

    def apply(
        self, meta: pa.Table, index: Any, metric: str, spec: vectors.IndexSpec
    ) -> tuple[pa.Table, Any, pa.Table, list[int]]:
        """Apply to ``index`` (in place, or rebuilt from the embeddings when its type cannot remove vectors; None,
        a flat collection's, stays None) and return the new metadata table and index, with the rows added (a
        table) and the ids removed; then empty self."""
        rebuild = False
        added, removed = meta.schema.empty_table(), list(self.remove)
        if self.remove:
            gone = np.asarray(self.remove, dtype=np.int64)
            if index is None:
                pass
            elif vectors.supports_removal(index):
                vectors.remove_ids(index, gone)
            else:
                rebuild = True
            meta = live_rows(meta, gone)
        if self.rows["id"]:
            emb = np.concatenate(self.embeddings)
            if index is not None and not rebuild:
                vectors.add_vectors(index, emb, np.asarray(self.rows["id"], dtype=np.int64), metric)
            added = meta_table(self.rows, emb, self.dim)
            meta = pa.concat_tables([meta, added])
        if rebuild:
            index = vectors.build_index(spec, embeddings_of(meta), int64_column(meta, "id"), metric)
        self.clear()
        return meta, index, added, removed


def index_folder(
    root: Path,
    collection: Collection,
    config: IndexConfig = IndexConfig(),
    progress: Progress = no_progress,
    engine: Embedder | None = None,
    training_saved: Callable[[str], None] | None = None,
) -> IndexReport:
    """Bring ``collection`` in line with the images under ``root`` (see the module docstring).

    An encoder trained here saves its training state in the collection's ``training.ckpt`` as it goes (every
    ``config.checkpoint_seconds``), and ``training_saved`` is told what it keeps after each save; a run that
    finds the state of the same training there resumes from it, and the file is removed once the encoder is
    committed.

    ``engine`` decodes and embeds the files that are new or changed (default: ``LocalEngine`` with
    ``config.workers`` and ``config.batch_size``); the collection it makes does not depend on which.
    With ``config.rebuild`` on an existing collection, the new collection is built beside the live one (its
    ``staging()``), committed there checkpoint by checkpoint, and swapped in only when complete: readers see
    the whole old collection until then, and the same command resumes an interrupted rebuild."""
    started = time.monotonic()
    root = Path(root).resolve()
    entries, skipped = find_images(root)
    if config.strict and skipped:
        raise DataError(skipped[0].reason, file=root / skipped[0].rel, remedy=STRICT)
    report = IndexReport(collection.path, str(root), found=len(entries))
    with collection.lock(wait=config.wait):
        run = _Run(root, collection, config, report, progress, skipped, training_saved)
        plan = run.open(entries)
        # The channel rule applies to images fitted to an existing encoder; one trained here chose its channels
        # from these very images (colour when any has colour), so its grey images are its training data.
        try:
            with channel_rule("convert" if report.trained else config.channels) as tally:
                run.embed(plan, engine or LocalEngine(config.workers, config.batch_size))
            report.channels = None if report.trained else tally
            run.finish()
        finally:
            run.close()
    if report.trained:  # after the commit, outside the lock: the collection is whole, readers and writers go on
        report.baselines = compare_with_baselines(
            run.encoder,
            entries,
            {s.rel for s in skipped if s.reason != NAN_EMBEDDING},
            run.embedded_by_path(),
            config.train,
            progress,
            config.workers,
        )
    report.skipped = sorted(skipped, key=lambda s: s.rel)
    report.seconds = time.monotonic() - started
    return report


class _Run:
    """One ``index`` run inside the writer lock: where it commits (the collection, or its unfinished rebuild),
    the state the next commit builds on (metadata, index, skipped files, roots, the manifest it follows), and
    the changes not yet committed. ``open`` plans, ``embed`` applies what the engine gives back and commits
    checkpoints, ``finish`` re-types the index if need be and commits the rest."""

    def __init__(
        self,
        root: Path,
        collection: Collection,
        config: IndexConfig,
        report: IndexReport,
        progress: Progress,
        skipped: list[Skipped],
        training_saved: Callable[[str], None] | None = None,
    ) -> None:
        self.root, self.root_key = root, str(root)
        self.training_saved = training_saved
        self.training: TrainingCheckpoint | None = None  # the state of an encoder trained now, until committed
        self.collection, self.config, self.report, self.progress = collection, config, report, progress
        self.skipped = skipped  # this root's unusable files: found by the scan, then while decoding
        self.target = collection  # where commits go: the collection, or the rebuild beside it
        self.base: dict[str, Any] | None = None  # the manifest the next commit follows
        self.write_encoder = False
        self.moved_from: str | None = None
        self.roots: list[str] = []
        self.next_id = 0
        self.since_commit = 0  # rows embedded since the last commit
        #: The segments the next commit follows (None: it writes every row as one segment — a new collection,
        #: one of format 1, or rows whose root changed).
        self.segments: SegmentSet | None = None
        self.merge: Merge | None = None  # merging on its thread, installed by a later commit

    # --- where to commit, with which encoder, and the plan -----------------------------------------------------

    def open(self, entries: list[ImageFileEntry]) -> Plan:
        collection, config, report = self.collection, self.config, self.report
        staging = collection.staging()
        previous: Snapshot | None = None
        if config.rebuild and (collection.exists() or staging.exists()):
            self.target = staging
            previous = self._resumable_rebuild(staging)
            report.rebuilding, report.resumed = True, previous is not None
            # A fresh rebuild follows the live manifest only for its ids and dates (a damaged one: not at all).
            self.base = previous.manifest if previous else _manifest_to_replace(collection)
            self.write_encoder = previous is None
        elif not config.rebuild and collection.exists():
            previous = collection.load()
            self.base = previous.manifest
            report.rebuild_waiting = staging.exists()
        if previous is not None:
            # A flat collection's writer keeps no FAISS copy of the embeddings (nothing writes one, and
            # a re-typed index is built from the embeddings): an approximate one is kept up to date.
            self.meta, self.index, self.skipped_table = previous.meta, previous.stored_index, previous.skipped
            self.roots = list(previous.manifest.get("roots", []))
            self.segments = previous.segments
        plan = plan_sync(
            self.root_key,
            entries,
            previous.meta if previous else None,
            self.roots,
            int(self.base.get("next_id", 0)) if self.base else 0,
            allow_empty=config.allow_empty,
            index_type=config.index_type,
        )
        if plan.moved_from is not None:
            self._take_over(plan.moved_from, plan.moved)
        self.training = TrainingCheckpoint(
            self.collection.training_checkpoint(), config.checkpoint_seconds, on_save=self.training_saved
        )
        encoder, trained = choose_encoder(
            self.target, previous.manifest if previous else None, entries, config, self.progress, self.training
        )
        if not trained:
            self.training = None
        device = resolve_device(config.device)
        encoder.to(device)
        self.encoder = encoder
        report.trained, report.device = trained, device.type
        report.encoder_family, report.encoder_fingerprint = encoder.family, encoder.fingerprint
        report.encoder_dim = encoder.dim
        report.input_shape = (encoder.preprocess.channels, *encoder.preprocess.size)
        report.training = encoder.training if trained else {}
        info: dict[str, Any] = dict(previous.manifest.get("index") or {}) if previous else {}
        if previous is None:
            self.meta = meta_schema(encoder.dim).empty_table()
            self.index, self.skipped_table = None, SKIPPED_SCHEMA.empty_table()
        self.spec = vectors.IndexSpec.from_json(info) if info.get("type") else vectors.IndexSpec("flat")
        if self.spec.type == "flat":
            self.index = None  # a format-1 collection's flat index file, read: not kept either
        self.info: dict[str, Any] | None = info or None
        self.pending = _Pending(encoder.dim)
        #: Rows added and ids removed that are applied to ``meta`` and the index but not yet committed.
        self.unwritten: tuple[pa.Table, list[int]] = (meta_schema(encoder.dim).empty_table(), [])
        if trained and not config.strict and (self.base is None or self.target is not collection):
            self.commit()  # keep the trained encoder even if indexing is interrupted
        return plan

    def _resumable_rebuild(self, staging: Collection) -> Snapshot | None:
        """The unfinished rebuild to resume, or None after dropping one that cannot be resumed (damaged, or
        made with another encoder than the one asked for now)."""
        if not staging.exists():
            return None
        try:
            snapshot = staging.load()
            encoder = staging.load_encoder(snapshot.manifest)
            model = self.config.model
            if model is None or model == encoder.family:
                return snapshot
            candidate = load_model_arg(model)
            if candidate is not None and candidate.fingerprint == encoder.fingerprint:
                return snapshot
        except (CollectionError, ModelError):
            pass
        self.collection.discard_staging()
        self.report.discarded_rebuild = True
        return None

    def _take_over(self, moved: str, found: int) -> None:
        """The folder indexed from ``moved`` (a path that is gone) is this root now: its rows move here, with
        their ids, so that its unchanged images are not embedded again; its skipped list is dropped."""
        column = self.meta.column("root")
        self.meta = self.meta.set_column(
            self.meta.schema.get_field_index("root"),
            self.meta.schema.field("root"),
            pc.if_else(pc.equal(column, moved), pa.scalar(self.root_key), column),
        )
        self.skipped_table = self.skipped_table.filter(pc.not_equal(self.skipped_table.column("root"), moved))
        self.roots = [r for r in self.roots if r != moved]
        self.moved_from = moved
        self.segments = None  # the rows' root changed: the next commit writes them all again
        self.report.moved_from, self.report.moved = moved, found

    # --- embedding, and applying what comes back ----------------------------------------------------------------

    def embed(self, plan: Plan, engine: Embedder) -> None:
        """Have ``engine`` embed the plan's files, apply each batch as it comes, and commit every
        ``checkpoint_every`` embedded images."""
        config, report = self.config, self.report
        self.roots = sorted({*self.roots, self.root_key})
        self.next_id = plan.next_id
        self.pending.remove.extend(plan.remove)
        report.removed = len(plan.remove)
        total, done = len(plan.load), 0
        with contextlib.closing(engine.embed(self.encoder, plan.jobs(config.batch_size), total)) as batches:
            for batch in batches:
                files = plan.load[done : done + len(batch.job.paths)]
                if len(batch.results) != len(files) or [t.entry.rel for t in files] != list(batch.job.names):
                    raise AssertionError(f"{engine!r} did not give one result per file of the next job, in order")
                if batch.rows:
                    emit(EMBEDDED, str(batch.rows))
                self._apply(files, batch.results)
                done += len(files)
                self.progress("embedding", done, total, f"{report.embedded} new or changed")
                if self.since_commit >= config.checkpoint_every and not config.strict:
                    self.commit()
        if done != total:
            raise AssertionError(f"{engine!r} stopped after {done} of {total} files")

    def _apply(self, files: Sequence[ToLoad], results: Sequence[Result]) -> None:
        """Add one batch's results to the pending changes: unreadable files first (in path order), then the
        embedded ones (a NaN or infinite embedding skips its file)."""
        report, pending = self.report, self.pending
        rows: list[tuple[ToLoad, Row]] = []
        for file, result in zip(files, results, strict=True):
            if result is None:
                report.unchanged += 1
            elif isinstance(result, Skip):
                self._skip(file, result.reason)
            else:
                rows.append((file, result))
        for file, row in rows:
            if row.embedding.shape != (self.pending.dim,) or row.embedding.dtype != np.float32:
                raise AssertionError(
                    f"an engine gave {file.entry.rel} a {row.embedding.dtype} {row.embedding.shape} embedding"
                )
            if not np.isfinite(row.embedding).all():
                self._skip(file, NAN_EMBEDDING)
                continue
            # A changed file gets a new id, as a new one does: an id names one embedding for good (an index
            # file written before the change still holds the old one under the old id).
            row_id = self.next_id
            self.next_id += 1
            if file.row_id is not None:
                pending.remove.append(file.row_id)
                report.updated += 1
            else:
                report.added += 1
            pending.add(row_id, file.entry, self.root_key, row)
            self.since_commit += 1

    def _skip(self, file: ToLoad, reason: str) -> None:
        refused = next((what for what in REFUSED.values() if reason.startswith(what)), None)
        if refused is not None:
            # The skipped list keeps what is wrong, in neutral words; the run's tally says how many were refused,
            # with the remedy, which names an option (each front end spells it).
            reason = refused
        if self.config.strict:
            raise DataError(
                reason, file=self.root / file.entry.rel, remedy=STRICT if refused is None else REFUSED_STRICT
            )
        self.skipped.append(Skipped(file.entry.rel, reason))
        if file.row_id is not None:
            self.pending.remove.append(file.row_id)
            self.report.removed += 1

    def embedded_by_path(self) -> dict[str, np.ndarray]:
        """The committed embedding of each image of this run's root, by its relative path (views of the table's
        chunks: no copy of the embeddings)."""
        found: dict[str, np.ndarray] = {}
        for batch in self.meta.select(["path", "root", "embedding"]).to_batches():
            z = embeddings_of(pa.Table.from_batches([batch]))
            paths, roots = batch.column("path").to_pylist(), batch.column("root").to_pylist()
            found.update(
                (path, z[n]) for n, (path, root) in enumerate(zip(paths, roots, strict=True)) if root == self.root_key
            )
        return found

    # --- the end: the index type, the last commit, the rebuild swapped in ----------------------------------------

    def finish(self) -> None:
        """Re-type the index when the type asked for (or the size, under ``auto``) calls for it, commit what is
        left when anything changed, and swap an unfinished rebuild in."""
        config, report, pending, root_key = self.config, self.report, self.pending, self.root_key
        old_skipped = set(
            self.skipped_table.filter(pc.equal(self.skipped_table.column("root"), root_key)).column("path").to_pylist()
        )
        count = self.meta.num_rows + len(pending.rows["id"]) - len(pending.remove)
        try:
            wanted = vectors.plan(
                config.index_type, count, self.encoder.dim, self.spec, (self.info or {}).get("trained_on")
            )
        except UsageError as exc:  # too few vectors for the type asked for: keep what was embedded, then say so
            if self.target is self.collection and (len(pending) or self.base is None or self.moved_from):
                self.commit()
                raise UsageError(
                    exc.what, remedy=f"{exc.remedy} (the new embeddings were committed; the index is as it was)"
                ) from None
            raise
        changed = len(pending) or self.base is None or self.moved_from or wanted is not None or self.merge
        if changed or self.target is not self.collection or old_skipped != {s.rel for s in self.skipped}:
            self.commit(wanted, final=True)
        final = self.base
        if self.target is not self.collection:
            final = self.collection.adopt_staging()
        assert final is not None
        report.count = int(final["count"])
        report.generation = int(final["generation"])

    # --- commits ------------------------------------------------------------------------------------------------

    def commit(self, wanted: vectors.IndexSpec | None = None, final: bool = False) -> None:
        """Apply the pending changes and commit a generation (with the index ``wanted`` built first). A merge
        that finished meanwhile is installed with it (the last commit of a run waits for one still running);
        then the next merge the tier policy calls for starts, unless this is the last commit."""
        encoder, root_key = self.encoder, self.root_key
        self.meta, self.index, added, removed = self.pending.apply(self.meta, self.index, encoder.metric, self.spec)
        self.unwritten = (pa.concat_tables([self.unwritten[0], added]), self.unwritten[1] + removed)
        self.since_commit = 0
        if wanted is not None:
            self.progress("building the index", 0, 1, wanted.type)
            x, ids = embeddings_of(self.meta), int64_column(self.meta, "id")
            try:
                self.index, self.spec, self.info = vectors.build_tuned(wanted, x, ids, encoder.metric)
            except RuntimeError as exc:  # FAISS refused the build: keep the embeddings, say why in one line
                self.commit()
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise CollectionError(
                    f"FAISS could not build the {wanted.type} index ({first})",
                    remedy=f"the embeddings were committed; run again with {option('index_type', 'flat')}",
                ) from None
            self.progress("building the index", 1, 1, wanted.type)
        others = self.skipped_table.filter(pc.not_equal(self.skipped_table.column("root"), root_key))
        mine = sorted(self.skipped, key=lambda s: s.rel)
        rows = pa.table(
            {"path": [s.rel for s in mine], "root": [root_key] * len(mine), "reason": [s.reason for s in mine]},
            schema=SKIPPED_SCHEMA,
        )
        merge, merged = self.merge, None
        if merge is not None:
            merged = merge.result(wait=final)
        added, removed = self.unwritten
        if self.segments is None:  # every row again, as one segment
            added, removed = self.meta, []
        # The approximate types' file is written when a run finishes (or the index is re-typed); checkpoints
        # add segments, which a reader adds to it (``store.collection``).
        approximate = self.spec.type != "flat"
        self.base, self.segments = self.target.commit(
            added, removed, pa.concat_tables([others, rows]), encoder, self.base, self.roots,
            segments=self.segments, index=self.index if approximate and (final or wanted is not None) else None,
            index_info=self.info, write_encoder=self.write_encoder, merges=[merged] if merged else [],
        )  # fmt: skip
        self.unwritten = (self.meta.schema.empty_table(), [])
        if merge is not None and (merged is not None or merge.error is not None):
            self.target.merge_done(merge)  # installed, or failed: the next merge tries again
            self.merge = None
        # else it is still running, or finished since it was asked: the next commit installs it
        if self.merge is None and not final and self.config.merge_factor:
            self.merge = self.target.start_merge(self.segments, self.config.merge_factor)
        self.write_encoder = False
        self.report.committed = True
        if self.training is not None:  # the trained encoder is committed: its training state is no longer needed
            self.training.remove()
            self.training = None

    def close(self) -> None:
        """Wait for a merge still running (a run that stops early): its file is left for the next writer to
        remove, never half-written behind a released lock."""
        if self.merge is not None:
            self.merge.result(wait=True)
            self.target.merge_done(self.merge)
            self.merge = None


def _manifest_to_replace(collection: Collection) -> dict[str, Any] | None:
    """With ``rebuild``, the old manifest only numbers the new generation; a damaged one is simply replaced."""
    try:
        return collection.read_manifest() if collection.exists() else None
    except CollectionError:
        return None
