"""``simsearch collections`` and ``simsearch remove-collection``, and the missing-collection error of every command
that names a collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simsearch.cli import collections as cli_collections
from simsearch.collection import Collection
from tests.helpers import error_lines, invoke


@pytest.fixture
def home(image_folder: Path, quick_tmp: Path) -> Path:
    """Two pixels collections, 'digits' (15 images) and 'shapes' (10), under one home."""
    home = quick_tmp / "home"
    for name, folder in (("digits", image_folder), ("shapes", image_folder / "hbars")):
        result = invoke("index", folder, "--home", home, "--name", name, "--model", "pixels", "--device", "cpu")
        assert result.exit_code == 0, result.output
    invoke("index", image_folder / "vbars", "--home", home, "--name", "shapes")
    return home


def test_collections_lists_each_with_its_manifest_facts(home: Path) -> None:
    result = invoke("collections", "--home", home)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"Collections under {home}"
    digits = next(line for line in lines if "digits" in line)
    assert "15" in digits and "pixels" in digits and "flat" in digits and " kB" in digits
    data = json.loads(invoke("collections", "--home", home, "--json").stdout)
    assert [(c["name"], c["images"], c["encoder"], c["index"]) for c in data] == [
        ("digits", 15, "pixels", "flat"),
        ("shapes", 10, "pixels", "flat"),
    ]
    manifest = Collection(home / "digits").read_manifest()
    assert data[0]["updated"] == manifest["updated"] and data[0]["bytes"] > 0 and data[0]["problem"] is None


def test_collections_under_an_empty_or_missing_home(tmp_path: Path) -> None:
    result = invoke("collections", "--home", tmp_path / "none")
    assert (
        result.exit_code == 0
        and result.stdout.strip() == f"No collections under {tmp_path / 'none'} (the folder does not exist)."
    )
    (tmp_path / "empty").mkdir()
    assert (
        invoke("collections", "--home", tmp_path / "empty").stdout.strip()
        == f"No collections under {tmp_path / 'empty'}."
    )
    assert json.loads(invoke("collections", "--home", tmp_path / "none", "--json").stdout) == []


def test_a_damaged_collection_is_listed_with_its_problem(home: Path) -> None:
    (home / "shapes" / "manifest.json").write_text("[]")
    result = invoke("collections", "--home", home)
    assert result.exit_code == 0
    shapes = next(line for line in result.stdout.splitlines() if "shapes" in line)
    assert "not a JSON object" in shapes


def test_remove_collection_with_yes_removes_it_all(home: Path) -> None:
    result = invoke("remove-collection", "shapes", "--home", home, "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Removed collection {home / 'shapes'} (10 images, ")
    assert not (home / "shapes").exists()
    assert [c["name"] for c in json.loads(invoke("collections", "--home", home, "--json").stdout)] == ["digits"]


def test_remove_collection_refuses_without_a_terminal_or_yes(home: Path) -> None:
    result = invoke("remove-collection", "shapes", "--home", home)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"Error: remove-collection asks for confirmation, and stdin is not a terminal ('{home / 'shapes'}' was not "
        "removed) — pass --yes to remove it without asking"
    ]
    assert Collection(home / "shapes").exists()


def test_remove_collection_asks_on_a_terminal(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from simsearch.cli import app

    monkeypatch.setattr(cli_collections, "_stdin_is_terminal", lambda: True)
    declined = CliRunner().invoke(app, ["remove-collection", "shapes", "--home", str(home)], input="n\n")
    assert declined.exit_code == 1 and "Nothing was removed." in declined.stdout
    assert f"Remove collection {home / 'shapes'} (10 images, " in declined.stdout
    assert Collection(home / "shapes").exists()
    accepted = CliRunner().invoke(app, ["remove-collection", "shapes", "--home", str(home)], input="y\n")
    assert accepted.exit_code == 0 and "Removed collection" in accepted.stdout
    assert not (home / "shapes").exists()


def test_remove_collection_of_an_unknown_name_lists_those_there_are(home: Path) -> None:
    result = invoke("remove-collection", "shape", "--home", home, "--yes")
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: no collection at '{home / 'shape'}' — index a folder into it first, or choose a --name under "
        f"'{home}': digits, shapes"
    ]


def test_remove_collection_is_refused_while_another_process_writes(home: Path) -> None:
    with Collection(home / "shapes").lock():
        result = invoke("remove-collection", "shapes", "--home", home, "--yes")
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: another simsearch process is writing to '{home / 'shapes'}' — wait for it to finish, or pass --wait "
        "to queue behind it"
    ]
    assert Collection(home / "shapes").exists()


def test_remove_collection_keeps_a_file_it_did_not_write(home: Path) -> None:
    (home / "shapes" / "README.txt").write_text("mine")
    result = invoke("remove-collection", "shapes", "--home", home, "--yes", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kept"] == ["README.txt"] and data["images"] == 10
    assert (home / "shapes" / "README.txt").read_text() == "mine" and not Collection(home / "shapes").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["query", "IMAGE"],
        ["eval", "FOLDER"],
        ["eval", "FOLDER", "--gallery", "collection"],
        ["verify", "IMAGE", "IMAGE"],
    ],
)
def test_every_command_names_the_collections_that_exist(home: Path, image_folder: Path, command: list[str]) -> None:
    image = image_folder / "blob" / "0.png"
    args = [image if a == "IMAGE" else image_folder if a == "FOLDER" else a for a in command]
    result = invoke(*args, "--home", home, "--name", "digit")
    lines = [line for line in error_lines(result) if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert lines[0].endswith(f"or choose a --name under '{home}': digits, shapes"), lines[0]
