"""Verification: operating points, verdicts, pairs files, and ``simsearch verify``'s output and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import metrics
from simsearch.errors import DataError, ImageError, ModelError, UsageError
from simsearch.models.encoder import Encoder
from simsearch.verification import Verifier, operating_point, pair_metrics, read_pairs
from tests.helpers import invoke

runner = CliRunner()


def test_operating_points(pixels_model: Path) -> None:
    encoder = Encoder.load(pixels_model)
    record = encoder.threshold
    assert record is not None
    eer = operating_point(encoder, "auto")
    assert (eer.threshold, eer.name) == (record["value"], "eer")
    at_far = operating_point(encoder, "auto", far=0.05)
    curve = np.array(record["curve"])
    best = curve[curve[:, 1] <= 0.05][-1]
    assert at_far.threshold == best[0] and at_far.far == best[1] <= 0.05 and at_far.name == "far=0.05"
    assert operating_point(encoder, "0.75") == operating_point(encoder, 0.75)
    assert operating_point(encoder, "0.75").name == "manual"


@pytest.mark.parametrize(
    ("threshold", "far", "error", "words"),
    [
        ("abc", None, UsageError, "'auto' or a number"),
        ("-1", None, UsageError, "≥ 0"),
        ("0.5", 0.01, UsageError, "not both"),
        ("auto", 1.5, UsageError, "between 0 and 1"),
        ("auto", 1e-9, UsageError, "finer than the calibration"),
    ],
)
def test_bad_operating_points(pixels_model: Path, threshold: str, far: float | None, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        operating_point(Encoder.load(pixels_model), threshold, far)


def test_a_model_without_threshold_needs_a_number(pixels_model: Path) -> None:
    encoder = Encoder.load(pixels_model)
    encoder.threshold = None
    with pytest.raises(ModelError, match=r"no calibrated threshold.*threshold=NUMBER"):
        operating_point(encoder, "auto")
    assert operating_point(encoder, "1.5").threshold == 1.5


def test_verdicts_follow_the_threshold_and_probability_falls_with_distance(
    pixels_model: Path, image_folder: Path
) -> None:
    verifier = Verifier(Encoder.load(pixels_model))
    point = operating_point(verifier.encoder, "auto")
    same = verifier.verify(image_folder / "hbars" / "0.png", image_folder / "hbars" / "1.png", point)
    other = verifier.verify(image_folder / "hbars" / "0.png", image_folder / "vbars" / "1.png", point)
    assert same.match and not other.match
    assert same.distance <= point.threshold < other.distance
    assert same.probability is not None and other.probability is not None
    assert same.probability > 0.5 > other.probability
    # The distance is the Euclidean distance of the two embeddings.
    z = verifier.embed_files([image_folder / "hbars" / "0.png", image_folder / "vbars" / "1.png"])
    assert other.distance == pytest.approx(float(np.linalg.norm(z[0] - z[1])), rel=1e-6)
    itself = verifier.verify(image_folder / "blob" / "2.png", image_folder / "blob" / "2.png", point)
    assert itself.distance == 0.0 and itself.match


def write_pairs(folder: Path, image_folder: Path, labelled: bool = True) -> Path:
    rows = ["a,b,label" if labelled else "a,b"]
    combos = [
        ("hbars/0.png", "hbars/3.png", "1"),
        ("vbars/1.png", "vbars/2.png", "same"),
        ("blob/0.png", "hbars/0.png", "0"),
    ]
    combos += [("vbars/0.png", "blob/4.png", "different"), ("blob/1.png", "blob/3.png", "true")]
    for a, b, label in combos:
        rel_a, rel_b = Path("..", image_folder.name, a), Path("..", image_folder.name, b)
        rows.append(f"{rel_a},{rel_b}" + (f",{label}" if labelled else ""))
    path = folder / "lists" / "pairs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_pairs_file_paths_are_relative_to_it(tmp_path: Path, image_folder: Path, pixels_model: Path) -> None:
    pairs = read_pairs(write_pairs(image_folder.parent, image_folder))
    assert [p[2] for p in pairs] == [True, True, False, False, True]
    assert all(p[0].is_file() and p[1].is_file() for p in pairs)
    verifier = Verifier(Encoder.load(pixels_model))
    verdicts = verifier.verify_pairs(pairs, operating_point(verifier.encoder))
    assert [v.match for v in verdicts] == [True, True, False, False, True]
    summary = pair_metrics(verdicts)
    assert summary is not None and summary["accuracy"] == 1.0 and summary["far"] == 0.0 and summary["frr"] == 0.0
    assert summary["roc_auc"][0] == 1.0 and summary["eer"][0] == 0.0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x,y\n1,2\n", "columns a,b"),
        ("a,b,label\n", "no pairs"),
        ("a,b,label\np.png,q.png,maybe\n", "not 1/0"),
        ("a,b,label\np.png,q.png,1\nr.png,s.png,\n", "label every row or none"),
        ("a,b\np.png,\n", "both a and b"),
    ],
)
def test_bad_pairs_files(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=words):
        read_pairs(path)


def test_channel_mismatch_is_converted_unless_strict(tmp_path: Path, image_folder: Path, pixels_model: Path) -> None:
    """The channel rule every command follows (``io.channels``): converted by default, refused with strict."""
    colour = tmp_path / "colour.png"
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[::4, :, 0] = 255
    Image.fromarray(rgb).save(colour)
    point = operating_point(Encoder.load(pixels_model))
    for strict in (
        Verifier(Encoder.load(pixels_model), channels="strict"),
        Verifier(Encoder.load(pixels_model), convert=False),
    ):
        with pytest.raises(ImageError, match=r"colour image, but the model takes grey images.*channels='convert'"):
            strict.verify(colour, image_folder / "hbars" / "0.png", point)
    converted = Verifier(Encoder.load(pixels_model)).verify(colour, image_folder / "hbars" / "0.png", point)
    assert converted.distance > 0


# --- the command ---------------------------------------------------------------------------------------------------


def test_verify_exit_codes_and_output(image_folder: Path, pixels_model: Path) -> None:
    same = invoke("verify", image_folder / "hbars/0.png", image_folder / "hbars/1.png", "--model", pixels_model)
    assert same.exit_code == 0, same.output
    assert same.output.startswith("MATCH:") and "EER point" in same.output and "match probability" in same.output
    other = invoke("verify", image_folder / "hbars/0.png", image_folder / "blob/1.png", "--model", pixels_model)
    assert other.exit_code == 1, other.output
    assert other.output.startswith("NO MATCH:")
    manual = invoke(
        "verify", image_folder / "hbars/0.png", image_folder / "blob/1.png", "-m", pixels_model, "--threshold", "1e6"
    )
    assert manual.exit_code == 0 and "threshold given with --threshold" in manual.output


def test_verify_json(image_folder: Path, pixels_model: Path) -> None:
    result = invoke(
        "verify",
        image_folder / "vbars/0.png",
        image_folder / "vbars/4.png",
        "-m",
        pixels_model,
        "--far",
        "0.01",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["match"] is True and data["operating_point"] == "far=0.01" and data["far"] <= 0.01
    assert data["distance"] <= data["threshold"] and 0.5 < data["probability"] <= 1


def test_verify_pairs_prints_metrics(image_folder: Path, pixels_model: Path) -> None:
    csv_path = write_pairs(image_folder.parent, image_folder)
    result = invoke("verify", "--pairs", csv_path, "-m", pixels_model)
    assert result.exit_code == 0, result.output
    assert "3 of 5 pairs match" in result.output
    assert "Labelled pairs (3 same, 2 different): accuracy 1.000, FAR 0.000, FRR 0.000, ROC AUC 1.000" in result.output
    data = json.loads(invoke("verify", "--pairs", csv_path, "-m", pixels_model, "--json").stdout)
    assert len(data["pairs"]) == 5 and data["metrics"]["accuracy"] == 1.0


def test_verify_uses_a_collections_encoder(tmp_path: Path, image_folder: Path, pixels_model: Path) -> None:
    home = tmp_path / "home"
    assert invoke("index", image_folder, "--home", home, "--name", "c", "--model", pixels_model).exit_code == 0
    result = invoke("verify", image_folder / "blob/0.png", image_folder / "blob/1.png", "--name", "c", "--home", home)
    assert result.exit_code == 0, result.output


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_verify_bad_input_is_one_line_and_exit_2(tmp_path: Path, image_folder: Path, pixels_model: Path) -> None:
    good = image_folder / "hbars/0.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    colour = tmp_path / "colour.png"
    Image.fromarray(np.full((16, 16, 3), (200, 30, 30), np.uint8)).save(colour)
    unthresholded = tmp_path / "plain"
    shutil.copytree(pixels_model, unthresholded)
    config = json.loads((unthresholded / "encoder.json").read_text())
    config["threshold"] = None
    (unthresholded / "encoder.json").write_text(json.dumps(config))
    cases = {
        "no such image file": ("verify", good, tmp_path / "missing.png", "-m", pixels_model),
        "could not be decoded (damaged PNG data)": ("verify", good, broken, "-m", pixels_model),
        "no calibrated threshold": ("verify", good, good, "-m", unthresholded),
        "colour image, but the model takes grey": ("verify", colour, good, "-m", pixels_model, "--channels", "strict"),
        "no model folder": ("verify", good, good, "-m", tmp_path / "nope"),
        "exactly two images": ("verify", good, "-m", pixels_model),
        "not both": ("verify", good, good, "-m", pixels_model, "--name", "x"),
        "no collection": ("verify", good, good, "--home", tmp_path / "empty"),
        "no such pairs file": ("verify", "--pairs", tmp_path / "nope.csv", "-m", pixels_model),
    }
    for words, args in cases.items():
        result = invoke(*args)
        assert result.exit_code == 2, (words, result.output)
        assert words in error_line(result), (words, result.output)
    assert invoke("verify", good, good, "-m", unthresholded, "--threshold", "0.5").exit_code == 0
    assert invoke("verify", colour, good, "-m", pixels_model, "--convert").exit_code == 1
    assert invoke("verify", colour, good, "-m", pixels_model).exit_code == 1  # converted by default


def test_query_open_set_answers_unknown_beyond_the_threshold(
    tmp_path: Path, image_folder: Path, pixels_model: Path
) -> None:
    gallery = tmp_path / "gallery"
    shutil.copytree(image_folder / "hbars", gallery / "hbars")
    shutil.copytree(image_folder / "vbars", gallery / "vbars")
    home = tmp_path / "home"
    assert invoke("index", gallery, "--home", home, "--model", pixels_model).exit_code == 0
    blob, hbar = image_folder / "blob/0.png", image_folder / "hbars/2.png"
    data = json.loads(invoke("query", blob, hbar, "-k", "3", "--home", home, "--open-set", "--json").stdout)
    assert data[0]["unknown"] is True and data[0]["vote"] is None
    assert data[0]["neighbours"][0]["distance"] > data[0]["threshold"]
    assert data[1]["unknown"] is False and data[1]["vote"] == "hbars"
    closed = json.loads(invoke("query", blob, "-k", "3", "--home", home, "--json").stdout)
    assert closed[0]["vote"] in ("hbars", "vbars") and "unknown" not in closed[0]
    table = invoke("query", blob, "-k", "3", "--home", home, "--open-set")
    assert "vote: unknown (nearest" in table.output


def test_probability_model_round_trips(pixels_model: Path) -> None:
    record = Encoder.load(pixels_model).threshold
    assert record is not None
    p = metrics.match_probability(np.array([0.0, record["value"], 100.0]), record["probability"])
    assert p[0] > p[1] > p[2]


# --- one distance, the model's metric ------------------------------------------------------------------------------


def cosine_encoder() -> Encoder:
    """A pixels encoder (16×16 grey) whose metric is cosine: its distances are 1 - cosine similarity."""
    from simsearch.io import Preprocess
    from simsearch.models.baseline import PixelEncoder

    arch = {"channels": 1, "size": [16, 16], "dim": 256}
    return Encoder("pixels", arch, Preprocess(size=(16, 16)), PixelEncoder(**arch), metric="cosine")


def one_minus_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return 1 - (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


def test_a_cosine_models_verify_and_calibration_measure_one_minus_cosine(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simsearch.io import find_images, load_images
    from simsearch.training import calibrate_threshold
    from simsearch.training.sampling import Split, encode_labels, scoring_pairs

    cosine_encoder().save(tmp_path / "cos")
    encoder = Encoder.load(tmp_path / "cos")
    assert encoder.metric == "cosine"
    verifier = Verifier(encoder)
    a, b = image_folder / "hbars" / "0.png", image_folder / "blob" / "3.png"
    z = verifier.embed_files([a, b])
    verdict = verifier.verify(a, b, operating_point(encoder, "0.5"))
    assert verdict.distance == pytest.approx(float(one_minus_cosine(z[:1], z[1:])[0]), abs=1e-6)
    assert verdict.distance < 1.0 < float(np.linalg.norm(z[0] - z[1]))  # not the Euclidean distance
    # Calibration scores its pairs with the same distance.
    seen: list[np.ndarray] = []
    real = metrics.calibrate
    monkeypatch.setattr(metrics, "calibrate", lambda d, same, **kw: seen.append(np.array(d)) or real(d, same, **kw))
    entries, _ = find_images(image_folder)
    images = np.stack([item.array for item in load_images([e.path for e in entries], encoder.preprocess)])
    y, _ = encode_labels([e.label for e in entries])
    record = calibrate_threshold(encoder, images, y, Split(np.zeros(0, np.int64), np.arange(len(y)), "identities"))
    assert record is not None and len(seen) == 1
    pairs = scoring_pairs(y, np.random.default_rng(0))
    assert pairs is not None
    i, j, _ = pairs
    zs = encoder.embed(images)
    np.testing.assert_allclose(seen[0], one_minus_cosine(zs[i], zs[j]), atol=1e-6)
    # A verdict at the calibrated threshold compares the same kind of distance.
    pairs_verdicts = verifier.verify_pairs(
        [(entries[p].path, entries[q].path, None) for p, q in zip(i, j, strict=True)], operating_point(encoder, "0.5")
    )
    np.testing.assert_allclose([v.distance for v in pairs_verdicts], seen[0], atol=1e-6)


def test_a_model_whose_metric_cannot_be_measured_is_refused(tmp_path: Path, pixels_model: Path) -> None:
    encoder = Encoder.load(pixels_model)
    encoder.metric = "dot"
    with pytest.raises(ModelError, match=r"metric 'dot' is not one simsearch measures \(l2, cosine\)"):
        Verifier(encoder)
    # On disk, encoder.json's metric is checked on load: `verify` says so in one line.
    folder = tmp_path / "dot"
    shutil.copytree(pixels_model, folder)
    config = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps({**config, "metric": "dot"}))
    good = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(good)
    result = invoke("verify", good, good, "-m", folder)
    assert result.exit_code == 2 and "unknown metric 'dot'" in error_line(result)


# --- how the threshold was obtained, and a probability consistent with it --------------------------------------


def test_the_probability_is_one_half_at_the_threshold_in_use(pixels_model: Path) -> None:
    verifier = Verifier(Encoder.load(pixels_model))
    for point in (
        operating_point(verifier.encoder, "auto"),
        operating_point(verifier.encoder, "auto", far=0.05),
        operating_point(verifier.encoder, "0.75"),  # a threshold of the user's own
        operating_point(verifier.encoder, 40.0),
    ):
        assert point.prior is not None and 0 <= point.prior <= 1
        at = verifier.decide("a", "b", point.threshold, point)
        assert at.match and at.probability == 0.5
        for distance in (point.threshold * 0.5, point.threshold * 1.5 + 0.01):
            verdict = verifier.decide("a", "b", distance, point)
            assert verdict.probability is not None and (verdict.probability > 0.5) == verdict.match
    manual = operating_point(verifier.encoder, "0.75")
    assert manual.name == "manual" and manual.to_json()["prior"] == manual.prior


def old_model(pixels_model: Path, folder: Path) -> Path:
    """``pixels_model`` as an older simsearch wrote it: no ``calibration``, a saturated probability fit."""
    shutil.copytree(pixels_model, folder)
    config = json.loads((folder / "encoder.json").read_text())
    record = {k: v for k, v in config["threshold"].items() if k not in ("calibration", "split")}
    record["probability"] = {"intercept": 346.0 * record["value"], "slope": -346.0, "prior": 0.5}
    (folder / "encoder.json").write_text(json.dumps({**config, "threshold": {**record, "split": "images"}}))
    return folder


def test_an_older_model_without_a_calibration_record_still_verifies(
    tmp_path: Path, image_folder: Path, pixels_model: Path
) -> None:
    model = old_model(pixels_model, tmp_path / "old")
    a, b = image_folder / "hbars/0.png", image_folder / "hbars/1.png"
    text = invoke("verify", a, b, "-m", model)
    assert text.exit_code == 0, text.output
    assert "EER point" in text.output and "not recorded (a model trained by an older simsearch)" in text.output
    data = json.loads(invoke("verify", a, b, "-m", model, "--json").stdout)
    assert data["calibration"] == {
        "method": "held-out images",
        "unseen_identities": False,
        "identities": 3,
        "pairs": json.loads((model / "encoder.json").read_text())["threshold"]["pairs"],
        "recorded": False,
    }
    assert 0.5 <= data["probability"] <= 1
    assert invoke("verify", a, b, "-m", model, "--far", "0.05").exit_code == 0


def test_verify_says_how_a_cross_fitted_threshold_was_obtained(
    tmp_path: Path, image_folder: Path, pixels_model: Path
) -> None:
    folder = tmp_path / "crossfit"
    shutil.copytree(pixels_model, folder)
    config = json.loads((folder / "encoder.json").read_text())
    calibration = {
        "method": "cross-fitted",
        "unseen_identities": True,
        "folds": 4,
        "identities": 21,
        "labels": 21,
        "pairs": {"genuine": 945, "impostor": 3780, "skilled_forgery": 0},
        "far_interval": [0.021, 0.098],
        "frr_interval": [0.03, 0.09],
        "epochs": 23,
    }
    config["threshold"] = {**config["threshold"], "calibration": calibration, "split": "cross-fitted"}
    (folder / "encoder.json").write_text(json.dumps(config))
    a, b = image_folder / "vbars/0.png", image_folder / "vbars/2.png"
    text = invoke("verify", a, b, "-m", folder)
    assert "cross-fitted over 21 identities in 4 folds (945 genuine and 3,780 impostor pairs" in text.output
    assert "95% interval of its FAR: 2.1% to 9.8%" in text.output and "prior match rate" in text.output
    data = json.loads(invoke("verify", a, b, "-m", folder, "--json").stdout)
    assert data["calibration"] == calibration and 0 < data["prior"] < 1
    pairs = json.loads(invoke("verify", "--pairs", write_pairs(tmp_path, image_folder), "-m", folder, "--json").stdout)
    assert pairs["calibration"] == calibration
