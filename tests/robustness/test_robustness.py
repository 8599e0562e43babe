"""Bad input never costs work: the bad-input corpus through ``index``, ``--strict``, a full disk, a read-only folder.

The corpus (tests/robustness/corpus.py) is generated here; no data files. Files are made unreadable with chmod, and where
the tests run as root (who reads everything anyway) the refusal is simulated at ``open``. A full disk and a
read-only folder are simulated by writers that fail the way the kernel does (every write step, one at a time),
and, where the tests may mount, are real: a 2 MB tmpfs, filled up, then remounted read-only.
"""

from __future__ import annotations

import builtins
import errno
import importlib
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from simsearch import vectors
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import MAX_PIXELS
from simsearch.search import Searcher
from simsearch.store.collection import Collection, embeddings_of
from tests.conftest import consistent_snapshot, pattern, run_with_timeout
from tests.helpers import error_lines, invoke
from tests.robustness.corpus import NON_UTF8_NAME, NON_UTF8_REL, Corpus, write_corpus

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
    for rel, regex in corpus.skipped.items():
        assert re.search(regex, reasons[rel]), (rel, reasons[rel])
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
    for rel, regex in corpus.skipped.items():
        if re.search("decod|bomb", regex):
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


# ----------------------------------------------------------------------------------------------------------------
# 6. a full disk and a read-only folder


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file in a collection folder with its content (what a failed commit must leave byte for byte)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def add_images(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(pattern("blob", rng)).save(folder / "blob" / f"new-{seed}-{i}.png")


def failing(real, errno_: int, nth: int = 1):
    """``real``, except that its ``nth`` call raises OSError(errno_) the way the kernel reports it."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(errno_, os.strerror(errno_))
        return real(*args, **kwargs)

    return wrapper


def add_changes(folder: Path) -> None:
    """Three new images and an unreadable file: a commit that writes a segment, the skipped list, and (in an HNSW
    collection) the index file, then the manifest."""
    add_images(folder, 3, seed=1)
    (folder / "blob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")


# (what fails, its nth call, errno) → the file the error names. The commit writes, in order: the journal, the new
# segment, the skipped list, the HNSW index, the manifest.
WRITE_FAILURES = {
    "segment-parquet-disk-full": ("pyarrow.parquet.write_table", 1, errno.ENOSPC, "segment-000003.parquet"),
    "skipped-parquet-quota": ("pyarrow.parquet.write_table", 2, errno.EDQUOT, "skipped-000003.parquet"),
    "vectors-disk-full": ("faiss.write_index", 1, errno.ENOSPC, "vectors-000003.faiss"),
    "manifest-disk-full": ("pathlib.Path.write_text", 1, errno.ENOSPC, "manifest.json"),
    "journal-read-only": ("os.open", 1, errno.EROFS, ".pending.json"),
    "fsync-io-error": ("os.fsync", 5, errno.EIO, "skipped-000003.parquet"),
    "rename-read-only": ("os.replace", 1, errno.EROFS, "segment-000003.parquet"),
    "create-read-only": ("os.open", 3, errno.EROFS, "segment-000003.parquet"),
    "create-permission-denied": ("os.open", 7, errno.EACCES, "vectors-000003.faiss"),
    "manifest-rename-read-only": ("os.replace", 4, errno.EROFS, "manifest.json"),
}


@pytest.mark.parametrize("case", sorted(WRITE_FAILURES))
def test_a_failing_write_keeps_the_previous_generation(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    target, nth, code, name = WRITE_FAILURES[case]
    collection = Collection(tmp_path / "default")
    index_folder(image_folder, collection, pixels_config(index_type="hnsw"))
    before = files_of(collection.path)
    add_changes(image_folder)
    module, attribute = target.rsplit(".", 1)
    owner = Path if module == "pathlib.Path" else importlib.import_module(module)
    with monkeypatch.context() as patch:
        patch.setattr(owner, attribute, failing(getattr(owner, attribute), code, nth))
        result = invoke("index", image_folder, "--home", tmp_path, "--type", "hnsw")
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: {collection.path}: could not write {name} ({os.strerror(code)}) — the collection is as it was "
        "(generation 2, 15 images); free some space or make the folder writable, then run the same command again"
    ]
    assert files_of(collection.path) == before  # byte for byte: no new generation, no temporary file
    assert consistent_snapshot(collection).meta.num_rows == 15
    again = invoke(
        "index", image_folder, "--home", tmp_path, "--type", "hnsw"
    )  # the problem fixed, the same command resumes
    assert again.exit_code == 0, again.output
    assert consistent_snapshot(collection).meta.num_rows == 18


def test_a_failure_after_the_switch_says_the_generation_was_committed(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = Collection(tmp_path / "default")
    index_folder(image_folder, collection, pixels_config(index_type="hnsw"))
    add_changes(image_folder)
    # The journal and each of the four files is fsynced, then its folder: the 10th fsync is the folder's, after the
    # manifest swap.
    monkeypatch.setattr(os, "fsync", failing(os.fsync, errno.EIO, nth=10))
    result = invoke("index", image_folder, "--home", tmp_path, "--type", "hnsw")
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: {collection.path}: generation 3 was committed, but then {os.strerror(errno.EIO)} (manifest.json) "
        "— check the disk before trusting this collection"
    ]
    assert consistent_snapshot(collection).meta.num_rows == 18


def test_a_failing_encoder_write_keeps_the_previous_encoder(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_train
) -> None:
    import simsearch.models.encoder

    collection = Collection(tmp_path / "default")
    index_folder(image_folder, collection, pixels_config())
    before = files_of(collection.path)
    monkeypatch.setattr(
        simsearch.models.encoder, "save_file", failing(simsearch.models.encoder.save_file, errno.ENOSPC)
    )
    result = invoke("index", image_folder, "--home", tmp_path, "--model", "pca", "--rebuild", "--dim", "4")
    assert result.exit_code == 1
    assert error_lines(result)[0].startswith(
        f"Error: {collection.path}: could not write encoder-000003 ({os.strerror(errno.ENOSPC)}) — the collection "
        "is as it was (generation 2, 15 images)"
    )
    assert files_of(collection.path) == before
    assert Searcher(collection, use_gpu=False).encoder.family == "pixels"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (needs root and permission to mount; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def open_files_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open (Linux: /proc/self/fd)."""
    links = [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]
    return [link for link in links if link.startswith(str(folder))]


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_real_full_disk_and_a_real_read_only_folder(image_folder: Path, small_disk: Path) -> None:
    home = small_disk / "home"
    assert invoke("index", image_folder, "--home", home, "--model", "pixels").exit_code == 0
    collection = Collection(home / "default")
    before = files_of(collection.path)
    add_images(image_folder, 3, seed=1)

    # The disk is full: the commit fails, and the collection is the previous generation, byte for byte.
    filler = fill(small_disk)
    full = invoke("index", image_folder, "--home", home)
    assert full.exit_code == 1
    [line] = error_lines(full)
    assert line.startswith(f"Error: {collection.path}: could not write ") and "(No space left on device)" in line
    assert "the collection is as it was (generation 2, 15 images)" in line
    assert files_of(collection.path) == before
    assert open_files_under(small_disk) == []  # the half-written file is closed, not held (and its space with it)
    query = invoke("query", image_folder / "hbars" / "1.png", "--home", home, "-k", "1", "--json")
    assert query.exit_code == 0 and json.loads(query.stdout)[0]["neighbours"][0]["path"] == "hbars/1.png"
    filler.unlink()
    assert invoke("index", image_folder, "--home", home).exit_code == 0
    assert consistent_snapshot(collection).meta.num_rows == 18
    before = files_of(collection.path)

    # The folder is read-only: a commit fails clearly, queries work, and a run with nothing to do succeeds.
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    add_images(image_folder, 2, seed=2)
    read_only = invoke("index", image_folder, "--home", home)
    assert read_only.exit_code == 1
    [line] = error_lines(read_only)
    assert line.startswith(f"Error: {collection.path}: could not write ") and "(Read-only file system)" in line
    assert files_of(collection.path) == before
    query = invoke("query", image_folder / "blob" / "2.png", "--home", home, "-k", "1", "--json")
    assert query.exit_code == 0 and json.loads(query.stdout)[0]["neighbours"][0]["path"] == "blob/2.png"
    for path in image_folder.glob("blob/new-2-*.png"):
        path.unlink()
    unchanged = invoke("index", image_folder, "--home", home)
    assert unchanged.exit_code == 0 and "Nothing to embed" in unchanged.stdout
    new = invoke("index", image_folder, "--home", home, "--name", "other", "--model", "pixels")
    assert new.exit_code == 1
    assert error_lines(new) == [
        f"Error: {home / 'other'}: cannot write to the collection folder (Read-only file system) — make it "
        "writable, or choose another --home or --name"
    ]


def test_ctrl_c_in_the_middle_of_a_commit_keeps_the_previous_generation(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = Collection(tmp_path / "default")
    index_folder(image_folder, collection, pixels_config(index_type="hnsw"))
    before = files_of(collection.path)
    add_changes(image_folder)
    real = vectors.write_file

    def interrupted(index, path):  # the vectors file: after the segment and skipped were renamed into place
        real(index, path)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(vectors, "write_file", interrupted)
    result = invoke("index", image_folder, "--home", tmp_path, "--type", "hnsw")
    assert result.exit_code == 130
    assert error_lines(result) == ["Interrupted: work committed so far is kept; run the same command again to resume."]
    assert files_of(collection.path) == before
