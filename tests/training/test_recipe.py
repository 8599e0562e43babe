"""The options left on auto, chosen from the data (``training.recipe``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.errors import UsageError
from simsearch.io import Preprocess
from simsearch.training import TrainConfig, train_on_folder
from simsearch.training.calibrate import plan_calibration
from simsearch.training.recipe import CHARACTERS, PLAIN, max_side_for, recipe_for, resolve, resolved, settled

INK_SQUARE = Preprocess(size=(32, 32), channels=1, invert=True)


def test_the_character_recipe_is_for_labelled_siamese_training_on_square_ink() -> None:
    siamese = TrainConfig(family="siamese")
    config, record = resolve(siamese, INK_SQUARE)
    assert record["name"] == CHARACTERS
    assert (config.class_augment, config.projection, config.ema, config.epochs) == ("rot4flip", 256, 0.995, 20)
    assert record["set"] == {"class_augment": "rot4flip", "projection": 256, "ema": 0.995, "epochs": 20, "max_side": 56}
    assert resolved(config)
    plain = {"class_augment": "none", "projection": 0, "ema": 0.0, "epochs": 60, "max_side": 64}
    for cfg, spec, why in (
        (siamese, Preprocess(size=(61, 128), channels=1, invert=True), "inputs are not square"),  # signatures
        (siamese, Preprocess(size=(64, 53), channels=1), "not ink"),  # faces
        (siamese, Preprocess(size=(28, 28), channels=1), "not ink"),  # digits and clothes, light on dark
        (TrainConfig(family="siamese", loss="ntxent"), INK_SQUARE, "needs labels"),
        (TrainConfig(family="autoencoder"), INK_SQUARE, "Siamese family"),
    ):
        config, record = resolve(cfg, spec)
        assert record["name"] == PLAIN and why in record["why"], record
        assert {k: getattr(config, k) for k in plain} == plain


def test_options_the_user_set_are_kept() -> None:
    config, record = resolve(TrainConfig(family="siamese", ema=0.0, epochs=7, class_augment="rot4"), INK_SQUARE)
    assert (config.class_augment, config.projection, config.ema, config.epochs) == ("rot4", 256, 0.0, 7)
    assert record["set"] == {"projection": 256, "max_side": 56}
    # An input size the user gave is theirs: the recipe claims no long side (nor says it chose one).
    config, record = resolve(TrainConfig(family="siamese", size="48x48"), INK_SQUARE)
    assert "max_side" not in record["set"] and config.max_side is None and resolved(config)
    config, record = resolve(TrainConfig(family="siamese", projection=32), Preprocess(size=(8, 12), channels=1))
    assert (config.class_augment, config.projection, config.ema, config.epochs) == ("none", 32, 0.0, 60)
    # Nothing surveyed (an objective built by hand): what is left on auto takes the plain recipe.
    assert settled(TrainConfig(family="siamese", ema=0.5)) == replace(
        TrainConfig(family="siamese"), class_augment="none", projection=0, ema=0.5, epochs=60, max_side=64
    )
    # The input size is chosen before the spec exists, by the same rule.
    assert max_side_for(TrainConfig(family="siamese"), invert=True, square=True) == 56
    assert max_side_for(TrainConfig(family="siamese"), invert=True, square=False) == 64
    assert max_side_for(TrainConfig(family="siamese", max_side=32), invert=True, square=True) == 32
    assert max_side_for(TrainConfig(family="autoencoder"), invert=True, square=True) == 64
    with pytest.raises(UsageError, match="class_augment must be auto or one of none, rot4, rot4flip"):
        TrainConfig(family="siamese", class_augment="rot3")
    # auto is no request: a loss without labels just gets no class augmentation.
    assert TrainConfig(family="siamese", loss="ntxent").class_augment == "auto"


def test_class_augmentation_counts_in_the_fold_work() -> None:
    """K × images is bounded (``fold_count``): eight times the images, fewer folds."""
    chars = np.repeat(np.arange(30), 10)  # 30 characters × 10 drawings
    names = [f"c{i}" for i in range(30)]
    assert plan_calibration(chars, names, uses_labels=True).folds == 3
    assert plan_calibration(chars, names, uses_labels=True, grown=8).folds == 2


def write_characters(root: Path, labels: int = 8, per_label: int = 6, seed: int = 0) -> None:
    """Dark strokes on white 24×24 sheets: each label a different bar or corner shape, jittered."""
    rng = np.random.default_rng(seed)
    for label in range(labels):
        folder = root / f"char{label}"
        folder.mkdir(parents=True)
        for i in range(per_label):
            sheet = np.full((24, 24), 235, np.float32)
            top, left = 4 + rng.integers(0, 3), 4 + rng.integers(0, 3)
            sheet[top : top + 3 + 2 * (label % 4), left : left + 14] = 30  # a bar, its thickness by label
            if label >= 4:
                sheet[top : top + 14, left : left + 3] = 30  # and an upright: an L
            sheet += rng.normal(0, 8, sheet.shape)
            Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_train_on_characters_takes_the_recipe_and_records_it(tmp_path: Path, fast_train: TrainConfig) -> None:
    write_characters(tmp_path / "chars")
    config = replace(fast_train, family="siamese", epochs=2, folds=1)  # epochs set: the recipe leaves them
    encoder = train_on_folder(tmp_path / "chars", config)
    assert encoder.preprocess.invert and encoder.preprocess.size[0] == encoder.preprocess.size[1]
    recipe = encoder.training["recipe"]
    assert recipe["name"] == CHARACTERS and recipe["set"] == {
        "class_augment": "rot4flip",
        "projection": 256,
        "ema": 0.995,
        "max_side": 56,
    }
    stored = encoder.training["config"]
    assert (stored["class_augment"], stored["projection"], stored["ema"], stored["epochs"]) == (
        "rot4flip",
        256,
        0.995,
        2,
    )
    held = encoder.training["validation"]["images"]  # held-out identities, six drawings each
    assert encoder.training["class_augment"] == {"images": 8 * (48 - held), "labels": 8 * (8 - held // 6)}
    assert len(encoder.history) == 2
    # The same folder with the option spelled out trains the same model (the recipe is only defaults).
    spelled = replace(config, class_augment="rot4flip", projection=256, ema=0.995, max_side=56)
    again = train_on_folder(tmp_path / "chars", spelled)
    assert again.training["recipe"]["set"] == {}
    assert again.fingerprint == encoder.fingerprint
    assert recipe_for(config, invert=True, square=True)[0] == CHARACTERS


def test_train_says_which_recipe_it_took(tmp_path: Path) -> None:
    from tests.conftest import write_folder
    from tests.helpers import invoke

    write_characters(tmp_path / "chars")
    write_folder(tmp_path / "bars", per_class=6)  # light bars on a dark ground
    common = ("--family", "siamese", "--folds", "1", "--dim", "8", "--batch-size", "8", "--device", "cpu")
    result = invoke("train", tmp_path / "chars", "--out", tmp_path / "m1", "--epochs", "1", *common)
    assert result.exit_code == 0, result.output
    assert (
        "Recipe: characters (ink on a light background in square images, with labels: characters or symbols): "
        "--class-augment rot4flip, --projection 256, --ema 0.995, inputs at most 56 pixels a side."
        in result.output.replace("\n", " ")
    )
    result = invoke("train", tmp_path / "bars", "--out", tmp_path / "m2", "--epochs", "1", "--ema", "0.9", *common)
    assert result.exit_code == 0, result.output
    assert "Recipe: plain (not ink on a light background): --class-augment none, --projection 0, inputs at most " in (
        result.output.replace("\n", " ")
    )
