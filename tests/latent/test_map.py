"""``simsearch map``: the page, the picture and the table it writes for a collection and for a folder, the same map
from the same seed, one ``Error:`` line for each refusal, the page in a real browser (offline, points drawn, the
tooltip with its thumbnail, path and label, search), and the map served beside its collection."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import write_folder
from tests.helpers import error_lines, invoke

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(home, images): collection ``demo`` under home, 15 labelled 16×16 images (hbars, vbars, blob) indexed with
    raw pixels. Shared: tests that write into the collection's folder work on a copy (``demo``)."""
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.store.collection import Collection

    root = tmp_path_factory.mktemp("map")
    folder, home = root / "images", root / "indexes"
    write_folder(folder, per_class=5)
    index_folder(folder, Collection(home / "demo"), IndexConfig(model="pixels", device="cpu", workers=1))
    return home, folder


@pytest.fixture
def demo(indexed: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the indexed home that this test may write into: (home, images)."""
    home = tmp_path / "indexes"
    shutil.copytree(indexed[0], home)
    return home, indexed[1]


def map_json(*args: object) -> dict[str, Any]:
    result = invoke("map", *args, "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def read_map(folder: Path) -> dict[str, Any]:
    return dict(pq.read_table(folder / "map.parquet").to_pydict())


def external_references(html: str) -> list[str]:
    """Every src/href/url() in ``html`` that leads off the page (anything but data: URIs and fragments)."""
    found = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]+)|url\(\s*["']?([^"')]+)""", html, re.IGNORECASE)
    links = [a or b for a, b in found]
    return [link for link in links if not link.startswith(("data:", "#"))]


