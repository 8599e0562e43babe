"""Shared fixtures: tiny generated image folders and fast training settings. No data files, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pattern(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy grey (size, size) uint8 image of one of three easily told-apart kinds."""
    base = np.zeros((size, size), np.float32)
    if kind == "hbars":
        base[::4] = 1.0
        base[1::4] = 1.0
    elif kind == "vbars":
        base[:, ::4] = 1.0
        base[:, 1::4] = 1.0
    elif kind == "dots":
        base[::4, ::4] = 1.0
    else:  # "blob"
        yy, xx = np.mgrid[:size, :size]
        base = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).astype(np.float32)
    noisy = base * 200 + rng.normal(0, 12, base.shape) + 20
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = 5, seed: int = 0, kinds=("hbars", "vbars", "blob")) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for kind in kinds:
        for i in range(per_class):
            path = root / kind / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pattern(kind, rng)).save(path)
            paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """15 labelled 16×16 grey PNGs: hbars/, vbars/, blob/ with 5 each."""
    root = tmp_path / "images"
    write_folder(root)
    return root


@pytest.fixture
def fast_train():
    from simsearch.train import TrainConfig

    return TrainConfig(epochs=3, max_seconds=120, batch_size=8, dim=8, device="cpu")  # epochs bind, not the clock


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def calibrated_pixels_model(images: Path, out: Path) -> Path:
    """A pixels encoder (16×16 grey) whose threshold record is calibrated on every pair of ``images``' labelled
    files, saved as a model folder at ``out``: a verification model that needs no training."""
    from simsearch import metrics
    from simsearch.data import encode_labels, verification_pairs
    from simsearch.images import Preprocess, find_images, load_images
    from simsearch.train import pixels_encoder

    encoder = pixels_encoder(Preprocess(size=(16, 16), channels=1))
    entries, _ = find_images(images)
    arrays = np.stack([item.array for item in load_images([e.path for e in entries], encoder.preprocess)])
    y, classes = encode_labels([e.label for e in entries])
    i, j, same = verification_pairs(y, np.random.default_rng(0))
    z = encoder.embed(arrays)
    encoder.threshold = metrics.calibrate(np.linalg.norm(z[i] - z[j], axis=1), same, identities=len(classes))
    encoder.save(out)
    return out


@pytest.fixture
def pixels_model(tmp_path: Path, image_folder: Path) -> Path:
    """A calibrated pixels model folder for ``image_folder`` (see ``calibrated_pixels_model``)."""
    return calibrated_pixels_model(image_folder, tmp_path / "model")
