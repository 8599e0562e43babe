"""Evaluate an encoder on a labelled folder with the field's metrics, beside the pixels and PCA baselines.

Retrieval: k-NN vote accuracy, precision@1, precision@k, recall@k, R-precision and MAP@R, each query against
every other image (leave-one-out) or a held-out share of each label against the rest (``split``).
Verification: ROC AUC and EER over every genuine pair (or 20,000 of them) and four times as many impostor
pairs, and FAR/FRR at the model's stored threshold. Every figure has a 95% bootstrap interval.
Open set: some labels are kept out of the gallery, and a query whose nearest neighbour is beyond the threshold
is answered "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import DataError
from simsearch.evaluation.protocols import MAX_NEIGHBOURS, EvalConfig, choose_protocol
from simsearch.evaluation.scoring import EncoderResult, score_encoder
from simsearch.io import ImageError, Preprocess, Skipped, find_images, load_images
from simsearch.models.encoder import Encoder
from simsearch.progress import Progress, no_progress
from simsearch.training.sampling import encode_labels
from simsearch.verification import OperatingPoint, operating_point


@dataclass
class EvalReport:
    folder: str
    mode: str
    k: int
    images: int
    labels: int
    queries: int
    gallery: int
    unknown_labels: list[str]
    skipped: list[Skipped]
    unlabelled: int
    paths: list[Path]
    image_labels: list[str]
    results: list[EncoderResult]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "mode": self.mode,
            "k": self.k,
            "images": self.images,
            "labels": self.labels,
            "queries": self.queries,
            "gallery": self.gallery,
            "unknown_labels": self.unknown_labels,
            "skipped": len(self.skipped),
            "unlabelled": self.unlabelled,
            "notes": self.notes,
            "encoders": [r.to_json() for r in self.results],
        }


def baseline_spec(spec: Preprocess) -> Preprocess:
    """Plain [0, 1] pixels at the model's input size (inverted like the model's input): the baselines' input."""
    return Preprocess(size=spec.size, channels=spec.channels, invert=spec.invert)


def evaluate(
    folder: Path, encoder: Encoder, config: EvalConfig, name: str = "model", progress: Progress = no_progress
) -> EvalReport:
    """Score ``encoder`` (and, unless told not to, the pixels and PCA baselines) on a labelled folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder — pass a folder of images in one sub-folder per label")
    entries, skipped = find_images(folder)
    labelled = [e for e in entries if e.label is not None]
    unlabelled = len(entries) - len(labelled)
    if not labelled:
        raise DataError(f"{folder}: no labelled images — put each label's images in its own sub-folder")
    spec = baseline_spec(encoder.preprocess)
    arrays, kept = [], []
    for n, (entry, item) in enumerate(
        zip(
            labelled,
            load_images([e.path for e in labelled], spec, config.workers, [e.rel for e in labelled]),
            strict=True,
        )
    ):
        if isinstance(item, ImageError):
            skipped.append(Skipped(entry.rel, str(item)))
        elif item is not None:
            arrays.append(item.array)
            kept.append(entry)
        progress("reading images", n + 1, len(labelled))
    y, classes = encode_labels([e.label for e in kept])
    if len(classes) < 2:
        raise DataError(f"{folder}: evaluation needs at least 2 labels (sub-folders); found {len(classes)}")
    if np.bincount(y).max() < 2:
        raise DataError(f"{folder}: every label has a single image — evaluation needs labels with 2 or more")
    images = np.stack(arrays)
    protocol = choose_protocol(y, classes, config)
    point: OperatingPoint | None = None
    if encoder.threshold or config.threshold != "auto":
        point = operating_point(encoder, config.threshold, config.far)
    elif config.open_set:
        operating_point(encoder, "auto")  # raises the clear "no calibrated threshold" error
    mean = np.asarray(encoder.preprocess.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(encoder.preprocess.std, np.float32).reshape(1, -1, 1, 1)
    progress("embedding", 0, len(images))
    z_model = encoder.embed((images - mean) / std)
    progress("embedding", len(images), len(images))
    candidates: list[tuple[str, str, np.ndarray, str, OperatingPoint | None]] = [
        (name, encoder.family, z_model, encoder.metric, point)
    ]
    notes = []
    if config.baselines:
        from simsearch.models.baseline import PCAEncoder

        flat = images.reshape(len(images), -1)
        candidates.append(("pixels", "pixels", flat, "l2", None))
        dim = min(64, flat.shape[1], len(protocol.gallery))
        import torch

        pca = PCAEncoder(spec.channels, spec.size, dim).fit(torch.from_numpy(images[protocol.gallery]))
        with torch.no_grad():
            z_pca = pca(torch.from_numpy(images)).numpy()
        candidates.append((f"pca ({dim})", "pca", z_pca, "l2", None))
        notes.append(f"PCA is fitted on the {len(protocol.gallery)} gallery images (no labels used).")
    results = []
    for n, (row_name, family, z, metric, row_point) in enumerate(candidates):
        progress("scoring", n, len(candidates), row_name)
        results.append(score_encoder(row_name, family, z, metric, y, classes, protocol, row_point, config))
    progress("scoring", len(candidates), len(candidates))
    gallery_counts = np.bincount(y[protocol.gallery], minlength=len(classes))
    if gallery_counts.max() > MAX_NEIGHBOURS:
        notes.append(f"MAP@R and R-precision look at the nearest {MAX_NEIGHBOURS} only (some labels have more images).")
    return EvalReport(
        folder=str(folder),
        mode=protocol.mode,
        k=config.k,
        images=len(kept),
        labels=len(classes),
        queries=len(protocol.queries),
        gallery=len(protocol.gallery),
        unknown_labels=[classes[c] for c in protocol.unknown_codes],
        skipped=skipped,
        unlabelled=unlabelled,
        paths=[e.path for e in kept],
        image_labels=[classes[c] for c in y],
        results=results,
        notes=notes,
    )
