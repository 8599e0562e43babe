"""simsearch writes and deletes only in its own folders: model folders (``train --out``) and collections
(``index --name``) that are new, empty or already simsearch's; and what it creates follows the umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from simsearch.errors import CollectionError, ModelError
from simsearch.indexing import IndexConfig, index_folder
from simsearch.models.encoder import Encoder
from simsearch.store.collection import Collection
from tests.conftest import consistent_snapshot
from tests.helpers import error_lines, invoke


def snapshot_of(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (folders as None, files with their content)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------------------------------------------
# train --out


def test_train_out_pointed_at_the_training_folder_deletes_nothing(image_folder: Path) -> None:
    before = snapshot_of(image_folder)
    result = invoke("train", image_folder, "--family", "pca", "--dim", "4", "--out", image_folder)
    assert result.exit_code == 1, result.output
    [line] = error_lines(result)
    assert line.startswith(f"Error: '{image_folder}' exists and is not a simsearch model folder (it holds 'blob'")
    assert "choose a new --out folder" in line and "Traceback" not in result.output
    assert snapshot_of(image_folder) == before


def test_train_out_pointed_at_a_folder_of_models_keeps_them(image_folder: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = invoke("train", image_folder, "--family", "pca", "--dim", "4", "--out", models / "ae")
    assert first.exit_code == 0, first.output
    (models / "notes.txt").write_text("mine")
    before = snapshot_of(models)
    result = invoke("train", image_folder, "--family", "pca", "--dim", "4", "--out", models)
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert f"'{models}' exists and is not a simsearch model folder (it holds 'ae', 'notes.txt')" in line
    assert f"such as '{models / 'model'}'" in line
    assert snapshot_of(models) == before
    Encoder.load(models / "ae")  # still whole


def test_the_out_folder_is_checked_before_training(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import simsearch.training

    def never(*args, **kwargs):
        raise AssertionError("trained although the model folder could not be written")

    monkeypatch.setattr(simsearch.training, "train_on_folder", never)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "a.txt").write_text("x")
    result = invoke("train", image_folder, "--family", "autoencoder", "--out", tmp_path / "taken")
    assert result.exit_code == 1 and "is not a simsearch model folder" in result.stderr


def test_a_model_folder_and_an_empty_folder_can_be_written_over(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "m"
    out.mkdir(parents=True)  # empty: fine
    assert invoke("train", image_folder, "--family", "pca", "--dim", "4", "--out", out).exit_code == 0
    first = Encoder.load(out).fingerprint
    again = invoke("train", image_folder, "--family", "pca", "--dim", "3", "--out", out)  # a model folder: replaced
    assert again.exit_code == 0, again.output
    assert Encoder.load(out).fingerprint != first and Encoder.load(out).dim == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]  # no temporary or old folder left beside it
    # A model folder with a file of the user's in it is not replaced either.
    (out / "README.txt").write_text("notes")
    with pytest.raises(ModelError, match=r"holds 'README\.txt'"):
        Encoder.load(out).save(out)
    assert (out / "README.txt").read_text() == "notes"


# ----------------------------------------------------------------------------------------------------------------
# index --name


def lookalikes(folder: Path) -> None:
    """A user's folder holding files named like simsearch's own."""
    (folder / "encoder-notes").mkdir(parents=True)
    (folder / "encoder-notes" / "todo.txt").write_text("mine")
    (folder / "encoder").mkdir()
    (folder / "encoder" / "weights.safetensors").write_bytes(b"my own weights")
    (folder / "meta-2024.parquet").write_bytes(b"my table")
    (folder / "meta-000001.parquet").write_bytes(b"my other table")
    (folder / "vectors-x.faiss").write_bytes(b"my vectors")
    (folder / ".draft.tmp").write_text("draft")
    (folder / "photo.png").write_bytes(b"not really")


def test_index_into_a_folder_that_is_not_a_collection_touches_nothing(image_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "existing-folder"
    lookalikes(target)
    before = snapshot_of(target)
    result = invoke("index", image_folder, "--name", target, "--model", "pixels")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result)
    assert line.startswith(f"Error: '{target}' is not a simsearch collection (it holds '.draft.tmp', 'encoder', ")
    assert line.endswith("choose another --name, or a new or empty folder")
    assert snapshot_of(target) == before  # not even a lock file
    with pytest.raises(CollectionError, match="is not a simsearch collection"):
        index_folder(image_folder, Collection(target), IndexConfig(model="pixels", device="cpu", rebuild=True))
    assert snapshot_of(target) == before


def test_an_empty_folder_becomes_a_collection_and_keeps_its_marker(image_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert invoke("index", image_folder, "--name", target, "--model", "pixels").exit_code == 0
    marker = json.loads((target / ".simsearch.json").read_text())
    assert marker["format"] == "simsearch.collection/2"
    assert consistent_snapshot(Collection(target)).meta.num_rows == 15
    # Files a user leaves in a collection are not simsearch's: commits never remove them.
    (target / "meta-000099.parquet").write_bytes(b"mine")
    (image_folder / "blob" / "0.png").unlink()
    assert invoke("index", image_folder, "--name", target).exit_code == 0
    assert (target / "meta-000099.parquet").read_bytes() == b"mine"


def test_a_collection_written_before_markers_is_still_one(image_folder: Path, tmp_path: Path) -> None:
    collection = Collection(tmp_path / "old")
    index_folder(image_folder, collection, IndexConfig(model="pixels", device="cpu"))
    (collection.path / ".simsearch.json").unlink()  # as collections were written before the marker
    (image_folder / "blob" / "0.png").unlink()
    report = index_folder(image_folder, collection, IndexConfig(device="cpu"))
    assert report.removed == 1 and (collection.path / ".simsearch.json").is_file()
    assert consistent_snapshot(collection).meta.num_rows == 14


def test_a_failed_first_index_leaves_no_folder_behind(tmp_path: Path) -> None:
    empty_images = tmp_path / "images"
    empty_images.mkdir()
    result = invoke("index", empty_images, "--home", tmp_path / "home", "--model", "pixels")
    assert result.exit_code == 1 and "no images found" in result.stderr
    assert not (tmp_path / "home" / "default").exists()


# ----------------------------------------------------------------------------------------------------------------
# permissions follow the umask


def modes(folder: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in folder.rglob("*")}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_and_folders_follow_the_umask(image_folder: Path, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        home, model = tmp_path / "home", tmp_path / "models" / "pca"
        assert invoke("index", image_folder, "--home", home, "--model", "pixels").exit_code == 0
        (image_folder / "blob" / "0.png").unlink()
        assert invoke("index", image_folder, "--home", home).exit_code == 0  # a second generation
        assert invoke("train", image_folder, "--family", "pca", "--dim", "4", "--out", model).exit_code == 0
        assert invoke("train", image_folder, "--family", "pca", "--dim", "3", "--out", model).exit_code == 0
    finally:
        os.umask(old)
    expected = {("file", 0o666 & ~umask), ("dir", 0o777 & ~umask)}
    assert modes(home / "default") == expected
    assert modes(model) == {("file", 0o666 & ~umask)}
    assert stat.S_IMODE((home / "default").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(model.stat().st_mode) == 0o777 & ~umask
