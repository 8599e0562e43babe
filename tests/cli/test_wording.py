"""Small wording defects, fixed once for every command: "an autoencoder", the baselines are not "trained without
labels", and one bad file is named with the same words by index, query, verify and the skipped lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from simsearch.cli.render import _describe_training, with_article
from tests.helpers import error_lines, invoke

NOT_AN_IMAGE = "not an image: its content is no known image format"
DAMAGED = "could not be decoded (damaged PNG data)"


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("autoencoder", "an autoencoder"),
        ("denoising", "a denoising"),
        ("vae", "a vae"),
        ("siamese", "a siamese"),
        ("pca", "a pca"),
    ],
)
def test_a_family_name_gets_the_article_it_is_read_with(family: str, expected: str) -> None:
    assert with_article(family) == expected


def test_training_summary_says_an_autoencoder() -> None:
    training = {"images": 10, "epochs_run": 3, "seconds": 2.0, "device": "cpu", "best_validation": None}
    assert _describe_training("autoencoder", 8, (1, 16, 16), training).startswith(
        "Trained an autoencoder encoder (input 1×16×16, d=8) on 10 images: 3 epochs in 2 s on cpu"
    )
    assert _describe_training("vae", 8, (1, 16, 16), training).startswith("Trained a vae encoder")


@pytest.mark.parametrize(
    ("family", "why"),
    [
        ("pixels", "raw pixels are not trained: nothing calibrated one"),
        ("pca", "PCA is fitted without labels: nothing calibrated one"),
    ],
)
def test_a_baseline_is_not_said_to_be_trained_without_labels(
    tmp_path: Path, image_folder: Path, family: str, why: str
) -> None:
    model = tmp_path / family
    assert invoke("train", image_folder, "--family", family, "--out", model).exit_code == 0
    good = image_folder / "hbars" / "0.png"
    result = invoke("verify", good, good, "-m", model)
    assert (result.exit_code, error_lines(result)) == (
        2,
        [
            f"Error: this {family} model has no calibrated threshold ({why}) — pass --threshold NUMBER, or train one "
            "with --family siamese on labelled sub-folders"
        ],
    )


def test_one_bad_file_gets_the_same_words_from_every_command(tmp_path: Path, image_folder: Path) -> None:
    home = tmp_path / "home"
    assert invoke("index", image_folder, "--home", home, "--model", "pixels").exit_code == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.png").write_text("just some text")
    (bad / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good = image_folder / "hbars" / "0.png"
    for name, words in (("text.png", NOT_AN_IMAGE), ("damaged.png", DAMAGED)):
        path = bad / name
        query = invoke("query", path, "--home", home)
        verify = invoke("verify", path, good, "--threshold", "1", "--home", home)
        assert (query.exit_code, error_lines(query)) == (1, [f"Error: {path}: {words}"])
        assert (verify.exit_code, error_lines(verify)) == (2, [f"Error: {path}: {words}"])
    (bad / "ok.png").write_bytes(good.read_bytes())
    folder = invoke("query", bad, "--home", home)
    assert sorted(error_lines(folder)) == [
        f"Skipped {bad / 'damaged.png'}: {DAMAGED}",
        f"Skipped {bad / 'text.png'}: {NOT_AN_IMAGE}",
    ]
    index = invoke("index", bad, "--home", home)
    assert index.exit_code == 0 and DAMAGED in index.stdout and NOT_AN_IMAGE in index.stdout
    from simsearch.store.collection import Collection

    skipped = {r["path"]: r["reason"] for r in Collection(home / "default").load().skipped.to_pylist()}
    assert skipped == {"damaged.png": DAMAGED, "text.png": NOT_AN_IMAGE}
