"""Training: choose an input spec from the images, fit an encoder on them, calibrate its threshold.

``fit`` is one generic loop: it knows nothing about the model beyond an ``Objective`` (batches, a loss, a
validation score), runs for a bounded number of epochs *and* seconds, stops early when the validation score
stops improving, keeps the best weights, and reports through a progress callback.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simsearch import metrics
from simsearch.data import (
    CLASS_AUGMENTS,
    Split,
    add_transformed_classes,
    encode_labels,
    scoring_pairs,
    split_for_validation,
)
from simsearch.encoder import Encoder, resolve_device
from simsearch.errors import DataError, UsageError
from simsearch.images import (
    MAX_SIDE,
    RESIZE_MODES,
    ImageError,
    ImageFileEntry,
    Preprocess,
    find_images,
    load_images,
    survey_images,
)
from simsearch.losses import LOSSES
from simsearch.models.autoencoder import ConvEncoder
from simsearch.models.baseline import PCAEncoder, PixelEncoder
from simsearch.objectives import Objective, Reconstruction, Siamese, Variational
from simsearch.progress import Progress, no_progress

TRAINABLE = ("autoencoder", "denoising", "vae", "siamese", "pca", "pixels")
NEURAL = ("autoencoder", "denoising", "vae", "siamese")


@dataclass(frozen=True)
class TrainConfig:
    """How to build an encoder from a folder. ``max_seconds`` bounds training time whatever ``epochs`` says."""

    family: str = "autoencoder"
    loss: str = "contrastive"
    margin: float | None = None
    beta: float = 1.0
    contrastive_weight: float = 0.0
    augment: float = 0.5
    class_augment: str = "none"
    dim: int = 64
    size: str = "auto"
    resize: str = "letterbox"
    max_side: int = 64
    invert: str = "auto"
    epochs: int = 60
    batch_size: int | None = None
    learning_rate: float = 2e-3
    max_seconds: float = 300.0
    max_images: int = 20_000
    val_fraction: float = 0.15
    patience: int = 12
    ema: float = 0.0
    projection: int = 0
    similar_labels: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.family not in TRAINABLE:
            raise UsageError(f"unknown family {self.family!r} — use one of: {', '.join(TRAINABLE)}")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r} — use one of: {', '.join(LOSSES)}")
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")
        if self.invert not in ("auto", "yes", "no"):
            raise UsageError(f"--invert must be auto, yes or no, not {self.invert!r}")
        if self.batch_size is not None and self.batch_size < 2:
            raise UsageError(f"--batch-size must be at least 2, not {self.batch_size}")
        if self.dim < 1:
            raise UsageError(f"--dim must be at least 1, not {self.dim}")
        if not 0 <= self.ema < 1:
            raise UsageError(f"--ema must be in [0, 1) (0: off; 0.995, say), not {self.ema}")
        if self.projection < 0 or self.similar_labels < 0:
            raise UsageError("--projection and --similar-labels must be ≥ 0")
        if self.projection > 0 and self.family != "siamese":
            raise UsageError("--projection is a head for the Siamese losses: use it with --family siamese")
        if self.similar_labels > 1 and not (self.family == "siamese" and self.uses_labels):
            raise UsageError(
                "--similar-labels builds batches of labels: use it with --family siamese and --loss "
                "contrastive or triplet"
            )
        if self.class_augment not in CLASS_AUGMENTS:
            raise UsageError(f"--class-augment must be one of {', '.join(CLASS_AUGMENTS)}, not {self.class_augment!r}")
        if self.class_augment != "none" and not self.uses_labels:
            raise UsageError(
                "--class-augment makes new labels, so it needs a labelled loss: --family siamese with --loss "
                "contrastive or triplet, or --contrastive-weight"
            )
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, not {self.epochs}")
        if self.max_seconds <= 0:
            raise UsageError(f"the training time limit must be positive, not {self.max_seconds}")
        if self.beta < 0 or self.contrastive_weight < 0 or (self.margin is not None and self.margin <= 0):
            raise UsageError("--beta and --contrastive-weight must be ≥ 0, and --margin > 0")
        parse_size(self.size)

    @property
    def uses_labels(self) -> bool:
        """Whether training reads the labels (the Siamese labelled losses, or an autoencoder's contrastive term)."""
        return (self.family == "siamese" and self.loss != "ntxent") or self.contrastive_weight > 0


def parse_size(text: str) -> tuple[int, int] | None:
    """``auto`` → None; ``HxW`` (or ``N`` for N×N) → (H, W)."""
    if text == "auto":
        return None
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1 or max(dims) > MAX_SIDE:
        raise UsageError(f"--size must be 'auto' or HxW such as 64x64 (sides 1..{MAX_SIDE}), not {text!r}")
    return dims[0], dims[1]


def choose_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Keep the images' aspect ratio, never upscale, and cap the long side at ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(4, round(height * scale)), max(4, round(width * scale))


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


class WeightAverage:
    """An exponential moving average of a module's weights and floating-point buffers (BatchNorm statistics),
    updated after each optimiser step: ``average ← decay · average + (1 - decay) · current``. Averaged weights
    lie in a flatter region than the last step's, and usually score better on data unlike the training set."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {name: value.detach().clone() for name, value in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value.detach(), 1 - self.decay)
            else:
                self.state[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        """Within the block, ``module`` holds the averaged weights; afterwards, its own again."""
        own = copy.deepcopy(module.state_dict())
        module.load_state_dict(self.state)
        try:
            yield
        finally:
            module.load_state_dict(own)


def fit(
    objective: Objective, config: TrainConfig, progress: Progress = no_progress, task: str = "training"
) -> list[dict[str, Any]]:
    """Minimise ``objective.loss`` over its batches; keep the weights with the best ``objective.validate()``.

    Stops at ``config.epochs``, at ``config.max_seconds``, or after ``config.patience`` epochs without a
    better validation score, whichever comes first. Returns the history, one dict per epoch. With
    ``config.ema``, the moving average of the weights is what is validated and kept.
    """
    model = objective.model
    device = objective.images.device
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    steps_per_epoch = max(1, sum(1 for _ in objective.batches()))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch + 1, pct_start=0.15
    )
    amp = device.type == "cuda"
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    stale = 0
    average = WeightAverage(model, config.ema) if config.ema > 0 else None
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        epoch_started = time.monotonic()
        for step, batch in enumerate(objective.batches()):
            if step >= steps_per_epoch:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = objective.loss(batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            if average is not None:
                average.update(model)
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            if time.monotonic() - started > config.max_seconds:
                break
        with average.applied(model) if average is not None else contextlib.nullcontext():
            score = objective.validate()
            improved = best is None or score < best[0] - 1e-6 or not math.isfinite(best[0])
            if improved:
                best = (score, copy.deepcopy(model.state_dict()))
        stale = 0 if improved else stale + 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        record = {
            "epoch": epoch,
            "loss": total / max(seen, 1),
            objective.metric_name: score,
            "seconds": round(time.monotonic() - epoch_started, 3),
        }
        history.append(record)
        progress(task, epoch, config.epochs, f"loss {record['loss']:.4f} · {objective.metric_name} {score:.4f}")
        if stale >= config.patience or time.monotonic() - started > config.max_seconds:
            break
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


def batch_size_for(config: TrainConfig) -> int:
    """``batch_size``, or the family's default: 256 for the Siamese family (more pairs and triplets per batch,
    which metric learning feeds on), 128 for the autoencoders."""
    if config.batch_size is not None:
        return config.batch_size
    return 256 if config.family == "siamese" else 128


def build_objective(
    images: torch.Tensor, y: np.ndarray, split: Split, spec: Preprocess, config: TrainConfig
) -> Objective:
    family = config.family
    encoder = ConvEncoder(spec.channels, spec.size, config.dim, normalize=family == "siamese")
    labels = torch.from_numpy(y).to(images.device)
    common: dict[str, Any] = {"batch_size": batch_size_for(config), "seed": config.seed}
    args = (images, labels, split.train, split.val)
    if family in ("autoencoder", "denoising"):
        return Reconstruction(
            encoder, *args, denoising=family == "denoising", contrastive_weight=config.contrastive_weight, **common
        )
    if family == "vae":
        return Variational(encoder, *args, beta=config.beta, **common)
    return Siamese(
        encoder,
        *args,
        loss=config.loss,
        margin=config.margin,
        augment=config.augment,
        projection=config.projection,
        similar_labels=config.similar_labels,
        **common,
    )


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
            f"--family {config.family} with this loss needs labels: put each class in its own sub-folder "
            "(at least 2), or use --loss ntxent, which needs none"
        )
    split = split_for_validation(y, config.val_fraction, config.seed)
    x_train, y_train, split_train = with_class_augment(images, y, split, config.class_augment)
    objective = build_objective(torch.from_numpy(x_train).to(device), y_train, split_train, spec, config)
    objective.model.to(device)
    task = f"training {config.family}" + (f" ({config.loss})" if config.family == "siamese" else "")
    history = fit(objective, config, progress, task)
    module = objective.encoder.cpu().eval()
    arch: dict[str, Any] = {
        "channels": spec.channels,
        "size": list(spec.size),
        "dim": config.dim,
        "widths": list(module.widths),
        "normalize": module.normalize,
    }
    encoder = Encoder(config.family, arch, spec, module, history=history)
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
            f"--class-augment {mode} turns images by 90°, so it needs square inputs, not "
            f"{images.shape[2]}×{images.shape[3]}: add --size 64x64 (say)"
        )
    x, labels, rows = add_transformed_classes(images, y, split.train, mode)
    return x, labels, Split(rows, split.val, split.mode)


def calibrate_threshold(encoder: Encoder, images: np.ndarray, y: np.ndarray, split: Split) -> dict[str, Any] | None:
    """EER threshold (and those for FAR = 1% and 0.1%) on pairs of held-out images, when they are labelled."""
    y_val = y[split.val]
    pairs = scoring_pairs(y_val, np.random.default_rng(0))
    if pairs is None:
        return None
    i, j, same = pairs
    z = encoder.embed(images[split.val])
    distances = np.linalg.norm(z[i] - z[j], axis=1)
    record = metrics.calibrate(distances, same, identities=len(np.unique(y_val[y_val >= 0])))
    record["split"] = split.mode
    return record


def fit_pca(images: np.ndarray, spec: Preprocess, config: TrainConfig) -> Encoder:
    n_inputs = spec.channels * spec.size[0] * spec.size[1]
    dim = min(config.dim, n_inputs)
    arch: dict[str, Any] = {"channels": spec.channels, "size": list(spec.size), "dim": dim}
    module = PCAEncoder(**arch).fit(torch.from_numpy(images))
    encoder = Encoder("pca", arch, spec, module)
    encoder.training = provenance(config, len(images), [], None, [], torch.device("cpu"))
    return encoder


def pixels_encoder(spec: Preprocess) -> Encoder:
    dim = spec.channels * spec.size[0] * spec.size[1]
    arch: dict[str, Any] = {"channels": spec.channels, "size": list(spec.size), "dim": dim}
    return Encoder("pixels", arch, spec, PixelEncoder(**arch))


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
    if config.family == "pixels":
        # Pixels keep the plain [0, 1] scale so that distances are the familiar raw-pixel distances.
        return pixels_encoder(Preprocess(size=spec.size, channels=spec.channels, resize=spec.resize))
    if config.family == "pca":
        return fit_pca(images, spec, config)
    return train_neural(images, labels, spec, config, progress)


def train_on_folder(root: Path, config: TrainConfig, progress: Progress = no_progress) -> Encoder:
    entries, _ = find_images(root)
    encoder = train_encoder(entries, config, progress)
    encoder.training.setdefault("source", str(Path(root).resolve()))
    return encoder
