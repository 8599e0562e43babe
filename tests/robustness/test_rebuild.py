"""``index --rebuild`` builds the new collection beside the live one and swaps it in only when complete.

An interrupted rebuild leaves the live collection whole (readers keep seeing every image, with the old
encoder), ``info`` says that a rebuild is unfinished, and running the same command again resumes it: the
images it had committed are not embedded again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from simsearch.indexing import IndexConfig, index_folder
from simsearch.store.collection import Collection
from tests.conftest import ForkServer, consistent_snapshot, current_files, write_folder
from tests.helpers import invoke
from tests.robustness.test_crash import rows_of

REBUILD = ["--rebuild", "--model", "pca", "--dim", "4", "--batch-size", "4", "--checkpoint-every", "4"]
FAST = ["--workers", "1", "--device", "cpu"]


@pytest.fixture
def live(quick_tmp: Path) -> Collection:
    """36 images indexed with raw pixels: the collection a rebuild replaces."""
    write_folder(quick_tmp / "images", per_class=12)
    collection = Collection(quick_tmp / "home" / "c")
    index_folder(quick_tmp / "images", collection, IndexConfig(model="pixels", device="cpu", workers=1))
    return collection


def rebuild(server: ForkServer, collection: Collection, *extra: object, kill_at: int | None = None):
    images = collection.path.parent.parent / "images"
    home, name = collection.path.parent, collection.path.name
    return server.wait(
        server.start("index", images, "--home", home, "--name", name, *REBUILD, *FAST, *extra, kill_at=kill_at)
    )


def test_an_interrupted_rebuild_keeps_the_live_collection_and_resumes(
    fork_server: ForkServer, live: Collection, quick_tmp: Path
) -> None:
    before = rows_of(consistent_snapshot(live))
    generation_before = live.read_manifest()["generation"]
    # An uninterrupted rebuild of a copy: its steps, and where it commits its checkpoints.
    copy = Collection(quick_tmp / "home" / "copy")
    shutil.copytree(live.path, copy.path)
    census = rebuild(fork_server, copy)
    assert census.status == {"exit": 0}, census.output()
    checkpoints = [n for n, what in enumerate(census.events()) if what == "renamed rebuild.json"]
    assert len(checkpoints) >= 5  # the trained encoder, then every 4 images
    assert not (copy.path / "rebuild.json").exists() and copy.read_manifest()["encoder"]["family"] == "pca"

    # Killed after its fourth checkpoint: 12 images committed to the rebuild, none to the live collection.
    child = rebuild(fork_server, live, kill_at=checkpoints[3])
    assert child.killed
    assert rows_of(consistent_snapshot(live)) == before  # every image, byte for byte, with the old encoder
    assert live.read_manifest()["encoder"]["family"] == "pixels"
    staged = live.rebuild_summary()
    assert staged is not None and staged["count"] == 12 and staged["encoder"]["family"] == "pca"
    info = invoke("info", "--home", live.path.parent, "--name", "c", "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["rebuild"]["count"] == 12
    text = invoke("info", "--home", live.path.parent, "--name", "c")
    assert "unfinished rebuild: 12 images" in text.stdout and "--rebuild" in text.stdout

    # The same command again resumes: only the 24 images the rebuild had not committed are embedded.
    again = rebuild(fork_server, live)
    assert again.status == {"exit": 0}, again.output()
    assert len(again.embedded()) == 24 and "resumed" in again.output().lower()
    final = consistent_snapshot(live)
    assert final.manifest["encoder"]["family"] == "pca" and final.meta.num_rows == 36
    assert {path for path in rows_of(final)} == set(before)
    assert final.manifest["generation"] > generation_before
    assert sorted(p.name for p in live.path.iterdir()) == current_files(live)


def test_a_rebuild_with_another_encoder_starts_over(fork_server: ForkServer, live: Collection) -> None:
    census = rebuild(fork_server, live, kill_at=30)  # somewhere inside the rebuild
    assert census.killed and live.rebuild_summary() is not None
    images = live.path.parent.parent / "images"
    report = index_folder(images, live, IndexConfig(model="pixels", rebuild=True, device="cpu", workers=1))
    assert report.discarded_rebuild and not report.resumed and report.embedded == 36
    assert live.rebuild_summary() is None and live.read_manifest()["encoder"]["family"] == "pixels"


def test_readers_see_the_old_collection_until_the_rebuild_is_complete(
    fork_server: ForkServer, live: Collection, quick_tmp: Path
) -> None:
    release = quick_tmp / "go"
    images = live.path.parent.parent / "images"
    home = live.path.parent
    child = fork_server.start(
        "index", images, "--home", home, "--name", "c", *REBUILD, *FAST, pause_at=40, release=release
    )
    while "paused" not in (child.log.read_text() if child.log.exists() else ""):
        assert fork_server.running(child), child.output()
    reader = consistent_snapshot(live)
    assert reader.meta.num_rows == 36 and reader.manifest["encoder"]["family"] == "pixels"
    release.touch()
    assert fork_server.wait(child).status == {"exit": 0}, child.output()
    assert consistent_snapshot(live).manifest["encoder"]["family"] == "pca"