def test_map_of_a_collection_writes_its_page_picture_and_table(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    from simsearch.store.collection import Collection, int64_column

    home, _ = indexed
    out = tmp_path / "maps"
    report = map_json("--name", "demo", "--home", home, "--out", out, "--method", "pca")
    assert report["out"] == str(out) and report["points"] == 15 and report["method"] == "pca"
    assert report["files"] == {
        k: str(out / f"map.{e}") for k, e in (("html", "html"), ("png", "png"), ("parquet", "parquet"))
    }
    assert report["thumbnails"] == 15 and report["seconds"] >= 0
    # The table: readable by pyarrow alone, one row per image of the collection.
    schema = pq.read_schema(out / "map.parquet")
    assert [(f.name, str(f.type)) for f in schema] == [
        ("id", "int64"), ("x", "float"), ("y", "float"), ("path", "string"), ("label", "string"),
    ]  # fmt: skip
    table = read_map(out)
    meta = Collection(home / "demo").load().meta
    assert sorted(table["id"]) == sorted(int64_column(meta, "id").tolist())
    assert np.isfinite(table["x"]).all() and np.isfinite(table["y"]).all()
    by_id = dict(zip(table["id"], zip(table["path"], table["label"], strict=True), strict=True))
    for row in meta.select(["id", "root", "path", "label"]).to_pylist():
        assert by_id[row["id"]] == (f"{row['root']}/{row['path']}", row["label"])
    assert {Path(p).parent.name for p in table["path"]} == {"hbars", "vbars", "blob"}
    # The picture decodes; the page loads nothing from anywhere and carries every thumbnail.
    with Image.open(out / "map.png") as png:
        png.load()
        assert png.format == "PNG" and min(png.size) > 100
    html = (out / "map.html").read_text()
    assert external_references(html) == [] and "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in unescape(html)
    assert html.count("iVBORw0KGgo") == 15  # base64 of the PNG signature: one thumbnail per image


def test_the_collection_map_goes_into_its_own_folder_by_default(demo: tuple[Path, Path]) -> None:
    from simsearch.store.collection import Collection

    home, _ = demo
    result = invoke("map", "--name", "demo", "--home", home)
    assert result.exit_code == 0, result.output
    assert "Mapped 15 points of collection demo with PCA (too few points for UMAP)" in result.stdout
    assert "(3 labels)" in result.stdout
    assert sorted(p.name for p in (home / "demo" / "map").iterdir()) == ["map.html", "map.parquet", "map.png"]
    assert Collection(home / "demo").load().meta.num_rows == 15  # the collection is untouched by its map
    again = invoke("map", "--name", "demo", "--home", home)  # a map folder is the map's: written over
    assert again.exit_code == 0, again.output


def test_map_of_a_folder_embedded_with_a_model(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    home, folder = indexed
    out = tmp_path / "folder-map"
    report = map_json(folder, "--model", home / "demo" / "encoder", "--out", out, "--device", "cpu")
    assert report["points"] == 15 and report["method"] == "pca" and report["skipped"] == 0
    table = read_map(out)
    assert table["id"] == list(range(15))
    assert table["path"] == sorted(str(p.resolve()) for p in folder.rglob("*.png"))
    assert table["label"] == [Path(p).parent.name for p in table["path"]]
    # The same images give the same embeddings as the collection's, so the same layout (up to row order).
    collection = read_map(Path(map_json("--name", "demo", "--home", home, "--out", tmp_path / "c")["out"]))
    mine = dict(zip(table["path"], zip(table["x"], table["y"], strict=True), strict=True))
    theirs = dict(zip(collection["path"], zip(collection["x"], collection["y"], strict=True), strict=True))
    assert mine.keys() == theirs.keys()
    assert np.allclose([mine[p] for p in mine], [theirs[p] for p in mine], atol=1e-4)


def test_the_same_seed_gives_the_same_map(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = indexed
    for run in ("a", "b"):
        map_json("--name", "demo", "--home", home, "--out", tmp_path / run, "--method", "pca", "--seed", 3)
    assert read_map(tmp_path / "a") == read_map(tmp_path / "b")
    assert (tmp_path / "a" / "map.html").read_bytes() == (tmp_path / "b" / "map.html").read_bytes()


def test_a_collection_without_labels_maps_in_one_colour(tmp_path: Path) -> None:
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.store.collection import Collection

    folder = tmp_path / "flat"
    for n, path in enumerate(write_folder(tmp_path / "labelled", per_class=2)):
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / f"{n}.png")  # no sub-folders: no labels
    index_folder(folder, Collection(tmp_path / "home" / "flat"), IndexConfig(model="pixels", device="cpu", workers=1))
    result = invoke("map", "--name", "flat", "--home", tmp_path / "home", "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "(no labels)" in result.stdout
    assert read_map(tmp_path / "m")["label"] == [None] * 6


def empty_collection(home: Path, folder: Path) -> None:
    """Collection ``empty`` under ``home``: indexed from ``folder``, whose images were then all removed."""
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.store.collection import Collection

    write_folder(folder, per_class=2)
    collection = Collection(home / "empty")
    index_folder(folder, collection, IndexConfig(model="pixels", device="cpu", workers=1))
    shutil.rmtree(folder)
    folder.mkdir()
    index_folder(folder, collection, IndexConfig(device="cpu", workers=1, allow_empty=True))


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--name", "nope"], 1, "no collection at"),
        (["--name", "empty"], 1, "holds no images — index a folder into it first"),
        (["--name", "demo", "--model", "MODEL"], 2, "give either --name C (a collection) or IMAGES --model M"),
        ([], 2, "say what to map — give --name C"),
        (["IMAGES"], 2, "IMAGES needs a model to embed them — give --model M"),
        (["--model", "MODEL", "--out", "OUT"], 2, "--model maps a folder of images — give IMAGES"),
        (["IMAGES", "--model", "MODEL"], 2, "a folder's map has no collection folder to go into — give --out DIR"),
        (["--name", "demo", "--method", "spiral"], 2, "unknown map method 'spiral' — use --method one of: auto, umap, pca, tsne"),
        (["--name", "demo", "--method", "umap"], None, "— use --method pca"),
        (["--name", "demo", "--out", "CROWDED"], 2, "holds other files than a map's ('notes.txt')"),
    ],
)  # fmt: skip
def test_refusals_are_one_error_line(
    demo: tuple[Path, Path], tmp_path: Path, args: list[str], code: int | None, words: str
) -> None:
    home, folder = demo
    if "empty" in args:
        empty_collection(home, tmp_path / "gone")
    (tmp_path / "crowded").mkdir()
    (tmp_path / "crowded" / "notes.txt").write_text("mine")
    places = {
        "MODEL": home / "demo" / "encoder",
        "IMAGES": folder,
        "OUT": tmp_path / "o",
        "CROWDED": tmp_path / "crowded",
    }
    result = invoke("map", *(places.get(a, a) for a in args), "--home", home)
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.output
    assert result.exit_code == (code if code is not None else result.exit_code) and result.exit_code in (1, 2)
    assert not (home / "demo" / "map").exists() and (tmp_path / "crowded" / "notes.txt").read_text() == "mine"


def test_page_data_cannot_break_out_of_the_page(tmp_path: Path) -> None:
    from simsearch.latent.map import make_map

    hostile = "</script><script>document.title='owned'</script><!--"
    paths = [str(p) for p in write_folder(tmp_path / "images", per_class=2)]
    paths[0] = str(tmp_path / hostile.replace("/", "_"))  # a file that is gone: no thumbnail, still a point
    labels = [hostile, None, "a&b", "\u2028", "x", "x"]
    report = make_map(np.arange(6), np.eye(6, 4, dtype=np.float32), labels, paths, tmp_path / "m", title=hostile)
    html = report.files["html"].read_text()
    assert html.lower().count("</script") == 2 and html.count("<!--") == 0  # only the page's own two scripts
    assert report.thumbnails == 5 and report.method == "pca"
    assert read_map(tmp_path / "m")["label"] == labels


def canvas_ink(page: Page) -> int:
    """How many pixels of the map's canvas are not white."""
    return int(
        page.evaluate(
            """() => {
              const c = document.getElementById("map");
              const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              let ink = 0;
              for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) ink++;
              return ink;
            }"""
        )
    )


@pytest.fixture
def offline_page(browser_page: Page) -> Iterator[tuple[Page, list[str], list[str]]]:
    """The browser page, with every request that is not for a file: or data: URL, and every script error, listed."""
    requests: list[str] = []
    errors: list[str] = []
    browser_page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else requests.append(r.url))
    browser_page.on("pageerror", lambda e: errors.append(str(e)))
    yield browser_page, requests, errors


