"""Training: choose an input spec from the images, then fit an encoder on them.

``fit`` is one generic loop: it knows nothing about the model beyond "a module and a loss on a batch", runs
for a bounded number of epochs *and* seconds, keeps the weights with the best validation loss, and reports
through a progress callback. Family-specific code only builds the module and its loss.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simsearch.encoder import Encoder, resolve_device
from simsearch.errors import DataError, UsageError
from simsearch.images import ImageError, ImageFileEntry, Preprocess, find_images, load_images, survey_images
from simsearch.models.autoencoder import ConvAutoencoder, ConvEncoder
from simsearch.models.baseline import PCAEncoder, PixelEncoder
from simsearch.progress import Progress, no_progress

TRAINABLE = ("autoencoder", "pca", "pixels")


@dataclass(frozen=True)
class TrainConfig:
    """How to build an encoder from a folder. ``max_seconds`` bounds training time whatever ``epochs`` says."""

    family: str = "autoencoder"
    dim: int = 64
    size: str = "auto"
    max_side: int = 64
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 2e-3
    max_seconds: float = 300.0
    max_images: int = 20_000
    val_fraction: float = 0.1
    patience: int = 6
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.family not in TRAINABLE:
            raise UsageError(f"unknown family {self.family!r} — use one of: {', '.join(TRAINABLE)}")
        if self.dim < 1:
            raise UsageError(f"--dim must be at least 1, not {self.dim}")
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, not {self.epochs}")
        if self.max_seconds <= 0:
            raise UsageError(f"the training time limit must be positive, not {self.max_seconds}")
        parse_size(self.size)


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
    if len(dims) != 2 or min(dims) < 1 or max(dims) > 1024:
        raise UsageError(f"--size must be 'auto' or HxW such as 64x64 (sides 1..1024), not {text!r}")
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
) -> tuple[np.ndarray, Preprocess]:
    """Read a sample of the images, choose the preprocessing spec from them, and return the normalised
    arrays (n, C, H, W) float32 with their spec (``mean``/``std`` fitted on the sample)."""
    sample = sample_entries(entries, config.max_images, config.seed)
    survey = survey_images(e.path for e in sample_entries(sample, 200, config.seed))
    size = parse_size(config.size) or choose_size(survey.median_height, survey.median_width, config.max_side)
    raw = Preprocess(size=size, channels=1 if survey.grey else 3)
    arrays: list[np.ndarray] = []
    for i, loaded in enumerate(load_images([e.path for e in sample], raw, names=[e.rel for e in sample])):
        if loaded is not None and not isinstance(loaded, ImageError):
            arrays.append(loaded.array)
        if i % 64 == 0 or i + 1 == len(sample):
            progress("reading training images", i + 1, len(sample))
    if len(arrays) < 2:
        raise DataError(f"only {len(arrays)} readable image(s) — an encoder needs at least 2 to train on")
    x = np.stack(arrays)
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    x -= mean.reshape(1, -1, 1, 1)
    x /= std.reshape(1, -1, 1, 1)
    spec = Preprocess(size=size, channels=raw.channels, mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    return x, spec


LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: torch.Tensor,
    val: torch.Tensor,
    config: TrainConfig,
    progress: Progress = no_progress,
    task: str = "training",
) -> list[dict[str, Any]]:
    """Minimise ``loss_fn(model, batch)`` over ``train`` (on its device); keep the best weights on ``val``.

    Stops at ``config.epochs``, at ``config.max_seconds``, or after ``config.patience`` epochs without a
    better validation loss, whichever comes first. Returns the history, one dict per epoch.
    """
    device = train.device
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    amp = device.type == "cuda"
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    stale = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        total, seen = 0.0, 0
        epoch_started = time.monotonic()
        for step in range(steps_per_epoch):
            batch = train[order[step * config.batch_size : (step + 1) * config.batch_size]]
            if len(batch) < 2:
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            if time.monotonic() - started > config.max_seconds:
                break
        val_loss = evaluate_loss(model, loss_fn, val, config.batch_size)
        record = {
            "epoch": epoch,
            "loss": total / max(seen, 1),
            "val_loss": val_loss,
            "seconds": round(time.monotonic() - epoch_started, 3),
        }
        history.append(record)
        progress(task, epoch, config.epochs, f"loss {record['loss']:.4f} · val {val_loss:.4f}")
        if best is None or val_loss < best[0] - 1e-6:
            best, stale = (val_loss, copy.deepcopy(model.state_dict())), 0
        else:
            stale += 1
        if stale >= config.patience or time.monotonic() - started > config.max_seconds:
            break
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: LossFn, data: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        total += float(loss_fn(model, batch)) * len(batch)
    return total / max(len(data), 1)


def reconstruction_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(batch).float(), batch)


def split_validation(x: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * fraction)) if len(x) >= 10 else 1
    return x[order[n_val:]], x[order[:n_val]]


def train_autoencoder(
    images: np.ndarray, spec: Preprocess, config: TrainConfig, progress: Progress = no_progress
) -> Encoder:
    """Fit a convolutional autoencoder on normalised ``images`` (n, C, H, W); return its encoder half."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    arch: dict[str, Any] = {"channels": spec.channels, "size": list(spec.size), "dim": config.dim}
    encoder_module = ConvEncoder(**arch)
    arch["widths"] = list(encoder_module.widths)
    model = ConvAutoencoder(encoder_module).to(device)
    train_x, val_x = split_validation(images, config.val_fraction, config.seed)
    history = fit(
        model,
        reconstruction_loss,
        torch.from_numpy(train_x).to(device),
        torch.from_numpy(val_x).to(device),
        config,
        progress,
        task="training autoencoder",
    )
    encoder = Encoder("autoencoder", arch, spec, model.encoder.cpu())
    encoder.history = history
    encoder.training = provenance(config, images, history, device)
    return encoder


