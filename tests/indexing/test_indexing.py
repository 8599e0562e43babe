"""Collections: format, incremental sync by content hash, broken files, strict mode, locking, search."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from simsearch.errors import CollectionError, CollectionLocked, CollectionNotFound, DataError, ModelError, UsageError
from simsearch.indexing import IndexConfig, index_folder
from simsearch.search import Searcher, vote_label
from simsearch.store.collection import Collection, embeddings_of
from simsearch.store.formats import manifest_files
from tests.conftest import consistent_snapshot, pattern, write_folder

META_COLUMNS = ["id", "path", "root", "label", "sha256", "bytes", "mtime", "width", "height", "embedding"]


def pixels_config(**changes) -> IndexConfig:
    return IndexConfig(**{"model": "pixels", "device": "cpu", "workers": 2, **changes})


def build(root: Path, tmp_path: Path, **changes):
    collection = Collection(tmp_path / "indexes" / "c")
    return collection, index_folder(root, collection, pixels_config(**changes))


def test_files_follow_the_documented_format(image_folder: Path, tmp_path: Path) -> None:
    collection, report = build(image_folder, tmp_path)
    assert report.added == 15 and report.count == 15 and report.committed
    manifest = json.loads((collection.path / "manifest.json").read_text())
    files = manifest["files"]
    assert manifest["count"] == 15 and manifest["dim"] == 256 and manifest["metric"] == "l2"
    assert manifest["roots"] == [str(image_folder.resolve())]
    assert manifest["format"] == "simsearch.collection/2" and manifest["skipped_count"] == 0
    # Plain pyarrow and pandas, no simsearch: the rows are the segments' rows, less the deleted ones.
    assert [s["rows"] for s in manifest["segments"]] == [15] and files["deleted"] is None
    table = pq.read_table(collection.path / manifest["segments"][0]["name"])
    assert table.column_names == META_COLUMNS
    frame = table.to_pandas()
    assert sorted(frame["label"].unique()) == ["blob", "hbars", "vbars"]
    assert frame["path"].iloc[0] == "blob/0.png" and (frame["width"] == 16).all()
    assert len(frame["embedding"].iloc[0]) == 256
    assert files["vectors"] is None  # a flat index is filled from the segments on load
    skipped = pq.read_table(collection.path / files["skipped"])
    assert skipped.column_names == ["path", "root", "reason"] and skipped.num_rows == 0
    enc = json.loads((collection.path / files["encoder"] / "encoder.json").read_text())
    assert enc["fingerprint"] == manifest["encoder"]["fingerprint"]
    # A deleted image: a new deletions file names its segment and id; nothing else is rewritten.
    (image_folder / "blob" / "0.png").unlink()
    build(image_folder, tmp_path)
    after = json.loads((collection.path / "manifest.json").read_text())
    assert after["segments"] == manifest["segments"] and after["files"]["skipped"] == files["skipped"]
    deleted = pq.read_table(collection.path / after["files"]["deleted"]).to_pylist()
    gone = int(frame.loc[frame["path"] == "blob/0.png", "id"].iloc[0])
    assert deleted == [{"segment": manifest["segments"][0]["name"], "id": gone}] and after["count"] == 14


def test_indexed_image_is_its_own_nearest_neighbour(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    searcher = Searcher(collection, use_gpu=False)
    paths = sorted(image_folder.rglob("*.png"))
    results = searcher.query_files(paths, k=4)
    for path, result in zip(paths, results, strict=True):
        first = result.neighbours[0]
        assert first.path == path.relative_to(image_folder).as_posix()
        assert first.distance == 0.0
        assert result.vote == path.parent.name
        assert [n.rank for n in result.neighbours] == [1, 2, 3, 4]
        assert all(a.distance <= b.distance for a, b in zip(result.neighbours, result.neighbours[1:], strict=False))


def test_search_results_equal_brute_force(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    searcher = Searcher(collection, use_gpu=False)
    embeddings = embeddings_of(collection.load().meta)
    queries = np.random.default_rng(0).normal(size=(7, embeddings.shape[1])).astype(np.float32) + embeddings[:7]
    for k in (1, 5, 15, 40):
        distances, rows = searcher.search_embeddings(queries, k)
        brute = np.linalg.norm(queries[:, None, :] - embeddings[None], axis=-1)
        expected_rows = np.argsort(brute, axis=1, kind="stable")[:, : min(k, 15)]
        assert rows.shape == (7, min(k, 15))
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(distances, np.take_along_axis(brute, expected_rows, 1), rtol=1e-5)


def test_rerun_on_unchanged_folder_embeds_nothing(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    manifest = collection.read_manifest()
    _, second = build(image_folder, tmp_path)
    assert (second.embedded, second.removed, second.unchanged) == (0, 0, 15)
    assert not second.committed
    assert collection.read_manifest() == manifest


def test_add_delete_change_update_exactly_those_rows(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    before = collection.load().meta.to_pandas().set_index("path")
    rng = np.random.default_rng(9)
    (image_folder / "blob" / "0.png").unlink()
    Image.fromarray(pattern("hbars", rng)).save(image_folder / "vbars" / "1.png")  # changed content
    Image.fromarray(pattern("blob", rng)).save(image_folder / "blob" / "new.png")
    _, report = build(image_folder, tmp_path)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 13)
    snapshot = collection.load()
    after = snapshot.meta.to_pandas().set_index("path")
    assert "blob/0.png" not in after.index and "blob/new.png" in after.index
    assert len(after) == 15 == snapshot.index.ntotal
    untouched = [p for p in before.index if p not in ("blob/0.png", "vbars/1.png")]
    for path in untouched:
        assert after.loc[path, "id"] == before.loc[path, "id"]
        assert after.loc[path, "sha256"] == before.loc[path, "sha256"]
        np.testing.assert_array_equal(after.loc[path, "embedding"], before.loc[path, "embedding"])
    # A changed file gets a new id: an id names one embedding for good.
    assert after.loc["vbars/1.png", "id"] not in set(before["id"])
    assert after.loc["vbars/1.png", "sha256"] != before.loc["vbars/1.png", "sha256"]
    assert after.loc["blob/new.png", "id"] not in set(before["id"])
    np.testing.assert_array_equal(np.sort(faiss.vector_to_array(snapshot.index.id_map)), np.sort(after["id"].values))
    # Only the current generation's files remain.
    names = sorted(p.name for p in collection.path.iterdir())
    assert names == sorted([".lock", ".simsearch.json", "manifest.json", *manifest_files(snapshot.manifest)])
    assert len(snapshot.manifest["segments"]) == 2 and snapshot.manifest["files"]["deleted"]


def test_a_flat_collection_is_written_without_a_faiss_copy_of_its_embeddings(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing writes a flat collection's index (a reader fills one from the segments): its writer keeps none."""
    from simsearch import vectors
    from simsearch.store.collection import Snapshot

    def refused(*args: object) -> None:
        raise AssertionError("a flat collection's writer made a FAISS copy of its embeddings")

    monkeypatch.setattr(vectors, "new_index", refused)
    monkeypatch.setattr(vectors, "add_vectors", refused)
    monkeypatch.setattr(Snapshot, "index", property(refused))
    collection, _ = build(image_folder, tmp_path)
    (image_folder / "blob" / "0.png").unlink()
    Image.fromarray(pattern("blob", np.random.default_rng(3))).save(image_folder / "blob" / "new.png")
    _, report = build(image_folder, tmp_path)
    assert (report.added, report.removed, report.unchanged) == (1, 1, 14)
    monkeypatch.undo()
    snapshot = collection.load()
    assert snapshot.manifest["index"]["type"] == "flat" and snapshot.meta.num_rows == 15
    [answer] = Searcher(collection).query_files([image_folder / "blob" / "new.png"], 1)
    assert (answer.neighbours[0].path, answer.neighbours[0].distance) == ("blob/new.png", 0.0)


