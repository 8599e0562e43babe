"""Novelty: is an input unlike anything the model was trained on? (A photo of a cat shown to a signature model.)

A trained encoder maps *any* image somewhere in its embedding space, and a metric-learning encoder often maps an
unfamiliar one close to the training embeddings: on a Siamese signature model, faces, clothes, noise and photos
were all *nearer* their nearest training signature than signatures of unseen writers were
(``bench/novelty.py``). So the check looks at the input, not the embedding. A ``Reference``, fitted at training
time on the preprocessed training images and stored with the model (``reference.safetensors``), holds:

* a PCA of the training inputs (their mean and up to 16 principal components): an input is scored by its
  residual, the root-mean-square of what those components leave unexplained. Its threshold is 1.1 × the
  largest residual of a training image measured by a PCA fitted *without* it (5-fold cross-fitting), so the
  threshold is what a new image of the training kind gets, not what the fitted images get;
* the range of three input statistics over the training images — mean intensity, contrast (standard deviation)
  and mean gradient, measured on the [0, 1] pixels after inversion — widened by half (``MARGIN``): a blank page
  (no contrast) or a flat grey noise field lies outside it, even where its residual is small.

``Reference.score`` is the larger of residual/threshold and each statistic's distance beyond its range, as a
ratio: above 1, the input is *unfamiliar*. Only numpy here: fitting and scoring are a few matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch.io import Preprocess, denormalise

if TYPE_CHECKING:
    from simsearch.models.encoder import Encoder

#: What ``encoder.json`` records as the reference's method; a model with another is loaded without a check.
METHOD = "pca-residual+input-range/1"
#: Principal components kept (fewer when there are fewer images).
COMPONENTS = 16
#: Most training images the reference is fitted on (a seeded sample of them beyond this).
MAX_IMAGES = 2000
#: Cross-fitting folds, and the factor over the largest cross-fitted residual that is the threshold.
FOLDS = 5
RESIDUAL_FACTOR = 1.1
#: The input statistics' range is widened by this factor on each side (low / MARGIN, high × MARGIN).
MARGIN = 1.5
STATISTICS = ("mean", "contrast", "gradient")
#: Tensors of ``reference.safetensors``.
TENSORS = ("mean", "components", "low", "high")
#: What every command says of an unfamiliar input, and the remedy.
REMEDY = "train the model on images like it, or use a model trained on such images"


def unfamiliar_text(name: str) -> str:
    return f"unfamiliar input: {name} is unlike the images this model was trained on"


@dataclass(frozen=True)
class Reference:
    """What in-distribution inputs look like (see the module's docstring). Arrays are float32."""

    mean: np.ndarray  # (P,) the training inputs' mean, P = C·H·W of the preprocessed input
    components: np.ndarray  # (K, P) orthonormal rows
    residual_threshold: float
    low: np.ndarray  # (len(STATISTICS),) each statistic's least value over the training images
    high: np.ndarray  # (len(STATISTICS),) … and its greatest
    images: int  # how many training images it was fitted on

    def tensors(self) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(getattr(self, name), np.float32) for name in TENSORS}

    def to_json(self) -> dict[str, Any]:
        """``encoder.json``'s ``reference`` entry (its file's sha256 is added by the writer)."""
        return {
            "method": METHOD,
            "images": self.images,
            "components": int(self.components.shape[0]),
            "residual_threshold": self.residual_threshold,
            "statistics": list(STATISTICS),
            "margin": MARGIN,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], entry: dict[str, Any], inputs: int) -> Reference:
        """The reference a model folder stores; ``ValueError`` says what does not fit. ``inputs`` is C·H·W."""
        if set(tensors) != set(TENSORS):
            raise ValueError(f"the tensors must be {', '.join(TENSORS)}")
        mean, components, low, high = (np.asarray(tensors[name], np.float32) for name in TENSORS)
        k = components.shape[0] if components.ndim == 2 else -1
        if mean.shape != (inputs,) or components.shape != (k, inputs) or not 0 <= k <= 64:
            raise ValueError(f"its shapes do not fit an input of {inputs} values")
        if low.shape != (len(STATISTICS),) or high.shape != (len(STATISTICS),):
            raise ValueError(f"'low' and 'high' must hold {len(STATISTICS)} values")
        threshold, images = entry.get("residual_threshold"), entry.get("images")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold > 0:
            raise ValueError("'residual_threshold' must be a positive number")
        if not isinstance(images, int) or isinstance(images, bool) or images < 1:
            raise ValueError("'images' must be a positive integer")
        if not all(np.isfinite(a).all() for a in (mean, components, low, high)) or not np.isfinite(threshold):
            raise ValueError("some values are NaN or infinite")
        return cls(mean, components, float(threshold), low, high, images)

    def residuals(self, images: np.ndarray) -> np.ndarray:
        """Root-mean-square residual of each preprocessed image (n, C, H, W) off the reference's components."""
        return _residuals(_flat(images), self.mean, self.components)

    def score(self, images: np.ndarray, spec: Preprocess) -> np.ndarray:
        """Novelty of each preprocessed image (n, C, H, W), ``spec`` the encoder's: above 1 is unfamiliar."""
        if len(images) == 0:
            return np.zeros(0, np.float64)
        ratios = [self.residuals(images) / self.residual_threshold]
        values = statistics(images, spec)
        lower, upper = self.low / MARGIN, self.high * MARGIN
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append((values / np.maximum(upper, 1e-12)).max(axis=1))
            below = np.where(lower > 0, lower / np.maximum(values, 0.0), 0.0)
        ratios.append(np.nan_to_num(below, nan=0.0, posinf=1e9).max(axis=1))
        return np.nan_to_num(np.maximum.reduce(ratios), nan=1e9, posinf=1e9)

    def unfamiliar(self, images: np.ndarray, spec: Preprocess) -> np.ndarray:
        """Whether each preprocessed image is unlike the training images (a boolean per image)."""
        return self.score(images, spec) > 1.0


