"""Two writers and many readers on one collection: one writer at a time, and every reader sees one whole generation.

Writers are real ``simsearch index`` processes (tests/fork_server.py); the test process is the second writer
or the reader.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import simsearch.store.collection
from simsearch.indexing import IndexConfig, index_folder
from simsearch.search import Searcher
from simsearch.store.collection import Collection
from tests.conftest import ForkServer, consistent_snapshot, pattern, write_folder
from tests.helpers import invoke

PIXELS = ["--model", "pixels", "--workers", "1", "--device", "cpu"]


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_second_index_fails_at_once_or_waits_its_turn(fork_server: ForkServer, image_folder: Path, tmp_path: Path):
    collection = Collection(tmp_path / "home" / "c")
    index_folder(image_folder, collection, IndexConfig(model="pixels", device="cpu"))
    write_folder(image_folder / "more", per_class=3, seed=1)
    before = collection.read_manifest()
    args = ["index", image_folder, "--home", tmp_path / "home", "--name", "c", *PIXELS]

    # The first writer stops at its first step under the lock, and stays there until released.
    release = tmp_path / "release"
    first = fork_server.start(*args, pause_at=0, release=release)
    wait_for(lambda: "paused" in first.log.read_text() if first.log.exists() else False)

    # Without --wait: one clear line, exit 1, nothing touched.
    refused = invoke(*args)
    assert refused.exit_code == 1
    assert [line for line in refused.stderr.splitlines() if line.strip()] == [
        f"Error: another simsearch process is writing to '{collection.path}' — wait for it to finish, "
        "or pass --wait to queue behind it"
    ]
    assert collection.read_manifest() == before

    # With --wait: it queues behind the first writer, does nothing meanwhile, and runs when the lock is free.
    second = fork_server.start(*args, "--wait")
    time.sleep(1.0)
    assert fork_server.running(second) and second.events() == [] and collection.read_manifest() == before
    release.touch()
    assert fork_server.wait(first).status == {"exit": 0}, first.output()
    assert fork_server.wait(second).status == {"exit": 0}, second.output()
    assert len(first.embedded()) == 9 and second.embedded() == []  # the first did the work, the second found none
    assert "Nothing to embed: all 24 images are unchanged." in second.output()
    assert consistent_snapshot(collection).meta.num_rows == 24


def test_readers_during_commits_always_see_one_whole_generation(
    fork_server: ForkServer, image_folder: Path, quick_tmp: Path
) -> None:
    collection = Collection(quick_tmp / "home" / "c")
    index_folder(image_folder, collection, IndexConfig(model="pixels", device="cpu"))
    write_folder(image_folder / "more", per_class=10, seed=2)  # 30 new images, one commit each
    query = image_folder / "hbars" / "0.png"
    Searcher(collection, use_gpu=False).query_files([query], k=1)  # warm up the reader
    writer = fork_server.start(
        "index", image_folder, "--home", quick_tmp / "home", "--name", "c", "--batch-size", "1",
        "--checkpoint-every", "1", *PIXELS, step_delay=0.004,
    )  # fmt: skip
    seen: dict[int, int] = {}
    while fork_server.running(writer) or not seen:
        snapshot = consistent_snapshot(collection)  # the low-level view: manifest, Parquet and FAISS agree
        searcher = Searcher(collection, use_gpu=False)  # the query path
        assert searcher.count == searcher.manifest["count"] == len(searcher.embeddings)
        result = searcher.query_files([query], k=50)[0]
        assert len(result.neighbours) == min(50, searcher.count)
        assert result.neighbours[0].path == "hbars/0.png" and result.neighbours[0].distance == 0.0
        assert {n.path for n in result.neighbours} <= set(searcher.meta.column("path").to_pylist())
        seen[snapshot.manifest["generation"]] = snapshot.meta.num_rows
    assert fork_server.wait(writer).status == {"exit": 0}, writer.output()
    # The reads overlapped many commits, and each generation had the size it should.
    assert len(seen) >= 5, seen
    # Each commit adds one image, or none (one that installs a finished merge): rows never fall, nor jump.
    steps = sorted(seen.items())
    assert all(0 <= r2 - r1 <= g2 - g1 for (g1, r1), (g2, r2) in itertools.pairwise(steps)), steps
    assert consistent_snapshot(collection).meta.num_rows == 45

    # A writer at full speed (a commit every few milliseconds here), and a reader that only loads: a commit
    # that lands between reading the manifest and reading the files makes it read again, never fail.
    write_folder(image_folder / "fast", per_class=15, seed=3)
    writer = fork_server.start(
        "index", image_folder, "--home", quick_tmp / "home", "--name", "c", "--batch-size", "1",
        "--checkpoint-every", "1", *PIXELS,
    )  # fmt: skip
    loads = []
    while fork_server.running(writer) or not loads:
        loads.append(consistent_snapshot(collection).manifest["generation"])
    assert fork_server.wait(writer).status == {"exit": 0}, writer.output()
    assert len(set(loads)) >= 3 and consistent_snapshot(collection).meta.num_rows == 90


def test_commits_landing_while_a_reader_reads_do_not_disturb_it(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic version of the race above: a whole commit and a compaction (which removes every segment
    being read) land each time the reader parses a Parquet file. The reader already holds the files open, so it
    returns the generation it started with, whole."""
    config = IndexConfig(model="pixels", device="cpu", workers=1)
    collection = Collection(tmp_path / "c")
    index_folder(image_folder, collection, config)
    started_with = collection.read_manifest()["generation"]
    parquet_file, busy, commits = pq.ParquetFile, [False], []

    def parquet_file_while_a_commit_lands(source, *args, **kwargs):
        if not busy[0] and len(commits) < 8:
            busy[0] = True
            Image.fromarray(pattern("blob", np.random.default_rng(len(commits)))).save(
                image_folder / f"{len(commits)}.png"
            )
            commits.append(index_folder(image_folder, Collection(collection.path), config).generation)
            commits.append(Collection(collection.path).compact().generation_after)
            busy[0] = False
        return parquet_file(source, *args, **kwargs)

    monkeypatch.setattr(simsearch.store.collection.pq, "ParquetFile", parquet_file_while_a_commit_lands)
    snapshot = collection.load()
    # Commits and compactions landed at every parse (each removes the segments being read), and the read went on.
    assert len(commits) >= 4 and commits == list(range(started_with + 1, started_with + 1 + len(commits)))
    assert not any((collection.path / s["name"]).exists() for s in snapshot.manifest["segments"])
    assert snapshot.manifest["generation"] == started_with
    assert snapshot.manifest["count"] == snapshot.meta.num_rows == snapshot.index.ntotal == 15
