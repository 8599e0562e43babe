"""``kill -9`` during ``index``, at many moments: nothing committed is lost, and the next run resumes.

Each kill point is a real ``simsearch index`` process (forked by tests/fork_server.py) that dies by SIGKILL —
at a chosen event of simsearch's observer (the journal written, between any two steps of a commit, or after an
embedded batch), or from outside after a delay (anywhere at all, mid-write included). After every death the collection is checked (it opens; metadata
rows equal FAISS ``ntotal`` and the ids match; every row is an exact copy of the before or after state), then
``index`` runs again and must decode exactly the images that the dead process had not committed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.errors import CollectionNotFound
from simsearch.indexing import IndexConfig, index_folder
from simsearch.store.collection import Collection, Snapshot, embeddings_of
from tests.conftest import Child, ForkServer, consistent_snapshot, current_files, pattern, write_folder

# Small batches and a checkpoint after each one: many commits in a small folder.
FAST = ["--model", "pixels", "--batch-size", "2", "--checkpoint-every", "2", "--workers", "1", "--device", "cpu"]

Rows = dict[str, tuple[int, str, bytes]]  # path → (id, sha256, embedding bytes)


def rows_of(snapshot: Snapshot) -> Rows:
    meta = snapshot.meta
    return {
        path: (row_id, sha, emb.tobytes())
        for path, row_id, sha, emb in zip(
            meta.column("path").to_pylist(),
            meta.column("id").to_pylist(),
            meta.column("sha256").to_pylist(),
            embeddings_of(meta),
            strict=True,
        )
    }


def only_current_files(collection: Collection) -> None:
    """No leftovers: no temporary files, no older generation."""
    journal = collection.path / ".pending.json"
    assert sorted(p.name for p in collection.path.iterdir()) == current_files(collection), (
        journal.read_text() if journal.exists() else None,
        collection.read_manifest()["files"],
        sorted(p.name for p in collection.path.iterdir()),
    )


@dataclass
class Lab:
    """A folder that changed since its collection was built, and the collection an uninterrupted run makes."""

    server: ForkServer
    root: Path
    images: Path
    base: Path | None  # the collection before the run (None: the run starts from nothing)
    before: Rows
    after: Rows  # path → row after an uninterrupted run (ids aside, what every resumed run must end with)
    census: list[str]  # the events of an uninterrupted run
    runs: int = 0
    args: tuple[str, ...] = tuple(FAST)  # the options of every index run

    def fresh_copy(self) -> Collection:
        self.runs += 1
        target = self.root / f"run-{self.runs}"
        if self.base is not None:
            shutil.copytree(self.base, target)
        return Collection(target)

    def index(self, collection: Collection, kill_at: int | None = None) -> Child:
        home, name = collection.path.parent, collection.path.name
        return self.server.start("index", self.images, "--home", home, "--name", name, *self.args, kill_at=kill_at)

    def check_survivor(self, collection: Collection) -> Rows:
        """After a kill: the collection is the old one, or a checkpoint on the way to the new one."""
        if self.base is None and not collection.exists():
            with pytest.raises(CollectionNotFound):
                collection.load()
            return {}
        rows = rows_of(consistent_snapshot(collection))
        for path, (row_id, sha, emb) in rows.items():
            if (sha, emb) != self.after.get(path, (None, None, None))[1:]:
                assert self.before[path] == (row_id, sha, emb), f"{path}: neither before nor after"
        for path in set(self.before) - set(self.after):  # a deleted file may be gone already, or still there
            assert path not in rows or rows[path] == self.before[path]
        return rows

    def resume(self, collection: Collection, survived: Rows) -> None:
        """Run again to the end: it decodes exactly what was not committed, and keeps what was."""
        again = self.server.wait(self.index(collection))
        assert again.status == {"exit": 0}, again.output()
        committed = {(path, row[1]) for path, row in survived.items()}
        expected = {path for path, row in self.after.items() if (path, row[1]) not in committed}
        assert sorted(again.embedded()) == sorted(expected)
        final = rows_of(consistent_snapshot(collection))
        assert {p: r[1:] for p, r in final.items()} == {p: r[1:] for p, r in self.after.items()}
        for path, row in survived.items():  # committed rows keep their ids: they were not embedded again
            if (path, row[1]) in {(p, r[1]) for p, r in final.items()}:
                assert final[path][0] == row[0]
        only_current_files(collection)


def make_lab(server: ForkServer, root: Path, from_scratch: bool) -> Lab:
    images = root / "images"
    write_folder(images, per_class=4, seed=0)
    base, before = None, {}
    if not from_scratch:
        collection = Collection(root / "base")
        index_folder(images, collection, IndexConfig(model="pixels", device="cpu", workers=1))
        base, before = collection.path, rows_of(collection.load())
        # Since then: 12 new images, one deleted, one changed.
        write_folder(images / "more", per_class=4, seed=1)
        (images / "blob" / "0.png").unlink()
        Image.fromarray(pattern("hbars", np.random.default_rng(7))).save(images / "vbars" / "1.png")
    lab = Lab(server, root, images, base, before, {}, [])
    collection = lab.fresh_copy()
    census = server.wait(lab.index(collection))
    assert census.status == {"exit": 0}, census.output()
    lab.census, lab.after = census.events(), rows_of(consistent_snapshot(collection))
    assert len(lab.after) == (23 if base else 12)
    # Once more: the same steps in the same order, so that event n is the same moment in every run.
    assert server.wait(lab.index(lab.fresh_copy())).events() == lab.census
    return lab


def kill_points(events: list[str], per_kind: int) -> list[int]:
    """Event indices to die at: for every kind of step, its first and last occurrence and some in between."""
    kinds: dict[str, list[int]] = {}
    for n, what in enumerate(events):
        kinds.setdefault(re.sub(r"-\d+|\d+$", "#", what), []).append(n)
    chosen = set()
    for occurrences in kinds.values():
        picks = np.linspace(0, len(occurrences) - 1, min(per_kind, len(occurrences))).round().astype(int)
        chosen.update(occurrences[i] for i in picks)
    return sorted(chosen)


@pytest.mark.slow
@pytest.mark.parametrize("from_scratch", [False, True], ids=["onto-a-collection", "from-scratch"])
def test_kill_9_at_every_kind_of_moment_loses_nothing(fork_server: ForkServer, quick_tmp: Path, from_scratch: bool):
    lab = make_lab(fork_server, quick_tmp, from_scratch)
    points = kill_points(lab.census, per_kind=2)
    commits = sum(what == "renamed manifest.json" for what in lab.census)
    assert commits >= 6 and len(points) >= 20
    assert any(lab.census[n].startswith("journal written") for n in points)  # before any file of a commit
    generations = set()
    for kill_at in points:
        collection = lab.fresh_copy()
        child = fork_server.wait(lab.index(collection, kill_at=kill_at))
        assert child.killed, (kill_at, lab.census[kill_at], child.status, child.output())
        assert child.events()[-1] == lab.census[kill_at]  # died exactly there
        survived = lab.check_survivor(collection)
        generations.add(collection.read_manifest()["generation"] if collection.exists() else 0)
        lab.resume(collection, survived)
    # The kills fell everywhere from "nothing committed yet" to "everything committed".
    assert len(generations) >= 4

    # And from outside, wherever the process happens to be (inside a write, between two fsyncs...): kill -9 as
    # soon as its log shows it got past event n.
    killed = 0
    for after in np.linspace(0.1, 0.85, 6).round(2) * len(lab.census):
        collection = lab.fresh_copy()
        child = lab.index(collection)
        deadline = time.monotonic() + 30
        while len(child.events()) <= after and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        fork_server.wait(child)
        killed += child.killed
        lab.resume(collection, lab.check_survivor(collection))
    assert killed >= 5


def kill_from_outside(lab: Lab, collection: Collection, after_events: float) -> Child:
    """Start an index run and kill -9 it as soon as its log shows it got past ``after_events`` events."""
    child = lab.index(collection)
    deadline = time.monotonic() + 30
    while len(child.events()) <= after_events and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGKILL)
    return lab.server.wait(child)


@pytest.mark.slow
def test_kill_9_during_background_merges_loses_nothing(fork_server: ForkServer, quick_tmp: Path) -> None:
    """A checkpoint after every 2 images and a merge as soon as 2 segments share a tier: merges run on their
    thread all through the run, their files written while batches are embedded and commits land. Killed at
    events of every kind (which events the merge thread's are varies from run to run) and from outside, the
    collection is always whole, and the next run resumes; the rows are those of a run without merges."""
    lab = make_lab(fork_server, quick_tmp, from_scratch=False)
    lab.args = (*FAST, "--merge-factor", "2")
    collection = lab.fresh_copy()
    census = fork_server.wait(lab.index(collection))
    assert census.status == {"exit": 0}, census.output()
    assert any("-merged.parquet" in line for line in census.events())  # merges ran, and were written
    final = consistent_snapshot(collection)
    assert {p: r[1:] for p, r in rows_of(final).items()} == {p: r[1:] for p, r in lab.after.items()}
    assert len(final.manifest["segments"]) < 8  # 8 segments without merges
    merge_events = [n for n, line in enumerate(census.events()) if "-merged" in line]
    points = sorted({*merge_events[:: max(1, len(merge_events) // 6)], *kill_points(census.events(), per_kind=1)})
    for kill_at in points:
        collection = lab.fresh_copy()
        child = fork_server.wait(lab.index(collection, kill_at=kill_at))
        if not child.killed:  # the run took another course (merges are timed by the thread): it finished
            assert child.status == {"exit": 0}, child.output()
        lab.resume(collection, lab.check_survivor(collection))
    for after in np.linspace(0.1, 0.9, 6) * len(census.events()):
        collection = lab.fresh_copy()
        kill_from_outside(lab, collection, after)
        lab.resume(collection, lab.check_survivor(collection))


@pytest.mark.slow
def test_kill_9_at_every_step_of_a_compaction_loses_nothing(fork_server: ForkServer, quick_tmp: Path) -> None:
    """``simsearch compact`` over many segments and deletions, killed at each of its steps: the collection is
    the one before or the one after (the same rows either way), and compacting again finishes the work."""
    lab = make_lab(fork_server, quick_tmp, from_scratch=False)
    base = lab.fresh_copy()
    assert fork_server.wait(lab.index(base)).status == {"exit": 0}
    manifest = base.read_manifest()
    assert len(manifest["segments"]) >= 5 and manifest["files"]["deleted"]  # checkpoints, a removal and a change
    lab.base = base.path

    def compact(collection: Collection, kill_at: int | None = None) -> Child:
        home, name = collection.path.parent, collection.path.name
        return fork_server.wait(fork_server.start("compact", "--home", home, "--name", name, kill_at=kill_at))

    census = compact(lab.fresh_copy())
    assert census.status == {"exit": 0}, census.output()
    assert census.events()[-1] == "removed stale files"
    for kill_at in range(len(census.events())):
        collection = lab.fresh_copy()
        child = compact(collection, kill_at=kill_at)
        assert child.killed and child.events()[-1] == census.events()[kill_at]
        rows = rows_of(consistent_snapshot(collection))
        assert {p: r[1:] for p, r in rows.items()} == {p: r[1:] for p, r in lab.after.items()}
        again = compact(collection)
        assert again.status == {"exit": 0}, again.output()
        done = consistent_snapshot(collection)
        assert rows_of(done) == rows and len(done.manifest["segments"]) == 1 and not done.manifest["files"]["deleted"]
        only_current_files(collection)