def test_the_page_in_a_browser(
    offline_page: tuple[Page, list[str], list[str]], indexed: tuple[Path, Path], tmp_path: Path
) -> None:
    page, requests, errors = offline_page
    home, _ = indexed
    out = Path(map_json("--name", "demo", "--home", home, "--out", tmp_path / "m")["out"])
    page.set_viewport_size({"width": 1000, "height": 700})
    page.goto((out / "map.html").resolve().as_uri())
    page.wait_for_function("Number(document.getElementById('map').dataset.points) === 15")
    assert canvas_ink(page) > 15 * 9  # 15 points of 6×6 pixels, some overlapping
    assert page.inner_text("#legend-title") == "3 labels"
    assert [li.split("\n")[0].strip() for li in page.locator("#legend li").all_inner_texts()] == [
        "blob", "hbars", "vbars",
    ]  # fmt: skip
    # Hover a point: the tooltip shows its thumbnail, its path and its label.
    table = read_map(out)
    for i in (0, 7, 14):
        spot = page.evaluate(f"window.simsearchMap.screenPosition({i})")
        page.mouse.move(spot["x"], spot["y"])
        page.wait_for_function("window.simsearchMap.hovered() >= 0 && !document.getElementById('tip').hidden")
        j = page.evaluate("window.simsearchMap.hovered()")
        there = page.evaluate(f"window.simsearchMap.screenPosition({j})")
        assert abs(there["x"] - spot["x"]) < 1.5 and abs(there["y"] - spot["y"]) < 1.5  # i, or a point on top of it
        point = page.evaluate(f"window.simsearchMap.point({j})")
        assert point == {"path": table["path"][j], "label": table["label"][j], "thumbnail": True}
        assert page.inner_text("#tip-path") == point["path"]
        assert page.inner_text("#tip-label") == point["label"]
        page.wait_for_function("document.getElementById('tip-img').naturalWidth > 0")
        assert page.evaluate("document.getElementById('tip-img').src").startswith("data:image/png;base64,")
    # Search: the points whose path or label holds the text.
    page.fill("#search", "VBARS")
    assert page.inner_text("#matches") == "5 matches"
    page.fill("#search", "blob/3.png")
    assert page.inner_text("#matches") == "1 match"
    # Zoom in and out again: the view follows the wheel, and still draws.
    spot = page.evaluate("window.simsearchMap.screenPosition(0)")
    page.mouse.move(spot["x"] + 40, spot["y"] + 40)
    page.mouse.wheel(0, -600)
    page.wait_for_function(f"window.simsearchMap.screenPosition(0).x !== {spot['x']}")
    page.click("#reset")
    page.wait_for_function(f"Math.abs(window.simsearchMap.screenPosition(0).x - {spot['x']}) < 0.01")
    assert requests == [] and errors == []


def test_hostile_and_missing_labels_in_a_browser(
    offline_page: tuple[Page, list[str], list[str]], tmp_path: Path
) -> None:
    from simsearch.latent.map import make_map

    page, requests, errors = offline_page
    hostile = "</script><img src=x onerror=\"document.title='owned'\">"
    paths = [str(p) for p in write_folder(tmp_path / "images", per_class=2)]
    for name, labels in (("hostile", [hostile] * 3 + [None] * 3), ("none", [None] * 6)):
        make_map(np.arange(6), np.eye(6, 4, dtype=np.float32), labels, paths, tmp_path / name, title=hostile)
        page.goto((tmp_path / name / "map.html").resolve().as_uri())
        page.wait_for_function("Number(document.getElementById('map').dataset.points) === 6")
        assert page.evaluate("document.scripts.length") == 2 and page.locator("img[src=x]").count() == 0
        assert page.inner_text("#title") == hostile and page.title() == f"{hostile} — latent map"  # not 'owned'
        legend = page.locator("#legend li").all_inner_texts()
        if name == "hostile":
            assert page.inner_text("#legend-title") == "1 labels"
            assert [t.split("\n")[0].strip() for t in legend] == [hostile, "no label"]
        else:
            assert page.inner_text("#legend-title") == "no labels"
            assert [t.split("\n")[0].strip() for t in legend] == ["no labels"]
    assert requests == [] and errors == []


