"""Evaluate an encoder on a labelled folder with the field's metrics, beside the pixels and PCA baselines.

Retrieval: k-NN vote accuracy, precision@1, precision@k, recall@k, R-precision and MAP@R, each query against
every other image (leave-one-out) or a held-out share of each label against the rest (``split``).
Verification: ROC AUC and EER over every genuine pair (or 20,000 of them) and four times as many impostor
pairs, and FAR/FRR at the model's stored threshold. Every figure has a 95% bootstrap interval.
Open set: some labels are kept out of the gallery, and a query whose nearest neighbour is beyond the threshold
is answered "unknown".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import metrics, vectors
from simsearch.data import encode_labels, verification_pairs
from simsearch.encoder import Encoder
from simsearch.errors import DataError, UsageError
from simsearch.images import ImageError, Preprocess, Skipped, find_images, load_images
from simsearch.progress import Progress, no_progress
from simsearch.search import vote_label
from simsearch.verification import OperatingPoint, operating_point

#: MAP@R and R-precision look at the R nearest neighbours; beyond this many they are computed over the
#: first ``MAX_NEIGHBOURS`` only (and the report says so).
MAX_NEIGHBOURS = 1000
UNKNOWN = "unknown"
#: Most bootstrap resamples: ample for a 95% interval; more would only take longer (the CLI's --bootstrap max).
MAX_BOOTSTRAP = 10_000


@dataclass(frozen=True)
class EvalConfig:
    k: int = 9
    split: float | None = None  # None: leave-one-out; else the share of each label's images used as queries
    baselines: bool = True
    open_set: bool = False
    unknown_fraction: float = 0.2  # open set: share of the labels kept out of the gallery
    threshold: str = "auto"
    far: float | None = None
    bootstrap: int = 200
    seed: int = 0
    max_genuine_pairs: int = 20_000
    workers: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UsageError(f"-k must be at least 1, not {self.k}")
        if self.split is not None and not 0 < self.split < 1:
            raise UsageError(f"--split must be between 0 and 1 (the share of images used as queries), not {self.split}")
        if not 0 < self.unknown_fraction < 1:
            raise UsageError(f"--unknown-fraction must be between 0 and 1, not {self.unknown_fraction}")
        if not 10 <= self.bootstrap <= MAX_BOOTSTRAP:
            raise UsageError(f"--bootstrap must be between 10 and {MAX_BOOTSTRAP:,} resamples, not {self.bootstrap:,}")


@dataclass
class ErrorCase:
    """A query answered wrongly: its row, its true and voted labels, its k nearest rows and distances."""

    query: int
    truth: str
    predicted: str
    neighbours: list[int]
    distances: list[float]


@dataclass
class EncoderResult:
    """One encoder's figures (each a (value, low, high) triple or a plain number) and what the report draws."""

    name: str
    family: str
    figures: dict[str, Any]
    genuine: np.ndarray
    impostor: np.ndarray
    roc: metrics.Roc
    threshold: OperatingPoint | None
    classes: list[str]
    confusion: np.ndarray
    errors: list[ErrorCase] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "threshold": self.threshold.to_json() if self.threshold else None,
            **self.figures,
        }


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


@dataclass(frozen=True)
class Protocol:
    """Which rows are queries, which are the gallery, and whether a query must skip itself."""

    queries: np.ndarray
    gallery: np.ndarray
    leave_one_out: bool
    unknown_codes: np.ndarray
    mode: str


def choose_protocol(y: np.ndarray, classes: list[str], config: EvalConfig) -> Protocol:
    rng = np.random.default_rng(config.seed)
    rows = np.arange(len(y))
    unknown_codes = np.zeros(0, np.int64)
    if config.open_set:
        n_unknown = max(1, round(len(classes) * config.unknown_fraction))
        if len(classes) - n_unknown < 2:
            raise DataError(f"--open-set needs at least 3 labels (one kept out of the gallery); found {len(classes)}")
        unknown_codes = np.sort(rng.choice(len(classes), n_unknown, replace=False))
    is_unknown = np.isin(y, unknown_codes)
    known = rows[~is_unknown]
    if config.split is None:
        gallery, queries, loo = known, rows, True
        mode = "leave-one-out"
    else:
        held = []
        for c in np.unique(y[known]):
            members = rng.permutation(known[y[known] == c])
            if len(members) >= 2:
                held.append(members[: min(len(members) - 1, max(1, round(len(members) * config.split)))])
        queried = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
        gallery = np.setdiff1d(known, queried)
        queries = np.sort(np.concatenate([queried, rows[is_unknown]]))
        loo = False
        mode = f"split: {config.split:.0%} of each label's images as queries"
    if config.open_set:
        mode += f", open set ({len(unknown_codes)} of {len(classes)} labels unknown)"
    return Protocol(queries, gallery, loo, unknown_codes, mode)


def neighbours(z: np.ndarray, metric: str, protocol: Protocol, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, rows) of each query's ``width`` nearest gallery rows, the query itself excluded."""
    index = vectors.new_index(z.shape[1], metric)
    vectors.add_vectors(index, z[protocol.gallery], protocol.gallery.astype(np.int64), metric)
    extra = 1 if protocol.leave_one_out else 0
    take = min(width + extra, len(protocol.gallery))
    out_d, out_r = [], []
    for start in range(0, len(protocol.queries), 4096):
        q = protocol.queries[start : start + 4096]
        _, rows = vectors.search(index, z[q], take, metric)
        d = vectors.exact_distances(z[q], z[rows], metric)
        if extra:
            # Drop the query itself (or, if it is missing among exact ties, the farthest result).
            is_self = rows == q[:, None]
            drop = np.where(is_self.any(1), is_self.argmax(1), take - 1)
            keep = np.ones_like(rows, bool)
            keep[np.arange(len(q)), drop] = False
            rows = rows[keep].reshape(len(q), take - 1)
            d = d[keep].reshape(len(q), take - 1)
        order = np.argsort(d, axis=1, kind="stable")
        out_d.append(np.take_along_axis(d, order, 1))
        out_r.append(np.take_along_axis(rows, order, 1))
    return np.concatenate(out_d), np.concatenate(out_r)