def statistics(images: np.ndarray, spec: Preprocess) -> np.ndarray:
    """(n, 3): mean intensity, contrast (std) and mean absolute gradient of each preprocessed image, measured on
    its [0, 1] pixels (after inversion: undone are only the normalisation and gamma, ``io.denormalise``)."""
    pixels = denormalise(images, spec)
    n = len(pixels)
    gradient = np.zeros(n, np.float32)
    if pixels.shape[3] > 1:
        gradient += np.abs(np.diff(pixels, axis=3)).reshape(n, -1).mean(axis=1)
    if pixels.shape[2] > 1:
        gradient += np.abs(np.diff(pixels, axis=2)).reshape(n, -1).mean(axis=1)
    flat = pixels.reshape(n, -1)
    return np.stack([flat.mean(axis=1), flat.std(axis=1), gradient], axis=1).astype(np.float64)


def fit_reference(images: np.ndarray, spec: Preprocess, seed: int = 0) -> Reference | None:
    """The reference of preprocessed training ``images`` (n, C, H, W) float32 (normalised by ``spec``); None
    with fewer than 2 images. At most ``MAX_IMAGES`` of them (a seeded sample) are used."""
    rng = np.random.default_rng(seed)
    if len(images) > MAX_IMAGES:
        images = images[np.sort(rng.choice(len(images), MAX_IMAGES, replace=False))]
    n = len(images)
    if n < 2:
        return None
    flat = _flat(images)
    cross = np.empty(n, np.float64)
    for part in np.array_split(rng.permutation(n), min(FOLDS, n)):
        rest = np.setdiff1d(np.arange(n), part)
        mean, components = _pca(flat[rest], rng)
        cross[part] = _residuals(flat[part], mean, components)
    mean, components = _pca(flat, rng)
    values = statistics(images, spec)
    threshold = max(float(cross.max()) * RESIDUAL_FACTOR, 1e-6)
    return Reference(mean, components, threshold, values.min(axis=0), values.max(axis=0), n)


def _flat(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images, np.float32).reshape(len(images), -1))


def _residuals(flat: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    centred = flat - mean
    residual = centred - (centred @ components.T) @ components
    return np.linalg.norm(residual, axis=1).astype(np.float64) / np.sqrt(max(flat.shape[1], 1))


def _pca(flat: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (k, P)) of the rows of ``flat``: the top k ≤ min(COMPONENTS, n − 1) principal axes, by a
    randomised SVD (Halko et al., 2011: two power iterations) when the rows are many, else an exact one. Axes of
    no variance are left out."""
    mean = flat.mean(axis=0)
    centred = flat - mean
    n, p = centred.shape
    k = max(0, min(COMPONENTS, n - 1, p))
    width = k + 10
    if k == 0:
        return mean, np.zeros((0, p), np.float32)
    if min(n, p) <= 2 * width:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        keep = int((s[:k] > 1e-6 * max(float(s[0]), 1e-30)).sum())
        return mean, np.ascontiguousarray(vt[:keep], np.float32)
    q = _orthonormal(centred @ rng.standard_normal((p, width)).astype(np.float32))
    for _ in range(2):
        q = _orthonormal(centred @ _orthonormal(centred.T @ q))
    b = (q.T @ centred).astype(np.float64)  # (width, P): the rows' span, whose top right singular vectors we want
    values, vectors = np.linalg.eigh(b @ b.T)
    order = np.argsort(values)[::-1][:k]
    kept = order[values[order] > 1e-12 * max(float(values[order[0]]), 1e-30)]
    vt = (vectors[:, kept].T @ b) / np.sqrt(values[kept])[:, None]
    return mean, np.ascontiguousarray(vt, np.float32)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of the tall ``y`` (twice Cholesky-QR, in float64: a tall QR of LAPACK's
    took half a second here, this a few milliseconds)."""
    q = y.astype(np.float64)
    for _ in range(2):
        gram = q.T @ q
        gram += np.eye(len(gram)) * (1e-10 * max(float(np.trace(gram)), 1e-30))
        q = np.linalg.solve(np.linalg.cholesky(gram), q.T).T
    return q.astype(np.float32)


def unfamiliar(encoder: Encoder, images: np.ndarray) -> np.ndarray | None:
    """Whether each preprocessed image (n, C, H, W) is unlike the images ``encoder`` was trained on; None when
    the encoder has no reference to tell (baselines, models saved before references were kept)."""
    if encoder.reference is None:
        return None
    return encoder.reference.unfamiliar(images, encoder.preprocess)
