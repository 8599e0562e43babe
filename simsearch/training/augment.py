"""Augmentation as batched torch ops (no torchvision): random warps, noise and erasing, and class augmentation
(each label turned or mirrored becomes a new label).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: Class augmentation: every transform but the identity turns each training label into a new label of its own.
CLASS_AUGMENTS = ("none", "rot4", "rot4flip")


def class_symmetries(mode: str) -> list[tuple[int, bool]]:
    """The symmetries that ``mode`` names, as (quarter turns, mirrored), the identity first: ``rot4`` = turns by
    0, 90, 180 and 270°; ``rot4flip`` = those and their mirror images (the 8 symmetries of the square)."""
    if mode not in CLASS_AUGMENTS:
        raise ValueError(f"unknown class augmentation {mode!r}; expected one of {', '.join(CLASS_AUGMENTS)}")
    turns = {"none": 1, "rot4": 4, "rot4flip": 4}[mode]
    mirrors = (False, True) if mode == "rot4flip" else (False,)
    return [(k, m) for m in mirrors for k in range(turns)]


def transform(x: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """Images (n, C, H, W) turned ``turns`` quarter turns anticlockwise, then mirrored left to right."""
    out = np.rot90(x, turns, axes=(2, 3))
    return np.ascontiguousarray(out[..., ::-1] if mirrored else out)


def add_transformed_classes(
    x: np.ndarray, y: np.ndarray, rows: np.ndarray, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append transformed copies of the labelled images among ``x[rows]`` (see ``class_symmetries``); each
    symmetry t gives its copies new labels ``y + t · (y.max() + 1)``: a character turned upside down is another
    character. Returns (images, labels, rows): the originals first, with their row numbers unchanged (so a
    validation split still holds), then the copies; and ``rows`` followed by the copies' row numbers. Quarter
    turns need square images.
    """
    symmetries = class_symmetries(mode)[1:]
    labelled = rows[y[rows] >= 0]
    if not symmetries or len(labelled) == 0:
        return x, y, rows
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"class augmentation {mode!r} turns images by 90°: it needs square images, not {x.shape[2:]}")
    n_labels = int(y.max()) + 1
    images, labels, grown = [x], [y], [rows]
    for t, (turns, mirrored) in enumerate(symmetries, start=1):
        images.append(transform(x[labelled], turns, mirrored))
        labels.append(y[labelled] + t * n_labels)
        grown.append(len(x) + (t - 1) * len(labelled) + np.arange(len(labelled)))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(grown)


#: ``mirror``: auto (mirror images that fill their frame, such as faces and photos; not strokes on a plain
#: background, such as handwriting and signatures, whose mirror image is another shape), yes or no.
MIRROR_MODES = ("auto", "yes", "no")
#: Share of pixels away from an image's background above which ``mirror_for`` calls the images photo-like.
PHOTO_LIKE_FILL = 0.4


def fill_fraction(images: torch.Tensor | np.ndarray) -> float:
    """The median share of each image's pixels that stand out from its background (the image's median value),
    by more than a tenth of its range: about 0.1–0.2 for strokes (handwriting, signatures, digits), 0.6–0.8 for
    faces and clothes."""
    x = torch.as_tensor(images).float().flatten(1)
    if x.numel() == 0:
        return 0.0
    background = x.median(dim=1, keepdim=True).values
    span = (x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)).clamp_min(1e-6)
    return float(((x - background).abs() > 0.1 * span).float().mean(dim=1).median())


def mirror_for(mode: str, images: torch.Tensor | np.ndarray) -> bool:
    """Whether training mirrors images left to right: ``yes``, ``no``, or for ``auto`` whether the images fill
    their frame (``fill_fraction`` above ``PHOTO_LIKE_FILL``), judged on up to 512 of them."""
    if mode not in MIRROR_MODES:
        raise ValueError(f"unknown mirror mode {mode!r}; expected one of {', '.join(MIRROR_MODES)}")
    if mode != "auto":
        return mode == "yes"
    return fill_fraction(images[:512]) > PHOTO_LIKE_FILL


def augment(
    x: torch.Tensor, generator: torch.Generator | None = None, strength: float = 1.0, mirror: bool = False
) -> torch.Tensor:
    """Random small affine warps (rotation ±10°, scale ±10%, shear, shift ±8%), pixel noise and random
    erasing, applied to a batch (n, C, H, W) in one pass. Borders are extended, not filled with zeros. With
    ``mirror``, half of the images (at random) are also mirrored left to right."""
    n, device = len(x), x.device

    def uniform(low: float, high: float, size: tuple[int, ...] = (n,)) -> torch.Tensor:
        return (torch.rand(size, generator=generator) * (high - low) + low).to(device)

    s = strength
    angle = uniform(-10, 10) * s * math.pi / 180
    scale = 1 + uniform(-0.1, 0.1) * s
    shear = uniform(-0.15, 0.15) * s
    shift = uniform(-0.08, 0.08, (n, 2)) * s * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(device) if mirror else 1.0
    # Mirroring negates the grid's x: the first column of the sampling matrix.
    theta = torch.stack(
        [torch.stack([cos * flip, -sin + shear, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out + torch.randn(out.shape, generator=generator).to(device) * (0.05 * s)
    # Random erasing: a rectangle of up to a quarter of each side, in a quarter of the images.
    h, w = x.shape[-2:]
    erase = (torch.rand(n, generator=generator) < 0.25 * s).to(device)
    cy, cx = uniform(0, h), uniform(0, w)
    half_h, half_w = uniform(0, h / 8), uniform(0, w / 8)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    box = ((ys - cy.view(-1, 1, 1)).abs() <= half_h.view(-1, 1, 1)) & (
        (xs - cx.view(-1, 1, 1)).abs() <= half_w.view(-1, 1, 1)
    )
    mask = (box & erase.view(-1, 1, 1)).unsqueeze(1)
    return torch.where(mask, out.amin(dim=(2, 3), keepdim=True), out)
