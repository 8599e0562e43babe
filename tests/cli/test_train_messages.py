"""``simsearch train`` says when it did not really train: no step taken is one Error: line, and a model that could
not be validated is said to be so (never a made-up "best val_loss 0.0000")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import error_lines, invoke


def write_images(root: Path, labels: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for label, count in labels.items():
        (root / label).mkdir(parents=True)
        for n in range(count):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / label / f"{n}.png")
    return root


def test_training_that_takes_no_step_is_an_error(tmp_path: Path) -> None:
    images = write_images(tmp_path / "two", {"x": 2})
    model = tmp_path / "model"
    result = invoke("train", images, "--out", model, "--epochs", "2", "--dim", "8", "--device", "cpu")
    assert result.exit_code == 1 and not model.exists()
    assert error_lines(result) == [
        "Error: training took no step: 1 image left to train on after 1 held out for validation, and a training "
        "batch needs at least 2 — add more images (a few per label at least)"
    ]


def test_a_model_that_could_not_be_validated_says_so(tmp_path: Path) -> None:
    images = write_images(tmp_path / "pairs", {"a": 1, "b": 1})
    model = tmp_path / "model"
    result = invoke(
        "train", images, "--family", "siamese", "--out", model, "--epochs", "2", "--dim", "8", "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert "not validated: no held-out images to measure it on" in result.stdout
    assert "0.0000" not in result.stdout and "best val_" not in result.stdout
    history = [json.loads(line) for line in (model / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and not any(key.startswith("val_") for h in history for key in h)


def test_a_pixels_model_with_gamma_embeds_the_square_roots_and_a_bad_gamma_is_one_line(tmp_path: Path) -> None:
    from simsearch.embedding import embed_files
    from simsearch.models.encoder import Encoder

    images = write_images(tmp_path / "images", {"a": 3})
    result = invoke("train", images, "--family", "pixels", "--gamma", "0.5", "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "encoder.json").read_text())["preprocess"]["gamma"] == 0.5
    encoder = Encoder.load(tmp_path / "m")
    pixels = np.asarray(Image.open(images / "a" / "0.png"), np.float32) / 255.0
    [embedding] = embed_files(encoder, [images / "a" / "0.png"]).embeddings
    np.testing.assert_allclose(embedding, np.sqrt(pixels).reshape(-1), atol=1e-6)
    result = invoke("train", images, "--family", "pixels", "--gamma", "0", "--out", tmp_path / "m2")
    assert result.exit_code != 0
    assert error_lines(result) == [
        "Error: --gamma must be above 0 and at most 4, not 0.0 — 0.5 (the square root) weighs where there is ink or "
        "fabric more than how bright it is; 1 keeps the intensities as they are"
    ]
    assert not (tmp_path / "m2").exists()
