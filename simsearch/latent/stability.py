"""How an encoder's latent space moves under input noise: ``simsearch stability``.

For each encoder and each noise level σ, every image x is perturbed in **[0, 1] pixel space**: after the model's
own resizing (letterbox or trim) and inversion, before its normalisation by mean and std, one standard-normal draw
ε per pixel (the same draw for every σ and every model of that input shape, from ``seed``) gives
x̃ = clip(x + σ·ε, 0, 1), which the model then normalises and embeds as it would any image. Measured against the
clean images:

- **movement**: median over images of ‖z(x̃) − z(x)‖ (the encoder's metric), divided by the median distance
  between two different clean images (``pairwise_median``): 0 when nothing moves, 1 when an image moves as far
  as the typical distance between two images;
- **k-NN overlap**: for each image, the share of its k nearest clean images (itself left out) that are still
  among the k nearest clean images of its noisy version; averaged over images;
- **reconstruction PSNR** (models with a decoder): the decoder's reconstruction of the noisy image, mapped back
  to [0, 1] pixels and clipped, against the *clean* image, 10·log10(1 / MSE) per image, averaged; beside it the
  PSNR of the noisy input itself (above it: the model removes noise; below: it adds error);
- **latent ranks**, after Shrivastava, Rameshan and Agnihotri, "Latent Space Characterization of Autoencoder
  Variants" (arXiv 2412.04755): the latent tensor is the feature map that feeds the encoder's final linear head
  (C×H×W per image, caught by a forward hook), and it is read, as the paper reads latent tensors, as a point of a
  product of three symmetric positive semi-definite matrices: the Gram matrices of its three mode unfoldings,
  C×(H·W) (``channels``), H×(C·W) (``height``) and W×(C·H) (``width``), whose ranks are the unfoldings' ranks.
  The numerical rank of a matrix is its number of singular values above ``rtol`` × its largest, ``rtol`` being
  max(rows, columns) × the float32 machine epsilon (NumPy's ``matrix_rank`` rule for float32 data). A latent
  space whose points keep one rank under noise lies on one smooth manifold; one whose ranks change is
  *stratified* (the paper finds plain and denoising autoencoders stratified and a VAE's ranks fixed). We report
  the histogram of each mode's ranks, clean and at each σ, and the share of images whose rank changed.

The baselines (pixels, PCA) have no feature map and no decoder: only movement and k-NN overlap.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import DataError, UsageError, option
from simsearch.io import ImageError, LoadedImage, Preprocess, denormalise, find_images, load_images, normalise
from simsearch.models.encoder import Encoder
from simsearch.progress import Progress, no_progress

#: The default noise levels (standard deviations in [0, 1] pixel space).
DEFAULT_NOISE = (0.05, 0.1, 0.2)
#: The three mode unfoldings of a C×H×W latent tensor, in this order.
MODES = ("channels", "height", "width")
#: At most this many images enter the median pairwise distance (a random subset beyond it).
PAIRWISE_IMAGES = 2000
#: PSNR of a perfect reconstruction is infinite; an MSE is floored here (PSNR 100 dB).
MIN_MSE = 1e-10


def parse_noise(text: str) -> tuple[float, ...]:
    """``"0.05,0.1,0.2"`` → (0.05, 0.1, 0.2), sorted, without repeats. Each level is a standard deviation in
    [0, 1] pixel space, so it must be a number from 0 to 1; ``UsageError`` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not text or not text.strip() or any(not p for p in parts):
        raise UsageError(
            f"{option('noise')} must be a comma-separated list of numbers, not {str(text)[:40]!r}",
            remedy=f"for example {option('noise', '0.05,0.1,0.2')}",
        )
    levels = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise UsageError(
                f"{option('noise')}: {part[:20]!r} is not a noise level (a standard deviation from 0 to 1, in pixel "
                "values scaled to [0, 1])",
                remedy=f"for example {option('noise', '0.05,0.1,0.2')}",
            )
        levels.append(value)
    return tuple(sorted(set(levels)))


# --- ranks ------------------------------------------------------------------------------------------------------


