"""The novelty check: inputs unlike the training images are flagged "unfamiliar" (``models.novelty``), stored with
the model (``reference.safetensors``), and used by verify (never a match), query --open-set (unknown) and eval."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.errors import ModelError
from simsearch.evaluation import EvalConfig, evaluate
from simsearch.evaluation.protocols import UNKNOWN, Protocol
from simsearch.evaluation.scoring import score_encoder
from simsearch.io import Preprocess, find_images, load_images
from simsearch.models.encoder import REFERENCE, Encoder
from simsearch.models.novelty import MAX_IMAGES, fit_reference, unfamiliar
from simsearch.training import train_encoder
from simsearch.verification import OperatingPoint, Verifier, operating_point
from tests.conftest import SHARED_DATA, calibrated_pixels_model, pattern, write_folder
from tests.helpers import invoke

STRIPES = ("hbars", "vbars", "dots")
SPEC = Preprocess(size=(16, 16), channels=1)  # the pixels model's: [0, 1] pixels


def arrays(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([image.astype(np.float32)[None] / 255.0 for image in images])


def stripes(seed: int, per_kind: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [pattern(kind, rng) for kind in STRIPES for _ in range(per_kind)]


def other_kinds(seed: int = 7) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        "blob": [pattern("blob", rng) for _ in range(10)],
        "noise": [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(10)],
        "blank": [np.full((16, 16), level, np.uint8) for level in (0, 20, 128, 235, 255)],
    }


def test_a_reference_flags_other_kinds_and_not_fresh_images_of_its_own() -> None:
    reference = fit_reference(arrays(stripes(0, 12)), SPEC)
    assert reference is not None and reference.images == 36 and reference.components.shape == (16, 256)
    fresh = arrays(stripes(5, 30))  # new images of the training kinds (other noise)
    assert not reference.unfamiliar(fresh, SPEC).any()
    for kind, images in other_kinds().items():
        assert reference.unfamiliar(arrays(images), SPEC).all(), kind
    assert (
        reference.score(arrays(stripes(5, 3)), SPEC).max()
        < 1
        < reference.score(arrays(other_kinds()["noise"]), SPEC).min()
    )


def test_each_part_of_the_reference_flags_on_its_own() -> None:
    """The statistics' range flags a blank page (no contrast) with the residual check off; blobs lie within that
    range (they are bright shapes on the same dark background) and are flagged by the residual alone."""
    reference = fit_reference(arrays(stripes(0, 12)), SPEC)
    assert reference is not None
    statistics_only = replace(reference, residual_threshold=1e9)
    residual_only = replace(reference, low=np.zeros(3), high=np.full(3, 1e9))
    kinds = other_kinds()
    assert statistics_only.unfamiliar(arrays(kinds["blank"]), SPEC).all()
    assert not statistics_only.unfamiliar(arrays(kinds["blob"]), SPEC).any()
    assert residual_only.unfamiliar(arrays(kinds["blob"]), SPEC).all()
    assert not residual_only.unfamiliar(arrays(stripes(5, 10)), SPEC).any()


def test_a_reference_samples_at_most_max_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simsearch.models.novelty.MAX_IMAGES", 10)
    reference = fit_reference(arrays(stripes(0, 12)), SPEC)
    assert reference is not None and reference.images == 10 and reference.components.shape[0] == 9
    assert MAX_IMAGES == 2000
    assert fit_reference(arrays(stripes(0, 12))[:1], SPEC) is None


@pytest.fixture
def stripes_model(tmp_path: Path) -> Path:
    """A calibrated pixels model of 16×16 stripes (hbars, vbars, dots) with a novelty reference fitted on them."""
    folder = tmp_path / "stripes"
    write_folder(folder, per_class=8, kinds=STRIPES)
    model = calibrated_pixels_model(folder, tmp_path / "model")
    encoder = Encoder.load(model)
    entries, _ = find_images(folder)
    images = np.stack([item.array for item in load_images([e.path for e in entries], encoder.preprocess)])
    encoder.reference = fit_reference(images, encoder.preprocess)
    encoder.save(model)
    return model


def save_images(folder: Path, images: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, image in enumerate(images):
        paths.append(folder / f"{n}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_the_reference_round_trips_and_a_damaged_one_is_refused(stripes_model: Path) -> None:
    encoder = Encoder.load(stripes_model)
    assert encoder.reference is not None
    entry = json.loads((stripes_model / "encoder.json").read_text())["reference"]
    assert entry["method"] == "pca-residual+input-range/1" and entry["images"] == 24
    assert encoder.reference.components.shape == (16, 256) and encoder.reference.images == 24
    flags = unfamiliar(encoder, arrays(other_kinds()["noise"]))
    assert flags is not None and flags.all()
    data = bytearray((stripes_model / REFERENCE).read_bytes())
    data[-5] ^= 0xFF
    (stripes_model / REFERENCE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        Encoder.load(stripes_model)
    (stripes_model / REFERENCE).unlink()
    with pytest.raises(ModelError, match="missing"):
        Encoder.load(stripes_model)


def without_reference(model: Path) -> Path:
    """``model`` as a folder saved before references were kept: no file, no ``reference`` entry."""
    (model / REFERENCE).unlink()
    config = json.loads((model / "encoder.json").read_text())
    del config["reference"]
    (model / "encoder.json").write_text(json.dumps(config))
    return model


def test_a_folder_without_a_reference_loads_and_verifies_without_the_check(tmp_path: Path, stripes_model: Path) -> None:
    model = without_reference(stripes_model)
    encoder = Encoder.load(model)
    assert encoder.reference is None and unfamiliar(encoder, arrays(other_kinds()["noise"])) is None
    (noise,) = save_images(tmp_path / "noise", other_kinds()["noise"][:1])
    result = invoke("verify", noise, noise, "--model", model, "--json")
    verdict = json.loads(result.stdout)
    assert result.exit_code == 0 and verdict["match"] is True and verdict["unfamiliar"] is None
    assert "reason" not in verdict
    assert Encoder.load(Path(__file__).parent / "fixtures" / "format1-autoencoder" / "model").reference is None


def test_verify_never_says_match_for_an_unfamiliar_input(tmp_path: Path, stripes_model: Path) -> None:
    (noise,) = save_images(tmp_path / "noise", other_kinds()["noise"][:1])
    (stripe,) = save_images(tmp_path / "fresh", stripes(9, 1)[:1])
    same = json.loads(invoke("verify", stripe, stripe, "--model", stripes_model, "--json").stdout)
    assert same["match"] is True and same["unfamiliar"] == [] and same["distance"] == 0.0
    result = invoke("verify", noise, noise, "--model", stripes_model, "--json")  # distance 0, yet no match
    verdict = json.loads(result.stdout)
    assert result.exit_code == 1 and verdict["distance"] == 0.0
    assert verdict["match"] is False and verdict["probability"] is None and verdict["unfamiliar"] == [str(noise)]
    assert verdict["reason"].startswith(f"unfamiliar input: {noise} is unlike the images this model was trained on")
    text = invoke("verify", stripe, noise, "--model", stripes_model)
    assert text.exit_code == 1 and "NO MATCH" in text.stdout and "MATCH:" not in text.stdout.replace("NO MATCH:", "")
    assert f"unfamiliar input: {noise} is unlike the images this model was trained on" in text.stdout
    assert "train the model on images like it" in text.stdout


def test_verifier_flags_pairs(tmp_path: Path, stripes_model: Path) -> None:
    encoder = Encoder.load(stripes_model)
    verifier = Verifier(encoder)
    noise = save_images(tmp_path / "noise", other_kinds()["noise"][:2])
    fresh = save_images(tmp_path / "fresh", stripes(9, 1))
    point = OperatingPoint(10.0, "manual")  # accepts every distance: only the check can refuse
    verdicts = verifier.verify_pairs(
        [(fresh[0], fresh[1], None), (fresh[0], noise[0], None), (noise[0], noise[1], None)], point
    )
    assert [v.match for v in verdicts] == [True, False, False]
    assert [v.unfamiliar for v in verdicts] == [(), (str(noise[0]),), (str(noise[0]), str(noise[1]))]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\nfresh/0.png,fresh/1.png\nfresh/0.png,noise/0.png\n")
    table = invoke("verify", "--pairs", pairs, "--model", stripes_model, "--threshold", "10")
    text = " ".join(table.stdout.split())
    assert "│ unfamiliar │" in table.stdout
    assert f"1 pair was not compared (unfamiliar input): {noise[0]} is unlike the images" in text
    assert operating_point(encoder, "auto").threshold > 0


def test_query_open_set_answers_unknown_for_an_unfamiliar_query(tmp_path: Path, stripes_model: Path) -> None:
    gallery = tmp_path / "gallery"
    write_folder(gallery, per_class=4, seed=3, kinds=STRIPES)
    home = tmp_path / "home"
    assert invoke("index", gallery, "--home", home, "--model", stripes_model).exit_code == 0
    (noise,) = save_images(tmp_path / "noise", other_kinds()["noise"][:1])
    (stripe,) = save_images(tmp_path / "fresh", stripes(9, 1)[:1])
    data = json.loads(
        invoke("query", noise, stripe, "-k", "3", "--home", home, "--open-set", "--threshold", "1000", "--json").stdout
    )
    assert data[0]["unfamiliar"] is True and data[0]["unknown"] is True and data[0]["vote"] is None
    assert data[0]["reason"].startswith("unfamiliar input:")
    assert data[1]["unfamiliar"] is False and data[1]["unknown"] is False and data[1]["vote"] == "hbars"
    closed = json.loads(invoke("query", noise, "-k", "3", "--home", home, "--json").stdout)
    assert closed[0]["unfamiliar"] is True and closed[0]["vote"] is not None and "unknown" not in closed[0]
    table = invoke("query", noise, "-k", "3", "--home", home, "--open-set", "--threshold", "1000")
    assert "vote: unknown (unfamiliar input)" in table.stdout and "unfamiliar input:" in table.stdout


def test_eval_counts_unfamiliar_queries(tmp_path: Path, stripes_model: Path) -> None:
    folder = tmp_path / "eval"
    write_folder(folder, per_class=4, seed=3, kinds=STRIPES)
    save_images(folder / "noise", other_kinds()["noise"][:4])
    report = evaluate(folder, Encoder.load(stripes_model), EvalConfig(k=3, bootstrap=10, baselines=False))
    assert report.results[0].figures["unfamiliar_queries"] == 4
    assert any("4 of 16 queries are unlike the images the model was trained on" in note for note in report.notes)
    old = evaluate(folder, Encoder.load(without_reference(stripes_model)), EvalConfig(k=3, bootstrap=10))
    assert all("unfamiliar_queries" not in r.figures for r in old.results)


def test_open_set_scoring_answers_unfamiliar_queries_unknown() -> None:
    """Labels a and b known (two images each), c unknown; the unfamiliar "a" query's neighbour is at distance 0,
    yet it is answered "unknown", as query --open-set answers it."""
    z = np.array([[0.0], [0.0], [5.0], [5.0], [9.0], [9.0]], np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    rows = np.arange(6)
    protocol = Protocol(rows, rows[:4], True, np.array([2]), "open set")
    config = EvalConfig(k=1, bootstrap=10, open_set=True)
    flags = np.array([True, False, False, False, False, False])
    point = OperatingPoint(1.0, "manual")
    result = score_encoder("m", "pixels", z, "l2", y, ["a", "b", "c"], protocol, point, config, flags)
    assert result.figures["unfamiliar_queries"] == 1
    assert result.figures["known_accuracy"][0] == pytest.approx(0.75)  # the flagged "a" query is unknown
    assert result.confusion[0, 3] == 1 and result.confusion[0, 0] == 1 and UNKNOWN == "unknown"
    plain = score_encoder("m", "pixels", z, "l2", y, ["a", "b", "c"], protocol, point, config)
    assert plain.figures["known_accuracy"][0] == 1.0 and "unfamiliar_queries" not in plain.figures


def test_training_stores_a_reference(image_folder: Path, fast_train) -> None:  # type: ignore[no-untyped-def]
    encoder = train_encoder(find_images(image_folder)[0], fast_train)
    assert encoder.reference is not None and encoder.reference.images == 15
    pixels = train_encoder(find_images(image_folder)[0], fast_train.__class__(family="pixels"))
    assert pixels.reference is None


@pytest.mark.skipif(not (SHARED_DATA / "faces-att").is_dir(), reason="needs ../shared/data/faces-att")
def test_faces_are_unfamiliar_to_a_stripes_model(tmp_path: Path, stripes_model: Path) -> None:
    faces = sorted((SHARED_DATA / "faces-att").rglob("*.pgm"))[:10]
    folder = tmp_path / "faces"
    folder.mkdir()
    for n, path in enumerate(faces):
        shutil.copy(path, folder / f"{n}.pgm")
    encoder = Encoder.load(stripes_model)
    images = np.stack([item.array for item in load_images(sorted(folder.iterdir()), encoder.preprocess)])
    flags = unfamiliar(encoder, images)
    assert flags is not None and flags.all()