def test_the_service_serves_the_collection_map(demo: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    from simsearch.service import create_app

    home, _ = demo
    with TestClient(create_app(home, device="cpu", use_gpu=False), raise_server_exceptions=False) as client:
        before = client.get("/collections/demo/map")
        assert before.status_code == 404
        assert before.json() == {
            "error": "no map built for collection 'demo'",
            "remedy": "build it with simsearch map name=demo",
        }
        assert client.head("/collections/demo/map").status_code == 404
        assert client.get("/collections/nope/map").status_code == 404
        assert invoke("map", "--name", "demo", "--home", home).exit_code == 0
        after = client.get("/collections/demo/map")
        assert after.status_code == 200 and after.headers["content-type"].startswith("text/html")
        assert after.content == (home / "demo" / "map" / "map.html").read_bytes()
        assert "default-src 'none'" in after.headers["content-security-policy"]
        assert client.head("/collections/demo/map").status_code == 200
        # Only that file: a map folder whose page is a link to another file is no map.
        page = home / "demo" / "map" / "map.html"
        page.unlink()
        page.symlink_to(home / "demo" / "manifest.json")
        assert client.get("/collections/demo/map").status_code == 404


def clusters(n: int, dim: int = 8) -> np.ndarray:
    """``n`` points in two clusters far apart."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, dim)) + 8 * (np.arange(n) % 2)[:, None]).astype(np.float32)


def apart(xy: np.ndarray) -> bool:
    """Whether the two clusters of ``clusters`` lie apart on the map: their centres further apart than three times
    the mean distance of a point to its centre."""
    even, odd = xy[0::2], xy[1::2]
    spread = max(np.linalg.norm(c - c.mean(0), axis=1).mean() for c in (even, odd))
    return bool(np.linalg.norm(even.mean(0) - odd.mean(0)) > 3 * spread)


def test_auto_is_umap_when_umap_learn_is_there_and_the_points_are_enough(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from simsearch.errors import UsageError
    from simsearch.latent import map as latent_map

    made: list[dict[str, Any]] = []

    class FakeUMAP:  # what the layout asks of umap-learn, without its seconds of compiling
        def __init__(self, **options: Any) -> None:
            made.append(options)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(latent_map, "umap_available", lambda: True)
    paths = [f"/nowhere/{i}.png" for i in range(16)]
    report = latent_map.make_map(np.arange(16), clusters(16), [None] * 16, paths, tmp_path / "a", seed=7)
    assert report.method == "umap" and report.thumbnails == 0
    assert made == [{"n_components": 2, "n_neighbors": 15, "min_dist": 0.1, "random_state": 7}]
    small = latent_map.make_map(np.arange(15), clusters(15), [None] * 15, paths[:15], tmp_path / "b")
    assert small.method == "pca" and len(made) == 1
    monkeypatch.setattr(latent_map, "umap_available", lambda: False)
    assert latent_map.make_map(np.arange(16), clusters(16), [None] * 16, paths, tmp_path / "c").method == "pca"
    with pytest.raises(UsageError, match="pip install umap-learn"):
        latent_map.make_map(np.arange(16), clusters(16), [None] * 16, paths, tmp_path / "d", method="umap")


def test_tsne_maps_and_refuses_too_few_points() -> None:
    from simsearch.errors import DataError
    from simsearch.latent.map import choose_method, layout

    xy = layout(clusters(20), "tsne")
    assert xy.shape == (20, 2) and np.isfinite(xy).all() and apart(xy)
    assert choose_method("tsne", 5) == "tsne"
    with pytest.raises(DataError, match=r"too few points for t-SNE: 4 \(it needs at least 5\) — use method='pca'"):
        choose_method("tsne", 4)


@pytest.mark.slow
def test_umap_for_real(tmp_path: Path) -> None:
    """umap-learn itself (where it is installed): the same seed, the same map, and clusters kept apart. About 30 s
    the first time (numba compiles UMAP's functions), a few seconds after."""
    pytest.importorskip("umap")
    from simsearch.latent.map import layout

    x = clusters(40)
    xy = layout(x, "umap", seed=1)
    assert np.array_equal(xy, layout(x, "umap", seed=1)) and xy.dtype == np.float32
    assert apart(xy)
