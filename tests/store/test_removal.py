"""Listing the collections under a home (from their manifests alone), removing one under its lock, and the error
for a missing collection, which names the collections that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simsearch.collection import Collection
from simsearch.errors import CollectionError, CollectionLocked, CollectionNotFound
from simsearch.store.collection import collection_names, list_collections, remove_collection
from simsearch.store.formats import manifest_files
from tests.store.test_collection import generation


def make(home: Path, name: str, n: int = 5) -> Collection:
    collection = Collection(home / name)
    with collection.lock():
        generation(collection, n)
    return collection


def test_list_collections_reads_each_manifest_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make(home, "b", 7)
    a = make(home, "a", 3)
    (home / "notes").mkdir()  # not a collection: left out
    (home / "notes" / "x.txt").write_text("x")
    (home / "file.txt").write_text("x")
    # Only the manifest is read: a collection whose segment is damaged is listed as it was committed.
    manifest = json.loads((a.path / "manifest.json").read_text())
    (a.path / manifest["segments"][0]["name"]).write_bytes(b"damaged")
    found = list_collections(home)
    assert [c.name for c in found] == ["a", "b"] and collection_names(home) == ["a", "b"]
    first = found[0]
    assert (first.images, first.encoder, first.index, first.problem) == (3, "pixels", "flat", None)
    assert first.updated == manifest["updated"] and first.bytes == sum(
        p.stat().st_size for p in a.path.rglob("*") if p.is_file()
    )
    assert set(first.to_json()) == {
        "name",
        "path",
        "images",
        "encoder",
        "index",
        "bytes",
        "updated",
        "rebuild",
        "problem",
    }
    assert list_collections(tmp_path / "nowhere") == []


def test_damaged_and_unfinished_collections_are_listed_with_their_problem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    damaged = make(home, "damaged")
    (damaged.path / "manifest.json").write_text("{not json")
    remnant = home / "remnant"
    remnant.mkdir()
    (remnant / ".simsearch.json").write_text("{}")
    by_name = {c.name: c for c in list_collections(home)}
    assert by_name["damaged"].images is None and "unreadable" in str(by_name["damaged"].problem)
    assert by_name["remnant"].problem == "nothing committed: an interrupted first index or removal"


def test_a_missing_collection_names_those_that_exist(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make(home, "faces")
    make(home, "photos")
    with pytest.raises(CollectionNotFound) as caught:
        Collection(home / "phots").load()
    message = str(caught.value)
    assert message.startswith(f"no collection at '{home / 'phots'}'") and "index a folder into it first" in message
    assert message.endswith(f"or choose a name under '{home}': faces, photos")
    with pytest.raises(CollectionNotFound, match="there is no collection under"):
        Collection(tmp_path / "empty-home" / "x").read_manifest()


def test_remove_takes_everything_simsearch_wrote_and_the_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    collection = make(home, "c", 6)
    with collection.lock():
        generation(collection, 4, collection.read_manifest(), seed=1)  # a second generation, and a new encoder
    (collection.path / "map").mkdir()
    (collection.path / "map" / "map.html").write_text("<html>")
    removal = remove_collection("c", home)
    assert removal.images == 4 and removal.kept == [] and removal.bytes > 0
    assert not collection.path.exists() and list_collections(home) == []


def test_remove_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    collection = make(tmp_path, "c")
    (collection.path / "my-notes.txt").write_text("mine")
    (collection.path / "meta-000009.parquet").write_text("named like ours, but no manifest names it")
    removal = collection.remove()
    assert removal.kept == ["meta-000009.parquet", "my-notes.txt"]
    assert sorted(p.name for p in collection.path.iterdir()) == [
        ".lock",
        ".simsearch.json",
        "meta-000009.parquet",
        "my-notes.txt",
    ]
    assert not collection.exists()


def test_remove_is_refused_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    collection = make(tmp_path, "c")
    with collection.lock(), pytest.raises(CollectionLocked, match="another simsearch process is writing"):
        Collection(collection.path).remove()
    assert collection.load().meta.num_rows == 5  # untouched


def test_remove_of_an_unknown_name_lists_the_collections(tmp_path: Path) -> None:
    make(tmp_path, "kept")
    with pytest.raises(CollectionNotFound, match=r"choose a name under .*: kept"):
        remove_collection("gone", tmp_path)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.csv").write_text("a,b")
    with pytest.raises(CollectionNotFound):  # no marker, no manifest: not a collection, and never touched
        remove_collection("foreign", tmp_path)
    assert (tmp_path / "foreign" / "data.csv").exists()


def test_an_interrupted_removal_is_finished_by_the_next_one(tmp_path: Path) -> None:
    collection = make(tmp_path, "c")
    files = manifest_files(json.loads((collection.path / "manifest.json").read_text()))
    # What a removal killed after the manifest went leaves: the journal naming the files, the files, the marker.
    (collection.path / ".pending.json").write_text(json.dumps({"files": sorted(files)}))
    (collection.path / "manifest.json").unlink()
    assert [c.problem for c in list_collections(tmp_path)] == [
        "nothing committed: an interrupted first index or removal"
    ]
    removal = collection.remove()
    assert removal.images is None and removal.kept == [] and not collection.path.exists()


def test_a_folder_that_is_not_a_collection_is_never_removed(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")  # a manifest that is not ours, and no marker
    (folder / "precious.txt").write_text("x")
    with pytest.raises(CollectionError, match="not a simsearch collection"):
        Collection(folder).remove()
    assert (folder / "precious.txt").exists() and (folder / "manifest.json").exists()
