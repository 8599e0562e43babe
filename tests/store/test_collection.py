"""The collection folder itself: what the journal lets a writer delete, the rebuild beside the live collection,
ownership, and the load-time checks of what a generation holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simsearch import vectors
from simsearch.collection import SKIPPED_SCHEMA, Collection, meta_table
from simsearch.errors import CollectionError, CollectionNotFound
from simsearch.io import Preprocess
from simsearch.store.formats import manifest_files
from simsearch.training import pixels_encoder


def generation(
    collection: Collection, n: int, previous: dict | None = None, seed: int = 0, write_encoder: bool = False
) -> dict:
    """Commit ``n`` random 16-d vectors (a pixels encoder of 4×4 grey images) as the next generation."""
    encoder = pixels_encoder(Preprocess(size=(4, 4), channels=1))
    x = np.random.default_rng(seed).random((n, 16), dtype=np.float32)
    ids = np.arange(n, dtype=np.int64)
    table = meta_table(
        {
            "id": ids, "path": [f"{i}.png" for i in range(n)], "root": ["/r"] * n, "label": [None] * n,
            "sha256": [f"{i:064x}" for i in range(n)], "bytes": [1] * n, "mtime": [0.0] * n,
            "width": [4] * n, "height": [4] * n,
        },
        x,
        16,
    )  # fmt: skip
    manifest, _ = collection.commit(
        table, [], SKIPPED_SCHEMA.empty_table(), encoder, previous, ["/r"], segments=None, write_encoder=write_encoder
    )
    return manifest


def named(manifest: dict) -> set[str]:
    return set(manifest_files(manifest))


def test_a_killed_commit_is_cleaned_up_by_the_next_writer_and_nothing_else(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    with collection.lock():
        first = generation(collection, 5)
    # What a writer killed mid-commit leaves: its journal, a half-written file, a generation never switched to.
    (collection.path / ".segment-000002.parquet.tmp").write_bytes(b"half")
    (collection.path / "deleted-000002.parquet").write_bytes(b"orphan")
    segment = first["segments"][0]["name"]
    (collection.path / ".pending.json").write_text(
        json.dumps({"files": [".segment-000002.parquet.tmp", "deleted-000002.parquet", segment]})
    )
    (collection.path / "segment-000009.parquet").write_bytes(b"the user's, named like ours")
    with collection.lock():
        pass
    names = {p.name for p in collection.path.iterdir()}
    assert names == {".lock", ".simsearch.json", "manifest.json", *named(first), "segment-000009.parquet"}
    assert collection.load().meta.num_rows == 5  # the journal named a current file too: kept


def test_a_journal_cut_short_is_dropped_and_an_unreadable_manifest_stops_all_deletion(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    with collection.lock():
        generation(collection, 3)
    (collection.path / ".pending.json").write_text('{"files": ["meta-0000')  # killed while writing it
    with collection.lock():
        pass
    assert not (collection.path / ".pending.json").exists()
    (collection.path / "stale.bin").write_bytes(b"x")
    (collection.path / ".pending.json").write_text(json.dumps({"files": ["stale.bin"]}))
    (collection.path / "manifest.json").write_text("{not json")
    with collection.lock():
        pass
    assert (collection.path / "stale.bin").exists() and (collection.path / ".pending.json").exists()


def test_a_rebuild_is_invisible_until_adopted_and_can_be_dropped(tmp_path: Path) -> None:
    live = Collection(tmp_path / "c")
    with live.lock():
        first = generation(live, 4)
        staging = live.staging()
        staged = generation(staging, 6, previous=first, seed=1, write_encoder=True)  # as index --rebuild does
        assert staged["generation"] > first["generation"]
        assert not named(staged) & named(first)  # never the same names
        assert live.load().meta.num_rows == 4 and live.rebuild_summary()["count"] == 6
        adopted = live.adopt_staging()
    assert live.load().meta.num_rows == 6 and adopted["generation"] == staged["generation"]
    assert live.rebuild_summary() is None
    assert not any((live.path / name).exists() for name in named(first))
    with live.lock():
        generation(live.staging(), 2, previous=adopted, seed=2)
        live.discard_staging()
    assert live.rebuild_summary() is None and live.load().meta.num_rows == 6
    assert {p.name for p in live.path.iterdir()} == {
        ".lock",
        ".simsearch.json",
        "manifest.json",
        *named(adopted),
    }


def test_reading_a_missing_collection_and_locking_a_file(tmp_path: Path) -> None:
    with pytest.raises(CollectionNotFound, match="no collection at"):
        Collection(tmp_path / "nothing").load()
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(CollectionError, match="is a file, not a collection folder"),
        Collection(tmp_path / "file").lock(),
    ):
        pass


def test_embeddings_that_disagree_with_the_faiss_vectors_are_refused(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    encoder = pixels_encoder(Preprocess(size=(4, 4), channels=1))
    x = np.random.default_rng(0).random((3, 16), dtype=np.float32)
    table = meta_table(
        {
            "id": [0, 1, 2], "path": ["a", "b", "c"], "root": ["/r"] * 3, "label": [None] * 3,
            "sha256": ["0" * 64] * 3, "bytes": [1] * 3, "mtime": [0.0] * 3, "width": [4] * 3, "height": [4] * 3,
        },
        x,
        16,
    )  # fmt: skip
    index = vectors.new_index(16)
    vectors.add_vectors(index, x, np.array([0, 2, 1]))  # ids 1 and 2 given each other's vectors
    with collection.lock():  # an HNSW collection keeps its FAISS file, checked against the embeddings on load
        info = {"type": "hnsw", "exact": False, "factory": "IDMap2,HNSW32"}
        collection.commit(
            table, [], SKIPPED_SCHEMA.empty_table(), encoder, None, ["/r"], segments=None, index=index, index_info=info
        )
    with pytest.raises(CollectionError, match="differs from its embedding"):
        collection.load()
