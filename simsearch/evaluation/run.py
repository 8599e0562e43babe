"""Evaluate an encoder on a labelled folder with the field's metrics, beside the pixels and PCA baselines.

Retrieval: k-NN vote accuracy, precision@1, precision@k, recall@k, R-precision and MAP@R, each query against
every other image (leave-one-out) or a held-out share of each label against the rest (``split``).
Verification: ROC AUC and EER over every genuine pair (or 20,000 of them) and four times as many impostor
pairs, and FAR/FRR at the model's stored threshold. Every figure has a 95% bootstrap interval.
Open set: some labels are kept out of the gallery, and a query whose nearest neighbour is beyond the threshold,
or that is unlike the images the model was trained on (``models.novelty``: "unfamiliar"; counted in every mode),
is answered "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.embedding import check_metric, embed_files
from simsearch.errors import DataError
from simsearch.evaluation.protocols import MAX_NEIGHBOURS, EvalConfig, choose_protocol
from simsearch.evaluation.scoring import EncoderResult, score_encoder
from simsearch.io import ImageError, LoadedImage, Preprocess, Skipped, find_images, load_images
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
    vote: str = "majority"

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
            "skipped_files": [{"path": s.rel, "reason": s.reason} for s in self.skipped],
            "unlabelled": self.unlabelled,
            "vote": self.vote,
            "notes": self.notes,
            "encoders": [r.to_json() for r in self.results],
        }


def baseline_spec(spec: Preprocess) -> Preprocess:
    """The baselines' own input, whatever the model's: plain [0, 1] pixels (mean 0, std 1) at the model's input
    size and channels, inverted like the model's input, and letterboxed (never trimmed), so that the pixels and
    PCA rows are the same reference for every model."""
    return Preprocess(
        size=spec.size, channels=spec.channels, invert=spec.invert, mean=(0.0,), std=(1.0,), resize="letterbox"
    )


def baseline_images(
    paths: list[Path], names: list[str], spec: Preprocess, workers: int, progress: Progress = no_progress
) -> np.ndarray:
    """The baselines' input arrays (n, C, H, W) of the images the model embedded (``baseline_spec``)."""
    arrays = []
    for n, item in enumerate(load_images(paths, spec, workers, names)):
        if not isinstance(item, LoadedImage):  # it was read a moment ago: changed or removed since
            raise item if isinstance(item, ImageError) else DataError("could not be read again", file=names[n])
        arrays.append(item.array)
        progress("reading images for the baselines", n + 1, len(paths))
    return np.stack(arrays)


def evaluate(
    folder: Path, encoder: Encoder, config: EvalConfig, name: str = "model", progress: Progress = no_progress
) -> EvalReport:
    """Score ``encoder`` (and, unless told not to, the pixels and PCA baselines) on a labelled folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("no such folder", file=folder, remedy="pass a folder of images in one sub-folder per label")
    entries, skipped = find_images(folder)
    labelled = [e for e in entries if e.label is not None]
    unlabelled = len(entries) - len(labelled)
    if not labelled:
        raise DataError("no labelled images", file=folder, remedy="put each label's images in its own sub-folder")
    # The model's embeddings come from the path query and verify take (its own preprocessing, trim included).
    check_metric(encoder.metric, f"this {encoder.family} model")
    embedded = embed_files(
        encoder,
        [e.path for e in labelled],
        convert=True,
        names=[e.rel for e in labelled],
        workers=config.workers,
        progress=progress,
    )
    # What is wrong with each file, as index lists it (its remedy is the error's, or the channel rule's note).
    skipped += [Skipped(labelled[n].rel, getattr(error, "what", str(error))) for n, error in embedded.errors]
    kept = [labelled[n] for n in embedded.kept]
    z_model = embedded.embeddings
    unfamiliar = embedded.unfamiliar  # None: the model has no novelty reference
    y, classes = encode_labels([e.label for e in kept])
    if len(classes) < 2:
        raise DataError(f"evaluation needs at least 2 labels (sub-folders); found {len(classes)}", file=folder)
    if np.bincount(y).max() < 2:
        raise DataError("every label has a single image", file=folder, remedy="evaluation needs labels with 2 or more")
    protocol = choose_protocol(y, classes, config)
    point: OperatingPoint | None = None
    if encoder.threshold or config.threshold != "auto":
        point = operating_point(encoder, config.threshold, config.far)
    elif config.open_set:
        operating_point(encoder, "auto")  # raises the clear "no calibrated threshold" error
    candidates: list[tuple[str, str, np.ndarray, str, OperatingPoint | None]] = [
        (name, encoder.family, z_model, encoder.metric, point)
    ]
    notes = []
    if config.baselines:
        from simsearch.models.baseline import PCAEncoder

        spec = baseline_spec(encoder.preprocess)
        images = baseline_images([e.path for e in kept], [e.rel for e in kept], spec, config.workers, progress)
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
        flags = unfamiliar if n == 0 else None  # the model's own check; the baselines have none
        results.append(score_encoder(row_name, family, z, metric, y, classes, protocol, row_point, config, flags))
    progress("scoring", len(candidates), len(candidates))
    flagged = results[0].figures.get("unfamiliar_queries")
    if flagged:
        answered = " and answered unknown" if config.open_set and point is not None else ""
        notes.append(
            f"{flagged} of {len(protocol.queries)} queries are unlike the images the model was trained on "
            f"(flagged unfamiliar{answered})."
        )
    reach = len(protocol.gallery) - (1 if protocol.leave_one_out else 0)
    if config.k > reach:
        notes.insert(0, f"k = {config.k} is more than the {reach} gallery images a query can see: votes and the "
                     f"figures at k use {reach}.")  # fmt: skip
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
        vote=config.vote,
    )
