"""Near-duplicates: planted near-copies found exactly (crops, resizes, re-encodes, a tone shift, a mirror image),
the distances and the relative distances against brute force, the fixed threshold and ``far`` against counts by
hand, big groups, ``--against``, ``simsearch duplicates`` with each option and output, and each refusal."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from simsearch.errors import DataError, UsageError
from simsearch.latent import duplicates as dup
from simsearch.latent.duplicates import (
    DEFAULT_RELATIVE,
    SCALE_RANK,
    Compared,
    Items,
    check_rule,
    find_duplicates,
    find_existing,
    load_compared,
    pixels_descriptor,
)
from tests.helpers import error_lines, invoke

#: The planted groups of ``folder`` (file names): each source with its near-copies.
PLANTED = [
    {"s00.png", "s00-jpeg.jpg"},
    {"s01.png", "s01-small.png"},
    {"s02.png", "s02-mirror.png"},
    {"s03.png", "s03-crop.png"},
    {"s04.png", "s04-tone.png"},
    {"s05.png", "s05-jpeg.jpg", "s05-big.png"},
]


def scene(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A grey picture of five random rectangles and ellipses on a plain background: distinct from any other."""
    img = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x0, y0 = (int(v) for v in rng.integers(-8, size, 2))
        w, h = (int(v) for v in rng.integers(8, 28, 2))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x0, y0, x0 + w, y0 + h), fill=int(rng.integers(0, 256)))
    return img


