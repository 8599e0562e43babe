"""From a folder to a trained encoder: choose the input spec from the images, load them, fit the family's model,
calibrate its threshold, measure how well a model with a decoder reconstructs its training images (the anomaly
threshold), and record where it came from. The PCA and raw-pixel baselines are made here too.
"""

from __future__ import annotations

import random
import time
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
from simsearch.models.autoencoder import ConvEncoder
from simsearch.models.baseline import PCAEncoder, PixelEncoder
from simsearch.models.encoder import Encoder, resolve_device
from simsearch.models.novelty import fit_reference
from simsearch.models.registry import arch_of
from simsearch.progress import Progress, no_progress
from simsearch.training.augment import add_transformed_classes, class_symmetries
from simsearch.training.calibrate import (
    DISCRIMINANT,
    FEATURES,
    METHOD_CROSS_FITTED,
    METHOD_IDENTITIES,
    PLAIN,
    CalibrationPlan,
    CrossFit,
    calibrate_threshold,
    plan_calibration,
)
from simsearch.training.checkpoint import TrainingCheckpoint, training_key
from simsearch.training.config import TrainConfig, choose_size, parse_size
from simsearch.training.discriminant import fit_discriminant
from simsearch.training.loop import fit
from simsearch.training.objectives import Objective, objective_class
from simsearch.training.recipe import max_side_for, resolve, settled
from simsearch.training.sampling import Split, encode_labels, split_for_validation

