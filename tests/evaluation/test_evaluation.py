"""``simsearch eval``: figures against brute force, protocols (leave-one-out, split, open set), the report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch.cli import app
from simsearch.errors import DataError
from simsearch.evaluation import EvalConfig, choose_protocol, evaluate
from simsearch.evaluation.report import write_report
from simsearch.io import find_images, load_images
from simsearch.models.encoder import Encoder
from tests.conftest import calibrated_pixels_model, write_folder

runner = CliRunner()
KINDS = ("hbars", "vbars", "blob")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three labels of 8 images, and two labels of harder, mixed patterns so that not everything is right."""
    root = tmp_path / "images"
    write_folder(root, per_class=8, kinds=KINDS)
    rng = np.random.default_rng(3)
    for name in ("mixA", "mixB"):
        for i in range(6):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(60, 140, (16, 16), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def model(folder: Path, tmp_path: Path) -> Encoder:
    return Encoder.load(calibrated_pixels_model(folder, tmp_path / "model"))


def brute_force_votes(folder: Path, encoder: Encoder, k: int) -> float:
    """Leave-one-out k-NN vote accuracy by plain numpy over every pair."""
    entries, _ = find_images(folder)
    z = encoder.embed(np.stack([it.array for it in load_images([e.path for e in entries], encoder.preprocess)]))
    labels = [e.label for e in entries]
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    right = 0
    for i in range(len(z)):
        near = [labels[j] for j in np.argsort(d[i], kind="stable")[:k]]
        counts = {label: near.count(label) for label in near}
        top = max(counts.values())
        right += next(label for label in near if counts[label] == top) == labels[i]
    return right / len(z)


def test_leave_one_out_figures(folder: Path, model: Encoder) -> None:
    report = evaluate(folder, model, EvalConfig(k=5, bootstrap=100, vote="majority"))  # brute force: majority
    assert (report.images, report.labels, report.queries, report.gallery) == (36, 5, 36, 36)
    names = [r.name for r in report.results]
    assert names == ["model", "pixels", "pca (36)"]
    fig = report.results[0].figures
    assert fig["vote_accuracy"][0] == pytest.approx(brute_force_votes(folder, model, 5))
    for key in ("vote_accuracy", "precision_at_1", "precision_at_k", "recall_at_k", "r_precision", "map_at_r",
                "roc_auc", "eer", "far_at_threshold", "frr_at_threshold"):  # fmt: skip
        value, low, high = fig[key]
        assert low <= value <= high, key
        assert low >= 0 and high <= 1, key
    # The model is the pixels encoder itself: its row equals the pixels baseline's.
    for key in ("vote_accuracy", "map_at_r", "roc_auc", "eer"):
        assert fig[key][0] == pytest.approx(report.results[1].figures[key][0])
    assert "far_at_threshold" not in report.results[1].figures
    # The mixed labels are hard: not everything is right, so the figures can tell encoders apart.
    assert 0.5 < fig["vote_accuracy"][0] < 1.0 and fig["eer"][0] > 0
    confusion = report.results[0].confusion
    assert confusion.sum() == 36 and np.trace(confusion) == round(fig["vote_accuracy"][0] * 36)
    assert report.results[0].errors and all(e.truth != e.predicted for e in report.results[0].errors)


def test_split_protocol_keeps_queries_out_of_the_gallery(folder: Path, model: Encoder) -> None:
    entries, _ = find_images(folder)
    from simsearch.training.sampling import encode_labels

    y, classes = encode_labels([e.label for e in entries])
    protocol = choose_protocol(y, classes, EvalConfig(split=0.25))
    assert not protocol.leave_one_out and not set(protocol.queries) & set(protocol.gallery)
    assert set(protocol.queries) | set(protocol.gallery) == set(range(len(y)))
    for c in range(len(classes)):
        assert (y[protocol.gallery] == c).sum() >= 1 and (y[protocol.queries] == c).sum() == round(
            (y == c).sum() * 0.25
        )
    report = evaluate(folder, model, EvalConfig(split=0.25, bootstrap=50, baselines=False))
    assert report.queries == len(protocol.queries) and [r.name for r in report.results] == ["model"]


def test_open_set_rejects_unknown_labels_beyond_the_threshold(folder: Path, model: Encoder) -> None:
    config = EvalConfig(open_set=True, unknown_fraction=0.2, bootstrap=50, baselines=False)
    report = evaluate(folder, model, config)
    assert len(report.unknown_labels) == 1 and report.gallery == 36 - (8 if report.unknown_labels[0] in KINDS else 6)
    fig = report.results[0].figures
    for key in ("open_set_accuracy", "known_accuracy", "unknown_rejected"):
        assert fig[key][1] <= fig[key][0] <= fig[key][2]
    # A threshold beyond every distance accepts everything: nothing is rejected as unknown.
    wide = evaluate(folder, model, EvalConfig(open_set=True, threshold="1e9", bootstrap=50, baselines=False))
    assert wide.results[0].figures["unknown_rejected"][0] == 0.0
    # A threshold of zero rejects every query (no two images are identical).
    tight = evaluate(folder, model, EvalConfig(open_set=True, threshold="0", bootstrap=50, baselines=False))
    figures = tight.results[0].figures
    assert figures["unknown_rejected"][0] == 1.0 and figures["known_accuracy"][0] == 0.0


def test_open_set_without_threshold_is_a_clear_error(folder: Path, model: Encoder) -> None:
    model.threshold = None
    with pytest.raises(Exception, match="no calibrated threshold"):
        evaluate(folder, model, EvalConfig(open_set=True, bootstrap=20))
    # Without --open-set the model is still scored; only the threshold figures are missing.
    report = evaluate(folder, model, EvalConfig(bootstrap=20, baselines=False))
    assert "far_at_threshold" not in report.results[0].figures


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda root: None, "no such folder"),
        (lambda root: write_folder(root, per_class=3, kinds=("hbars",)), "at least 2 labels"),
        (lambda root: [write_folder(root / "x", 1, 0, ("a",)), write_folder(root / "y", 1, 1, ("b",))], "single image"),
    ],
)
def test_unusable_folders(tmp_path: Path, model: Encoder, make, words: str) -> None:
    root = tmp_path / "eval"
    make(root)
    with pytest.raises(DataError, match=words):
        evaluate(root, model, EvalConfig(bootstrap=20))


