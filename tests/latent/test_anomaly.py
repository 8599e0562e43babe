"""Anomaly scores: reconstruction errors and k-NN scores against values computed by hand, the threshold that
``train`` stores in encoder.json (and folders without one), ``simsearch anomalies`` on a case with a known answer,
its report and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.errors import UsageError
from simsearch.io import Preprocess, find_images
from simsearch.latent.anomaly import (
    NO_THRESHOLD,
    KnnReference,
    knn_scores,
    knn_threshold,
    reconstruction_errors,
    stored_threshold,
)
from simsearch.latent.images import read_images
from simsearch.models.encoder import Encoder
from simsearch.store.collection import Collection, embeddings_of
from simsearch.training import pixels_encoder
from simsearch.training.train import ANOMALY_QUANTILES, anomaly_record
from tests.conftest import write_folder
from tests.helpers import error_lines, invoke


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An autoencoder trained on horizontal bars only (24 images), and new images to score: 6 more bars and 6
    blobs, which it never saw. Trained once for the module (seconds)."""
    from simsearch.training import TrainConfig, train_on_folder

    root = tmp_path_factory.mktemp("latent-anomaly")
    write_folder(root / "train", per_class=24, kinds=("hbars",))
    write_folder(root / "new", per_class=6, seed=1, kinds=("hbars", "blob"))
    config = TrainConfig(family="autoencoder", epochs=15, max_seconds=60, batch_size=8, dim=8, device="cpu")
    train_on_folder(root / "train", config).save(root / "ae")
    return {"root": root, "train": root / "train", "new": root / "new", "ae": root / "ae"}


# --- the scores, by hand -----------------------------------------------------------------------------------------


