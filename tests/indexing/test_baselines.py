"""``index`` on a labelled folder compares the encoder it trained with PCA and raw pixels on the images the training
held out (``indexing.baselines``), says so plainly when training bought nothing, and stays quiet without labels."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from simsearch.cli.options import cli_spelling
from simsearch.errors import spell
from simsearch.indexing.baselines import BaselineCheck, compare_with_baselines, vote_accuracy
from simsearch.io import ImageFileEntry, Preprocess
from simsearch.training import TrainConfig
from tests.conftest import write_folder
from tests.helpers import invoke

FAST = ["--epochs", "2", "--dim", "8", "--max-seconds", "60", "--device", "cpu", "--workers", "1"]


def test_index_reports_held_out_vote_accuracy_beside_pca_and_pixels(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_folder(folder, per_class=40, kinds=("hbars", "vbars", "blob", "dots"))
    result = invoke("index", folder, "--home", tmp_path / "h", *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Trained an autoencoder encoder (input 1×16×16, d=8) on 160 images: 2 epochs")
    # Four labels of 40 images are identities: the training held out 2 of them whole (80 images, each with 39
    # others of its label), each searched among the 159 others.
    figures = re.fullmatch(
        r"Held-out vote accuracy \(k=9; 80 images the encoder did not train on, each against 159 others\): "
        r"autoencoder (\d\.\d{3}), PCA (\d\.\d{3}), pixels (\d\.\d{3})\.",
        lines[1],
    )
    assert figures, lines[1]
    model, pca, pixels = map(float, figures.groups())
    assert pixels == 1.0  # four patterns that noise does not hide: raw pixels tell them apart
    if model <= max(pca, pixels):
        best = ("pixels", "pixels'", pixels) if pixels >= pca else ("pca", "PCA's", pca)
        assert lines[2] == (
            f"The autoencoder's held-out vote accuracy {model:.3f} is no better than {best[1]} {best[2]:.3f}: "
            f"consider --model {best[0]}."
        )
    else:
        assert lines[2].startswith("Collection ")


def test_the_advice_names_the_best_baseline() -> None:
    check = BaselineCheck("autoencoder", {"autoencoder": 0.81, "pca": 0.79, "pixels": 0.83}, 200, 1000, split="images")
    assert [spell(line, cli_spelling) for line in check.lines()] == [
        "Held-out vote accuracy (k=9; 200 images the encoder did not train on, each against 999 others): "
        "autoencoder 0.810, PCA 0.790, pixels 0.830.",
        "The autoencoder's held-out vote accuracy 0.810 is no better than pixels' 0.830: consider --model pixels.",
    ]
    check.accuracy = {"vae": 0.7, "pca": 0.75, "pixels": 0.7}
    check.family = "vae"
    assert spell(check.lines()[1], cli_spelling) == (
        "The vae's held-out vote accuracy 0.700 is no better than PCA's 0.750: consider --model pca."
    )
    check.accuracy = {"vae": 0.9, "pca": 0.75, "pixels": 0.7}
    assert len(check.lines()) == 1  # better: nothing to advise
    assert BaselineCheck("vae", reason="why").lines() == [
        "Held-out vote accuracy not compared with PCA and pixels: why."
    ]


def test_too_few_held_out_images_is_said_in_one_line(tmp_path: Path, image_folder: Path) -> None:
    result = invoke("index", image_folder, "--home", tmp_path / "h", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (
        "Held-out vote accuracy not compared with PCA and pixels: only 2 labelled images were held out of training "
        "(at least 20 are needed)."
    )


def test_nothing_is_said_without_labels_or_for_a_baseline(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for path in write_folder(tmp_path / "nested", per_class=3):
        flat.mkdir(exist_ok=True)
        path.rename(flat / f"{path.parent.name}-{path.name}")
    unlabelled = invoke("index", flat, "--home", tmp_path / "h", *FAST)
    assert unlabelled.exit_code == 0 and "vote accuracy" not in unlabelled.stdout
    write_folder(tmp_path / "labelled", per_class=3)
    pixels = invoke("index", tmp_path / "labelled", "--home", tmp_path / "p", "--model", "pixels")
    assert pixels.exit_code == 0 and "vote accuracy" not in pixels.stdout
    assert pixels.stdout.startswith("Using raw pixels as embeddings (input 1×16×16, d=256).")


def entries(labels: dict[str, int]) -> list[ImageFileEntry]:
    """Image entries (no files behind them) with ``labels[label]`` images each."""
    return [
        ImageFileEntry(Path(f"{label}/{n}.png"), f"{label}/{n}.png", label, 1, 0.0)
        for label, count in labels.items()
        for n in range(count)
    ]


def stub(family: str, training: dict) -> SimpleNamespace:
    return SimpleNamespace(
        family=family, training=training, preprocess=Preprocess(size=(4, 4)), dim=4, metric="l2", embed=None
    )


def test_a_cross_fitted_model_or_a_split_that_cannot_be_reproduced_is_not_compared() -> None:
    people = entries({f"person{n}": 4 for n in range(6)})
    crossed = compare_with_baselines(stub("siamese", {}), people, set(), {}, TrainConfig(family="siamese"))  # type: ignore[arg-type]
    assert crossed is not None and crossed.reason == (
        "the final model trained on every image (its threshold was cross-fitted), so none was held out"
    )
    other = stub("autoencoder", {"images": 999, "validation": {"split": "identities", "images": 2}})
    odd = compare_with_baselines(other, people, set(), {}, TrainConfig())  # type: ignore[arg-type]
    assert odd is not None and odd.reason == "the training's held-out split could not be reproduced"
    assert compare_with_baselines(stub("pca", {}), people, set(), {}, TrainConfig()) is None  # type: ignore[arg-type]
    one_label = entries({"only": 50})
    assert compare_with_baselines(other, one_label, set(), {}, TrainConfig()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([0, 0, 1, 1], 1.0),  # each query's nearest other is of its label
        ([0, 1, 0, 1], 0.0),
    ],
)
def test_vote_accuracy_is_the_share_of_right_votes(labels: list[int], expected: float) -> None:
    z = np.array([[0.0], [0.1], [5.0], [5.1]], np.float32)
    assert vote_accuracy(z, np.arange(4), np.array(labels), "l2", k=1) == expected


def test_vote_accuracy_votes_as_query_does_weighted_by_distance() -> None:
    """Query 0's three nearest: label 1 at 0.1, then label 2 at 1.0 and 1.1. One vote each, label 2 would win;
    weighted as ``query`` votes (the nearest 1, the third 0, the second 0.1), label 1 does."""
    z = np.array([[0.0], [0.1], [1.0], [1.1]], np.float32)
    assert vote_accuracy(z, np.array([0]), np.array([1, 1, 2, 2]), "l2", k=3) == 1.0


def test_vote_accuracy_ties_go_to_the_label_met_first() -> None:
    # Query 0's two nearest others: row 1 (label 1) then row 2 (label 2): a tie, won by the nearer, label 1.
    z = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    labels = np.array([1, 1, 2, 2])
    assert vote_accuracy(z, np.array([0]), labels, "l2", k=2) == 1.0
    labels = np.array([2, 1, 2, 2])
    assert vote_accuracy(z, np.array([0]), labels, "l2", k=2) == 0.0
    cosine = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]], np.float32)  # row 1 points the way of row 0
    assert vote_accuracy(cosine, np.array([0]), np.array([0, 0, 1]), "cosine", k=1) == 1.0
