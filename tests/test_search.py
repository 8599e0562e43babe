"""The searcher: answers from files, arrays and embeddings (the files embedded as verify and eval embed them), the
cosine metric, and a searcher a server can hold: ``reload_if_newer`` and queries on several threads."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch import vectors
from simsearch.embedding import embed_files
from simsearch.errors import CollectionError, ImageError
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import Preprocess
from simsearch.models.baseline import PixelEncoder
from simsearch.models.encoder import Encoder
from simsearch.search import Searcher
from simsearch.store.collection import Collection
from simsearch.verification import Verifier
from tests.conftest import pattern, write_folder


def pixels_config(model: str = "pixels") -> IndexConfig:
    return IndexConfig(model=model, device="cpu", workers=1)


@pytest.fixture
def built(quick_tmp: Path) -> tuple[Collection, Path]:
    """A pixels collection of 15 images (hbars, vbars, blob) in RAM, and the folder it indexes."""
    images = quick_tmp / "images"
    write_folder(images)
    collection = Collection(quick_tmp / "c")
    index_folder(images, collection, pixels_config())
    return collection, images


def paths_of(searcher: Searcher) -> set[str]:
    return set(searcher.meta.column("path").to_pylist())


# --- answers ---------------------------------------------------------------------------------------------------


def test_query_files_embeds_as_verify_does_and_answers_exactly(built: tuple[Collection, Path], tmp_path: Path) -> None:
    collection, images = built
    searcher = Searcher(collection, use_gpu=False)
    fresh = tmp_path / "fresh.png"
    Image.fromarray(pattern("hbars", np.random.default_rng(9))).save(fresh)
    [indexed, new] = searcher.query_files([images / "vbars" / "2.png", fresh], k=15)
    assert indexed.neighbours[0].path == "vbars/2.png" and indexed.neighbours[0].distance == 0.0
    assert indexed.vote == "vbars" and new.vote == "hbars"
    # The query's embedding is the one embed_files (verify's and eval's path) makes, and its distances are
    # vectors.distances to the stored embeddings, nearest first.
    z = Verifier(searcher.encoder).embed_files([fresh])
    np.testing.assert_array_equal(z, embed_files(searcher.encoder, [fresh], convert=False).embeddings)
    rows = [searcher.meta.column("path").to_pylist().index(n.path) for n in new.neighbours]
    expected = vectors.distances(np.repeat(z, len(rows), 0), searcher.embeddings[rows], searcher.metric)
    np.testing.assert_allclose([n.distance for n in new.neighbours], expected, rtol=1e-6)
    assert [n.distance for n in new.neighbours] == sorted(n.distance for n in new.neighbours)


def test_unreadable_query_files_raise_or_are_listed(built: tuple[Collection, Path], tmp_path: Path) -> None:
    collection, images = built
    searcher = Searcher(collection, use_gpu=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    good = images / "blob" / "1.png"
    with pytest.raises(ImageError, match=r"broken\.png"):
        searcher.query_files([good, broken], k=2)
    errors: list[ImageError] = []
    results = searcher.query_files([broken, good, broken], k=2, on_error=errors.append, batch_size=2)
    assert [r.query for r in results] == [str(good)] and len(errors) == 2


def test_a_colour_query_is_converted_to_the_collections_grey(built: tuple[Collection, Path], tmp_path: Path) -> None:
    """Query converts channels as index and verify do, and refuses them with channels='strict': one rule (io.channels)."""
    collection, images = built
    searcher = Searcher(collection, use_gpu=False)
    colour, grey = tmp_path / "colour.png", tmp_path / "grey.png"
    with Image.open(images / "hbars" / "3.png") as image:
        rgb = np.asarray(image.convert("RGB")).copy()
    rgb[::3, :, 0] = 255  # red stripes: a colour image
    Image.fromarray(rgb).save(colour)
    Image.fromarray(rgb).convert("L").save(grey)
    [as_colour, as_grey] = searcher.query_files([colour, grey], k=5)
    assert as_colour.neighbours == as_grey.neighbours and as_colour.vote == "hbars"
    with pytest.raises(ImageError, match="pass channels='convert'"):
        embed_files(searcher.encoder, [colour], channels="strict", strict=True)
    lenient = embed_files(searcher.encoder, [colour], convert=False)
    assert lenient.kept == [] and [n for n, _ in lenient.errors] == [0]


def cosine_model(folder: Path) -> Path:
    """A pixels encoder (16×16 grey) whose metric is cosine, saved as a model folder."""
    arch = {"channels": 1, "size": [16, 16], "dim": 256}
    encoder = Encoder("pixels", arch, Preprocess(size=(16, 16)), PixelEncoder(**arch), metric="cosine")
    encoder.save(folder)
    return folder


def test_a_cosine_collection_answers_in_one_minus_cosine_like_verify(
    built: tuple[Collection, Path], tmp_path: Path
) -> None:
    _, images = built
    collection = Collection(tmp_path / "cos")
    index_folder(images, collection, pixels_config(str(cosine_model(tmp_path / "model"))))
    searcher = Searcher(collection, use_gpu=False)
    assert searcher.metric == searcher.encoder.metric == "cosine"
    query = tmp_path / "q.png"
    Image.fromarray(pattern("blob", np.random.default_rng(5))).save(query)
    [result] = searcher.query_files([query], k=3)
    verifier = Verifier(searcher.encoder)
    for n in result.neighbours:
        za, zb = verifier.embed_files([query, images / n.path])
        cosine = float(za @ zb / np.linalg.norm(za) / np.linalg.norm(zb))
        assert n.distance == pytest.approx(1 - cosine, abs=1e-6)
        assert n.distance == pytest.approx(float(verifier.distances(za[None], zb[None])[0]), abs=1e-6)


def test_a_collection_whose_metric_is_not_its_encoders_is_refused(
    built: tuple[Collection, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection, images = built
    cosine = Collection(tmp_path / "cos")
    index_folder(images, cosine, pixels_config(str(cosine_model(tmp_path / "model"))))
    l2_encoder = collection.load_encoder()
    monkeypatch.setattr(Collection, "load_encoder", lambda self, manifest=None, device="cpu": l2_encoder)
    with pytest.raises(CollectionError, match=r"metric \(cosine\) is not its encoder's \(l2\)"):
        Searcher(cosine, use_gpu=False)


# --- a searcher a server holds -----------------------------------------------------------------------------------


def test_reload_if_newer_switches_to_a_committed_generation(built: tuple[Collection, Path]) -> None:
    collection, images = built
    searcher = Searcher(collection, use_gpu=False)
    first = searcher.generation
    assert not searcher.reload_if_newer()
    write_folder(images, kinds=("dots",))  # five new images
    index_folder(images, collection, pixels_config())
    dots = images / "dots" / "4.png"
    assert searcher.count == 15 and searcher.query_files([dots], k=1)[0].neighbours[0].path != "dots/4.png"
    assert searcher.reload_if_newer()
    assert searcher.generation > first and searcher.count == 20 and "dots/4.png" in paths_of(searcher)
    [result] = searcher.query_files([dots], k=3)
    assert result.neighbours[0].path == "dots/4.png" and result.neighbours[0].distance == 0.0
    assert result.vote == "dots"
    assert not searcher.reload_if_newer()


def test_reload_if_newer_reads_nothing_when_nothing_changed(
    built: tuple[Collection, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    collection, images = built
    searcher = Searcher(collection, use_gpu=False)
    calls = {"load": 0, "read_manifest": 0, "load_encoder": 0}
    for name in calls:
        original = getattr(Collection, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Collection, name, counted)

    def reloads(times: int = 3) -> tuple[list[bool], dict[str, int]]:
        """What ``times`` calls of reload_if_newer answer, and what they read."""
        before = dict(calls)
        answers = [searcher.reload_if_newer() for _ in range(times)]
        return answers, {name: calls[name] - before[name] for name in calls}

    nothing = {"load": 0, "read_manifest": 0, "load_encoder": 0}
    assert reloads() == ([False] * 3, nothing)  # a stat of the manifest, nothing read
    index_folder(images, collection, pixels_config())  # an unchanged folder: nothing committed
    assert reloads() == ([False] * 3, nothing)
    # The same manifest written again (a new file, same content): read once, nothing loaded.
    manifest = collection.manifest_path
    shutil.copy2(manifest, manifest.with_name("copy.json"))
    os.replace(manifest.with_name("copy.json"), manifest)
    assert reloads() == ([False] * 3, {**nothing, "read_manifest": 1})
    # A commit: one load, and the encoder (same fingerprint) is kept rather than loaded again.
    encoder = searcher.encoder
    (images / "blob" / "0.png").unlink()
    index_folder(images, collection, pixels_config())
    assert reloads() == ([True, False, False], {"load": 1, "read_manifest": 2, "load_encoder": 0})
    assert searcher.encoder is encoder and searcher.count == 14


def needs_gpu(use_gpu: bool) -> None:
    if use_gpu and vectors.gpu_count() == 0:
        pytest.skip("FAISS sees no GPU (CPU-only FAISS build)")


ON_CPU_AND_GPU = pytest.mark.parametrize("use_gpu", [False, pytest.param(True, marks=pytest.mark.gpu)])


@ON_CPU_AND_GPU
def test_threads_query_while_another_reloads(built: tuple[Collection, Path], use_gpu: bool) -> None:
    """Readers on several threads during reloads: no exception, and every answer is one generation's, whole.
    On a GPU, the FAISS searches take turns and each generation's GPU re-ranker is made by the first query."""
    needs_gpu(use_gpu)
    collection, images = built
    small = {p.relative_to(images).as_posix() for p in images.rglob("*.png")}
    write_folder(images / "..", kinds=("spare",))  # images to add and remove between generations
    spare = images.parent / "spare"
    large = small | {f"dots/{p.name}" for p in spare.iterdir()}
    searcher = Searcher(collection, use_gpu=use_gpu)
    assert searcher.on_gpu == use_gpu
    query = images / "hbars" / "0.png"
    stop = threading.Event()
    start = threading.Barrier(5)
    seen: list[int] = []
    problems: list[BaseException] = []

    def reader() -> None:
        start.wait()
        try:
            while not stop.is_set():
                [result] = searcher.query_files([query], k=50)
                names = {n.path for n in result.neighbours}
                assert names in (small, large), names
                assert result.neighbours[0].path == "hbars/0.png" and result.neighbours[0].distance == 0.0
                distances, rows = searcher.search_embeddings(np.zeros((2, 256), np.float32), 50)
                assert distances.shape == rows.shape and distances.shape[1] in (len(small), len(large))
                seen.append(len(names))
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    reloads = 0
    try:
        for step in range(6):
            if step % 2 == 0:
                shutil.copytree(spare, images / "dots")
            else:
                shutil.rmtree(images / "dots")
            index_folder(images, collection, pixels_config())
            reloads += searcher.reload_if_newer()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not problems, problems[0]
    assert reloads == 6 and len(seen) > 6 and set(seen) == {len(small), len(large)}


@ON_CPU_AND_GPU
def test_lazy_caches_are_built_once_under_threads(built: tuple[Collection, Path], use_gpu: bool) -> None:
    needs_gpu(use_gpu)
    collection, _ = built
    generation = Searcher(collection, use_gpu=use_gpu).current
    assert generation.rerank_on_gpu == use_gpu
    start = threading.Barrier(8)
    tables: list[tuple[int, ...]] = []

    def first_use() -> None:
        start.wait()
        tables.append((id(generation.content()), id(generation.rerank())) if use_gpu else (id(generation.content()),))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(tables) == 8 and len(set(tables)) == 1