def test_reconstruction_error_is_the_mean_squared_difference_in_input_space(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = Encoder.load(setup["ae"])
    images = read_images(encoder, [setup["new"]]).arrays
    decoded = encoder.decode(encoder.embed(images))
    expected = ((decoded.astype(np.float64) - images) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(reconstruction_errors(encoder, images), expected, rtol=1e-5)
    np.testing.assert_allclose(reconstruction_errors(encoder, images, batch_size=5), expected, rtol=1e-5)
    # A decoder that draws nothing (zeros): the error is the mean of the squared inputs
    monkeypatch.setattr(encoder, "decode", lambda z, batch_size=256: np.zeros((len(z), 1, 16, 16), np.float32))
    errors = reconstruction_errors(encoder, images, batch_size=4)
    assert errors.dtype == np.float32 and errors.shape == (12,)
    np.testing.assert_allclose(errors, (images.astype(np.float64) ** 2).mean(axis=(1, 2, 3)), rtol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_knn_scores_equal_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    reference, queries = rng.normal(size=(200, 6)).astype(np.float32), rng.normal(size=(30, 6)).astype(np.float32)

    def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if metric == "cosine":
            a64 /= np.linalg.norm(a64, axis=1, keepdims=True)
            b64 /= np.linalg.norm(b64, axis=1, keepdims=True)
            return 1.0 - a64 @ b64.T
        return np.sqrt(((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1))

    expected = np.sort(distances(queries, reference), axis=1)[:, :4].mean(axis=1)
    scores = knn_scores(reference, queries, 4, metric)
    assert scores.dtype == np.float32 and scores.shape == (30,)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # Leave-one-out: each reference row scored against the others, never itself
    own = distances(reference, reference)
    np.fill_diagonal(own, np.inf)
    loo = np.sort(own, axis=1)[:, :4].mean(axis=1)
    np.testing.assert_allclose(
        knn_scores(reference, reference, 4, metric, exclude_self=True), loo, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        knn_scores(reference, reference[[7, 3]], 4, metric, exclude_self=True), loo[[7, 3]], rtol=1e-4, atol=1e-5
    )
    assert (knn_scores(reference, reference, 4, metric) < loo).all()  # counting itself (at 0) lowers each score


def test_exclude_self_drops_one_match_only_and_k_must_fit() -> None:
    reference = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], np.float32)  # rows 0 and 1 are twins
    np.testing.assert_allclose(knn_scores(reference, reference[:1], 2, "l2", exclude_self=True), [2.5])  # (0 + 5)/2
    np.testing.assert_allclose(knn_scores(reference, reference[2:3], 3, "l2", exclude_self=True), [(5 + 5 + 5) / 3])
    with pytest.raises(
        UsageError, match=r"needs at least 5 reference images \(one is the image itself\), and there are 4"
    ):
        knn_scores(reference, reference, 4, "l2", exclude_self=True)
    with pytest.raises(UsageError, match="must be at least 1"):
        knn_scores(reference, reference, 0, "l2")


def test_the_knn_threshold_is_a_percentile_of_leave_one_out_scores() -> None:
    rng = np.random.default_rng(1)
    reference = KnnReference(rng.normal(size=(300, 4)).astype(np.float32), "l2")
    loo = knn_scores(reference.reference, reference.reference, 3, "l2", exclude_self=True)
    threshold = knn_threshold(reference, 3, 90.0)
    assert threshold.value == pytest.approx(np.percentile(loo.astype(np.float64), 90.0))
    assert threshold.images == 300 and "all the collection's images" in threshold.describe()
    sampled = knn_threshold(reference, 3, 90.0, max_queries=100)
    assert sampled.images == 100 and "a sample of 100 of the collection's images" in sampled.describe()


# --- the stored threshold ----------------------------------------------------------------------------------------


def test_training_stores_the_threshold_of_its_own_images_reconstruction_errors(setup: dict[str, Path]) -> None:
    config = json.loads((setup["ae"] / "encoder.json").read_text())
    record = config["anomaly"]
    assert record["by"] == "reconstruction" and record["percentile"] == 99.0 and record["images"] == 24
    assert list(record["quantiles"]) == [f"{p:g}" for p in ANOMALY_QUANTILES]
    encoder = Encoder.load(setup["ae"])
    assert encoder.anomaly == record
    errors = reconstruction_errors(encoder, read_images(encoder, [setup["train"]]).arrays).astype(np.float64)
    assert record["threshold"] == pytest.approx(np.percentile(errors, 99.0), rel=1e-3)
    assert record["quantiles"]["50"] == pytest.approx(np.median(errors), rel=1e-3)
    # Other percentiles: a stored quantile exactly, others interpolated between the two around them
    assert stored_threshold(encoder, 99.0).value == record["threshold"]
    assert stored_threshold(encoder, 97.5).value == record["quantiles"]["97.5"]
    q = record["quantiles"]
    assert stored_threshold(encoder, 96.0).value == pytest.approx(q["95"] + (q["97.5"] - q["95"]) * 0.4)
    assert anomaly_record(np.arange(101.0), 90.0)["threshold"] == 90.0


def test_models_without_a_decoder_store_no_threshold(tmp_path: Path) -> None:
    from simsearch.models.autoencoder import ConvEncoder
    from simsearch.training import TrainConfig
    from simsearch.training.train import fit_anomaly

    module = ConvEncoder(channels=1, size=(16, 16), dim=8, normalize=True)
    siamese = Encoder("siamese", module.arch, Preprocess(size=(16, 16)), module)
    images = np.zeros((3, 1, 16, 16), np.float32)
    assert fit_anomaly(siamese, images, TrainConfig(family="siamese", device="cpu")) is None
    siamese.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "encoder.json").read_text())["anomaly"] is None
    assert Encoder.load(tmp_path / "s").anomaly is None


