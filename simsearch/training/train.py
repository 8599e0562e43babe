"""From a folder to a trained encoder: choose the input spec from the images, load them, fit the family's model,
calibrate its threshold, and record where it came from. The PCA and raw-pixel baselines are made here too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simsearch.errors import DataError, UsageError, option
from simsearch.io import (
    ImageError,
    ImageFileEntry,
    Preprocess,
    find_images,
    load_images,
    survey_images,
)
from simsearch.models.baseline import PCAEncoder, PixelEncoder
from simsearch.models.encoder import Encoder, resolve_device
from simsearch.models.registry import arch_of
from simsearch.progress import Progress, no_progress
from simsearch.training.augment import add_transformed_classes
from simsearch.training.calibrate import calibrate_threshold
from simsearch.training.config import TrainConfig, choose_size, parse_size
from simsearch.training.loop import fit
from simsearch.training.objectives import Objective, objective_class
from simsearch.training.sampling import Split, encode_labels, split_for_validation


def sample_entries(entries: Sequence[ImageFileEntry], n: int, seed: int) -> list[ImageFileEntry]:
    """A reproducible random sample of at most ``n`` entries, in path order."""
    if len(entries) <= n:
        return list(entries)
    picked = random.Random(seed).sample(range(len(entries)), n)
    return [entries[i] for i in sorted(picked)]


def load_training_images(
    entries: Sequence[ImageFileEntry], config: TrainConfig, progress: Progress = no_progress
) -> tuple[np.ndarray, list[str | None], Preprocess]:
    """Read a sample of the images and choose the preprocessing spec from them: size (aspect kept, never
    upscaled), channels (grey unless some image has colour) and ``invert`` (light backgrounds, such as ink
    on paper, are inverted so that strokes are high values). Returns the normalised arrays (n, C, H, W)
    float32, their labels, and the spec with ``mean``/``std`` fitted on the sample."""
    sample = sample_entries(entries, config.max_images, config.seed)
    survey = survey_images(e.path for e in sample_entries(sample, 200, config.seed))
    size = parse_size(config.size) or choose_size(survey.median_height, survey.median_width, config.max_side)
    invert = survey.background > 0.5 if config.invert == "auto" else config.invert == "yes"
    raw = Preprocess(size=size, channels=1 if survey.grey else 3, invert=invert, resize=config.resize)
    arrays: list[np.ndarray] = []
    labels: list[str | None] = []
    loaded_all = load_images([e.path for e in sample], raw, names=[e.rel for e in sample])
    for i, (entry, loaded) in enumerate(zip(sample, loaded_all, strict=True)):
        if loaded is not None and not isinstance(loaded, ImageError):
            arrays.append(loaded.array)
            labels.append(entry.label)
        if i % 64 == 0 or i + 1 == len(sample):
            progress("reading training images", i + 1, len(sample))
    if len(arrays) < 2:
        raise DataError(f"only {len(arrays)} readable image(s) — an encoder needs at least 2 to train on")
    x = np.stack(arrays)
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    x -= mean.reshape(1, -1, 1, 1)
    x /= std.reshape(1, -1, 1, 1)
    spec = replace(raw, mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    return x, labels, spec


def objective_for(config: TrainConfig) -> type[Objective]:
    """The class that trains ``config.family``, as the registry records it (``ValueError`` for a baseline)."""
    name = config.family_record.objective
    if name is None:
        raise ValueError(f"the {config.family} family is not trained by the training loop")
    return objective_class(name)


def batch_size_for(config: TrainConfig) -> int:
    """``batch_size``, or the family's objective's default: 256 for the Siamese family (more pairs and triplets
    per batch, which metric learning feeds on), 128 for the autoencoders."""
    return objective_for(config).batch_size_for(config)


def build_objective(
    images: torch.Tensor, y: np.ndarray, split: Split, spec: Preprocess, config: TrainConfig
) -> Objective:
    """The family's encoder (and decoder, when it has one) made as its registry record says, new, and the
    objective that trains them."""
    family, objective = config.family_record, objective_for(config)
    options: dict[str, Any] = {"normalize": True} if objective.normalize else {}
    encoder = family.encoder_class(channels=spec.channels, size=spec.size, dim=config.dim, **options)
    decoder = family.decoder_for(encoder)
    labels = torch.from_numpy(y).to(images.device)
    return objective.from_config(encoder, decoder, images, labels, split.train, split.val, config)


def train_neural(
    images: np.ndarray,
    labels: Sequence[str | None],
    spec: Preprocess,
    config: TrainConfig,
    progress: Progress = no_progress,
) -> Encoder:
    """Fit one of the neural families on normalised ``images`` (n, C, H, W); return its encoder, calibrated
    on the held-out split when it is labelled."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    y, classes = encode_labels(labels)
    if config.uses_labels and len(classes) < 2:
        raise DataError(
            f"{option('family', config.family)} with this loss needs labels: put each class in its own sub-folder "
            f"(at least 2), or use {option('loss', 'ntxent')}, which needs none"
        )
    split = split_for_validation(y, config.val_fraction, config.seed)
    x_train, y_train, split_train = with_class_augment(images, y, split, config.class_augment)
    objective = build_objective(torch.from_numpy(x_train).to(device), y_train, split_train, spec, config)
    objective.model.to(device)
    history = fit(objective, config, progress, objective.task(config))
    module = objective.encoder.cpu().eval()
    decoder = objective.decoder.cpu().eval() if objective.decoder is not None else None
    encoder = Encoder(config.family, arch_of(module), spec, module, history=history, decoder=decoder)
    encoder.training = provenance(config, len(images), classes, split, history, device)
    if config.class_augment != "none":
        trained_on = y_train[split_train.train]
        encoder.training["class_augment"] = {
            "images": len(trained_on),
            "labels": len(np.unique(trained_on[trained_on >= 0])),
        }
    encoder.threshold = calibrate_threshold(encoder, images, y, split)
    return encoder


