"""Hand-crafted rivals of simsearch's encoders on the verification benchmarks (faces, signatures).

Each row is fitted on the training identities' images only (labels: their folder names) and turns images into
features compared by a fixed distance:

- ``pixels``: the image's pixels in [0, 1], Euclidean.
- ``pca``: PCA to 64 components, whitened, Euclidean.
- ``fisherfaces``: PCA to n_samples − n_classes components, then linear discriminant analysis (at most
  n_classes − 1 dimensions), Euclidean (Belhumeur et al. 1997). On identities unseen in training this recipe
  overfits: with as many PCA components as the within-class scatter has ranks, LDA whitens directions whose
  training variance is noise (faces: EER 0.30, against 0.10–0.12 with 10–120 components).
- ``lda``: scikit-learn's LDA (SVD solver) on the pixels directly, no PCA step: the same discriminant
  projection without that overfitting, the strong Fisherfaces-style rival.
- ``lbp``: uniform LBP codes (P=8, R=1) histogrammed on a 4×4 grid, each cell's histogram normalised, the 16
  concatenated; χ² distance (Ahonen et al. 2006).
- ``hog``: HOG features (9 orientations, 2×2-cell blocks; cells of 8 pixels on faces, 16 on signatures), then
  LDA (SVD solver) fitted on them, Euclidean; ``hog:plain``: the HOG features alone, Euclidean.

Images are read with Pillow as grey. Faces keep their size (112×92). Signatures are inverted (ink high, paper
0), cropped to the ink's bounding box (Otsu's threshold) and resized keeping their aspect into 128×256, centred
on a zero background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SIGNATURE_SIZE = (128, 256)  # rows, columns
LBP_GRID = 4


def load_face(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.float32) / 255.0


def load_signature(path: Path, size: tuple[int, int] = SIGNATURE_SIZE) -> np.ndarray:
    from skimage.filters import threshold_otsu

    with Image.open(path) as im:
        ink = 255.0 - np.asarray(im.convert("L"), np.float32)
    mask = ink > threshold_otsu(ink)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows):
        ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = size
    scale = min(height / ink.shape[0], width / ink.shape[1])
    h, w = max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale))
    resized = np.asarray(Image.fromarray(ink.astype(np.uint8)).resize((w, h), Image.Resampling.LANCZOS), np.float32)
    out = np.zeros(size, np.float32)
    top, left = (height - h) // 2, (width - w) // 2
    out[top : top + h, left : left + w] = resized / 255.0
    return out


LOADERS: dict[str, Callable[[Path], np.ndarray]] = {"faces": load_face, "signatures": load_signature}


def load_images(paths: Sequence[Path], dataset: str) -> np.ndarray:
    """(n, rows, columns) float32 images in [0, 1] of one data set."""
    return np.stack([LOADERS[dataset](p) for p in paths])


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((np.asarray(a, np.float64) - b) ** 2).sum(1))


def chi_squared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """χ² distance between matching rows of two histogram arrays: Σ (a − b)² / (a + b), empty bins counting 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    total = a + b
    return np.where(total > 0, (a - b) ** 2 / np.where(total > 0, total, 1.0), 0.0).sum(1)


def lbp_histograms(images: np.ndarray, grid: int = LBP_GRID, points: int = 8, radius: int = 1) -> np.ndarray:
    """Uniform LBP codes histogrammed per cell of a ``grid``×``grid`` split, each cell normalised to sum 1."""
    from skimage.feature import local_binary_pattern

    bins = points + 2  # the P + 1 uniform patterns and one bin for every other
    out = []
    for image in images:
        codes = local_binary_pattern(np.round(image * 255).astype(np.uint8), points, radius, method="uniform")
        cells = []
        for band in np.array_split(codes, grid, axis=0):
            for cell in np.array_split(band, grid, axis=1):
                hist = np.bincount(cell.astype(np.int64).ravel(), minlength=bins).astype(np.float64)
                cells.append(hist / max(hist.sum(), 1.0))
        out.append(np.concatenate(cells))
    return np.stack(out)


def hog_features(images: np.ndarray, dataset: str) -> np.ndarray:
    from skimage.feature import hog

    cell = (8, 8) if dataset == "faces" else (16, 16)
    return np.stack(
        [hog(im, orientations=9, pixels_per_cell=cell, cells_per_block=(2, 2), block_norm="L2-Hys") for im in images]
    )


def fisher_projection(features: np.ndarray, labels: Sequence[str]) -> Any:
    """PCA to n_samples − n_classes components, then LDA to at most n_classes − 1 dimensions (Fisherfaces)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.pipeline import make_pipeline

    classes = len(set(labels))
    components = min(len(features) - classes, features.shape[1])
    model = make_pipeline(PCA(components, random_state=0), LinearDiscriminantAnalysis(n_components=classes - 1))
    return model.fit(features, list(labels))


class Classic:
    """One hand-crafted row: ``fit`` on training images and their labels, then ``features`` and ``distance``."""

    def __init__(self, name: str, dataset: str) -> None:
        if name not in CLASSIC_ROWS:
            raise ValueError(f"unknown classic row {name!r}; rows: {', '.join(CLASSIC_ROWS)}")
        self.name, self.dataset = name, dataset
        self.model: Any = None

    def _raw(self, images: np.ndarray) -> np.ndarray:
        if self.name == "lbp":
            return lbp_histograms(images)
        if self.name.startswith("hog"):
            return hog_features(images, self.dataset)
        return images.reshape(len(images), -1)

    def fit(self, images: np.ndarray, labels: Sequence[str]) -> Classic:
        from sklearn.decomposition import PCA

        raw = self._raw(images)
        if self.name == "pca":
            self.model = PCA(64, whiten=True, random_state=0).fit(raw)
        elif self.name == "fisherfaces":
            self.model = fisher_projection(raw, labels)
        elif self.name in ("lda", "hog"):
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

            self.model = LinearDiscriminantAnalysis().fit(raw, list(labels))
        return self

    def features(self, images: np.ndarray) -> np.ndarray:
        raw = self._raw(images)
        return raw if self.model is None else self.model.transform(raw)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return chi_squared(a, b) if self.name == "lbp" else euclidean(a, b)


CLASSIC_ROWS = ["pixels", "pca", "fisherfaces", "lda", "lbp", "hog", "hog:plain"]
