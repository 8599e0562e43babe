"""Every figure of one encoder on one protocol: neighbours, retrieval scores, verification pairs, open-set answers,
the worst errors; each with its bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simsearch import metrics, vectors
from simsearch.errors import DataError, option
from simsearch.evaluation.protocols import MAX_NEIGHBOURS, UNKNOWN, EvalConfig, Protocol
from simsearch.search import vote
from simsearch.training.sampling import verification_pairs
from simsearch.verification import OperatingPoint


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
    """Distances of the pairs of rows (``i``, ``j``) of ``z``: ``vectors.distances``, as ``verify`` measures."""
    return vectors.distances(z[i], z[j], metric)


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
    unfamiliar: np.ndarray | None = None,
) -> EncoderResult:
    """Every figure for one encoder's embeddings ``z`` (n, d) of the labelled images ``y`` (n,). ``unfamiliar``
    (n,) marks the images unlike the encoder's training images (``models.novelty``): their count among the queries
    is a figure, and in the open set such a query is answered "unknown", as ``query --open-set`` answers it."""
    rng = np.random.default_rng(config.seed)
    q = protocol.queries
    gallery_counts = np.bincount(y[protocol.gallery], minlength=len(classes))
    relevant = gallery_counts[y[q]] - (1 if protocol.leave_one_out else 0)
    width = int(min(max(config.k, relevant.max(initial=0)), MAX_NEIGHBOURS))
    dist, rows = neighbours(z, metric, protocol, width)
    if rows.shape[1] == 0:
        raise DataError("the gallery is empty: every image was used as a query", remedy=f"lower {option('split')}")
    scores = metrics.retrieval_scores(y[q], y[rows], relevant, config.k)
    known = ~np.isin(y[q], protocol.unknown_codes)
    open_set = len(protocol.unknown_codes) > 0
    label_names = np.array(classes, dtype=object)
    k = min(config.k, rows.shape[1])
    votes = [vote(list(label_names[y[r[:k]]]), d[:k], config.vote) for r, d in zip(rows, dist, strict=True)]
    predicted = [v.label or "" for v in votes]
    correct = np.array([p == classes[t] for p, t in zip(predicted, y[q], strict=True)], np.float64)
    boot = config.bootstrap
    figures: dict[str, Any] = {
        "vote_accuracy": metrics.bootstrap_mean(correct[known], boot, rng),
        **{key: metrics.bootstrap_mean(value[known], boot, rng) for key, value in scores.items()},
        # A tie is answered with the tied label met first (nearest first), and counted here.
        "vote_ties": int(sum(bool(v.tie) for v, kn in zip(votes, known, strict=True) if kn)),
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
    flagged = np.zeros(len(q), bool) if unfamiliar is None else np.asarray(unfamiliar, bool)[q]
    if unfamiliar is not None:
        figures["unfamiliar_queries"] = int(flagged.sum())
    if open_set and point is not None:
        open_pred = [
            UNKNOWN if d[0] > point.threshold or f else p for d, p, f in zip(dist, predicted, flagged, strict=True)
        ]
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