def test_a_folder_saved_before_the_threshold_ranks_and_flags_none(setup: dict[str, Path], tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for file in setup["ae"].iterdir():
        (old / file.name).write_bytes(file.read_bytes())
    config = json.loads((old / "encoder.json").read_text())
    del config["anomaly"]  # as written before it was recorded (not part of the fingerprint)
    (old / "encoder.json").write_text(json.dumps(config))
    encoder = Encoder.load(old)
    assert encoder.anomaly is None and stored_threshold(encoder).note == NO_THRESHOLD
    result = invoke("anomalies", setup["new"], "--model", old, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["threshold"]["value"] is None and found["threshold"]["note"] == NO_THRESHOLD
    assert found["flagged"] == 0 and [r["rank"] for r in found["results"]] == list(range(1, 13))
    text = invoke("anomalies", setup["new"], "--model", old)
    assert f"Note: {NO_THRESHOLD}." in text.stdout


# --- simsearch anomalies -----------------------------------------------------------------------------------------


def test_images_unlike_the_training_images_rank_first_and_are_flagged(setup: dict[str, Path]) -> None:
    result = invoke("anomalies", setup["new"], "--model", setup["ae"], "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    results = found["results"]
    assert found["by"] == "reconstruction" and found["images"] == 12
    assert [r["rank"] for r in results] == list(range(1, 13))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert {r["path"].split("/")[-2] for r in results[:6]} == {"blob"}  # every blob above every bar
    threshold = found["threshold"]
    stored = json.loads((setup["ae"] / "encoder.json").read_text())["anomaly"]
    assert threshold["value"] == stored["threshold"] and threshold["percentile"] == 99.0
    assert "99th percentile of the reconstruction errors of the model's training images" in threshold["description"]
    assert all(r["flagged"] for r in results[:6])
    assert all(r["flagged"] == (r["score"] > threshold["value"]) for r in results)
    # A lower percentile flags at least as many; --top shows the first N
    lower = json.loads(
        invoke("anomalies", setup["new"], "--model", setup["ae"], "--json", "--percentile", "50", "--top", "3").stdout
    )
    assert lower["flagged"] >= found["flagged"] and len(lower["results"]) == 3
    text = invoke("anomalies", setup["new"], "--model", setup["ae"], "--top", "2")
    assert text.exit_code == 0 and "images flagged, above threshold" in text.stdout


def test_knn_scores_against_a_collection_leave_an_indexed_image_out(setup: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert invoke("index", setup["train"], "--model", "pixels", "--home", home, "--name", "bars").exit_code == 0
    snapshot = Collection(home / "bars").load()
    reference = embeddings_of(snapshot.meta)
    own = setup["train"] / "hbars" / "3.png"
    result = invoke(
        "anomalies", setup["new"], own, "--name", "bars", "--home", home, "--by", "knn", "-k", "3", "--json"
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["by"] == "knn" and found["k"] == 3
    by_path = {r["path"]: r for r in found["results"]}
    assert {r["path"].split("/")[-2] for r in found["results"][:6]} == {"blob"}
    # The indexed image is scored against the others (its own row left out), as the threshold's scores are
    row = snapshot.meta.column("path").to_pylist().index("hbars/3.png")
    assert by_path[str(own)]["indexed"] is True and by_path[str(setup["new"] / "hbars" / "0.png")]["indexed"] is False
    expected = knn_scores(reference, reference[row : row + 1], 3, "l2", exclude_self=True)[0]
    assert by_path[str(own)]["score"] == pytest.approx(float(expected), rel=1e-6)
    loo = knn_scores(reference, reference, 3, "l2", exclude_self=True).astype(np.float64)
    assert found["threshold"]["value"] == pytest.approx(np.percentile(loo, 99.0))
    assert found["threshold"]["images"] == 24
    # A new image: scored by its embedding against all 24
    encoder = Encoder.load(Collection(home / "bars").path / snapshot.manifest["files"]["encoder"])
    new = setup["new"] / "blob" / "2.png"
    z = encoder.embed(read_images(encoder, [new]).arrays)
    assert by_path[str(new)]["score"] == pytest.approx(float(knn_scores(reference, z, 3, "l2")[0]), rel=1e-5)
    # auto: a model without a decoder, given by a collection, is scored by knn
    auto = json.loads(invoke("anomalies", setup["new"], "--name", "bars", "--home", home, "--json").stdout)
    assert auto["by"] == "knn" and auto["k"] == 5


def test_the_report_is_one_self_contained_page_and_two_grids(setup: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = invoke("anomalies", setup["new"], "--model", setup["ae"], "--report", report)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in report.iterdir()) == ["bottom.png", "report.html", "top.png"]
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "http" not in page.replace("<!doctype html>", "")
    assert "blob/0.png" in page and "99th percentile" in page
    # 12 images: 8 a row, each input above its reconstruction — 4 rows of 64-pixel tiles, captioned
    with Image.open(report / "top.png") as top:
        assert top.size == (4 + 8 * (64 + 4), 4 + 4 * (64 + 14 + 4))


def test_anomaly_refusals_are_one_line(setup: dict[str, Path], tmp_path: Path) -> None:
    pixels = tmp_path / "pixels"
    pixels_encoder(Preprocess(size=(16, 16), channels=1)).save(pixels)
    home = tmp_path / "home"
    assert invoke("index", setup["train"], "--model", "pixels", "--home", home, "--name", "bars").exit_code == 0
    cases = (
        (
            ("--model", pixels),
            "Error: the pixels family has no decoder: anomalies --by reconstruction needs an autoencoder, denoising or vae model — use --by knn with --name (a collection indexed with this model), or train a model with --family autoencoder",
        ),
        (
            ("--model", setup["ae"], "--by", "knn"),
            "Error: --by knn scores images by their distance to a collection's images, and a model folder holds none — pass --name (a collection) instead of --model",
        ),
        (
            ("--name", "bars", "--home", home, "--by", "knn", "-k", "24"),
            "Error: -k 24 needs at least 25 reference images (one is the image itself), and there are 24 images — pass a "
            "smaller -k",
        ),
        (
            ("--name", "bars", "--home", home, "--by", "other"),
            "Error: unknown score 'other' for --by — use reconstruction, knn or auto",
        ),
        (
            ("--name", "bars", "--home", home, "--by", "reconstruction"),
            "Error: the pixels family has no decoder: anomalies --by reconstruction needs an autoencoder, denoising or vae model — use --by knn with --name (a collection indexed with this model), or train a model with --family autoencoder",
        ),
    )
    for args, line in cases:
        result = invoke("anomalies", setup["new"], *args)
        assert result.exit_code in (1, 2) and error_lines(result) == [line], result.output
    missing = invoke("anomalies", tmp_path / "nothing.png", "--model", setup["ae"])
    assert error_lines(missing) == [f"Error: {tmp_path / 'nothing.png'}: no such image file or folder — check the path"]
    # An unreadable file under a folder is skipped and listed; the rest is scored
    folder = tmp_path / "some"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.open(setup["new"] / "blob" / "0.png").save(folder / "good.png")
    result = invoke("anomalies", folder, "--model", setup["ae"], "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["results"]) == 1
    assert error_lines(result)[0].startswith(f"Skipped {folder / 'bad.png'}")
    assert len(find_images(folder)[0]) + len(find_images(folder)[1]) == 2


def test_a_malformed_anomaly_record_is_one_model_error(setup: dict[str, Path], tmp_path: Path) -> None:
    from simsearch.errors import ModelError

    for value, message in (
        ("x", "'anomaly' must be an object or null"),
        ({"by": "reconstruction", "quantiles": {"50": "a"}}, "encoder.json's 'anomaly' is malformed"),
    ):
        folder = tmp_path / f"m{len(message)}"
        folder.mkdir()
        for file in setup["ae"].iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        config = json.loads((folder / "encoder.json").read_text())
        config["anomaly"] = value
        (folder / "encoder.json").write_text(json.dumps(config))
        with pytest.raises(ModelError, match=message):
            stored_threshold(Encoder.load(folder))