def fit_pca(images: np.ndarray, spec: Preprocess, config: TrainConfig) -> Encoder:
    n_inputs = spec.channels * spec.size[0] * spec.size[1]
    dim = min(config.dim, n_inputs)
    arch: dict[str, Any] = {"channels": spec.channels, "size": list(spec.size), "dim": dim}
    module = PCAEncoder(**arch).fit(torch.from_numpy(images))
    encoder = Encoder("pca", arch, spec, module)
    encoder.training = provenance(config, images, [], torch.device("cpu"))
    return encoder


def pixels_encoder(spec: Preprocess) -> Encoder:
    dim = spec.channels * spec.size[0] * spec.size[1]
    arch: dict[str, Any] = {"channels": spec.channels, "size": list(spec.size), "dim": dim}
    return Encoder("pixels", arch, spec, PixelEncoder(**arch))


def provenance(config: TrainConfig, images: np.ndarray, history: list[dict[str, Any]], device: torch.device) -> dict:
    last = history[-1] if history else {}
    best = min((h["val_loss"] for h in history), default=None)
    return {
        "config": asdict(config),
        "images": len(images),
        "epochs_run": len(history),
        "final": last,
        "best_val_loss": best,
        "seconds": round(sum(h["seconds"] for h in history), 2),
        "device": device.type,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train_encoder(entries: Sequence[ImageFileEntry], config: TrainConfig, progress: Progress = no_progress) -> Encoder:
    """Build the encoder ``config.family`` names from the images ``entries`` lists."""
    if not entries:
        raise DataError("no images to train on — the folder holds no readable image files")
    images, spec = load_training_images(entries, config, progress)
    if config.family == "pixels":
        # Pixels keep the plain [0, 1] scale so that distances are the familiar raw-pixel distances.
        return pixels_encoder(Preprocess(size=spec.size, channels=spec.channels))
    if config.family == "pca":
        return fit_pca(images, spec, config)
    return train_autoencoder(images, spec, config, progress)


def train_on_folder(root: Path, config: TrainConfig, progress: Progress = no_progress) -> Encoder:
    entries, _ = find_images(root)
    encoder = train_encoder(entries, config, progress)
    encoder.training.setdefault("source", str(Path(root).resolve()))
    return encoder
