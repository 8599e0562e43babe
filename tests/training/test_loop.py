"""The training loop says when it did not really train: no optimiser step at all is an error, and held-out rows
that give validation nothing to measure leave the epochs without a score (not a made-up 0)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.errors import DataError
from simsearch.io import Preprocess, find_images
from simsearch.training import TrainConfig, train_encoder, train_neural
from simsearch.training.loop import fit, nothing_to_validate
from simsearch.training.objectives import Objective


def noise_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 8, 8)).astype(np.float32)


def test_no_optimiser_step_is_an_error(fast_train: TrainConfig) -> None:
    """Two images: the validation split leaves one to train on, and a batch needs two."""
    with pytest.raises(DataError, match="training took no step: 1 image left to train on after 1 held out") as error:
        train_neural(noise_images(2), [None, None], Preprocess(size=(8, 8)), fast_train)
    assert "add more images" in error.value.remedy


def test_three_images_do_train(fast_train: TrainConfig) -> None:
    encoder = train_neural(noise_images(3), [None] * 3, Preprocess(size=(8, 8)), fast_train)
    assert [h["epoch"] for h in encoder.history] == [1, 2, 3] and all(h["loss"] > 0 for h in encoder.history)
    assert all("val_loss" in h for h in encoder.history) and encoder.training["best_validation"] is not None


def one_image_per_label(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / label / "1.png")
    return root


def test_a_siamese_model_with_nothing_held_out_is_not_validated(tmp_path: Path, fast_train: TrainConfig) -> None:
    """Two labels of one image each: nothing can be held out, so no epoch has a validation score."""
    config = replace(fast_train, family="siamese")
    encoder = train_encoder(find_images(one_image_per_label(tmp_path / "pairs"))[0], config)
    assert len(encoder.history) == 3 and all(h["loss"] > 0 for h in encoder.history)
    assert not any(key.startswith("val_") for h in encoder.history for key in h)
    assert encoder.training["best_validation"] is None


class Rows(Objective):
    """The smallest objective: a linear model of the rows, validated on ``val_rows``."""

    def loss(self, rows: np.ndarray):  # type: ignore[no-untyped-def]
        return self.model(self.images[rows]).pow(2).mean()


def rows_objective(val: list[int], **attributes: object) -> Objective:
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    images = torch.from_numpy(noise_images(8))
    objective = Rows(
        model, model, images, torch.zeros(8, dtype=torch.long), np.arange(6), np.array(val, np.int64), 4, 0
    )
    for name, value in attributes.items():
        setattr(objective, name, value)
    return objective


def test_what_validation_can_measure() -> None:
    assert nothing_to_validate(rows_objective([]))
    assert not nothing_to_validate(rows_objective([6]))  # a reconstruction loss measures one image
    assert nothing_to_validate(rows_objective([6], val_pairs=None, loss_name="contrastive"))  # no pair in one row
    assert not nothing_to_validate(rows_objective([6, 7], val_pairs=None, loss_name="contrastive"))
    assert not nothing_to_validate(rows_objective([6], val_pairs=None, loss_name="ntxent"))  # two views of it


def test_fit_records_no_score_when_there_is_nothing_to_validate(fast_train: TrainConfig) -> None:
    history = fit(rows_objective([]), fast_train)
    assert len(history) == 3 and all(set(h) == {"epoch", "loss", "seconds"} for h in history)
    history = fit(rows_objective([6, 7]), fast_train)
    assert all("val_loss" in h for h in history)


def test_early_stopping_waits_until_the_learning_rate_cycle_is_half_done(fast_train: TrainConfig) -> None:
    """Scores that only get worse after the first epoch: with patience 1, the run still goes on until half of the
    one-cycle schedule is behind it (``EARLY_STOP_FROM``), then stops, keeping the first epoch's weights."""
    scores = iter(range(100))
    kept: list[dict] = []
    objective = rows_objective([6, 7])

    def validate() -> float:
        kept.append({k: v.clone() for k, v in objective.model.state_dict().items()})
        return float(next(scores))

    config = replace(fast_train, epochs=10, patience=1, max_seconds=600)
    history = fit(objective, config, validate=validate)
    steps_per_epoch = sum(1 for _ in objective.batches())
    assert len(history) == 5 and steps_per_epoch >= 1  # 5 of 10 epochs: half the cycle, not 2 (patience 1)
    first = kept[0]
    assert all((objective.model.state_dict()[k] == first[k]).all() for k in first)  # the best, first epoch's