def write_scenes(root: Path, n: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = [scene(rng) for _ in range(n)]
    for i, image in enumerate(images):
        image.save(root / f"s{i:02d}.png")
    return images


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 distinct scenes and 7 near-copies of six of them (PLANTED)."""
    root = tmp_path_factory.mktemp("duplicates") / "images"
    images = write_scenes(root, seed=2)  # planted relative distances ≤ 0.44, distinct ones ≥ 0.84
    images[0].save(root / "s00-jpeg.jpg", quality=70)
    images[1].resize((36, 36), Image.Resampling.BICUBIC).save(root / "s01-small.png")
    ImageOps.mirror(images[2]).save(root / "s02-mirror.png")
    images[3].crop((2, 2, 46, 46)).save(root / "s03-crop.png")
    Image.fromarray(np.clip(np.asarray(images[4], np.int16) + 15, 0, 255).astype(np.uint8)).save(root / "s04-tone.png")
    images[5].save(root / "s05-jpeg.jpg", quality=60)
    images[5].resize((60, 60), Image.Resampling.BICUBIC).save(root / "s05-big.png")
    return root


@pytest.fixture(scope="module")
def compared(folder: Path) -> Compared:
    return load_compared([folder])


def names_of(found: dup.Duplicates) -> list[set[str]]:
    return [{Path(found.names[m]).name for m in g.members} for g in found.groups]


def brute(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distance (n, n), diagonal inf, and each row's scale, by hand: the SCALE_RANK-th nearest other row after
    its first m, m the largest whose m-th nearest is identical or at most SCALE_GAP × the SCALE_RANK-th after it."""
    z64 = z.astype(np.float64)
    d = np.sqrt(((z64[:, None, :] - z64[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    scale = np.empty(len(d))
    for row in range(len(d)):
        near = np.sort(d[row])[:-1]  # the others, nearest first (no inf)
        near = near[: dup.NEIGHBOURS]
        m = 0
        for count in range(1, len(near) - SCALE_RANK + 1):
            if near[count - 1] <= dup.SAME or near[count - 1] <= dup.SCALE_GAP * near[count - 1 + SCALE_RANK]:
                m = count
        scale[row] = near[m + SCALE_RANK - 1]
    return d, scale


# --- the library -------------------------------------------------------------------------------------------------


def test_planted_groups_are_found_exactly_with_their_distances(compared: Compared) -> None:
    found = find_duplicates(compared)
    assert sorted(map(sorted, names_of(found))) == sorted(map(sorted, PLANTED))
    assert found.rule.kind == "relative" and found.rule.value == DEFAULT_RELATIVE and found.rule.chosen == "default"
    d, scale = brute(compared.items.vectors)
    for pair in found.pairs:
        assert pair.a < pair.b
        assert pair.distance == pytest.approx(d[pair.a, pair.b], rel=1e-4, abs=1e-5)
        expected = d[pair.a, pair.b] / math.sqrt(scale[pair.a] * scale[pair.b])
        assert pair.relative == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert pair.relative <= DEFAULT_RELATIVE
    # every pair the rule pairs, and only those: brute force over all pairs
    n = len(d)
    ratio = d / np.sqrt(scale[:, None] * scale[None, :])
    expected_pairs = {(i, j) for i in range(n) for j in range(i + 1, n) if ratio[i, j] <= DEFAULT_RELATIVE}
    assert {(p.a, p.b) for p in found.pairs} == expected_pairs
    assert found.groups[0].members and len(found.groups[0].members) == 3  # largest first
    assert found.in_groups == 13


def test_a_mirror_image_is_a_duplicate_only_when_mirrors_count(folder: Path) -> None:
    found = find_duplicates(load_compared([folder], mirror=False))
    groups = names_of(found)
    assert not any({"s02.png", "s02-mirror.png"} <= g for g in groups)
    for planted in PLANTED:
        if "s02.png" not in planted:
            assert any(planted <= g for g in groups)


def test_a_fixed_threshold_pairs_exactly_the_pairs_within_it(compared: Compared) -> None:
    d, _ = brute(compared.items.vectors)
    found = find_duplicates(compared, threshold=0.1)
    n = len(d)
    assert {(p.a, p.b) for p in found.pairs} == {(i, j) for i in range(n) for j in range(i + 1, n) if d[i, j] <= 0.1}
    assert all(p.relative is None for p in found.pairs)
    assert found.rule.kind == "distance" and found.rule.value == 0.1 and found.rule.chosen == "given"


def test_a_wide_threshold_searches_past_the_listed_neighbours() -> None:
    # 100 vectors, every pair within the threshold: more than NEIGHBOURS each, found by widening the search
    z = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    items = Items([f"v{i}" for i in range(100)], [None] * 100, [""] * 100, z)
    found = find_duplicates(Compared("vectors", items, pixels_descriptor()), threshold=1e6)
    assert len(found.pairs) == 100 * 99 // 2 and len(found.groups) == 1 and len(found.groups[0].members) == 100


def test_far_chooses_the_alpha_that_pairs_that_share_of_the_pairs(compared: Compared) -> None:
    d, scale = brute(compared.items.vectors)
    n = len(d)
    ratio = d / np.sqrt(scale[:, None] * scale[None, :])
    values = np.sort(ratio[np.triu_indices(n, 1)])
    far = 0.01
    wanted = math.ceil(far * n * (n - 1) / 2)
    found = find_duplicates(compared, far=far)
    assert found.rule.chosen == "far" and found.rule.far == far and found.rule.pairs == n * (n - 1) // 2
    assert found.rule.value == pytest.approx(values[wanted - 1], rel=1e-4)
    assert values[wanted - 1] <= 1  # within the listed neighbours
    assert len(found.pairs) == wanted  # no ties among these distances
    assert "share 0.01" in found.rule.describe()


def test_far_below_one_pair_is_refused(compared: Compared) -> None:
    with pytest.raises(UsageError, match="less than one pair"):
        find_duplicates(compared, far=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.1, "far": 0.01}, "give one of"),
        ({"threshold": -1.0}, "0 or more"),
        ({"threshold": float("nan")}, "0 or more"),
        ({"relative": 0.0}, r"\(0, 1\]"),
        ({"relative": 1.5}, r"\(0, 1\]"),
        ({"far": 1.0}, "between 0 and 1"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_rule(kwargs.get("threshold"), kwargs.get("relative"), kwargs.get("far"))


def test_big_groups_of_copies_are_one_group(tmp_path: Path) -> None:
    # Nine identical files and eight JPEG re-encodes of another scene: more members than the scale's rank
    root = tmp_path / "big"
    images = write_scenes(root, n=30, seed=3)
    for i in range(9):
        images[0].save(root / f"same-{i}.png")
    for q in range(8):
        images[1].save(root / f"jpeg-{q}.jpg", quality=40 + 7 * q)
    found = find_duplicates(load_compared([root]))
    groups = names_of(found)
    assert {"s00.png", *(f"same-{i}.png" for i in range(9))} in groups
    assert {"s01.png", *(f"jpeg-{q}.jpg" for q in range(8))} in groups
    assert all(len(g) == 2 for g in groups if not g & {"s00.png", "s01.png"})  # nothing else grew
    identical = [p for p in found.pairs if Path(found.names[p.a]).name.startswith("same")]
    assert identical and all(p.distance == 0.0 and p.relative == 0.0 for p in identical)


def test_against_says_which_new_images_exist(compared: Compared, folder: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    Image.open(folder / "s07.png").save(new / "again.jpg", quality=80)
    scene(np.random.default_rng(99)).save(new / "fresh.png")
    found = find_existing(compared, [new])
    by_name = {Path(n).name: m for n, m in zip(found.names, found.matches, strict=True)}
    assert [Path(found.reference[m.image]).name for m in by_name["again.jpg"]] == ["s07.png"]
    assert by_name["fresh.png"] == [] and found.existing == 1
    match = by_name["again.jpg"][0]
    assert match.distance > 0 and match.relative is not None and match.relative <= DEFAULT_RELATIVE
    data = found.to_json()
    assert data["existing"] == 1 and data["images"] == 2 and data["reference_images"] == len(compared.items)


def test_a_collections_stored_embeddings_are_compared(folder: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert invoke("index", folder, "--home", home, "--name", "c", "--model", "pixels").exit_code == 0
    compared = load_compared([], name="c", home=home)
    assert compared.stored and compared.metric == "l2" and len(compared.items) == 47
    found = find_duplicates(compared)
    groups = names_of(found)
    for planted in PLANTED:
        if "s02.png" not in planted:  # no mirror images in stored embeddings
            assert any(planted <= g for g in groups), planted
    with pytest.raises(UsageError, match="hold no mirror images"):
        load_compared([], name="c", home=home, mirror=True)


def test_too_few_images_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "one"
    write_scenes(root, n=1)
    with pytest.raises(DataError, match="at least 2"):
        find_duplicates(load_compared([root]))


# --- the command -------------------------------------------------------------------------------------------------


def test_help_says_the_default_and_agrees_with_the_library() -> None:
    from simsearch.cli import duplicates as cli

    assert cli.DEFAULT_RELATIVE_HELP == DEFAULT_RELATIVE and cli.SCALE_RANK_HELP == SCALE_RANK
    result = invoke("duplicates", "--help")
    assert result.exit_code == 0 and f"Default: {DEFAULT_RELATIVE}" in " ".join(result.stdout.split())


def test_json_lists_every_group_and_pair(folder: Path) -> None:
    result = invoke("duplicates", folder, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["images"] == 47
        and data["in_groups"] == 13
        and data["pairs"] == sum(len(g["pairs"]) for g in data["groups"])
    )
    assert sorted(sorted(Path(i).name for i in g["images"]) for g in data["groups"]) == sorted(map(sorted, PLANTED))
    assert data["threshold"]["kind"] == "relative" and data["threshold"]["value"] == DEFAULT_RELATIVE
    assert data["threshold"]["chosen"] == "default" and data["threshold"]["scale_rank"] == SCALE_RANK
    assert "pixels" in data["compared"] and "mirror-invariant" in data["compared"]
    pair = data["groups"][0]["pairs"][0]
    assert set(pair) == {"a", "b", "distance", "relative"} and pair["relative"] <= DEFAULT_RELATIVE
    assert data["skipped"] == [] and data["csv"] is None and data["report"] is None


def test_table_csv_and_report(folder: Path, tmp_path: Path) -> None:
    table, report = tmp_path / "d.csv", tmp_path / "report"
    result = invoke("duplicates", folder, "--csv", table, "--report", report, "--top", "2")
    assert result.exit_code == 0, result.stderr
    assert "6 groups of near-duplicates holding 13 of 47 images" in result.stdout
    assert "… 4 more groups" in result.stdout and "s05-big.png" in result.stdout
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 13 and set(rows[0]) == {"group", "image", "nearest", "distance", "relative"}
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row["group"], set()).add(Path(row["image"]).name)
        assert float(row["distance"]) >= 0 and float(row["relative"]) <= DEFAULT_RELATIVE
    assert sorted(map(sorted, by_group.values())) == sorted(map(sorted, PLANTED))
    page = (report / "index.html").read_text()
    assert "duplicates-01.png" in page and "s05-big.png" in page and "relative distance at most 0.65" in page
    with Image.open(report / "duplicates-01.png") as picture:
        assert picture.format == "PNG" and picture.height > 6 * 64  # six groups, a row each


def test_threshold_relative_and_far_options(folder: Path) -> None:
    fixed = json.loads(invoke("duplicates", folder, "--threshold", "0.1", "--json").stdout)
    assert fixed["threshold"]["kind"] == "distance" and all(
        p["distance"] <= 0.1 and p["relative"] is None for g in fixed["groups"] for p in g["pairs"]
    )
    strict = json.loads(invoke("duplicates", folder, "--relative", "0.05", "--json").stdout)
    assert strict["threshold"]["value"] == 0.05 and 0 < strict["pairs"] < 13
    assert all(p["relative"] <= 0.05 for g in strict["groups"] for p in g["pairs"])
    far = json.loads(invoke("duplicates", folder, "--far", "0.005", "--json").stdout)
    assert far["threshold"]["chosen"] == "far" and far["pairs"] == math.ceil(0.005 * 47 * 46 / 2)
    assert json.loads(invoke("duplicates", folder, "--no-mirror", "--json").stdout)["compared"].count("mirror") == 0


def test_against_from_the_command_line(folder: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    Image.open(folder / "s09.png").resize((40, 40)).save(new / "smaller.png")
    scene(np.random.default_rng(7)).save(new / "fresh.png")
    table = tmp_path / "against.csv"
    result = invoke("duplicates", folder, "--against", new, "--csv", table, "--report", tmp_path / "r")
    assert result.exit_code == 0, result.stderr
    assert "1 of 2 new images already exist among 47" in result.stdout and "s09.png" in result.stdout
    rows = list(csv.DictReader(table.open()))
    assert {
        (Path(r["image"]).name, r["exists"], Path(r["duplicate"]).name if r["duplicate"] else "") for r in rows
    } == {
        ("smaller.png", "yes", "s09.png"),
        ("fresh.png", "no", ""),
    }
    assert (tmp_path / "r" / "duplicates-01.png").is_file() and "smaller.png" in (
        tmp_path / "r" / "index.html"
    ).read_text()
    data = json.loads(invoke("duplicates", folder, "--against", new, "--json").stdout)
    entries = {Path(e["image"]).name: e for e in data["against"]}
    assert entries["smaller.png"]["exists"] and Path(entries["smaller.png"]["duplicates"][0]["image"]).name == "s09.png"
    assert not entries["fresh.png"]["exists"] and entries["fresh.png"]["duplicates"] == []


def test_a_collection_from_the_command_line(folder: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert invoke("index", folder, "--home", home, "--name", "c", "--model", "pixels").exit_code == 0
    data = json.loads(invoke("duplicates", "--name", "c", "--home", home, "--json").stdout)
    assert data["source"] == f"collection {home / 'c'}" and "stored embeddings" in data["compared"]
    assert any(
        {"s05.png", "s05-jpeg.jpg", "s05-big.png"} == {Path(i).name for i in g["images"]} for g in data["groups"]
    )
    new = tmp_path / "new"
    new.mkdir()
    Image.open(folder / "s11.png").save(new / "copy.jpg", quality=85)
    result = invoke("duplicates", "--name", "c", "--home", home, "--against", new)
    assert result.exit_code == 0 and "1 of 1 new images already exist" in result.stdout


def test_a_model_folder_embeds_the_images_mirror_invariantly(folder: Path, tmp_path: Path, fast_train) -> None:
    from dataclasses import replace

    from simsearch.training import train_on_folder

    model = tmp_path / "ae"
    train_on_folder(folder, replace(fast_train, family="autoencoder", size="16x16")).save(model)
    data = json.loads(invoke("duplicates", folder, "--model", model, "--threshold", "0", "--json").stdout)
    # an image and its mirror image give the same vector: distance 0, whatever the model learnt
    assert any({"s02.png", "s02-mirror.png"} <= {Path(i).name for i in g["images"]} for g in data["groups"])
    assert "autoencoder encoder's embeddings, mirror-invariant" in data["compared"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--name", "nope"], 1, "no collection at"),
        (["IMAGES", "--name", "c"], 2, "give either IMAGES"),
        (
            ["IMAGES", "--threshold", "0.1", "--far", "0.01"],
            2,
            "give one of --threshold, --relative or --far, not --threshold and --far",
        ),
        (["IMAGES", "--threshold", "-1"], 2, "--threshold is a distance: 0 or more, not -1.0"),
        (["IMAGES", "--relative", "2"], 2, "--relative must be in (0, 1]"),
        (["EMPTY"], 1, "no readable images in"),
        (["--model", "pixels"], 2, "--model embeds IMAGES, and none were given"),
        (["IMAGES", "--model", "NOMODEL"], 1, "holds no encoder.json"),
        (["IMAGES", "--model", "MISSING"], 1, "no model folder at"),
        (["IMAGES", "--far", "1e-9"], 2, "is less than one pair"),
        (["--name", "c", "--mirror"], 2, "a collection's stored embeddings hold no mirror images"),
        (["IMAGES", "--report", "AFILE"], 2, "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_error_line(folder: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "afile").write_text("x")
    home = tmp_path / "home"
    if "--name" in args and "c" in args:
        assert invoke("index", folder, "--home", home, "--name", "c", "--model", "pixels").exit_code == 0
    places = {
        "IMAGES": folder,
        "EMPTY": tmp_path / "empty",
        "NOMODEL": tmp_path / "nomodel",
        "MISSING": tmp_path / "missing",
        "AFILE": tmp_path / "afile",
    }
    result = invoke("duplicates", *[places.get(a, a) for a in args], "--home", home)
    lines = error_lines(result)
    assert result.exit_code == code and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and message in lines[0]