def with_class_augment(
    images: np.ndarray, y: np.ndarray, split: Split, mode: str
) -> tuple[np.ndarray, np.ndarray, Split]:
    """The training images grown by ``mode``'s symmetries of the labelled training rows, each a new label (see
    ``data.add_transformed_classes``); validation rows and their labels stay as they are."""
    if mode == "none":
        return images, y, split
    if images.shape[2] != images.shape[3]:
        raise UsageError(
            f"{option('class_augment', mode)} turns images by 90°, so it needs square inputs, not "
            f"{images.shape[2]}×{images.shape[3]}: add {option('size', '64x64')} (say)"
        )
    x, labels, rows = add_transformed_classes(images, y, split.train, mode)
    return x, labels, Split(rows, split.val, split.mode)


def fit_pca(images: np.ndarray, spec: Preprocess, config: TrainConfig) -> Encoder:
    n_inputs = spec.channels * spec.size[0] * spec.size[1]
    dim = min(config.dim, n_inputs)
    module = PCAEncoder(spec.channels, spec.size, dim).fit(torch.from_numpy(images))
    encoder = Encoder("pca", arch_of(module), spec, module)
    encoder.training = provenance(config, len(images), [], None, [], torch.device("cpu"))
    return encoder


def pixels_encoder(spec: Preprocess) -> Encoder:
    module = PixelEncoder(spec.channels, spec.size, spec.channels * spec.size[0] * spec.size[1])
    return Encoder("pixels", arch_of(module), spec, module)


def provenance(
    config: TrainConfig,
    n_images: int,
    classes: list[str],
    split: Split | None,
    history: list[dict[str, Any]],
    device: torch.device,
) -> dict[str, Any]:
    metric = next((k for k in (history[0] if history else {}) if k.startswith("val_")), "val_loss")
    best = min((h[metric] for h in history), default=None)
    return {
        "config": asdict(config),
        "images": n_images,
        "labels": len(classes),
        "validation": {"split": split.mode, "images": len(split.val)} if split is not None else None,
        "epochs_run": len(history),
        "final": history[-1] if history else {},
        "validation_metric": metric,
        "best_validation": best,
        "seconds": round(sum(h["seconds"] for h in history), 2),
        "device": device.type,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train_encoder(entries: Sequence[ImageFileEntry], config: TrainConfig, progress: Progress = no_progress) -> Encoder:
    """Build the encoder ``config.family`` names from the images ``entries`` lists."""
    if not entries:
        raise DataError("no images to train on — the folder holds no readable image files")
    images, labels, spec = load_training_images(entries, config, progress)
    if config.family_record.trained:
        return train_neural(images, labels, spec, config, progress)
    if config.family == "pixels":
        # Pixels keep the plain [0, 1] scale so that distances are the familiar raw-pixel distances.
        return pixels_encoder(Preprocess(size=spec.size, channels=spec.channels, resize=spec.resize))
    if config.family == "pca":
        return fit_pca(images, spec, config)
    raise UsageError(f"the {config.family} family is neither trained nor one of the baselines simsearch fits")


def train_on_folder(root: Path, config: TrainConfig, progress: Progress = no_progress) -> Encoder:
    entries, _ = find_images(root)
    encoder = train_encoder(entries, config, progress)
    encoder.training.setdefault("source", str(Path(root).resolve()))
    return encoder
