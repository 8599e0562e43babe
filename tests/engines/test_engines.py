"""The engine seam: the collection ``index`` makes does not depend on the engine that embeds.

A second ``Embedder``, written here and nowhere in simsearch, loads and embeds in the calling thread one image
at a time; it must index a folder to exactly the collection the default (local) engine makes — rows, ids,
sha256, labels, embeddings bit for bit, skipped list, FAISS vectors — with bad files, NaN embeddings, and an
incremental second run. Also: the plan is data, and the observer sees each step of a run in order.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterable
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

import simsearch.io.pipeline
from simsearch import progress
from simsearch.engines import EmbeddedBatch, Embedder, Result, Row, Skip
from simsearch.engines.local import LocalEngine
from simsearch.errors import DataError, ImageError, UsageError
from simsearch.indexing import IndexConfig, index_folder, plan_sync
from simsearch.io import LoadJob, find_images, load_image
from simsearch.models.encoder import Encoder
from simsearch.store.collection import Collection, embeddings_of
from tests.conftest import consistent_snapshot, pattern
from tests.indexing.test_indexing import write_broken_files


class InlineEmbedder:
    """Reads, decodes and embeds each file in the calling thread, one at a time."""

    def __init__(self) -> None:
        self.jobs: list[LoadJob] = []

    def embed(self, encoder: Encoder, jobs: Iterable[LoadJob], total: int) -> Generator[EmbeddedBatch, None, None]:
        for job in jobs:
            self.jobs.append(job)
            results: list[Result] = []
            for path, name, known in zip(job.paths, job.names, job.known_sha256, strict=True):
                try:
                    image = load_image(path, encoder.preprocess, name, known)
                except ImageError as exc:
                    results.append(Skip.of(exc, name))
                    continue
                results.append(None if image is None else Row.of(image, encoder.embed(image.array[None])[0]))
            yield EmbeddedBatch(job, results)


def poison_flat_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder gives a NaN embedding for an image of one flat colour, whatever batch it comes in."""
    real = Encoder.embed

    def embed(self: Encoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = real(self, images, batch_size)
        flat = images.reshape(len(images), -1)
        out[(flat == flat[:, :1]).all(axis=1)] = np.nan
        return out

    monkeypatch.setattr(Encoder, "embed", embed)


def assert_same_collection(a: Collection, b: Collection) -> None:
    sa, sb = consistent_snapshot(a), consistent_snapshot(b)
    assert sa.meta.equals(sb.meta)  # ids, paths, roots, labels, sha256, sizes, mtimes, embeddings
    assert embeddings_of(sa.meta).tobytes() == embeddings_of(sb.meta).tobytes()  # bit for bit
    assert sa.skipped.equals(sb.skipped)
    ids_a, ids_b = faiss.vector_to_array(sa.index.id_map), faiss.vector_to_array(sb.index.id_map)
    np.testing.assert_array_equal(ids_a, ids_b)
    vectors_a = np.stack([sa.index.index.reconstruct(i) for i in range(sa.index.ntotal)])
    vectors_b = np.stack([sb.index.index.reconstruct(i) for i in range(sb.index.ntotal)])
    assert vectors_a.tobytes() == vectors_b.tobytes()
    volatile = ("created", "updated")
    assert {k: v for k, v in sa.manifest.items() if k not in volatile} == {
        k: v for k, v in sb.manifest.items() if k not in volatile
    }
    assert sa.manifest["sha256"] == sb.manifest["sha256"]  # the very same files


def summary(report) -> tuple:
    return (
        report.added, report.updated, report.removed, report.unchanged, report.count, report.generation,
        [(s.rel, s.reason) for s in report.skipped],
    )  # fmt: skip


@pytest.mark.parametrize("decoding", ["threads", "processes"])
def test_another_engine_makes_exactly_the_same_collection(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoding: str
) -> None:
    if decoding == "processes":
        monkeypatch.setattr(simsearch.io.pipeline, "PROCESS_MIN_IMAGES", 1)
    poison_flat_images(monkeypatch)
    write_broken_files(image_folder)
    Image.new("L", (16, 16), 255).save(image_folder / "blob" / "white.png")  # a NaN embedding: skipped
    config = IndexConfig(model="pixels", device="cpu", workers=2, batch_size=4, checkpoint_every=4)
    local, inline = Collection(tmp_path / "local"), Collection(tmp_path / "inline")
    engine = InlineEmbedder()

    first = index_folder(image_folder, local, config)
    assert summary(index_folder(image_folder, inline, config, engine=engine)) == summary(first)
    assert first.added == 15 and len(first.skipped) == 4 and first.generation == 5
    assert "the encoder gave a NaN or infinite embedding" in dict(summary(first)[-1])["blob/white.png"]
    assert_same_collection(local, inline)

    # Since then: one file deleted, one changed, one added, a broken one fixed, the white one changed.
    rng = np.random.default_rng(3)
    (image_folder / "blob" / "0.png").unlink()
    Image.fromarray(pattern("hbars", rng)).save(image_folder / "vbars" / "1.png")
    Image.fromarray(pattern("blob", rng)).save(image_folder / "blob" / "new.png")
    shutil.copy(image_folder / "blob" / "1.png", image_folder / "broken" / "truncated.png")
    Image.fromarray(pattern("dots", rng)).save(image_folder / "blob" / "white.png")
    engine.jobs.clear()
    second = index_folder(image_folder, local, config)
    assert summary(index_folder(image_folder, inline, config, engine=engine)) == summary(second)
    assert (second.added, second.updated, second.removed, second.unchanged) == (3, 1, 1, 13)
    assert_same_collection(local, inline)
    # The engine was told each indexed file's sha256 (unchanged ones are not decoded), and nothing of new ones.
    known = {name: sha for job in engine.jobs for name, sha in zip(job.names, job.known_sha256, strict=True)}
    stored = dict(
        zip(*(consistent_snapshot(inline).meta.column(c).to_pylist() for c in ("path", "sha256")), strict=True)
    )
    assert known["hbars/0.png"] == stored["hbars/0.png"] and known["blob/new.png"] is None
    assert known["broken/truncated.png"] is None and "broken/empty.png" not in known  # the scan skips it

    # A strict run fails at the same file, in path order, whichever engine embeds.
    (image_folder / "hbars" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(pattern("vbars", rng)).save(image_folder / "hbars" / "zz-new.png")
    for collection, chosen in ((local, None), (inline, engine)):
        with pytest.raises(DataError, match=r"broken/empty\.png"):
            index_folder(
                image_folder, collection, IndexConfig(model="pixels", device="cpu", strict=True), engine=chosen
            )
    (image_folder / "broken").rename(tmp_path / "broken")
    for collection, chosen in ((local, None), (inline, engine)):
        with pytest.raises(DataError, match=r"hbars/zz-broken\.png: "):
            index_folder(
                image_folder, collection, IndexConfig(model="pixels", device="cpu", strict=True), engine=chosen
            )
    assert_same_collection(local, inline)


def test_the_local_engine_keeps_job_order_and_reasons(image_folder: Path) -> None:
    write_broken_files(image_folder)
    entries, _ = find_images(image_folder)
    from simsearch.io import Preprocess
    from simsearch.training import pixels_encoder

    encoder = pixels_encoder(Preprocess(size=(16, 16), channels=1))
    jobs = [
        LoadJob([e.path for e in entries[i : i + 4]], [e.rel for e in entries[i : i + 4]], [None] * 4)
        for i in range(0, len(entries), 4)
    ]
    engine: Embedder = LocalEngine(workers=2, batch_size=3)
    got = list(engine.embed(encoder, iter(jobs), len(entries)))
    want = list(InlineEmbedder().embed(encoder, iter(jobs), len(entries)))
    assert_same_batches(got, want, jobs)


def assert_same_batches(got: list[EmbeddedBatch], want: list[EmbeddedBatch], jobs: list[LoadJob], atol: float = 0.0):
    """Two engines' batches for ``jobs``: in order, one result per file, the same facts and skip reasons, and the
    same embeddings (bit for bit; within ``atol`` where the engines may batch differently)."""
    assert [b.job for b in got] == jobs
    for a, b in zip(got, want, strict=True):
        assert [type(r) for r in a.results] == [type(r) for r in b.results]
        for x, y in zip(a.results, b.results, strict=True):
            if isinstance(x, Row):
                assert isinstance(y, Row)
                assert (x.sha256, x.bytes, x.width, x.height) == (y.sha256, y.bytes, y.width, y.height)
                if atol:
                    np.testing.assert_allclose(x.embedding, y.embedding, rtol=0, atol=atol)
                else:
                    assert x.embedding.tobytes() == y.embedding.tobytes()
            else:
                assert x == y


def test_the_plan_is_data(image_folder: Path, tmp_path: Path) -> None:
    collection = Collection(tmp_path / "c")
    index_folder(image_folder, collection, IndexConfig(model="pixels", device="cpu"))
    snapshot = collection.load()
    root = str(image_folder.resolve())
    (image_folder / "blob" / "0.png").unlink()
    Image.fromarray(pattern("blob", np.random.default_rng(1))).save(image_folder / "blob" / "new.png")
    entries, _ = find_images(image_folder)
    plan = plan_sync(root, entries, snapshot.meta, snapshot.manifest["roots"], snapshot.manifest["next_id"])
    stored = {
        p: (i, s)
        for p, i, s in zip(*(snapshot.meta.column(c).to_pylist() for c in ("path", "id", "sha256")), strict=True)
    }
    assert [t.entry.rel for t in plan.load] == [e.rel for e in entries]
    assert {t.entry.rel: (t.row_id, t.sha256) for t in plan.load if t.row_id is not None} == {
        p: v for p, v in stored.items() if p != "blob/0.png"
    }
    assert plan.remove == (stored["blob/0.png"][0],) and plan.next_id == 15 and plan.moved_from is None
    assert [len(job.paths) for job in plan.jobs(4)] == [4, 4, 4, 3]
    # A moved folder: the rows of the root that is gone are taken over.
    moved = plan_sync("/elsewhere", entries, snapshot.meta, [root], 15, exists=lambda path: False)
    assert moved.moved_from == root and moved.moved == 14 and moved.remove == plan.remove
    # The checks come with the plan, before anything is trained or written.
    with pytest.raises(DataError, match="holds no images now"):
        plan_sync(root, [], snapshot.meta, [root], 15)
    assert plan_sync(root, [], snapshot.meta, [root], 15, allow_empty=True).remove == tuple(
        sorted(i for i, _ in stored.values())
    )
    with pytest.raises(DataError, match="no images found"):
        plan_sync(root, [], None, [], 0)
    with pytest.raises(UsageError, match="index_type='ivf' needs at least 100 images"):
        plan_sync(root, entries, snapshot.meta, [root], 15, index_type="ivf")


def test_the_observer_sees_each_step_in_order(image_folder: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    config = IndexConfig(model="pixels", device="cpu", workers=1, batch_size=8, checkpoint_every=8)
    with progress.observing(lambda event, subject: seen.append(progress.describe(event, subject))):
        index_folder(image_folder, Collection(tmp_path / "c"), config)
    assert progress.observer() is None
    # A checkpoint writes its segment and the manifest: the skipped list is unchanged, a flat index has no file.
    commit = [
        "journal written .pending.json",
        "wrote temporary segment-#.parquet",
        "renamed segment-#.parquet",
        "wrote temporary manifest.json",
        "renamed manifest.json",
        "removing stale files",
        "removed stale files",
    ]
    decoded = sorted(f"decoded {p.relative_to(image_folder).as_posix()}" for p in image_folder.rglob("*.png"))
    events = [
        line.replace("000001", "#").replace("000002", "#").replace("000003", "#")
        for line in seen
        if not line.startswith("decoded ")
    ]
    # The raw-pixels encoder is made on the spot, and committed first (with its folder), before any embedding.
    first = [
        "journal written .pending.json",
        "wrote temporary encoder/",
        "renamed encoder/",
        "wrote temporary skipped-#.parquet",
        "renamed skipped-#.parquet",
        *commit[3:],
    ]
    assert events == [*first, "embedded a batch of 8", *commit, "embedded a batch of 7", *commit]
    assert sorted(line for line in seen if line.startswith("decoded ")) == decoded
    assert seen.index("embedded a batch of 8") == len(first) + 8  # after the 8 images it embeds were decoded
