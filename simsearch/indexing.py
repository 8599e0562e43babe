"""Sync a collection with an image folder: embed what is new or changed, drop what is gone, commit.

Files are compared by content hash: an unchanged file is read and hashed but never decoded or embedded.
Work is committed in checkpoints, so an interrupted run loses at most one checkpoint and the next run
resumes where it stopped (the committed files now hash as unchanged).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simsearch import vectors
from simsearch.collection import SKIPPED_SCHEMA, Collection, embeddings_of, int64_column, meta_schema, meta_table
from simsearch.encoder import Encoder, is_model_folder, resolve_device
from simsearch.errors import CollectionError, DataError, ImageError, ModelError, UsageError
from simsearch.images import ImageFileEntry, LoadJob, Skipped, find_images, load_batches
from simsearch.progress import Progress, no_progress
from simsearch.train import TRAINABLE, TrainConfig, train_encoder


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

    def __post_init__(self) -> None:
        if self.index_type not in ("auto", *vectors.INDEX_TYPES):
            raise UsageError(f"--type must be auto, {', '.join(vectors.INDEX_TYPES)}; not {self.index_type!r}")
        if self.index_type == "cagra" and not vectors.cagra_available():
            raise UsageError(
                "--type cagra needs a GPU and a FAISS build with cuVS (faiss-gpu-cuvs) — use --type hnsw on this machine"
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

    @property
    def embedded(self) -> int:
        return self.added + self.updated


def choose_encoder(
    collection: Collection,
    previous: dict[str, Any] | None,
    entries: list[ImageFileEntry],
    config: IndexConfig,
    progress: Progress,
) -> tuple[Encoder, bool]:
    """The encoder this run uses, and whether it was trained now."""
    model = config.model
    if previous is not None:
        current = collection.load_encoder(previous)
        if model is None or model == current.family:
            return current, False
        candidate = load_model_arg(model)
        if candidate is None or candidate.fingerprint != current.fingerprint:
            raise CollectionError(
                f"collection '{collection.path}' was built with the {current.family} encoder "
                f"{current.fingerprint[:12]} (d={current.dim}); --model {model} is a different encoder — "
                "pass --rebuild to re-index everything with it, or choose another --name"
            )
        return current, False
    model = model or "autoencoder"
    loaded = load_model_arg(model)
    if loaded is not None:
        return loaded, False
    if not entries:
        raise DataError("no images found to train an encoder on — check the folder, or pass --model")
    return train_encoder(entries, replace(config.train, family=model), progress), True


def load_model_arg(model: str) -> Encoder | None:
    """A model folder's encoder, or None when ``model`` names a family to train."""
    if model in TRAINABLE:
        return None
    path = Path(model)
    if not path.exists():
        raise ModelError(
            f"no model folder at '{model}' — pass a folder made by 'simsearch train', or one of: {', '.join(TRAINABLE)}"
        )
    if not is_model_folder(path):
        raise ModelError(f"'{model}' holds no encoder.json — pass a folder made by 'simsearch train'")
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

    def apply(self, meta: pa.Table, index: Any, metric: str, spec: vectors.IndexSpec) -> tuple[pa.Table, Any]:
        """Apply to ``index`` (in place, or rebuilt from the embeddings when its type cannot remove vectors)
        and return the new metadata table and index; then empty self."""
        rebuild = False
        if self.remove:
            gone = np.asarray(self.remove, dtype=np.int64)
            if vectors.supports_removal(index):
                vectors.remove_ids(index, gone)
            else:
                rebuild = True
            meta = meta.filter(pc.invert(pc.is_in(meta.column("id"), pa.array(gone))))
        if self.rows["id"]:
            emb = np.concatenate(self.embeddings)
            if not rebuild:
                vectors.add_vectors(index, emb, np.asarray(self.rows["id"], dtype=np.int64), metric)
            meta = pa.concat_tables([meta, meta_table(self.rows, emb, self.dim)])
        if rebuild:
            index = vectors.build_index(spec, embeddings_of(meta), int64_column(meta, "id"), metric)
        self.clear()
        return meta, index