def numerical_rank(matrices: np.ndarray, rtol: float | None = None) -> np.ndarray:
    """The numerical rank of each matrix of a stack ``(..., m, n)``: how many of its singular values exceed
    ``rtol`` × its largest one (0 for a zero matrix). ``rtol`` defaults to max(m, n) × the machine epsilon of the
    matrices' float type (float64 for integers), NumPy's ``matrix_rank`` rule. Returns int64 ranks of shape ``...``."""
    a = np.asarray(matrices)
    if a.ndim < 2:
        raise ValueError(f"expected a matrix or a stack of matrices, got shape {a.shape}")
    m, n = a.shape[-2:]
    if rtol is None:
        kind = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)
        rtol = max(m, n) * float(np.finfo(kind).eps)
    if min(m, n) == 0:
        return np.zeros(a.shape[:-2], np.int64)
    singular = np.linalg.svd(a.astype(np.float64, copy=False), compute_uv=False)
    return (singular > rtol * singular[..., :1]).sum(axis=-1).astype(np.int64)


def unfoldings(features: np.ndarray) -> dict[str, np.ndarray]:
    """The three mode unfoldings of each latent tensor of ``features`` (n, C, H, W): ``channels`` (n, C, H·W),
    ``height`` (n, H, C·W), ``width`` (n, W, C·H)."""
    n, c, h, w = features.shape
    return {
        "channels": features.reshape(n, c, h * w),
        "height": features.transpose(0, 2, 1, 3).reshape(n, h, c * w),
        "width": features.transpose(0, 3, 1, 2).reshape(n, w, c * h),
    }


def latent_ranks(features: np.ndarray, rtol: float | None = None) -> dict[str, np.ndarray]:
    """The numerical rank of each unfolding (``unfoldings``) of each latent tensor: mode → (n,) int64."""
    return {mode: numerical_rank(matrix, rtol) for mode, matrix in unfoldings(features).items()}


def max_ranks(feature_shape: Sequence[int]) -> dict[str, int]:
    """The largest rank each unfolding of a C×H×W tensor can have."""
    c, h, w = feature_shape
    return {"channels": min(c, h * w), "height": min(h, c * w), "width": min(w, c * h)}


# --- results ----------------------------------------------------------------------------------------------------


@dataclass
class RankSummary:
    """One mode's ranks over the images, at one noise level: the histogram (``counts[r]`` images of rank r, r from
    0 to the mode's largest possible rank), the mean, and (under noise) the share of images whose rank differs
    from their clean rank and the mean absolute change."""

    counts: list[int]
    mean: float
    changed: float = 0.0
    mean_abs_change: float = 0.0

    @classmethod
    def of(cls, ranks: np.ndarray, top: int, clean: np.ndarray | None = None) -> RankSummary:
        counts = np.bincount(ranks, minlength=top + 1)[: top + 1]
        summary = cls(counts=[int(c) for c in counts], mean=float(ranks.mean()) if len(ranks) else math.nan)
        if clean is not None and len(ranks):
            summary.changed = float((ranks != clean).mean())
            summary.mean_abs_change = float(np.abs(ranks - clean).mean())
        return summary

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "mean": _round(self.mean),
            "changed": _round(self.changed),
            "mean_abs_change": _round(self.mean_abs_change),
        }


@dataclass
class NoiseLevel:
    """What one noise level σ did to one encoder's embeddings (see the module's docstring for each figure)."""

    sigma: float
    movement: float
    median_shift: float
    knn_overlap: float
    psnr: float | None = None
    input_psnr: float | None = None
    ranks: dict[str, RankSummary] | None = None
    #: Share of images whose rank changed in at least one mode.
    ranks_changed: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "movement": _round(self.movement),
            "median_shift": _round(self.median_shift),
            "knn_overlap": _round(self.knn_overlap),
            "psnr": _round(self.psnr),
            "input_psnr": _round(self.input_psnr),
            "ranks_changed": _round(self.ranks_changed),
            "ranks": None if self.ranks is None else {mode: s.to_json() for mode, s in self.ranks.items()},
        }


