"""Mirroring: exact left-right flips of about half a batch, and the rule that decides for which images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simsearch.training.augment import augment, fill_fraction, mirror_for


def test_mirror_flips_about_half_the_images_exactly() -> None:
    x = torch.randn(400, 1, 12, 10)
    out = augment(x, torch.Generator().manual_seed(0), strength=0.0, mirror=True)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same ^ flipped).all()), "each image is either untouched or exactly mirrored"
    assert 150 < int(flipped.sum()) < 250


def test_no_mirror_means_no_flip() -> None:
    x = torch.randn(64, 1, 12, 10)
    out = augment(x, torch.Generator().manual_seed(0), strength=0.0, mirror=False)
    assert torch.allclose(out, x, atol=1e-5)


def strokes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Thin random lines on a plain background: handwriting-like."""
    x = np.zeros((n, 1, 32, 32), np.float32)
    for image in x:
        for _ in range(3):
            row = rng.integers(0, 32)
            image[0, row, rng.integers(0, 10) : rng.integers(15, 32)] = 1.0
    return x


def photos(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth shading that fills the frame, plus texture: face- or photo-like."""
    ys, xs = np.mgrid[0:32, 0:32] / 32.0
    base = np.sin(3 * xs + 2 * ys)[None, None]
    return (base + 0.3 * rng.standard_normal((n, 1, 32, 32))).astype(np.float32)


def test_strokes_are_not_mirrored_and_photos_are() -> None:
    rng = np.random.default_rng(0)
    assert fill_fraction(strokes(50, rng)) < 0.2
    assert fill_fraction(photos(50, rng)) > 0.6
    assert not mirror_for("auto", strokes(50, rng))
    assert mirror_for("auto", photos(50, rng))
    assert mirror_for("yes", strokes(5, rng)) and not mirror_for("no", photos(5, rng))
    with pytest.raises(ValueError, match="mirror mode"):
        mirror_for("sometimes", photos(5, rng))
