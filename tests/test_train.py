"""Training: input-spec choice, the generic loop, PCA against scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simsearch.errors import DataError, UsageError
from simsearch.images import Preprocess, find_images
from simsearch.train import (
    TrainConfig,
    choose_size,
    fit_pca,
    parse_size,
    train_autoencoder,
    train_encoder,
    train_on_folder,
)


def test_parse_size() -> None:
    assert parse_size("auto") is None
    assert parse_size("28x32") == (28, 32)
    assert parse_size("64") == (64, 64)
    for bad in ("0x4", "axb", "1x2x3", "5000x5000"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_choose_size_keeps_aspect_and_never_upscales() -> None:
    assert choose_size(8, 8, 64) == (8, 8)
    assert choose_size(28, 28, 64) == (28, 28)
    assert choose_size(105, 105, 64) == (64, 64)
    assert choose_size(120, 300, 64) == (26, 64)


def test_config_is_validated() -> None:
    with pytest.raises(UsageError, match="family"):
        TrainConfig(family="gan")
    with pytest.raises(UsageError, match="--dim"):
        TrainConfig(dim=0)


def test_autoencoder_learns_and_keeps_best_weights(fast_train: TrainConfig) -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 1, 16, 16)).astype(np.float32)
    images[:32] += 2.0
    config = TrainConfig(**{**fast_train.__dict__, "epochs": 6, "patience": 10})
    encoder = train_autoencoder(images, Preprocess(size=(16, 16)), config)
    losses = [h["val_loss"] for h in encoder.history]
    assert len(losses) == 6
    assert min(losses) < losses[0]
    assert encoder.training["best_val_loss"] == pytest.approx(min(losses))
    assert encoder.embed(images).shape == (64, 8)


def test_training_is_reproducible_on_cpu(fast_train: TrainConfig) -> None:
    images = np.random.default_rng(1).normal(size=(20, 1, 8, 8)).astype(np.float32)
    a = train_autoencoder(images, Preprocess(size=(8, 8)), fast_train)
    b = train_autoencoder(images, Preprocess(size=(8, 8)), fast_train)
    assert a.fingerprint == b.fingerprint


def test_time_limit_stops_training(fast_train: TrainConfig) -> None:
    images = np.random.default_rng(2).normal(size=(40, 1, 8, 8)).astype(np.float32)
    config = TrainConfig(**{**fast_train.__dict__, "epochs": 1000, "max_seconds": 0.5})
    encoder = train_autoencoder(images, Preprocess(size=(8, 8)), config)
    assert len(encoder.history) < 1000


def test_pca_matches_scikit_learn(fast_train: TrainConfig) -> None:
    from sklearn.decomposition import PCA

    x = np.random.default_rng(3).normal(size=(50, 1, 4, 5)).astype(np.float32)
    enc = fit_pca(x, Preprocess(size=(4, 5)), TrainConfig(**{**fast_train.__dict__, "family": "pca", "dim": 5}))
    ours = enc.embed(x)
    theirs = PCA(n_components=5, svd_solver="full").fit_transform(x.reshape(50, -1))
    # Components are defined up to sign.
    signs = np.sign((ours * theirs).sum(0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-4)


def test_train_on_folder_chooses_spec_from_images(image_folder: Path, fast_train: TrainConfig) -> None:
    encoder = train_on_folder(image_folder, fast_train)
    assert encoder.preprocess.size == (16, 16) and encoder.preprocess.channels == 1
    assert encoder.preprocess.std[0] > 0
    assert encoder.training["images"] == 15
    pixels = train_encoder(find_images(image_folder)[0], TrainConfig(family="pixels"))
    assert pixels.dim == 256 and pixels.preprocess.mean == (0.0,)


def test_too_few_images_is_a_clear_error(tmp_path: Path, fast_train: TrainConfig) -> None:
    with pytest.raises(DataError, match="no images"):
        train_on_folder(tmp_path, fast_train)


@pytest.mark.gpu
def test_autoencoder_trains_on_cuda(fast_train: TrainConfig) -> None:
    images = np.random.default_rng(4).normal(size=(64, 1, 16, 16)).astype(np.float32)
    config = TrainConfig(**{**fast_train.__dict__, "device": "cuda"})
    encoder = train_autoencoder(images, Preprocess(size=(16, 16)), config)
    assert encoder.training["device"] == "cuda"
    assert next(encoder.module.parameters()).device.type == "cpu"
    assert torch.isfinite(torch.tensor([h["val_loss"] for h in encoder.history])).all()