def write_broken_files(root: Path) -> None:
    (root / "broken").mkdir()
    (root / "broken" / "empty.png").write_bytes(b"")
    (root / "broken" / "text.png").write_text("hello, I am not a picture\n")
    good = (root / "blob" / "0.png").read_bytes()
    (root / "broken" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image, and not pretending to be one")


def test_broken_files_are_skipped_with_reasons(image_folder: Path, tmp_path: Path) -> None:
    write_broken_files(image_folder)
    collection, report = build(image_folder, tmp_path)
    assert report.count == 15
    reasons = {s.rel: s.reason for s in report.skipped}
    assert set(reasons) == {"broken/empty.png", "broken/text.png", "broken/truncated.png"}
    assert "empty" in reasons["broken/empty.png"]
    assert "not an image" in reasons["broken/text.png"]
    assert "decoded" in reasons["broken/truncated.png"] or "truncated" in reasons["broken/truncated.png"]
    stored = collection.load().skipped.to_pylist()
    assert {r["path"]: r["reason"] for r in stored} == reasons
    # Fixing a file takes it off the list and into the collection.
    shutil.copy(image_folder / "blob" / "1.png", image_folder / "broken" / "truncated.png")
    _, again = build(image_folder, tmp_path)
    assert again.added == 1 and {s.rel for s in again.skipped} == {"broken/empty.png", "broken/text.png"}


def test_strict_fails_and_keeps_the_previous_collection(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    manifest = collection.read_manifest()
    files = sorted(p.name for p in collection.path.iterdir())
    good = (image_folder / "blob" / "0.png").read_bytes()
    (image_folder / "blob" / "zz-truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(pattern("blob", np.random.default_rng(5))).save(image_folder / "blob" / "a-new.png")
    with pytest.raises(DataError, match=r"zz-truncated\.png"):
        build(image_folder, tmp_path, strict=True)
    assert collection.read_manifest() == manifest
    assert sorted(p.name for p in collection.path.iterdir()) == files


def test_missing_collection_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(CollectionNotFound, match="index a folder into it first"):
        Searcher(Collection(tmp_path / "nope"))
    with pytest.raises(Exception, match="does not exist"):
        build(tmp_path / "no-such-folder", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        build(tmp_path / "empty", tmp_path)
    assert not (tmp_path / "indexes" / "c").exists()


def test_a_second_writer_is_refused(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    with collection.lock(), pytest.raises(CollectionLocked, match="wait=True"):
        index_folder(image_folder, Collection(collection.path), pixels_config())


def test_a_different_model_needs_rebuild(image_folder: Path, tmp_path: Path, fast_train) -> None:
    collection, _ = build(image_folder, tmp_path)
    with pytest.raises(CollectionError, match="rebuild=True"):
        index_folder(image_folder, collection, pixels_config(model="pca"))
    with pytest.raises(ModelError, match="no model folder"):
        index_folder(image_folder, collection, pixels_config(model=str(tmp_path / "missing-model")))
    report = index_folder(image_folder, collection, pixels_config(model="pca", rebuild=True, train=fast_train))
    assert report.encoder_family == "pca" and report.embedded == 15 and report.count == 15
    manifest = collection.read_manifest()
    assert manifest["encoder"]["family"] == "pca" and manifest["dim"] == 8
    assert len([p for p in collection.path.iterdir() if p.name.startswith("encoder")]) == 1


def test_default_trains_an_autoencoder_inside_the_collection(image_folder: Path, tmp_path: Path, fast_train) -> None:
    collection = Collection(tmp_path / "ae")
    progress_calls: list[tuple[str, int, int | None]] = []
    report = index_folder(
        image_folder,
        collection,
        IndexConfig(device="cpu", train=fast_train),
        lambda task, done, total, note="": progress_calls.append((task, done, total)),
    )
    assert report.trained and report.encoder_family == "autoencoder" and report.count == 15
    assert {task for task, _, _ in progress_calls} >= {"training autoencoder", "embedding"}
    assert collection.load_encoder().dim == 8
    again = index_folder(image_folder, collection, IndexConfig(device="cpu", train=fast_train))
    assert not again.trained and again.embedded == 0


def test_checkpoints_commit_partial_work(image_folder: Path, tmp_path: Path) -> None:
    collection = Collection(tmp_path / "cp")
    generations = []
    original = collection.commit

    def spy(*args, **kwargs):
        manifest, segments = original(*args, **kwargs)
        generations.append(manifest["count"])
        assert segments.count == manifest["count"]
        return manifest, segments

    collection.commit = spy  # type: ignore[method-assign]
    index_folder(image_folder, collection, pixels_config(batch_size=4, checkpoint_every=4))
    # The first commit keeps the freshly fitted encoder; then one commit per checkpoint and a final one.
    assert generations == [0, 4, 8, 12, 15]


def test_worker_processes_index_what_threads_index(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simsearch.io.pipeline as images

    (image_folder / "hbars" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    on_threads, _ = build(image_folder, tmp_path / "threads", batch_size=4)
    monkeypatch.setattr(images, "PROCESS_MIN_IMAGES", 1)
    on_processes, report = build(image_folder, tmp_path / "processes", batch_size=4)
    assert report.added == 15 and [s.rel for s in report.skipped] == ["hbars/broken.png"]
    a, b = on_threads.load().meta, on_processes.load().meta
    assert a.drop(["mtime"]).equals(b.drop(["mtime"]))
    np.testing.assert_array_equal(embeddings_of(a), embeddings_of(b))


def test_an_interrupt_while_workers_decode_keeps_the_checkpoints(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    import simsearch.io.pipeline as images

    monkeypatch.setattr(images, "PROCESS_MIN_IMAGES", 1)
    collection = Collection(tmp_path / "c")

    def progress(task: str, done: int, total: int, note: str = "") -> None:
        if task == "embedding" and done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_folder(image_folder, collection, pixels_config(batch_size=4, checkpoint_every=4), progress)
    assert collection.load().meta.num_rows == 4  # the checkpoint before the interrupted batch
    assert multiprocessing.active_children() == []  # no decoding worker outlives the run
    report = index_folder(image_folder, collection, pixels_config(batch_size=4))
    assert report.unchanged == 4 and report.added == 11 and report.count == 15


def test_second_root_adds_rows_and_keeps_the_first(image_folder: Path, tmp_path: Path) -> None:
    from tests.conftest import write_folder

    other = tmp_path / "other"
    write_folder(other, per_class=2, seed=3, kinds=("vbars",))
    collection, _ = build(image_folder, tmp_path)
    _, report = build(other, tmp_path)
    assert report.added == 2 and report.count == 17
    meta = collection.load().meta.to_pandas()
    assert set(meta["root"]) == {str(image_folder.resolve()), str(other.resolve())}
    assert len(collection.read_manifest()["roots"]) == 2


def test_vote_label() -> None:
    assert vote_label(["a", "b", "b", None]) == ("b", 0.5, {"b": 2, "a": 1})
    assert vote_label(["a", "b"])[0] == "a"  # tie: nearest first vote wins
    assert vote_label([None, None]) == (None, 0.0, {})


def test_index_can_train_a_siamese_encoder(image_folder: Path, tmp_path: Path, fast_train) -> None:
    collection = Collection(tmp_path / "siamese")
    train = replace(fast_train, val_fraction=0.4)  # 6 held-out images of 3 labels: genuine pairs to calibrate on
    report = index_folder(image_folder, collection, IndexConfig(model="siamese", device="cpu", train=train))
    assert report.trained and report.encoder_family == "siamese" and report.count == 15
    encoder = collection.load_encoder()
    assert encoder.threshold is not None and encoder.arch["normalize"] is True
    results = Searcher(collection, use_gpu=False).query_files([image_folder / "hbars" / "0.png"], k=1)
    assert results[0].neighbours[0].path == "hbars/0.png" and results[0].neighbours[0].distance == 0.0


def test_query_files_embeds_new_images_and_reuses_stored_ones(image_folder: Path, tmp_path: Path, fast_train) -> None:
    from simsearch.io import load_image

    collection = Collection(tmp_path / "ae")
    index_folder(image_folder, collection, IndexConfig(device="cpu", train=fast_train))
    searcher = Searcher(collection, use_gpu=False)
    new = tmp_path / "new.png"
    Image.fromarray(pattern("vbars", np.random.default_rng(42))).save(new)
    indexed = image_folder / "blob" / "3.png"
    fresh = searcher.encoder.embed(np.stack([load_image(p, searcher.encoder.preprocess).array for p in (new, indexed)]))
    results = searcher.query_files([new, indexed], k=15)
    brute = np.linalg.norm(searcher.embeddings - fresh[0], axis=1)
    np.testing.assert_allclose([n.distance for n in results[0].neighbours], np.sort(brute), rtol=1e-5, atol=1e-6)
    # The indexed file's stored embedding is used: exactly 0 to itself, and within float noise of a fresh one.
    assert results[1].neighbours[0].path == "blob/3.png" and results[1].neighbours[0].distance == 0.0
    row = searcher.meta.column("path").to_pylist().index("blob/3.png")
    np.testing.assert_allclose(searcher.embeddings[row], fresh[1], atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw", pytest.param("cagra", marks=pytest.mark.gpu)])
def test_approximate_index_types_answer_like_exact_search(image_folder: Path, tmp_path: Path, kind: str) -> None:
    from simsearch import vectors

    if kind == "cagra" and not vectors.cagra_available():
        pytest.skip("this FAISS build has no CAGRA (cuVS), or sees no GPU")
    write_folder(image_folder, per_class=40, seed=4, kinds=("hbars", "vbars", "blob", "dots"))
    exact, _ = build(image_folder, tmp_path / "exact")
    approx = Collection(tmp_path / "approx")
    index_folder(image_folder, approx, pixels_config(index_type=kind))
    info = json.loads(approx.manifest_path.read_text())["index"]
    assert info["type"] == kind and info["exact"] is False and info["trained_on"] == 160
    assert info["recall_at_10"] >= 0.95 and info["recall_queries"] == 16
    snapshot = approx.load()
    assert snapshot.index.ntotal == snapshot.meta.num_rows == 160
    queries = [image_folder / "blob" / "3.png", image_folder / "dots" / "7.png"]
    want = Searcher(exact).query_files(queries, 10)
    got = Searcher(approx).query_files(queries, 10)
    for w, g in zip(want, got, strict=True):
        assert g.neighbours[0].distance == 0.0 and g.vote == w.vote
        overlap = {n.id for n in w.neighbours} & {n.id for n in g.neighbours}
        assert len(overlap) >= 8
    # Removing and changing files keeps the index consistent (HNSW cannot remove: it is rebuilt).
    (image_folder / "blob" / "3.png").unlink()
    Image.fromarray(pattern("vbars", np.random.default_rng(9))).save(image_folder / "dots" / "7.png")
    report = index_folder(image_folder, approx, pixels_config(index_type=kind))
    assert (report.removed, report.updated) == (1, 1)
    snapshot = approx.load()
    assert snapshot.index.ntotal == snapshot.meta.num_rows == 159
    assert json.loads(approx.manifest_path.read_text())["index"]["type"] == kind
    searcher = Searcher(approx)
    assert not searcher.dense_ids  # a removed id leaves a gap: rows are found by binary search
    changed = searcher.query_files([image_folder / "dots" / "7.png"], 1)[0].neighbours[0]
    assert (changed.path, changed.distance) == ("dots/7.png", 0.0)
    # Switching back to exact search needs no --rebuild: the embeddings are kept.
    report = index_folder(image_folder, approx, pixels_config(index_type="flat"))
    assert report.embedded == 0 and json.loads(approx.manifest_path.read_text())["index"]["type"] == "flat"


def test_auto_keeps_exact_search_for_small_collections_and_plans_ivf_beyond() -> None:
    from simsearch import vectors

    assert vectors.plan("auto", 1000, 64, None, None) == vectors.IndexSpec("flat")
    assert vectors.plan("auto", 1000, 64, vectors.IndexSpec("flat"), None) is None
    big = vectors.EXACT_LIMIT + 1
    assert vectors.plan("auto", big, 64, vectors.IndexSpec("flat"), None).type == "ivf"
    hnsw = vectors.IndexSpec("hnsw", hnsw_m=32, ef=64)
    assert vectors.plan("auto", big, 64, hnsw, big) is None  # an approximate type is kept
    ivf = vectors.default_spec("ivf", big, 64)
    assert vectors.plan("auto", 3 * big, 64, ivf, big) is None
    assert vectors.plan("auto", 5 * big, 64, ivf, big).nlist > ivf.nlist  # grown four-fold: retrained
    with pytest.raises(UsageError, match="index_type"):
        IndexConfig(index_type="annoy")
    if not vectors.cagra_available():
        with pytest.raises(UsageError, match="index_type='cagra' needs a GPU"):
            IndexConfig(index_type="cagra")


@pytest.mark.gpu
@pytest.mark.parametrize("float16", [False, True])
def test_gpu_search_answers_like_cpu_search(image_folder: Path, tmp_path: Path, float16: bool) -> None:
    from simsearch import vectors

    if vectors.gpu_count() == 0:
        pytest.skip("FAISS sees no GPU (CPU-only FAISS build)")
    write_folder(image_folder, per_class=40, seed=4, kinds=("hbars", "vbars", "blob", "dots"))
    collection, _ = build(image_folder, tmp_path / "c")
    queries = sorted(image_folder.rglob("*.png"))[::4]
    cpu = Searcher(collection, use_gpu=False)
    gpu = Searcher(collection, use_gpu=True, float16=float16)
    assert gpu.on_gpu and not cpu.on_gpu and gpu.float16 == float16
    for a, b in zip(cpu.query_files(queries, 10), gpu.query_files(queries, 10), strict=True):
        assert b.neighbours[0].distance == 0.0 and b.neighbours[0].id == a.neighbours[0].id
        np.testing.assert_allclose([n.distance for n in b.neighbours], [n.distance for n in a.neighbours], atol=1e-5)
        assert b.vote == a.vote
    # Re-ranking on the GPU gives the CPU's float32 distances for the same candidates.
    x = gpu.embeddings[:50] + 0.01
    d_cpu, r_cpu = cpu.search_embeddings(x, 5)
    d_gpu, r_gpu = gpu.search_embeddings(x, 5)
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-5, atol=1e-6)
    assert (r_gpu == r_cpu).mean() > 0.95  # the same rows, but for exact ties


def test_an_emptied_folder_is_refused_unless_allowed(image_folder: Path, tmp_path: Path) -> None:
    """A folder that exists but holds no image (a drive not mounted) does not empty the collection."""
    collection, _ = build(image_folder, tmp_path)
    before = collection.read_manifest()
    mount_point = tmp_path / "mnt"
    shutil.move(image_folder, mount_point)  # the images are elsewhere; the folder is there, but empty
    image_folder.mkdir()
    with pytest.raises(DataError, match=r"holds no images now, but the collection has 15 images from it .* mount it"):
        index_folder(image_folder, collection, pixels_config())
    assert collection.read_manifest() == before
    report = index_folder(image_folder, collection, pixels_config(allow_empty=True))
    assert report.removed == 15 and report.count == 0 and collection.load().meta.num_rows == 0


def test_a_moved_folder_is_recognised_and_not_indexed_twice(image_folder: Path, tmp_path: Path) -> None:
    collection, _ = build(image_folder, tmp_path)
    before = collection.load().meta
    moved = tmp_path / "renamed"
    shutil.move(image_folder, moved)
    Image.fromarray(pattern("vbars", np.random.default_rng(5))).save(moved / "vbars" / "new.png")
    report = index_folder(moved, collection, pixels_config())
    assert (report.moved_from, report.moved) == (str(image_folder.resolve()), 15)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 0, 0, 15)
    snapshot = consistent_snapshot(collection)
    assert snapshot.manifest["roots"] == [str(moved.resolve())] and snapshot.meta.num_rows == 16
    assert set(snapshot.meta.column("root").to_pylist()) == {str(moved.resolve())}
    kept = snapshot.meta.filter(pc.is_in(snapshot.meta.column("id"), before.column("id")))
    assert kept.column("path").to_pylist() == before.column("path").to_pylist()  # same rows, same ids
    np.testing.assert_array_equal(embeddings_of(kept), embeddings_of(before))
    # A folder whose old path still exists is another folder: its images are added (a copy is not a move).
    shutil.copytree(moved, image_folder)
    assert index_folder(image_folder, collection, pixels_config()).added == 16


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_a_trained_index_type_on_too_few_images_is_one_clear_error(image_folder: Path, tmp_path: Path, kind) -> None:
    from typer.testing import CliRunner

    from simsearch.cli import app

    two = tmp_path / "two"
    for name in ("a/0.png", "b/0.png"):
        (two / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image_folder / "blob" / "0.png", two / name)
    args = ["index", str(two), "--home", str(tmp_path / "home"), "--model", "pixels", "--type", kind]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if line] == [
        f"Error: --type {kind} needs at least 100 images to train on, and the collection would hold 2 — use --type "
        "flat (exact search, and fast at this size)"
    ]
    assert not (tmp_path / "home" / "default").exists()  # refused before anything was trained or written
    # Fewer than expected once unreadable files are skipped: the embeddings are kept, the error said after.
    for i in range(99):
        shutil.copy(image_folder / "blob" / "0.png", two / "a" / f"{i}.png")
    for i in range(5):
        (two / "a" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    collection = Collection(tmp_path / "home" / "c")
    with pytest.raises(UsageError, match=r"would hold 95 .*the new embeddings were committed"):
        index_folder(two, collection, pixels_config(index_type=kind))
    assert consistent_snapshot(collection).meta.num_rows == 95


def test_faiss_refusing_a_build_keeps_the_embeddings(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    from simsearch import vectors

    write_folder(image_folder, per_class=40, seed=4)
    collection = Collection(tmp_path / "c")

    def refuse(*args, **kwargs):
        raise RuntimeError("Error in faiss::Clustering::train at Clustering.cpp:66: Error: 'nx >= k' failed\n  more")

    monkeypatch.setattr(vectors, "build_tuned", refuse)
    with pytest.raises(CollectionError, match=r"FAISS could not build the ivf index \(Error in faiss::Clustering"):
        index_folder(image_folder, collection, pixels_config(index_type="ivf"))
    assert consistent_snapshot(collection).meta.num_rows == 120
