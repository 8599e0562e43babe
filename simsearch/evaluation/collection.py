"""A folder of labelled queries against an existing collection (``eval QUERIES --name C --gallery collection``).

Each query image is answered as ``query`` answers it (``Searcher.query_files``: the collection's encoder, its
index, exact distances, the vote), except that an image the collection already holds (the same content) is left
out of its own answer: a query never finds itself. Figures, each with its 95% bootstrap interval over the queries:
the k-NN vote accuracy, the 1-NN accuracy (the nearest neighbour's label is the query's) and precision@k (the
share of the k nearest with the query's label); how many votes tied; and one row per label. A query whose label
the collection does not hold can never be answered right: it is counted, and a note says how many there are.

    searcher = Searcher(Collection(Path("indexes/photos")))
    report = evaluate_collection(Path("queries"), searcher, k=9)
    report.figures["vote_accuracy"]  # (value, low, high)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import metrics
from simsearch.errors import DataError, ImageError, UsageError, option
from simsearch.evaluation.protocols import MAX_BOOTSTRAP
from simsearch.io import Skipped, find_images
from simsearch.progress import Progress, no_progress
from simsearch.search import DEFAULT_VOTE, QueryResult, Searcher, check_vote, k_note

#: Queries answered per call of ``query_files`` (a progress step).
CHUNK = 1024


@dataclass
class LabelScore:
    """One label's queries: how many, their vote and 1-NN accuracy, and how many images of the label the
    collection holds (0: it cannot be answered right)."""

    label: str
    queries: int
    vote_accuracy: float
    nn1_accuracy: float
    in_collection: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CollectionEvalReport:
    """What ``evaluate_collection`` measured. ``figures``: ``vote_accuracy``, ``nn1_accuracy``, ``precision_at_k``
    as (value, low, high), and the counts ``vote_ties`` and ``unfamiliar_queries`` (None: the encoder cannot
    tell)."""

    folder: str
    collection: str
    k: int
    vote: str
    queries: int
    labels: int
    gallery: int
    figures: dict[str, Any]
    per_label: list[LabelScore]
    skipped: list[Skipped]
    unlabelled: int
    left_out: int  # queries the collection holds (same content), each left out of its own answer
    notes: list[str] = field(default_factory=list)
    results: list[QueryResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "collection": self.collection,
            "gallery": "collection",
            "k": self.k,
            "vote": self.vote,
            "queries": self.queries,
            "labels": self.labels,
            "gallery_images": self.gallery,
            "figures": self.figures,
            "per_label": [row.to_json() for row in self.per_label],
            "skipped": len(self.skipped),
            "unlabelled": self.unlabelled,
            "left_out": self.left_out,
            "notes": self.notes,
        }


def evaluate_collection(
    folder: Path,
    searcher: Searcher,
    k: int = 9,
    vote: str = DEFAULT_VOTE,
    bootstrap: int = 200,
    seed: int = 0,
    progress: Progress = no_progress,
) -> CollectionEvalReport:
    """Score ``searcher``'s collection on the labelled query images under ``folder`` (one sub-folder per label):
    vote accuracy, 1-NN accuracy and precision@k with 95% bootstrap intervals, ties, and a row per label.
    Unreadable files are skipped and listed; ``DataError`` when no labelled image can be read."""
    check_vote(vote)
    if not 10 <= bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"{option('bootstrap')} must be between 10 and {MAX_BOOTSTRAP:,} resamples, not {bootstrap:,}")
    if k < 1:
        raise UsageError(f"{option('k')} must be at least 1, not {k}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("no such folder", file=folder, remedy="pass a folder of images in one sub-folder per label")
    entries, skipped = find_images(folder)
    labelled = [e for e in entries if e.label is not None]
    if not labelled:
        raise DataError("no labelled images", file=folder, remedy="put each label's images in its own sub-folder")
    truth_of = {e.rel: str(e.label) for e in labelled}
    unreadable: list[ImageError] = []
    results: list[QueryResult] = []
    for start in range(0, len(labelled), CHUNK):
        chunk = labelled[start : start + CHUNK]
        results += searcher.query_files(
            [e.path for e in chunk],
            k,
            on_error=unreadable.append,
            names=[e.rel for e in chunk],
            vote=vote,
            leave_out_indexed=True,
        )
        progress("answering queries", min(start + CHUNK, len(labelled)), len(labelled))
    skipped += [Skipped(str(error.file), error.reason()) for error in unreadable]
    if not results:
        raise DataError("none of the labelled images could be read", file=folder, remedy="see the skipped files")
    truth = [truth_of[r.query] for r in results]
    vote_right = np.array([r.vote == t for r, t in zip(results, truth, strict=True)], np.float64)
    nn1_right = np.array(
        [bool(r.neighbours) and r.neighbours[0].label == t for r, t in zip(results, truth, strict=True)], np.float64
    )
    precision = np.array(
        [
            np.mean([n.label == t for n in r.neighbours]) if r.neighbours else 0.0
            for r, t in zip(results, truth, strict=True)
        ],
        np.float64,
    )
    rng = np.random.default_rng(seed)
    flags = [r.unfamiliar for r in results]
    figures: dict[str, Any] = {
        "vote_accuracy": metrics.bootstrap_mean(vote_right, bootstrap, rng),
        "nn1_accuracy": metrics.bootstrap_mean(nn1_right, bootstrap, rng),
        "precision_at_k": metrics.bootstrap_mean(precision, bootstrap, rng),
        "vote_ties": sum(bool(r.tie) for r in results),
        "unfamiliar_queries": None if any(f is None for f in flags) else sum(bool(f) for f in flags),
    }
    held = _label_counts(searcher)
    per_label = []
    for label in sorted(set(truth)):
        mine = np.array([t == label for t in truth])
        per_label.append(
            LabelScore(
                label,
                int(mine.sum()),
                float(vote_right[mine].mean()),
                float(nn1_right[mine].mean()),
                held.get(label, 0),
            )
        )
    notes = []
    note = k_note(k, searcher.count)
    if note:
        notes.append(note)
    missing = [row for row in per_label if not row.in_collection]
    if missing:
        count = sum(row.queries for row in missing)
        notes.append(
            f"{count} of {len(results)} queries have a label the collection does not hold "
            f"({', '.join(row.label for row in missing[:5])}{' …' if len(missing) > 5 else ''}): "
            "they cannot be answered right, and count as wrong"
        )
    left_out = sum(1 for r in results if r.left_out)
    if left_out:
        notes.append(
            f"{left_out} of {len(results)} queries are images of the collection (the same content): each was left "
            "out of its own answer"
        )
    if figures["vote_ties"]:
        notes.append(
            f"{figures['vote_ties']} votes tied: each was answered with the tied label met first (nearest first)"
        )
    return CollectionEvalReport(
        folder=str(folder),
        collection=str(searcher.collection.path),
        k=k,
        vote=vote,
        queries=len(results),
        labels=len(per_label),
        gallery=searcher.count,
        figures=figures,
        per_label=per_label,
        skipped=skipped,
        unlabelled=len(entries) - len(labelled),
        left_out=left_out,
        notes=notes,
        results=results,
    )


def _label_counts(searcher: Searcher) -> dict[str, int]:
    """How many images of each label the collection holds."""
    import pyarrow.compute as pc

    counts = pc.value_counts(searcher.meta.column("label")).to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in counts if c["values"] is not None}
