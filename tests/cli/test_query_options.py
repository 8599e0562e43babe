"""``simsearch query``'s options beyond the images: ``--id``, ``--label``, ``--where``, ``--vote``, ties, a ``-k``
larger than what can answer, and the inputs it refuses with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import error_lines, invoke


@pytest.fixture
def home(image_folder: Path, quick_tmp: Path) -> Path:
    home = quick_tmp / "home"
    result = invoke("index", image_folder, "--home", home, "--model", "pixels", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return home


def ids_of(home: Path) -> dict[str, int]:
    from simsearch.collection import Collection

    meta = Collection(home / "default").load().meta
    return dict(zip(meta.column("path").to_pylist(), meta.column("id").to_pylist(), strict=True))


def test_query_by_id_answers_with_the_other_images(home: Path) -> None:
    ids = ids_of(home)
    result = invoke("query", "--id", ids["vbars/2.png"], "-k", "4", "--home", home, "--json")
    assert result.exit_code == 0, result.output
    [answer] = json.loads(result.stdout)
    assert answer["query"] == "vbars/2.png" and answer["query_id"] == ids["vbars/2.png"] and answer["left_out"] == 1
    assert [n["label"] for n in answer["neighbours"]] == ["vbars"] * 4
    assert "vbars/2.png" not in [n["path"] for n in answer["neighbours"]]
    text = invoke("query", "--id", ids["vbars/2.png"], "-k", "4", "--home", home)
    assert text.stdout.startswith(f"id {ids['vbars/2.png']} (vbars/2.png) — vote: vbars (4/4), 100% of the weight")


def test_an_image_and_ids_together(home: Path, image_folder: Path) -> None:
    ids = ids_of(home)
    result = invoke(
        "query", image_folder / "blob" / "1.png", "--id", ids["hbars/0.png"], "--id", ids["blob/3.png"],
        "--home", home, "-k", "3", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d.get("query_id") for d in data] == [None, ids["hbars/0.png"], ids["blob/3.png"]]
    assert data[0]["neighbours"][0]["path"] == "blob/1.png"  # a file query of an indexed image still finds itself


def test_an_unknown_id_is_one_error_line(home: Path) -> None:
    result = invoke("query", "--id", "99", "--home", home)
    assert result.exit_code == 2
    assert error_lines(result) == [
        "Error: the collection has no image with id 99 (its ids run from 0 to 14) — use an id that a query answered "
        "with (its neighbours' id)"
    ]


def test_label_and_where_keep_the_answers_within_the_subset(home: Path, image_folder: Path) -> None:
    query = image_folder / "hbars" / "1.png"
    result = invoke("query", query, "--label", "vbars", "--label", "blob", "-k", "10", "--home", home, "--json")
    assert result.exit_code == 0, result.output
    [answer] = json.loads(result.stdout)
    assert len(answer["neighbours"]) == 10 and {n["label"] for n in answer["neighbours"]} == {"vbars", "blob"}
    result = invoke(
        "query", query, "--where", "path~bars/", "--where", "path!~/1.png", "-k", "20", "--home", home, "--json"
    )
    [answer] = json.loads(result.stdout)
    paths = [n["path"] for n in answer["neighbours"]]
    assert len(paths) == 8 and all("bars/" in p and not p.endswith("/1.png") for p in paths)
    assert error_lines(result) == [
        "Note: -k 20 is more than the 8 images that can answer: each answer holds at most 8."
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--label", "cats"],
            "Error: no image of the collection matches the filter label=cats — check it (its labels: blob, hbars, vbars)",
        ),
        (["--where", "label"], "Error: cannot read the filter 'label' — write COLUMN=VALUE"),
        (["--where", "size>3"], "Error: the filter 'size>3' tests an unknown column 'size'"),
        (["--vote", "plurality"], "Error: --vote must be one of majority, weighted, not 'plurality'"),
        (["--far", "0.01"], "Error: --far only applies with --open-set — add --open-set, or leave --far out"),
        (
            ["--threshold", "0.5"],
            "Error: --threshold only applies with --open-set — add --open-set, or leave --threshold out",
        ),
    ],
)
def test_bad_options_are_one_error_line(home: Path, image_folder: Path, args: list[str], message: str) -> None:
    result = invoke("query", image_folder / "blob" / "0.png", *args, "--home", home)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_no_query_at_all_is_one_error_line(home: Path) -> None:
    result = invoke("query", "--home", home)
    assert result.exit_code == 2
    assert error_lines(result) == [
        "Error: give query images (files or folders), or indexed images by --id — e.g. simsearch query img.png, or "
        "simsearch query --id 12"
    ]


def test_a_folder_of_only_unreadable_images_fails_like_an_empty_one(home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # looks like a PNG, does not decode
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\1" * 40)
    result = invoke("query", broken, "--home", home)
    assert result.exit_code == 1
    lines = error_lines(result)
    assert [line.split(":")[0] for line in lines[:-1]] == [f"Skipped {broken / 'a.png'}", f"Skipped {broken / 'b.png'}"]
    assert lines[-1] == f"Error: no readable images under {broken} (2 skipped) — check the path"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("query", empty, "--home", home)
    assert result.exit_code == 1 and error_lines(result) == [f"Error: no images under {empty} — check the path"]


def test_k_larger_than_the_collection_is_said_in_one_note(home: Path, image_folder: Path) -> None:
    result = invoke("query", image_folder / "blob" / "0.png", "-k", "50", "--home", home, "--json")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)[0]["neighbours"]) == 15
    assert error_lines(result) == [
        "Note: -k 50 is more than the 15 images in the collection: each answer holds at most 15."
    ]
    assert error_lines(invoke("query", image_folder / "blob" / "0.png", "-k", "15", "--home", home)) == []


def test_a_tie_is_reported_as_one(home: Path, image_folder: Path) -> None:
    """k = 10 over the 5 hbars and 5 vbars: a majority vote ties, and says so (text and JSON)."""
    query = image_folder / "hbars" / "0.png"
    args = ["--label", "hbars", "--label", "vbars", "-k", "10", "--home", home, "--vote", "majority"]
    result = invoke("query", query, *args)
    assert result.exit_code == 0, result.output
    assert "vote: tie between hbars, vbars (5/10 each); the nearest of them: hbars" in result.stdout
    [answer] = json.loads(invoke("query", query, *args, "--json").stdout)
    assert answer["tie"] == ["hbars", "vbars"] and answer["vote"] == "hbars" and answer["vote_rule"] == "majority"
    # The weighted vote gives the nearer images more say: no tie.
    [weighted] = json.loads(invoke("query", query, *args[:-2], "--json").stdout)
    assert weighted["tie"] == [] and weighted["vote"] == "hbars" and weighted["vote_rule"] == "weighted"
    assert weighted["weights"]["hbars"] > weighted["weights"]["vbars"]