#: The percentile of the training images' reconstruction errors that is the stored anomaly threshold.
ANOMALY_PERCENTILE = 99.0
#: The percentiles of those errors that ``encoder.json`` keeps (``anomalies --percentile`` interpolates between).
ANOMALY_QUANTILES = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 98.0, 99.0, 99.5, 99.9, 100.0)
#: At most this many training images (a seeded sample) are reconstructed to fit the anomaly threshold.
ANOMALY_MAX_IMAGES = 5000


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
    upscaled, see ``choose_size``), channels (grey unless some image has colour), ``invert`` (light backgrounds,
    such as ink on paper, are inverted so that strokes are high values) and, with ``resize`` auto, ``trim`` for
    light backgrounds (crop to the strokes) and ``letterbox`` otherwise. Returns the normalised arrays (n, C, H, W)
    float32, their labels, and the spec with ``mean``/``std`` fitted on the sample."""
    sample = sample_entries(entries, config.max_images, config.seed)
    survey = survey_images(e.path for e in sample_entries(sample, 200, config.seed))
    invert = survey.background > 0.5 if config.invert == "auto" else config.invert == "yes"
    side = max_side_for(config, invert, survey.median_height == survey.median_width)
    size = parse_size(config.size) or choose_size(survey.median_height, survey.median_width, side)
    # Ink on paper (a light background) is cropped to its strokes: where a signature or character sits on the
    # sheet says nothing of who drew it.
    resize = config.resize if config.resize != "auto" else ("trim" if survey.background > 0.5 else "letterbox")
    raw = Preprocess(size=size, channels=1 if survey.grey else 3, invert=invert, resize=resize, gamma=config.gamma)
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
    config = settled(config)
    family, objective = config.family_record, objective_for(config)
    options: dict[str, Any] = {"normalize": True} if objective.normalize else {}
    if config.readout == "features":  # auto builds the head; train_cross_fitted switches to the map for photos
        options["readout"] = config.readout
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
    checkpoint: TrainingCheckpoint | None = None,
) -> Encoder:
    """Fit one of the neural families on normalised ``images`` (n, C, H, W); return its encoder, with the
    verification threshold calibrated as ``calibrate.plan_calibration`` decides when the images are labelled:
    cross-fitted over identities (one model per fold, then the final model on every identity), or on a single
    held-out split. ``config.max_seconds`` bounds all of it (the time of interrupted runs included). Options left
    on auto are set first by the recipe the data call for (``training.recipe``), recorded in
    ``encoder.training["recipe"]``.

    With ``checkpoint``, training resumes from what an interrupted run of the same training saved there, and
    saves its own state as it goes; the caller removes the file once the encoder is safely written."""
    started = time.monotonic()
    config, recipe = resolve(config, spec)
    if checkpoint is not None:
        checkpoint.open(training_key(images, labels, config))
        started -= checkpoint.elapsed_before
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    y, classes = encode_labels(labels)
    if config.uses_labels and len(classes) < 2:
        raise DataError(
            f"{option('family', config.family)} with this loss needs labels: put each class in its own sub-folder "
            f"(at least 2), or use {option('loss', 'ntxent')}, which needs none"
        )
    # Class augmentation multiplies the images each model trains on: fewer folds keep the work bounded.
    grown = len(class_symmetries(config.class_augment))
    plan = plan_calibration(y, classes, config.uses_labels, config.folds, grown)
    if plan.method == METHOD_CROSS_FITTED:
        encoder = train_cross_fitted(images, y, classes, plan, spec, config, device, progress, started, checkpoint)
    else:
        split = split_for_validation(y, config.val_fraction, config.seed, plan.groups, plan.method == METHOD_IDENTITIES)
        objective = training_objective(images, y, split, spec, config, device)
        history = fit(objective, config, progress, objective.task(config), checkpoint=checkpoint)
        encoder = encoder_of(objective, config, spec, history)
        encoder.training = provenance(config, len(images), classes, split, history, device)
        note_resumed(encoder, checkpoint)
        add_augment_record(encoder, objective, config)
        encoder.threshold = calibrate_threshold(encoder, images, y, split, plan)
    encoder.training["recipe"] = recipe
    return encoder


def note_resumed(encoder: Encoder, checkpoint: TrainingCheckpoint | None) -> None:
    """Record in ``encoder.training`` that an interrupted run was resumed, and from where."""
    if checkpoint is not None and checkpoint.resumed:
        encoder.training["resumed_from"] = checkpoint.resumed


def training_objective(
    images: np.ndarray, y: np.ndarray, split: Split, spec: Preprocess, config: TrainConfig, device: torch.device
) -> Objective:
    """A new model of ``config.family`` and its objective, training on ``split.train`` (grown by
    ``config.class_augment``), on ``device``."""
    x_train, y_train, split_train = with_class_augment(images, y, split, config.class_augment)
    objective = build_objective(torch.from_numpy(x_train).to(device), y_train, split_train, spec, config)
    objective.model.to(device)
    return objective


def encoder_of(objective: Objective, config: TrainConfig, spec: Preprocess, history: list[dict[str, Any]]) -> Encoder:
    module = objective.encoder.cpu().eval()
    decoder = objective.decoder.cpu().eval() if objective.decoder is not None else None
    return Encoder(config.family, arch_of(module), spec, module, history=history, decoder=decoder)


def add_augment_record(encoder: Encoder, objective: Objective, config: TrainConfig) -> None:
    """What augmentation decided from the data: whether images were mirrored (``--mirror auto``), and the images
    and labels that class augmentation made."""
    mirror = getattr(objective, "mirror", None)
    if mirror is not None:
        encoder.training["mirror"] = bool(mirror)
    if config.class_augment != "none":
        trained_on = objective.labels[objective.train_rows].cpu().numpy()
        encoder.training["class_augment"] = {
            "images": len(trained_on),
            "labels": len(np.unique(trained_on[trained_on >= 0])),
        }


def train_cross_fitted(
    images: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    plan: CalibrationPlan,
    spec: Preprocess,
    config: TrainConfig,
    device: torch.device,
    progress: Progress,
    started: float,
    checkpoint: TrainingCheckpoint | None = None,
) -> Encoder:
    """Cross-fitted calibration (``calibrate.CrossFit``), then the final model on every identity.

    Time: the folds share ``config.max_seconds`` with the final model in proportion to their work: a fold model
    trains on about (K − 1)/K of the images, so each fold gets (K − 1)/K of what the final model gets, from the
    time left when it starts (time a fold leaves unused goes to the next ones and the final model). Each fold
    model stops early only with enough held-out identities and pairs of its own (``calibrate.MIN_IDENTITIES_FOR_PATIENCE``);
    the final model has no validation split and trains for the epoch the pooled fold curve chose, on the same
    learning-rate schedule (``fit``'s ``epochs``). With ``checkpoint``, each fold and the final model are stages
    of it: a finished fold's distances are kept there, an unfinished stage resumes."""
    k_total = plan.folds
    # With --discriminant auto (Siamese only) the folds are also scored through a discriminant back-end; the final
    # model keeps it when that scores the unseen identities better (``CrossFit.choose``).
    with_back_end = config.family_record.objective == "siamese" and config.discriminant == "auto"
    # With --readout auto (Siamese, no --discriminant auto), on images that are not ink on paper, they are also
    # scored by the feature map under the head, which the final model then reads out, its curve choosing the
    # epochs (the head's is kept beside it). Faces: EER 0.100 → 0.059; Omniglot's unseen alphabets 0.099 → 0.111
    # and signatures' FAR promise broken (bench/results/verification-exploration.md): ink keeps the head.
    with_features = (
        config.family_record.objective == "siamese"
        and config.readout == "auto"
        and not with_back_end
        and not spec.invert
    )
    cross = CrossFit(y, plan, seed=config.seed, variants=(FEATURES,) if with_features else (PLAIN, DISCRIMINANT))
    share = (k_total - 1) / k_total
    fold_seconds: list[float] = []

    def train_fold(k: int, train_rows: np.ndarray, held_rows: np.ndarray, max_epochs: int, observe: Any) -> None:
        stage, fold = f"fold {k + 1}", cross.folds[k]
        done = checkpoint.result(stage) if checkpoint is not None else None
        if done is not None:  # finished before an interruption: its distances were kept
            fold.restore([d.numpy() for d in done["distances"]])
            fold_seconds.append(done["seconds"])
            return
        fold_started = time.monotonic()
        left = config.max_seconds - (fold_started - started)
        budget = max(left * share / ((k_total - k) * share + 1), 1e-3)
        patience = config.patience if cross.folds[k].patient else config.epoch_count + 1
        fold_config = replace(config, max_seconds=budget, patience=patience)
        torch.manual_seed(config.seed + 1 + k)
        objective = training_objective(images, y, Split(train_rows, held_rows, "identities"), spec, fold_config, device)

        labelled = train_rows[y[train_rows] >= 0]  # the rows the discriminant back-end is fitted on

        def score() -> float | None:
            z_train = objective.embed_rows(labelled).cpu().numpy() if with_back_end else None
            features = None
            if with_features and isinstance(objective.encoder, ConvEncoder):
                with objective.encoder.reading("features"):
                    features = objective.embed_rows(held_rows).cpu().numpy()
            return observe(objective.embed_rows(held_rows).cpu().numpy(), z_train, y[labelled], features)

        task = f"fold {k + 1}/{k_total}: {objective.task(config)}"

        def get() -> list[torch.Tensor]:
            return [torch.from_numpy(d) for d in fold.saved()]

        def put(saved: list[torch.Tensor]) -> None:
            fold.restore([d.numpy() for d in saved])

        fit(
            objective, fold_config, progress, task, epochs=max_epochs, validate=score,
            checkpoint=checkpoint, stage=stage, extra=(get, put),
        )  # fmt: skip
        fold_seconds.append(round(time.monotonic() - fold_started, 2))
        if checkpoint is not None:
            checkpoint.finish_stage(stage, {"distances": get(), "seconds": fold_seconds[-1]})

    cross.run(train_fold, config.epoch_count)
    variant, epoch = cross.choose()
    curve = cross.curve(variant)
    torch.manual_seed(config.seed)
    left = max(config.max_seconds - (time.monotonic() - started), 1e-3)
    final_config = replace(config, max_seconds=left)
    split = Split(np.arange(len(y)), np.zeros(0, np.int64), "cross-fitted")
    objective = training_objective(images, y, split, spec, final_config, device)
    task = f"final model ({epoch} epoch{'s' if epoch > 1 else ''}, every identity): {objective.task(config)}"
    final_started = time.monotonic()
    history = fit(
        objective, final_config, progress, task, epochs=epoch, validate=lambda: None, checkpoint=checkpoint,
        stage="final",
    )  # fmt: skip
    for h in history:  # the score each epoch was chosen by: the pooled EER of the fold models at that epoch
        h["val_eer"] = curve[h["epoch"] - 1]
    labelled_rows = np.flatnonzero(y >= 0)
    axes = None
    if variant == DISCRIMINANT:  # fitted on every identity, as each fold's was on its own training identities
        z_all = objective.embed_rows(labelled_rows).cpu().numpy()
        axes = fit_discriminant(z_all, y[labelled_rows], most=cross.discriminant_axes)
        module = objective.encoder
        if axes is not None and isinstance(module, ConvEncoder):
            module.set_discriminant(torch.from_numpy(axes).to(next(module.parameters()).device))
        else:
            axes = None
    if variant == FEATURES and isinstance(objective.encoder, ConvEncoder):
        objective.encoder.readout = "features"  # the final model searches with what scored the folds best
    encoder = encoder_of(objective, config, spec, history)
    encoder.training = provenance(config, len(images), classes, split, history, device)
    note_resumed(encoder, checkpoint)
    add_augment_record(encoder, objective, config)
    trained = len(history)
    labelled = y >= 0
    encoder.training["validation"] = {
        "split": "cross-fitted",
        "folds": k_total,
        "identities": plan.n_groups,
        "images": int(labelled.sum()),
    }
    encoder.training["cross_fit"] = {
        "folds": k_total,
        "identities": plan.n_groups,
        "chosen_epoch": epoch,
        "final_epochs": trained,
        "pooled_eer": curve,
        "pooled_eer_plain": cross.curve(PLAIN),
        "pooled_eer_discriminant": cross.curve(DISCRIMINANT),
        "pooled_eer_features": cross.curve(FEATURES),
        "readout": getattr(objective.encoder, "readout", "head"),
        "discriminant": None
        if axes is None
        else {"axes": int(axes.shape[1]), "labels": len(np.unique(y[labelled_rows]))},
        "fold_eer": cross.fold_curves(),
        "fold_seconds": fold_seconds,
        "final_seconds": round(time.monotonic() - final_started, 2),
    }
    encoder.training["seconds"] = round(time.monotonic() - started, 2)
    encoder.training["best_validation"] = curve[min(epoch, trained) - 1] if curve else None
    # Calibrated at the epoch the final model reached (the chosen one unless the time limit cut it short).
    used = PLAIN if variant == DISCRIMINANT and axes is None else variant  # no back-end could be fitted: plain
    encoder.threshold = cross.record(min(epoch, trained), trained, used)
    if encoder.threshold is not None:
        encoder.threshold["calibration"]["readout"] = encoder.training["cross_fit"]["readout"]
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
    best = min((h[metric] for h in history if metric in h), default=None)  # None: nothing held out to measure
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


def anomaly_record(errors: np.ndarray, percentile: float = ANOMALY_PERCENTILE) -> dict[str, Any]:
    """What ``encoder.json`` stores as ``anomaly``: the training images' reconstruction ``errors`` summed up as the
    threshold at ``percentile`` and the quantiles at ``ANOMALY_QUANTILES`` (keys are the percentiles as text)."""
    values = np.asarray(errors, dtype=np.float64)
    quantiles = np.percentile(values, ANOMALY_QUANTILES)
    return {
        "by": "reconstruction",
        "score": "mean squared error in the model's input space",
        "fitted_on": "training images",
        "images": len(values),
        "percentile": percentile,
        "threshold": float(np.percentile(values, percentile)),
        "quantiles": {f"{p:g}": float(q) for p, q in zip(ANOMALY_QUANTILES, quantiles, strict=True)},
    }


def fit_anomaly(encoder: Encoder, images: np.ndarray, config: TrainConfig) -> dict[str, Any] | None:
    """The anomaly record (``anomaly_record``) of a model with a decoder, from the reconstruction errors of its
    training images ``images`` (at most ``ANOMALY_MAX_IMAGES``, a seeded sample), computed on ``config.device``;
    None for a model without a decoder."""
    if encoder.decoder is None or not len(images):
        return None
    if len(images) > ANOMALY_MAX_IMAGES:
        rows = np.sort(np.random.default_rng(config.seed).choice(len(images), ANOMALY_MAX_IMAGES, replace=False))
        images = images[rows]
    device = resolve_device(config.device)
    try:
        errors = encoder.to(device).reconstruction_errors(images)
    finally:
        encoder.to(torch.device("cpu"))
    return anomaly_record(errors)


def train_encoder(
    entries: Sequence[ImageFileEntry],
    config: TrainConfig,
    progress: Progress = no_progress,
    checkpoint: TrainingCheckpoint | None = None,
) -> Encoder:
    """Build the encoder ``config.family`` names from the images ``entries`` lists (resuming a neural family's
    training from ``checkpoint`` when an interrupted run left one: see ``train_neural``)."""
    if not entries:
        raise DataError("no images to train on — the folder holds no readable image files")
    images, labels, spec = load_training_images(entries, config, progress)
    if config.family_record.trained:
        encoder = train_neural(images, labels, spec, config, progress, checkpoint)
        encoder.reference = fit_reference(images, spec, config.seed)  # what its inputs look like: novelty check
        encoder.anomaly = fit_anomaly(encoder, images, config)  # how well it reconstructs them: anomaly threshold
        return encoder
    if config.family == "pixels":
        # Pixels keep the plain [0, 1] scale so that distances are the familiar raw-pixel distances.
        return pixels_encoder(Preprocess(size=spec.size, channels=spec.channels, resize=spec.resize, gamma=spec.gamma))
    if config.family == "pca":
        return fit_pca(images, spec, config)
    raise UsageError(f"the {config.family} family is neither trained nor one of the baselines simsearch fits")


def train_on_folder(
    root: Path, config: TrainConfig, progress: Progress = no_progress, checkpoint: TrainingCheckpoint | None = None
) -> Encoder:
    entries, _ = find_images(root)
    encoder = train_encoder(entries, config, progress, checkpoint)
    encoder.training.setdefault("source", str(Path(root).resolve()))
    return encoder