def pair_distances(z: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        a, b = vectors.prepare(z[i], metric), vectors.prepare(z[j], metric)
        return 1.0 - np.einsum("nd,nd->n", a, b)
    return np.linalg.norm(z[i] - z[j], axis=1)


def score_encoder(
    name: str,
    family: str,
    z: np.ndarray,
    metric: str,
    y: np.ndarray,
    classes: list[str],
    protocol: Protocol,
    point: OperatingPoint | None,
    config: EvalConfig,
) -> EncoderResult:
    """Every figure for one encoder's embeddings ``z`` (n, d) of the labelled images ``y`` (n,)."""
    rng = np.random.default_rng(config.seed)
    q = protocol.queries
    gallery_counts = np.bincount(y[protocol.gallery], minlength=len(classes))
    relevant = gallery_counts[y[q]] - (1 if protocol.leave_one_out else 0)
    width = int(min(max(config.k, relevant.max(initial=0)), MAX_NEIGHBOURS))
    dist, rows = neighbours(z, metric, protocol, width)
    if rows.shape[1] == 0:
        raise DataError("the gallery is empty: every image was used as a query — lower --split")
    scores = metrics.retrieval_scores(y[q], y[rows], relevant, config.k)
    known = ~np.isin(y[q], protocol.unknown_codes)
    open_set = len(protocol.unknown_codes) > 0
    label_names = np.array(classes, dtype=object)
    k = min(config.k, rows.shape[1])
    predicted = [vote_label(list(label_names[y[r[:k]]]))[0] or "" for r in rows]
    correct = np.array([p == classes[t] for p, t in zip(predicted, y[q], strict=True)], np.float64)
    boot = config.bootstrap
    figures: dict[str, Any] = {
        "vote_accuracy": metrics.bootstrap_mean(correct[known], boot, rng),
        **{key: metrics.bootstrap_mean(value[known], boot, rng) for key, value in scores.items()},
    }
    # Verification over pairs of all labelled images.
    i, j, same = verification_pairs(y, np.random.default_rng(config.seed), config.max_genuine_pairs)
    if not same.any() or same.all():
        raise DataError("verification needs at least one label with two images and two labels")
    pd = pair_distances(z, i, j, metric)
    pairs = metrics.SortedPairs(pd, same)
    figures["roc_auc"] = metrics.bootstrap_pairs(pairs, metrics.auc_of, boot, rng)
    figures["eer"] = metrics.bootstrap_pairs(pairs, lambda roc: metrics.eer_of(roc)[0], boot, rng)
    figures["pairs"] = {"genuine": int(same.sum()), "impostor": int((~same).sum())}
    if point is not None:
        figures["far_at_threshold"] = metrics.bootstrap_pairs(
            pairs, lambda roc: metrics.at_threshold(roc, point.threshold)[0], boot, rng
        )
        figures["frr_at_threshold"] = metrics.bootstrap_pairs(
            pairs, lambda roc: metrics.at_threshold(roc, point.threshold)[1], boot, rng
        )
    if open_set and point is not None:
        open_pred = [UNKNOWN if d[0] > point.threshold else p for d, p in zip(dist, predicted, strict=True)]
        truth = [UNKNOWN if not kn else classes[t] for kn, t in zip(known, y[q], strict=True)]
        right = np.array([p == t for p, t in zip(open_pred, truth, strict=True)], np.float64)
        rejected = np.array([p == UNKNOWN for p in open_pred], np.float64)
        figures["open_set_accuracy"] = metrics.bootstrap_mean(right, boot, rng)
        figures["known_accuracy"] = metrics.bootstrap_mean(right[known], boot, rng)
        figures["unknown_rejected"] = metrics.bootstrap_mean(rejected[~known], boot, rng)
        predicted = open_pred
    # Confusion matrix over the known queries (plus an "unknown" column in the open set).
    columns = [*classes, UNKNOWN] if open_set else list(classes)
    col = {c: n for n, c in enumerate(columns)}
    confusion = np.zeros((len(classes), len(columns)), np.int64)
    for p, t, kn in zip(predicted, y[q], known, strict=True):
        if kn and p in col:
            confusion[t, col[p]] += 1
    errors = worst_errors(q, y, classes, predicted, known, dist, rows, k)
    return EncoderResult(name, family, figures, pd[same], pd[~same], pairs.roc(), point, classes, confusion, errors)


def worst_errors(
    q: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    predicted: Sequence[str],
    known: np.ndarray,
    dist: np.ndarray,
    rows: np.ndarray,
    k: int,
    limit: int = 8,
) -> list[ErrorCase]:
    """The known-label queries answered wrongly whose nearest neighbour was closest (most confidently wrong)."""
    wrong = [n for n in range(len(q)) if known[n] and predicted[n] != classes[y[q[n]]]]
    wrong.sort(key=lambda n: float(dist[n, 0]))
    return [
        ErrorCase(
            int(q[n]), classes[y[q[n]]], predicted[n], [int(r) for r in rows[n, :k]], [float(d) for d in dist[n, :k]]
        )
        for n in wrong[:limit]
    ]


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
