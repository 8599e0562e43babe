"""Bad input never costs work: the bad-input corpus through ``index``, ``--strict``, a full disk, a read-only folder.

The corpus (tests/corpus.py) is generated here; no data files. Files are made unreadable with chmod, and where
the tests run as root (who reads everything anyway) the refusal is simulated at ``open``.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFile
from typer.testing import CliRunner

from simsearch.cli import app
from simsearch.collection import Collection, embeddings_of
from simsearch.images import MAX_PIXELS
from simsearch.indexing import IndexConfig, index_folder
from simsearch.search import Searcher
from tests.conftest import run_with_timeout
from tests.corpus import NON_UTF8_NAME, NON_UTF8_REL, Corpus, write_corpus

GOOD = 15  # the images of the image_folder fixture


def deny_reading(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``paths`` unreadable. chmod 0 does it for ordinary users; root reads everything, so for root
    ``open`` refuses them the way the kernel would (PermissionError, EACCES)."""
    blocked = {os.path.realpath(p) for p in paths if os.access(p, os.R_OK)}
    if not blocked:
        return
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and os.fsdecode(os.path.realpath(file)) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # pathlib's read_bytes goes through io.open


def forbid_decoding_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (AssertionError is caught nowhere in simsearch) if pixels over the limit are ever decoded."""
    real_load = ImageFile.ImageFile.load

    def load(self):
        assert self.size[0] * self.size[1] <= MAX_PIXELS, f"decoded a {self.size} image: bomb not refused"
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.fixture
def corpus(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    """The image_folder fixture's 15 good images plus the whole bad-input corpus beside them."""
    corpus = write_corpus(image_folder)
    deny_reading(corpus.unreadable, monkeypatch)
    forbid_decoding_bombs(monkeypatch)
    return corpus


def pixels_config(**changes) -> IndexConfig:
    return IndexConfig(**{"model": "pixels", "device": "cpu", "workers": 2, **changes})


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def collection_state(collection: Collection) -> tuple[dict, list[str], int]:
    """What must not change when a run fails: the manifest, the folder's file names, the rows that load."""
    snapshot = collection.load()
    return collection.read_manifest(), sorted(p.name for p in collection.path.iterdir()), snapshot.meta.num_rows


# ----------------------------------------------------------------------------------------------------------------
# 1. the bad-input corpus


def test_corpus_is_indexed_around_every_bad_file(corpus: Corpus, image_folder: Path, tmp_path: Path) -> None:
    assert corpus.bad_inputs >= 25
    collection = Collection(tmp_path / "c")
    # A FIFO or a symlink loop must not hang the scan: fail the test instead of the suite.
    report = run_with_timeout(lambda: index_folder(image_folder, collection, pixels_config()), 120)

    reasons = {s.rel: s.reason for s in report.skipped}
    assert set(reasons) == set(corpus.skipped)
    for rel, pattern in corpus.skipped.items():
        assert re.search(pattern, reasons[rel]), (rel, reasons[rel])
    snapshot = collection.load()
    meta = snapshot.meta.to_pandas().set_index("path")
    good = {f"{kind}/{i}.png" for kind in ("hbars", "vbars", "blob") for i in range(5)}
    assert len(good) == GOOD
    assert set(meta.index) == good | set(corpus.indexed)
    assert report.count == snapshot.index.ntotal == GOOD + len(corpus.indexed)
    for rel, (width, height) in corpus.indexed.items():  # the size as displayed: EXIF rotation applied
        assert (meta.loc[rel, "width"], meta.loc[rel, "height"]) == (width, height), rel
    # Every odd image has a usable embedding: finite, and not the blank page a failed conversion gives.
    embeddings = embeddings_of(snapshot.meta)
    assert np.isfinite(embeddings).all()
    odd_rows = [snapshot.meta.column("path").to_pylist().index(rel) for rel in corpus.indexed]
    assert all(
        embeddings[row].std() > 0 for row in odd_rows if corpus.indexed[snapshot.meta["path"][row].as_py()] != (1, 1)
    )
    # The skipped list is stored with the collection, reasons and all.
    assert {r["path"]: r["reason"] for r in snapshot.skipped.to_pylist()} == reasons
    # The odd images answer queries, the non-UTF-8 name included.
    queries = [
        image_folder / "odd" / "16bit.png",
        Path(os.fsdecode(os.fsencode(image_folder / "odd") + b"/" + NON_UTF8_NAME)),
    ]
    results = Searcher(collection, use_gpu=False).query_files(queries, k=3)
    assert [r.neighbours[0].path for r in results] == ["odd/16bit.png", NON_UTF8_REL]
    # Nothing changed: the next run decodes nothing and commits nothing.
    again = index_folder(image_folder, collection, pixels_config())
    assert (again.embedded, again.removed, again.committed) == (0, 0, False)
    assert {s.rel for s in again.skipped} == set(corpus.skipped)


def test_cli_index_lists_every_skipped_file_with_its_reason(corpus: Corpus, image_folder: Path, tmp_path: Path) -> None:
    result = invoke("index", image_folder, "--home", tmp_path, "--model", "pixels", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = {
        cells[0]: cells[1]
        for line in result.stdout.splitlines()
        if line.count("│") == 3 and len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2
    }
    assert rows["skipped"] == str(len(corpus.skipped))
    assert rows["images in collection"] == str(GOOD + len(corpus.indexed))
    for rel in corpus.skipped:
        assert rel in result.stdout, rel


def test_strict_names_the_first_bad_file_and_keeps_the_previous_collection(
    corpus: Corpus, image_folder: Path, tmp_path: Path
) -> None:
    # The collection as it was before the corpus arrived: the 15 good images.
    collection = Collection(tmp_path / "default")
    bad = [image_folder / "bad", image_folder / "odd", image_folder / "x.png"]
    for folder in bad:
        folder.rename(tmp_path / f"aside-{folder.name}")
    index_folder(image_folder, collection, pixels_config())
    for folder in bad:
        (tmp_path / f"aside-{folder.name}").rename(folder)
    before = collection_state(collection)

    result = invoke("index", image_folder, "--home", tmp_path, "--strict")
    assert result.exit_code == 1
    # Files that cannot be read are found by the scan, before anything is decoded: the first of them in path order.
    first = sorted(rel for rel in corpus.skipped if not re.search("decod|bomb|limit", corpus.skipped[rel]))[0]
    assert error_lines(result) == [
        f"Error: {image_folder / first}: could not be read: No such file or directory — fix or remove it, "
        "or drop --strict"
    ]
    assert collection_state(collection) == before


def test_strict_on_undecodable_files_writes_nothing(image_folder: Path, tmp_path: Path) -> None:
    """Files that only fail when decoded fail --strict during embedding: even a freshly trained encoder is not kept."""
    corpus = write_corpus(tmp_path / "corpus")
    for rel, pattern in corpus.skipped.items():
        if re.search("decod|bomb", pattern):
            (image_folder / rel).parent.mkdir(exist_ok=True)
            (tmp_path / "corpus" / rel).rename(image_folder / rel)
    result = invoke(
        "index", image_folder, "--home", tmp_path / "home", "--strict",
        "--epochs", "1", "--max-seconds", "5", "--dim", "4", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert error_lines(result) == [
        f"Error: {image_folder / 'bad' / 'bad-idat.png'}: could not be decoded (broken data stream when reading "
        "image file) — fix or remove it, or drop --strict"
    ]
    assert not (tmp_path / "home" / "default").exists()