def index_folder(
    root: Path, collection: Collection, config: IndexConfig = IndexConfig(), progress: Progress = no_progress
) -> IndexReport:
    """Bring ``collection`` in line with the images under ``root`` (see the module docstring)."""
    started = time.monotonic()
    root = Path(root).resolve()
    root_key = str(root)
    entries, skipped = find_images(root)
    if config.strict and skipped:
        raise DataError(f"{root / skipped[0].rel}: {skipped[0].reason} — fix or remove it, or drop --strict")
    report = IndexReport(collection.path, root_key, found=len(entries))
    with collection.lock(wait=config.wait):
        if config.rebuild:
            manifest = _manifest_to_replace(collection)
        else:
            manifest = collection.read_manifest() if collection.exists() else None
        previous = None if config.rebuild else (collection.load() if manifest else None)
        encoder, trained = choose_encoder(
            collection, previous.manifest if previous else None, entries, config, progress
        )
        if previous is not None:  # its files and its encoder loaded whole: what is not theirs is a leftover
            collection.remove_leftovers(previous)
        device = resolve_device(config.device)
        encoder.to(device)
        report.trained, report.device = trained, device.type
        report.encoder_family, report.encoder_fingerprint = encoder.family, encoder.fingerprint
        report.encoder_dim = encoder.dim
        report.input_shape = (encoder.preprocess.channels, *encoder.preprocess.size)
        report.training = encoder.training if trained else {}
        if previous is not None:
            meta, index, skipped_table = previous.meta, previous.index, previous.skipped
        else:
            meta = meta_schema(encoder.dim).empty_table()
            index, skipped_table = vectors.new_index(encoder.dim, encoder.metric), SKIPPED_SCHEMA.empty_table()
        roots = sorted({*(previous.manifest.get("roots", []) if previous else []), root_key})
        # The manifest each commit builds on: with --rebuild, the old one only numbers the new generation.
        info = dict(previous.manifest.get("index") or {}) if previous is not None else {}
        state: dict[str, Any] = {
            "manifest": manifest,
            "meta": meta,
            "index": index,
            "spec": vectors.IndexSpec.from_json(info) if info.get("type") else vectors.IndexSpec("flat"),
            "info": info or None,
        }

        def commit(pending: _Pending, final: bool = False) -> None:
            state["meta"], state["index"] = pending.apply(state["meta"], state["index"], encoder.metric, state["spec"])
            if final:
                retype(state)
            others = skipped_table.filter(pc.not_equal(skipped_table.column("root"), root_key))
            skipped.sort(key=lambda s: s.rel)
            mine = pa.table(
                {
                    "path": [s.rel for s in skipped],
                    "root": [root_key] * len(skipped),
                    "reason": [s.reason for s in skipped],
                },
                schema=SKIPPED_SCHEMA,
            )
            first_of_rebuild = config.rebuild and state["manifest"] is manifest
            state["manifest"] = collection.commit(
                state["meta"], pa.concat_tables([others, mine]), state["index"], encoder, state["manifest"], roots,
                state["info"], write_encoder=first_of_rebuild,
            )  # fmt: skip
            report.committed = True

        if trained and manifest is None and not config.strict:
            commit(_Pending(encoder.dim))  # keep the trained encoder even if indexing is interrupted

        old = _rows_of_root(state["meta"], root_key)
        next_id = int(state["manifest"].get("next_id", 0)) if state["manifest"] else 0
        pending = _Pending(encoder.dim)
        current = {e.rel for e in entries}
        for rel, (row_id, _) in old.items():
            if rel not in current:
                pending.remove.append(row_id)
        report.removed = len(pending.remove)
        since_commit = 0
        chunks = [entries[start : start + config.batch_size] for start in range(0, len(entries), config.batch_size)]
        jobs = (
            LoadJob(
                [e.path for e in batch],
                [e.rel for e in batch],
                [old[e.rel][1] if e.rel in old else None for e in batch],
            )
            for batch in chunks
        )
        done = 0
        with contextlib.closing(load_batches(jobs, encoder.preprocess, config.workers, len(entries))) as batches:
            for batch, loaded in zip(chunks, batches, strict=True):
                arrays: list[np.ndarray] = []
                for entry, result in zip(batch, loaded, strict=True):
                    if result is None:
                        report.unchanged += 1
                        continue
                    if isinstance(result, ImageError):
                        if config.strict:
                            raise DataError(
                                f"{root / entry.rel}: {_reason(result, entry.rel)} — fix or remove it, or drop --strict"
                            )
                        skipped.append(Skipped(entry.rel, _reason(result, entry.rel)))
                        if entry.rel in old:
                            pending.remove.append(old[entry.rel][0])
                            report.removed += 1
                        continue
                    if entry.rel in old:
                        row_id = old[entry.rel][0]
                        pending.remove.append(row_id)
                        report.updated += 1
                    else:
                        row_id = next_id
                        next_id += 1
                        report.added += 1
                    for key, value in (
                        ("id", row_id),
                        ("path", entry.rel),
                        ("root", root_key),
                        ("label", entry.label),
                        ("sha256", result.sha256),
                        ("bytes", result.bytes),
                        ("mtime", entry.mtime),
                        ("width", result.width),
                        ("height", result.height),
                    ):
                        pending.rows[key].append(value)
                    arrays.append(result.array)
                if arrays:
                    pending.embeddings.append(encoder.embed(np.stack(arrays), config.batch_size))
                    since_commit += len(arrays)
                done += len(batch)
                progress("embedding", done, len(entries), f"{report.embedded} new or changed")
                if since_commit >= config.checkpoint_every and not config.strict:
                    commit(pending)
                    since_commit = 0
        if not entries and not old:
            raise DataError(f"no images found under '{root}' — check the path (images are recognised by content)")
        old_skipped = set(
            skipped_table.filter(pc.equal(skipped_table.column("root"), root_key)).column("path").to_pylist()
        )
        count = state["meta"].num_rows + len(pending.rows["id"]) - len(pending.remove)
        wanted = vectors.plan(
            config.index_type, count, encoder.dim, state["spec"], (state["info"] or {}).get("trained_on")
        )

        def retype(state: dict[str, Any]) -> None:
            """Build the index type the collection's size (or --type) asks for, tuned to the recall target."""
            if wanted is None:
                return
            progress("building the index", 0, 1, wanted.type)
            x, ids = embeddings_of(state["meta"]), int64_column(state["meta"], "id")
            state["index"], state["spec"], state["info"] = vectors.build_tuned(wanted, x, ids, encoder.metric)
            progress("building the index", 1, 1, wanted.type)

        changed = len(pending) or state["manifest"] is None or config.rebuild or wanted is not None
        if changed or old_skipped != {s.rel for s in skipped}:
            commit(pending, final=True)
        final_manifest = state["manifest"]
        assert final_manifest is not None
        report.count = int(final_manifest["count"])
        report.generation = int(final_manifest["generation"])
        report.skipped = sorted(skipped, key=lambda s: s.rel)
        report.seconds = time.monotonic() - started
        return report


def _manifest_to_replace(collection: Collection) -> dict[str, Any] | None:
    """With --rebuild, the old manifest only numbers the new generation; a damaged one is simply replaced."""
    try:
        return collection.read_manifest() if collection.exists() else None
    except CollectionError:
        return None


def _reason(error: ImageError, rel: str) -> str:
    """The error's message without the leading file name (the skipped list already names the file)."""
    text = str(error)
    return text[len(rel) + 2 :] if text.startswith(rel + ": ") else text


def _rows_of_root(meta: pa.Table, root_key: str) -> dict[str, tuple[int, str]]:
    """path → (id, sha256) for the rows that came from ``root_key``."""
    mine = meta.filter(pc.equal(meta.column("root"), root_key))
    return {
        path: (int(row_id), sha)
        for path, row_id, sha in zip(
            mine.column("path").to_pylist(),
            mine.column("id").to_pylist(),
            mine.column("sha256").to_pylist(),
            strict=True,
        )
    }
