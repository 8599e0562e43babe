"""Format 2: segments, deletions, the tier policy, merges on their thread, compaction, and format 1 converted.

The rows a collection holds never depend on how they are split into segments: every test compares what loads
with what was committed, row for row and bit for bit.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from simsearch import vectors
from simsearch.collection import SKIPPED_SCHEMA, Collection, embeddings_of, meta_table
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import Preprocess
from simsearch.store import segments as seg
from simsearch.store.segments import MergedSegment, Segment, SegmentSet, live_rows, tier
from simsearch.training import pixels_encoder
from tests.conftest import consistent_snapshot, current_files, to_format_1, write_folder
from tests.helpers import invoke

ENCODER = pixels_encoder(Preprocess(size=(4, 4), channels=1))


def rows(start: int, n: int, seed: int = 0) -> pa.Table:
    """``n`` rows with ids ``start`` … of random 16-d embeddings."""
    x = np.random.default_rng(seed + start).random((n, 16), dtype=np.float32)
    ids = np.arange(start, start + n, dtype=np.int64)
    return meta_table(
        {
            "id": ids, "path": [f"{i}.png" for i in ids], "root": ["/r"] * n, "label": ["a"] * n,
            "sha256": [f"{i:064x}" for i in ids], "bytes": [1] * n, "mtime": [0.0] * n,
            "width": [4] * n, "height": [4] * n,
        },
        x,
        16,
    )  # fmt: skip


def by_id(table: pa.Table) -> dict[int, bytes]:
    return dict(zip(table.column("id").to_pylist(), (e.tobytes() for e in embeddings_of(table)), strict=True))


def segment(name: str, n: int, start: int = 0) -> Segment:
    return Segment(name, n, 0, "0", np.arange(start, start + n, dtype=np.int64))


def test_tiers_and_what_the_policy_merges() -> None:
    assert [tier(n, 10) for n in (0, 999, 1000, 9999, 10_000, 100_000)] == [0, 0, 1, 1, 2, 3]
    small = SegmentSet(tuple(segment(f"s{i}", 100, 100 * i) for i in range(9)))
    assert small.to_merge(10) == []  # nine in tier 0: not yet
    ten = small.plus(segment("s9", 100, 900))
    assert ten.to_merge(10) == [f"s{i}" for i in range(10)] and ten.to_merge(0) == []
    # A big segment is in its own tier; a segment at least half deleted joins the next merge.
    mixed = SegmentSet((segment("big", 5000, 10_000), *ten.segments)).without(range(10_000, 12_600))
    assert mixed.live(mixed.segments[0]) == 2400 and mixed.to_merge(10) == ["big", *[f"s{i}" for i in range(10)]]


def test_rows_without_some_ids_copy_only_the_batches_that_held_them() -> None:
    table = pa.concat_tables([rows(0, 5), rows(5, 5), rows(10, 5)])
    kept = live_rows(table, np.array([6, 7, 14, 99]))
    assert kept.column("id").to_pylist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
    np.testing.assert_array_equal(embeddings_of(kept), embeddings_of(table)[[0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]])
    before, after = table.to_batches(), kept.to_batches()
    assert [b.num_rows for b in after] == [5, 3, 4]
    untouched = before[0].column("embedding").values.buffers()[1].address
    assert after[0].column("embedding").values.buffers()[1].address == untouched  # the same memory, not a copy
    assert live_rows(table, np.array([], np.int64)).column("id").to_pylist() == list(range(15))


def test_deletions_name_their_segment_and_merges_carry_later_ones_over() -> None:
    state = SegmentSet((segment("a", 4, 0), segment("b", 4, 4), segment("c", 2, 8)))
    state = state.without([1, 5, 99])  # 99 is in no segment: left alone
    assert state.count == 8 and state.deleted_table().to_pylist() == [
        {"segment": "a", "id": 1},
        {"segment": "b", "id": 5},
    ]
    # A merge of a and b read them with 1 and 5 deleted; 2 was deleted while it ran.
    merged = MergedSegment(segment("m", 6), ("a", "b"), {"a": np.array([1]), "b": np.array([5])})
    object.__setattr__(merged.segment, "ids", np.array([0, 2, 3, 4, 6, 7]))
    after = state.without([2]).merged(merged)
    assert after.names == ["m", "c"] and {k: v.tolist() for k, v in after.deleted.items()} == {"m": [2]}
    assert after.count == 7
    assert not after.includes(merged) and state.includes(merged)


def commit(collection: Collection, state, previous, added: pa.Table, removed=(), **kwargs):
    return collection.commit(
        added, list(removed), SKIPPED_SCHEMA.empty_table(), ENCODER, previous, ["/r"], segments=state, **kwargs
    )


def test_commits_write_what_changed_and_the_rows_are_those_committed(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    with collection.lock():
        first, state = commit(collection, None, None, rows(0, 5))
        second, state = commit(collection, state, first, rows(5, 3), removed=[1, 3])
        third, state = commit(collection, state, second, rows(8, 0))  # nothing added: no segment
    assert [s["rows"] for s in third["segments"]] == [5, 3] and third["count"] == 6
    # The skipped list is the same file throughout; the deletions file is written once, and kept.
    assert first["files"]["skipped"] == third["files"]["skipped"] and second["files"]["deleted"]
    assert third["files"]["deleted"] == second["files"]["deleted"] and third["files"]["vectors"] is None
    expected = {k: v for k, v in {**by_id(rows(0, 5)), **by_id(rows(5, 3))}.items() if k not in (1, 3)}
    snapshot = consistent_snapshot(collection)
    assert by_id(snapshot.meta) == expected and snapshot.segments is not None
    assert snapshot.segments.names == state.names and snapshot.segments.deleted_table().equals(state.deleted_table())
    assert sorted(p.name for p in collection.path.iterdir()) == current_files(collection)


def test_a_merge_on_its_thread_is_installed_by_a_later_commit(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    with collection.lock():
        manifest, state = commit(collection, None, None, rows(0, 4))
        for start in (4, 8, 12):
            manifest, state = commit(collection, state, manifest, rows(start, 4))
        merge = collection.start_merge(state, 2)
        assert merge is not None and merge.sources == ("segment-000001.parquet", "segment-000002.parquet")
        merged = merge.result(wait=True)
        assert merged is not None and merge.error is None
        # A commit that lands before the merge is installed leaves its file alone, and it stays in the journal.
        manifest, state = commit(collection, state, manifest, rows(16, 2), removed=[0, 5])
        assert (collection.path / merge.name).exists()
        assert merge.name in json.loads((collection.path / ".pending.json").read_text())["files"]
        manifest, state = commit(collection, state, manifest, rows(18, 0), merges=[merged])
    assert manifest["segments"][0]["name"] == merge.name and len(manifest["segments"]) == 4
    assert {k: v.tolist() for k, v in state.deleted.items()} == {merge.name: [0, 5]}  # deleted while it ran
    expected = {k: v for k, v in by_id(pa.concat_tables([rows(s, 4) for s in (0, 4, 8, 12)])).items()}
    expected = {k: v for k, v in {**expected, **by_id(rows(16, 2))}.items() if k not in (0, 5)}
    assert by_id(consistent_snapshot(collection).meta) == expected
    assert sorted(p.name for p in collection.path.iterdir()) == current_files(collection)


def test_a_merge_that_fails_is_dropped_and_its_file_removed(tmp_path: Path, monkeypatch) -> None:
    collection = Collection(tmp_path / "c")
    with collection.lock():
        manifest, state = commit(collection, None, None, rows(0, 3))
        manifest, state = commit(collection, state, manifest, rows(3, 3))

        def full_disk(table, path):
            Path(path).write_bytes(b"half")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("simsearch.store.collection.write_segment", full_disk)
        merge = collection.start_merge(state, 2)
        assert merge is not None and merge.result(wait=True) is None and isinstance(merge.error, OSError)
        collection.merge_done(merge)
        monkeypatch.undo()
        manifest, state = commit(collection, state, manifest, rows(6, 1))
    assert sorted(p.name for p in collection.path.iterdir()) == current_files(collection)
    assert consistent_snapshot(collection).meta.num_rows == 7


def test_index_merges_in_the_background_and_compact_merges_the_rest(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_folder(images, per_class=10, seed=0)
    collection = Collection(tmp_path / "c")
    config = IndexConfig(model="pixels", device="cpu", workers=1, batch_size=2, checkpoint_every=2, merge_factor=3)
    threads = threading.active_count()
    index_folder(images, collection, config)
    assert threading.active_count() == threads  # no merge left running
    merged = consistent_snapshot(collection)
    assert len(merged.manifest["segments"]) < 15 and any("-merged" in s["name"] for s in merged.manifest["segments"])
    plain = Collection(tmp_path / "plain")
    index_folder(images, plain, IndexConfig(model="pixels", device="cpu", workers=1, merge_factor=0))
    assert by_id(merged.meta) == by_id(consistent_snapshot(plain).meta)
    # compact: one segment, no deletions, the same rows; then nothing left to do.
    (images / "blob" / "0.png").unlink()
    index_folder(images, collection, config)
    before = by_id(consistent_snapshot(collection).meta)
    result = invoke("compact", "--home", tmp_path, "--name", "c")
    assert result.exit_code == 0, result.output
    assert "Compacted" in result.stdout and "deleted rows into one segment" in result.stdout
    after = consistent_snapshot(collection)
    assert len(after.manifest["segments"]) == 1 and after.manifest["files"]["deleted"] is None
    assert by_id(after.meta) == before
    assert sorted(p.name for p in collection.path.iterdir()) == current_files(collection)
    again = invoke("compact", "--home", tmp_path, "--name", "c", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["generation_after"] is None
    with pytest.raises(Exception, match="merge_factor"):
        IndexConfig(merge_factor=1)


def test_a_format_1_collection_opens_and_its_next_write_converts_it(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_folder(images, per_class=4, seed=0)
    collection = Collection(tmp_path / "c")
    index_folder(images, collection, IndexConfig(model="pixels", device="cpu", workers=1))
    rows_before = by_id(consistent_snapshot(collection).meta)
    old = to_format_1(collection)
    snapshot = consistent_snapshot(collection)
    assert snapshot.segments is None and by_id(snapshot.meta) == rows_before
    info = invoke("info", "--home", tmp_path, "--name", "c", "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["format"] == "simsearch.collection/1"
    write_folder(images / "more", per_class=1, seed=1)
    index_folder(images, collection, IndexConfig(model="pixels", device="cpu", workers=1))
    converted = consistent_snapshot(collection)
    assert converted.manifest["format"] == "simsearch.collection/2" and len(converted.manifest["segments"]) == 1
    assert by_id(converted.meta).items() >= rows_before.items() and converted.meta.num_rows == 15
    assert not any((collection.path / name).exists() for name in old["files"].values() if name != "encoder")
    assert sorted(p.name for p in collection.path.iterdir()) == current_files(collection)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_an_approximate_index_file_is_brought_up_to_date_on_load(tmp_path: Path, kind: str) -> None:
    """Checkpoints do not write the index file: a reader adds their rows and removes the deleted ones (a graph,
    which cannot remove, is built again); ``compact`` writes it afresh."""
    collection = Collection(tmp_path / "c")
    base = rows(0, 300)
    index, spec, info = vectors.build_tuned(vectors.default_spec(kind, 300, 16), embeddings_of(base), np.arange(300))
    with collection.lock():
        manifest, state = commit(collection, None, None, base, index=index, index_info={**spec.to_json(), **info})
        written = manifest["files"]["vectors"]
        manifest, state = commit(
            collection, state, manifest, rows(300, 20), removed=range(0, 300, 3), index_info=manifest["index"]
        )
    assert manifest["files"]["vectors"] == written  # a checkpoint keeps the file it had
    snapshot = consistent_snapshot(collection)  # the ids and vectors FAISS holds equal the live rows
    assert snapshot.index_stale and snapshot.meta.num_rows == 220
    assert sorted(vectors.index_ids(snapshot.index).tolist()) == sorted(snapshot.meta.column("id").to_pylist())
    done = collection.compact()
    assert done.generation_after is not None
    fresh = consistent_snapshot(collection)
    assert not fresh.index_stale and fresh.manifest["files"]["vectors"] != written
    assert by_id(fresh.meta) == by_id(snapshot.meta)


def test_damaged_deletions_are_refused(tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    with collection.lock():
        manifest, state = commit(collection, None, None, rows(0, 5))
        manifest, state = commit(collection, state, manifest, rows(5, 0), removed=[2])
    path = collection.path / manifest["files"]["deleted"]
    seg.write_parquet(pa.table({"segment": ["nowhere.parquet"], "id": [2]}, schema=seg.DELETED_SCHEMA), path)
    import hashlib

    manifest["sha256"]["deleted"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (collection.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match=r"deletes rows that segment 'nowhere\.parquet' does not hold"):
        collection.load()


def test_a_merge_that_finishes_while_a_commit_runs_is_installed_by_the_next(tmp_path: Path, monkeypatch) -> None:
    """A merge asked for at a commit's start may finish before the commit ends: it must wait for the next commit
    (installed), not be dropped as if it had failed and written again."""
    from simsearch import progress
    from simsearch.store.collection import Collection as Store
    from simsearch.store.collection import Merge

    images = tmp_path / "images"
    write_folder(images, per_class=8, seed=0)
    real_result, late = Merge.result, []

    def result(self, wait: bool = False):
        if not wait and self.name not in late:  # "still running" the first time it is asked
            late.append(self.name)
            self._thread.join()  # ... and done by the time the commit ends
            return None
        return real_result(self, wait)

    monkeypatch.setattr(Merge, "result", result)
    installed, written = [], []
    real_commit = Store.commit

    def commit(self, *args, **kwargs):
        installed.extend(m.segment.name for m in kwargs.get("merges", []))
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Store, "commit", commit)
    config = IndexConfig(model="pixels", device="cpu", workers=1, batch_size=2, checkpoint_every=2, merge_factor=3)
    with progress.observing(lambda e, s: written.append(s) if e == progress.RENAMED and "-merged" in s else None):
        index_folder(images, Collection(tmp_path / "c"), config)
    assert late and written and sorted(written) == sorted(set(written)) and set(written) <= set(installed)
    assert consistent_snapshot(Collection(tmp_path / "c")).meta.num_rows == 24