@dataclass
class ModelStability:
    """One encoder's stability: the clean reference figures and one ``NoiseLevel`` per σ."""

    name: str
    family: str
    images: int
    k: int
    metric: str
    pairwise_median: float
    feature_shape: tuple[int, int, int] | None = None
    #: The ranks' relative tolerance (None: ``numerical_rank``'s default, max(rows, columns) × float32 epsilon).
    rank_rtol: float | None = None
    clean_psnr: float | None = None
    clean_ranks: dict[str, RankSummary] | None = None
    levels: list[NoiseLevel] = field(default_factory=list)

    @property
    def max_ranks(self) -> dict[str, int] | None:
        return None if self.feature_shape is None else max_ranks(self.feature_shape)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "images": self.images,
            "k": self.k,
            "metric": self.metric,
            "pairwise_median": _round(self.pairwise_median),
            "feature_shape": None if self.feature_shape is None else list(self.feature_shape),
            "max_ranks": self.max_ranks,
            "rank_rtol": self.rank_rtol,
            "clean_psnr": _round(self.clean_psnr),
            "clean_ranks": None
            if self.clean_ranks is None
            else {mode: s.to_json() for mode, s in self.clean_ranks.items()},
            "levels": [level.to_json() for level in self.levels],
        }


@dataclass
class StabilityReport:
    """``stability_of_folder``'s answer: the images used and one ``ModelStability`` per encoder."""

    folder: str
    images: int
    found: int
    skipped: int
    noise: tuple[float, ...]
    k: int
    seed: int
    models: list[ModelStability]

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "images": self.images,
            "found": self.found,
            "skipped": self.skipped,
            "noise": list(self.noise),
            "noise_space": "[0, 1] pixels after resizing and inversion, before normalisation; clipped to [0, 1]",
            "k": self.k,
            "seed": self.seed,
            "models": [m.to_json() for m in self.models],
        }


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


# --- measuring --------------------------------------------------------------------------------------------------


def pixel_spec(spec: Preprocess) -> Preprocess:
    """The model's preprocessing without its normalisation: [0, 1] pixels at its size and channels, resized and
    inverted as the model does, its gamma not applied (where the noise is added)."""
    return replace(spec, mean=(0.0,), std=(1.0,), gamma=1.0)


def to_pixels(inputs: np.ndarray, spec: Preprocess) -> np.ndarray:
    """The model's input space (what ``Encoder.decode`` gives) → [0, 1] pixels, clipped."""
    return np.clip(denormalise(inputs, spec), 0.0, 1.0)


def add_noise(pixels: np.ndarray, sigma: float, draw: np.ndarray) -> np.ndarray:
    """clip(pixels + sigma · draw, 0, 1): ``draw`` is standard normal, one value per pixel."""
    return np.clip(pixels + np.float32(sigma) * draw, 0.0, 1.0).astype(np.float32, copy=False)


def embed_with_features(
    encoder: Encoder, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray | None]:
    """``encoder.embed(images)``, and the feature map that feeds its final linear head (n, C, H, W), caught by a
    forward hook on the module that embeds (None for an encoder without one: pixels, PCA)."""
    import torch

    module = encoder.inference_module()
    head, shape = getattr(module, "head", None), getattr(module, "feature_shape", None)
    if not isinstance(head, torch.nn.Linear) or shape is None:
        return encoder.embed(images, batch_size), None
    caught: list[np.ndarray] = []

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        caught.append(args[0].detach().float().cpu().numpy())

    handle = head.register_forward_pre_hook(hook)
    try:
        z = encoder.embed(images, batch_size)
    finally:
        handle.remove()
    features = np.concatenate(caught).reshape(len(images), *shape) if caught else None
    return z, features


def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distances (len(a), len(b)) float64 in ``metric``: Euclidean for ``l2``, 1 − cosine similarity for
    ``cosine`` (the distances ``simsearch.vectors.exact_distances`` gives, computed for every pair at once)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return np.asarray(1.0 - a @ b.T)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.asarray(np.sqrt(np.maximum(squared, 0.0)))


def nearest_clean(queries: np.ndarray, clean: np.ndarray, k: int, metric: str, chunk: int = 1024) -> np.ndarray:
    """For each query i (an image's clean or noisy embedding), the rows (n, k) of its k nearest ``clean``
    embeddings, leaving out row i (the image itself); ties go to the lower row."""
    rows = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        d = pairwise_distances(queries[start : start + chunk], clean, metric)
        own = np.arange(start, start + len(d))
        d[own - start, own] = np.inf
        rows[start : start + len(d)] = np.argsort(d, axis=1, kind="stable")[:, :k]
    return rows