def test_report_writes_figures_that_show_the_data(folder: Path, model: Encoder, tmp_path: Path) -> None:
    report = evaluate(folder, model, EvalConfig(k=3, bootstrap=50))
    page = write_report(report, tmp_path / "report")
    files = {p.name for p in page.parent.iterdir()}
    assert files == {"report.html", "roc.png", "det.png", "distances.png", "confusion.png", "errors.png"}
    for name in files - {"report.html"}:
        with Image.open(page.parent / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    # errors.png has one row per error case and k + 1 tiles per row: taller with more cases.
    with Image.open(page.parent / "errors.png") as img:
        assert img.height > 100 * len(report.results[0].errors) * 0.9
    html = page.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == 5  # self-contained: every figure inlined
    assert base64.b64decode(embedded[0]) == (page.parent / "roc.png").read_bytes()
    assert "MAP@R" in html and "precision@3" in html and f"{report.results[0].figures['eer'][0]:.3f}" in html


def test_eval_command_table_json_and_errors(folder: Path, tmp_path: Path) -> None:
    model_dir = calibrated_pixels_model(folder, tmp_path / "m")
    result = runner.invoke(app, ["eval", str(folder), "--model", str(model_dir), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert "leave-one-out" in result.output and "MAP@R" in result.output and "pca (36)" in result.output
    result = runner.invoke(
        app, ["eval", str(folder), "-m", str(model_dir), "--json", "--split", "0.3", "--report", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"].startswith("split") and data["encoders"][0]["name"] == "pixels"
    assert Path(data["report"]).is_file()
    bad = runner.invoke(app, ["eval", str(tmp_path / "nowhere"), "-m", str(model_dir)])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ") and len(bad.output.strip().splitlines()) == 1
    bad_split = runner.invoke(app, ["eval", str(folder), "-m", str(model_dir), "--split", "1.5"])
    assert bad_split.exit_code == 2 and "--split must be between 0 and 1" in bad_split.output


def drawings(root: Path) -> Path:
    """Small dark shapes at random places and sizes on large light sheets, three shapes × 6: what ``resize: trim``
    is for (the sheet's margin is cropped away before letterboxing)."""
    rng = np.random.default_rng(7)
    for shape in ("bar", "box", "cross"):
        for n in range(6):
            sheet = np.full((48, 64), 235, np.uint8)
            side = int(rng.integers(8, 16))
            top, left = int(rng.integers(0, 48 - side)), int(rng.integers(0, 64 - side))
            patch = np.full((side, side), 235, np.uint8)
            if shape == "bar":
                patch[side // 3 : 2 * side // 3] = 20
            elif shape == "box":
                patch[:2], patch[-2:], patch[:, :2], patch[:, -2:] = 20, 20, 20, 20
            else:
                patch[side // 2 - 1 : side // 2 + 1], patch[:, side // 2 - 1 : side // 2 + 1] = 20, 20
            sheet[top : top + side, left : left + side] = patch
            (root / shape).mkdir(parents=True, exist_ok=True)
            Image.fromarray(sheet).save(root / shape / f"{n}.png")
    return root


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_eval_measures_the_distances_verify_measures_for_a_trim_model(tmp_path: Path, metric: str) -> None:
    """eval embeds with the model's own preprocessing (``resize: trim`` included), as verify and query do, and
    measures pairs with the model's metric; the pixels and PCA baselines keep their own letterboxed input."""
    from simsearch.evaluation import baseline_spec
    from simsearch.io import Preprocess
    from simsearch.models.baseline import PixelEncoder
    from simsearch.training.sampling import encode_labels, verification_pairs
    from simsearch.verification import OperatingPoint, Verifier

    folder = drawings(tmp_path / "drawings")
    arch = {"channels": 1, "size": [16, 16], "dim": 256}
    spec = Preprocess(size=(16, 16), invert=True, resize="trim")
    Encoder("pixels", arch, spec, PixelEncoder(**arch), metric=metric).save(tmp_path / "trim")
    encoder = Encoder.load(tmp_path / "trim")
    config = EvalConfig(bootstrap=20)
    report = evaluate(folder, encoder, config)
    y, _ = encode_labels(report.image_labels)
    i, j, same = verification_pairs(y, np.random.default_rng(config.seed), config.max_genuine_pairs)
    pairs = [(report.paths[a], report.paths[b], None) for a, b in zip(i, j, strict=True)]
    manual = OperatingPoint(1.0, "manual")
    verified = np.array([v.distance for v in Verifier(encoder).verify_pairs(pairs, manual)])
    model, pixels = report.results[0], report.results[1]
    np.testing.assert_allclose(model.genuine, verified[same], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.impostor, verified[~same], rtol=1e-6, atol=1e-7)
    # The baselines: plain letterboxed pixels at the model's size, never trimmed, Euclidean.
    assert baseline_spec(spec) == Preprocess(size=(16, 16), invert=True, resize="letterbox")
    letterboxed = Encoder("pixels", arch, baseline_spec(spec), PixelEncoder(**arch))
    plain = np.array([v.distance for v in Verifier(letterboxed).verify_pairs(pairs, manual)])
    np.testing.assert_allclose(pixels.genuine, plain[same], rtol=1e-6, atol=1e-7)
    assert not np.allclose(pixels.genuine, model.genuine)  # trimming changed what the model sees