def knn_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """The mean over rows of the share of row i of ``a`` (neighbour ids) found in row i of ``b``."""
    if a.size == 0:
        return math.nan
    return float((a[:, :, None] == b[:, None, :]).any(axis=2).mean())


def median_shift(noisy: np.ndarray, clean: np.ndarray, metric: str) -> float:
    from simsearch.vectors import distances

    return float(np.median(distances(noisy, clean, metric)))


def pairwise_median(z: np.ndarray, metric: str, seed: int = 0, limit: int = PAIRWISE_IMAGES) -> float:
    """The median distance between two different images' embeddings (at most ``limit`` images, drawn at random)."""
    if len(z) > limit:
        z = z[np.sort(np.random.default_rng(seed).choice(len(z), limit, replace=False))]
    d = pairwise_distances(z, z, metric)
    return float(np.median(d[np.triu_indices(len(z), k=1)]))


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean over images of 10·log10(1 / MSE) between [0, 1] pixel arrays (MSE floored at ``MIN_MSE``)."""
    mse = ((images.astype(np.float64) - reference) ** 2).reshape(len(images), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, MIN_MSE))))


def measure(
    encoder: Encoder,
    pixels: np.ndarray,
    noise: Sequence[float] = DEFAULT_NOISE,
    k: int = 10,
    seed: int = 0,
    name: str | None = None,
    batch_size: int = 256,
    rtol: float | None = None,
    progress: Progress = no_progress,
) -> ModelStability:
    """One encoder's stability on ``pixels`` (n, C, H, W) float32 in [0, 1]: the images at the model's input
    size, resized and inverted as its preprocessing does (``pixel_spec``), not normalised. ``k`` is capped at
    n − 1. ``rtol``: the ranks' relative tolerance (``numerical_rank``; None: its default rule)."""
    spec = encoder.preprocess
    expected = (spec.channels, *spec.size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise DataError(f"the images are {pixels.shape[1:]}, the {encoder.family} model takes {expected}")
    if len(pixels) < 2:
        raise DataError(f"{len(pixels)} image(s): stability needs at least 2 (neighbours, distances between images)")
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    n, k = len(pixels), min(int(k), len(pixels) - 1)
    label = name or encoder.family
    steps = len(noise) + 1
    progress(f"stability: {label}", 0, steps, "clean")
    z_clean, f_clean = embed_with_features(encoder, normalise(pixels, spec), batch_size)
    result = ModelStability(
        name=label,
        family=encoder.family,
        images=n,
        k=k,
        metric=encoder.metric,
        pairwise_median=pairwise_median(z_clean, encoder.metric, seed),
        rank_rtol=rtol,
    )
    clean_ranks: dict[str, np.ndarray] | None = None
    tops: dict[str, int] = {}
    if f_clean is not None:
        result.feature_shape = (int(f_clean.shape[1]), int(f_clean.shape[2]), int(f_clean.shape[3]))
        tops = max_ranks(result.feature_shape)
        clean_ranks = latent_ranks(f_clean, rtol)
        result.clean_ranks = {mode: RankSummary.of(r, tops[mode]) for mode, r in clean_ranks.items()}
    if encoder.decoder is not None:
        result.clean_psnr = psnr(to_pixels(encoder.decode(z_clean, batch_size), spec), pixels)
    clean_neighbours = nearest_clean(z_clean, z_clean, k, encoder.metric)
    draw = np.random.default_rng(seed).standard_normal(pixels.shape, dtype=np.float32)
    for step, sigma in enumerate(noise, start=1):
        noisy = add_noise(pixels, sigma, draw)
        z, features = embed_with_features(encoder, normalise(noisy, spec), batch_size)
        shift = median_shift(z, z_clean, encoder.metric)
        level = NoiseLevel(
            sigma=float(sigma),
            movement=shift / result.pairwise_median if result.pairwise_median > 0 else math.nan,
            median_shift=shift,
            knn_overlap=knn_overlap(clean_neighbours, nearest_clean(z, z_clean, k, encoder.metric)),
            input_psnr=psnr(noisy, pixels) if sigma > 0 else None,
        )
        if encoder.decoder is not None:
            level.psnr = psnr(to_pixels(encoder.decode(z, batch_size), spec), pixels)
        if features is not None and clean_ranks is not None:
            ranks = latent_ranks(features, rtol)
            level.ranks = {mode: RankSummary.of(r, tops[mode], clean_ranks[mode]) for mode, r in ranks.items()}
            changed = np.zeros(n, bool)
            for mode, r in ranks.items():
                changed |= r != clean_ranks[mode]
            level.ranks_changed = float(changed.mean())
        result.levels.append(level)
        progress(f"stability: {label}", step + 1, steps, f"σ = {sigma:g}")
    return result


def load_pixels(
    paths: Sequence[Path], names: Sequence[str], spec: Preprocess, workers: int = 0
) -> tuple[np.ndarray, list[int]]:
    """The [0, 1] pixels (``pixel_spec``) of the files that load, and their positions in ``paths``."""
    arrays, kept = [], []
    for position, item in enumerate(load_images(list(paths), pixel_spec(spec), workers, list(names))):
        if isinstance(item, LoadedImage):
            arrays.append(item.array)
            kept.append(position)
    shape = (0, spec.channels, *spec.size)
    return (np.stack(arrays) if arrays else np.zeros(shape, np.float32)), kept


def stability_of_folder(
    folder: Path,
    encoders: Sequence[tuple[str, Encoder]],
    noise: Sequence[float] = DEFAULT_NOISE,
    k: int = 10,
    max_images: int = 2000,
    seed: int = 0,
    workers: int = 0,
    rtol: float | None = None,
    progress: Progress = no_progress,
) -> StabilityReport:
    """Measure each (name, encoder) on the images under ``folder`` (at most ``max_images``, drawn at random with
    ``seed``; the same images for every encoder: those every encoder could read)."""
    if not encoders:
        raise UsageError(f"no model to measure — pass {option('model')} (a model folder) once or more")
    if k < 1:
        raise UsageError(f"{option('k')} must be at least 1, not {k}")
    if max_images < 2:
        raise UsageError(f"{option('max_images')} must be at least 2, not {max_images}")
    folder = Path(folder)
    entries, skipped = find_images(folder)
    if not entries:
        raise DataError("no images found", file=folder, remedy="pass a folder that holds image files")
    found = len(entries)
    if len(entries) > max_images:
        picked = np.sort(np.random.default_rng(seed).choice(len(entries), max_images, replace=False))
        entries = [entries[i] for i in picked]
    paths, names = [e.path for e in entries], [e.rel for e in entries]
    loaded: dict[Preprocess, tuple[np.ndarray, list[int]]] = {}
    for _, encoder in encoders:
        spec = pixel_spec(encoder.preprocess)
        if spec not in loaded:
            loaded[spec] = load_pixels(paths, names, encoder.preprocess, workers)
    usable = set(range(len(entries)))
    for _, kept in loaded.values():
        usable &= set(kept)
    if len(usable) < 2:
        raise DataError(
            f"only {len(usable)} of the {len(entries)} images could be read",
            file=folder,
            remedy="stability needs at least 2 readable images",
        )
    results = []
    for name, encoder in encoders:
        pixels, kept = loaded[pixel_spec(encoder.preprocess)]
        rows = [row for row, position in enumerate(kept) if position in usable]
        results.append(measure(encoder, pixels[rows], noise, k, seed, name, rtol=rtol, progress=progress))
    return StabilityReport(
        folder=str(folder),
        images=len(usable),
        found=found,
        skipped=len(skipped) + len(entries) - len(usable),
        noise=tuple(float(s) for s in noise),
        k=results[0].k,
        seed=seed,
        models=results,
    )


def check_image_folder(folder: Path) -> None:
    """``ImageError`` for a path that is not a readable folder (what ``find_images`` says), before any model loads."""
    folder = Path(folder)
    if not folder.is_dir():
        find_images(folder)  # raises: missing, or not a folder
    try:
        next(iter(folder.iterdir()), None)
    except OSError as exc:
        raise ImageError(
            f"cannot read the folder ({exc.strerror or exc})", file=folder, remedy="check its permissions"
        ) from None


# --- the report -------------------------------------------------------------------------------------------------


def file_stem(index: int, name: str) -> str:
    """A file-name-safe stem for the ``index``-th model called ``name``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "model"
    return f"{index + 1}-{safe}"


def plot_ranks(model: ModelStability, path: Path) -> bool:
    """One panel per mode: the share of images at each rank, clean and at each σ (bars side by side). False
    (nothing written) for a model without latent ranks."""
    if model.clean_ranks is None or model.max_ranks is None:
        return False
    import matplotlib.pyplot as plt

    series = [("clean", model.clean_ranks)] + [
        (f"σ = {level.sigma:g}", level.ranks) for level in model.levels if level.ranks is not None
    ]
    fig, axes = plt.subplots(1, len(MODES), figsize=(4.6 * len(MODES), 3.4))
    for ax, mode in zip(axes, MODES, strict=True):
        histograms = [np.asarray(ranks[mode].counts, float) for _, ranks in series]
        used = np.flatnonzero(np.sum(histograms, axis=0) > 0)
        low, high = (int(used.min()), int(used.max())) if len(used) else (0, model.max_ranks[mode])
        low, high = max(0, low - 1), min(model.max_ranks[mode], high + 1)
        x = np.arange(low, high + 1)
        width = 0.8 / len(series)
        for i, ((label, _), counts) in enumerate(zip(series, histograms, strict=True)):
            share = counts[low : high + 1] / max(counts.sum(), 1)
            ax.bar(x + (i - (len(series) - 1) / 2) * width, share, width=width, label=label)
        shape = model.feature_shape or (0, 0, 0)
        rows, cols = {"channels": (shape[0], shape[1] * shape[2]), "height": (shape[1], shape[0] * shape[2]),
                      "width": (shape[2], shape[0] * shape[1])}[mode]  # fmt: skip
        ax.set_title(f"{mode} unfolding ({rows}×{cols}), max rank {model.max_ranks[mode]}", fontsize=9)
        ax.set_xlabel("numerical rank")
        ax.set_ylabel("share of images")
        if len(x) <= 20:
            ax.set_xticks(x)
    axes[0].legend(fontsize=8)
    about = model.name if model.name == model.family else f"{model.name} ({model.family})"
    tolerance = "" if model.rank_rtol is None else f", rtol {model.rank_rtol:g}"
    fig.suptitle(f"{about}: latent ranks, clean and noisy ({model.images} images{tolerance})", fontsize=10)
    _save(fig, path)
    return True


def plot_curves(models: Sequence[ModelStability], key: str, ylabel: str, path: Path) -> bool:
    """One line per model: ``key`` of each noise level against σ (with the clean value at σ = 0 where known)."""
    import matplotlib.pyplot as plt

    lines = []
    for model in models:
        points = [(lv.sigma, getattr(lv, key)) for lv in model.levels if getattr(lv, key) is not None]
        clean = {"movement": 0.0, "knn_overlap": 1.0, "psnr": model.clean_psnr}.get(key)
        if clean is not None and not any(s == 0 for s, _ in points):
            points = [(0.0, clean), *points]
        if points:
            lines.append((model.name, points))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in lines:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("noise σ ([0, 1] pixels)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CURVES = {
    "movement.png": ("movement", "median shift ÷ median distance between images"),
    "knn.png": ("knn_overlap", "k-NN overlap with the clean neighbours"),
    "psnr.png": ("psnr", "reconstruction PSNR against the clean image (dB)"),
}

CAPTIONS = {
    "movement.png": "How far embeddings move under noise: the median distance between an image's clean and noisy "
    "embeddings, divided by the median distance between two different clean images.",
    "knn.png": "The share of each image's k nearest clean images that are still its k nearest once it is noisy.",
    "psnr.png": "The decoder's reconstruction of the noisy image against the clean image (higher is better).",
    "ranks": "Numerical ranks of the latent tensor's three unfoldings (the feature map before the final linear "
    "head), clean and at each noise level. One bar per rank: a space whose ranks stay put under noise lies on one "
    "smooth manifold; ranks that spread or shift mean a stratified one.",
}


def write_report(report: StabilityReport, folder: Path) -> Path:
    """Write the figures (PNG: ``ranks-<model>.png`` per model with a feature map, ``movement.png``, ``knn.png``,
    ``psnr.png``) and ``report.html`` (self-contained: figures inlined) into ``folder``; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    for name, (key, ylabel) in CURVES.items():
        if plot_curves(report.models, key, ylabel, folder / name):
            figures.append((name, CAPTIONS[name]))
    for i, model in enumerate(report.models):
        name = f"ranks-{file_stem(i, model.name)}.png"
        if plot_ranks(model, folder / name):
            figures.append((name, f"{model.name}: {CAPTIONS['ranks']}"))
    page = folder / "report.html"
    page.write_text(render_html(report, folder, figures))
    return page


def table_rows(model: ModelStability) -> list[list[str]]:
    """The table ``stability`` prints for one model: the clean images first, then one row per noise level."""

    def ranks_text(ranks: dict[str, RankSummary] | None) -> str:
        return "–" if ranks is None else "/".join(f"{ranks[m].mean:.1f}" for m in MODES)

    def number(value: float | None, form: str) -> str:
        return "–" if value is None else format(value, form)

    rows = [["clean", "0", "1", number(model.clean_psnr, ".2f"), "–", ranks_text(model.clean_ranks), "–"]]
    for level in model.levels:
        rows.append(
            [
                f"{level.sigma:g}",
                f"{level.movement:.3f}",
                f"{level.knn_overlap:.3f}",
                number(level.psnr, ".2f"),
                number(level.input_psnr, ".2f"),
                ranks_text(level.ranks),
                number(level.ranks_changed, ".1%"),
            ]
        )
    return rows


#: The columns of ``table_rows``.
TABLE_HEADER = ["σ", "moved", "k-NN kept", "PSNR rec", "PSNR in", "ranks C/H/W", "changed"]
#: What each column of ``TABLE_HEADER`` means (the report's legend).
TABLE_LEGEND = (
    "moved: median distance between an image's clean and noisy embeddings ÷ median distance between two clean "
    "images; k-NN kept: share of the k nearest clean images still among the noisy image's k nearest; PSNR rec: "
    "the decoder's reconstruction of the noisy image against the clean image (dB); PSNR in: the noisy image "
    "against the clean one; ranks C/H/W: mean numerical rank of the latent tensor's channel, height and width "
    "unfoldings; changed: share of images whose rank changed in some unfolding"
)


def render_html(report: StabilityReport, folder: Path, figures: Sequence[tuple[str, str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in ["model", *TABLE_HEADER])
    body = "".join(
        f"<tr><td>{e(model.name)}</td>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
        for model in report.models
        for row in table_rows(model)
    )
    models = "".join(
        f"<li>{e(m.name)}: {e(m.family)}, metric {e(m.metric)}, median distance between images "
        f"{m.pairwise_median:.4f}"
        + ("" if m.feature_shape is None else f", latent tensor {'×'.join(map(str, m.feature_shape))}")
        + ("" if m.clean_psnr is None else f", clean reconstruction PSNR {m.clean_psnr:.2f} dB")
        + "</li>"
        for m in report.models
    )
    images = ""
    for name, caption in figures:
        data = base64.b64encode((folder / name).read_bytes()).decode()
        images += (
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(name)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>simsearch stability — {e(report.folder)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f0f0f0; }} figure {{ margin: 2em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; max-width: 900px; }}
</style></head><body>
<h1>simsearch stability</h1>
<ul>
<li>Folder: {e(report.folder)} — {report.images} images measured ({report.found} found, {report.skipped} left out)</li>
<li>Noise: Gaussian, standard deviations {e(", ".join(f"{s:g}" for s in report.noise))} in [0, 1] pixel space
(after the model's resizing and inversion, before its normalisation), clipped to [0, 1]; seed {report.seed}</li>
<li>k-NN overlap with k = {report.k}</li>
{models}
</ul>
<table><tr>{head}</tr>{body}</table>
<p>{e(TABLE_LEGEND)}.</p>
{images}
</body></html>
"""
