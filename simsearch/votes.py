"""How k neighbours vote for a label: one vote each (``majority``), or weighted by where each lies between the
nearest and the k-th (``weighted``, Dudani 1976, the default: ``bench/votes.py``). Used by ``query``, ``eval``,
the service, and ``index``'s check against the baselines, so that every accuracy simsearch prints is of one vote."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simsearch.errors import UsageError, option

#: How the k neighbours vote: each one vote, or each weighted by its distance (``distance_weights``).
VOTES = ("majority", "weighted")

#: The vote ``query`` and ``eval`` use unless told otherwise: chosen by measuring vote accuracy on Fashion-MNIST,
#: MNIST and Omniglot with the default encoder and raw pixels at k = 1, 5, 9, 15 (``bench/votes.py``).
DEFAULT_VOTE = "weighted"


@dataclass(frozen=True)
class Vote:
    """What k neighbours vote for: the label (None when none of them is labelled), its share of the votes (of
    the weight, for a weighted vote; unlabelled neighbours count in the denominator), how many neighbours have
    each label, and the labels tied for first place (empty when one label leads). On a tie, ``label`` is the
    tied label met first, nearest first."""

    label: str | None
    share: float
    counts: dict[str, int]
    tie: tuple[str, ...] = ()
    rule: str = "majority"
    #: Each label's summed weight (a weighted vote), largest first; None for a majority vote.
    weights: dict[str, float] | None = None


def check_vote(rule: str) -> None:
    """``UsageError`` for a vote rule that is not one of ``VOTES``."""
    if rule not in VOTES:
        raise UsageError(f"{option('vote')} must be one of {', '.join(VOTES)}, not {rule!r}")


def distance_weights(distances: Sequence[float] | np.ndarray) -> np.ndarray:
    """A weighted vote's weight of each of the k neighbours (distances nearest first): Dudani's (1976)
    (d_k − d) / (d_k − d_1), so the nearest weighs 1, the k-th 0, and the others in proportion to where they lie
    between the two; all 1 when the k are equally far. It depends on the distances' spread, not their scale:
    1 / distance barely differs from a majority vote where every distance is about the same, as in high
    dimensions (``bench/votes.py``)."""
    d = np.asarray(distances, np.float64)
    if len(d) == 0:
        return d
    span = d[-1] - d[0]
    if not span > 0:
        return np.ones_like(d)
    return np.clip((d[-1] - d) / span, 0.0, 1.0)


def tally(labels: Sequence[str | None], weights: Sequence[float] | np.ndarray, rule: str = "weighted") -> Vote:
    """The vote of neighbours (nearest first) with these ``labels`` and ``weights``: the label of largest summed
    weight, its share of all the weight, the tie (labels whose weight equals the largest, to a relative 1e-9)."""
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return Vote(None, 0.0, {}, rule=rule, weights=None if rule == "majority" else {})
    score: dict[str, float] = {}
    for label, weight in zip(labels, weights, strict=True):
        if label is not None:
            score[label] = score.get(label, 0.0) + float(weight)
    top = max(score.values())
    tied = [label for label in score if math.isclose(score[label], top, rel_tol=1e-9, abs_tol=0.0)]  # nearest first
    total = float(np.sum(weights))
    share = score[tied[0]] / total if total > 0 else 0.0
    weights_out = None if rule == "majority" else dict(sorted(score.items(), key=lambda item: -item[1]))
    tie = tuple(tied) if len(tied) > 1 else ()
    return Vote(tied[0], share, dict(counts.most_common()), tie, rule, weights_out)


def vote(
    labels: Sequence[str | None], distances: Sequence[float] | np.ndarray | None = None, rule: str = "majority"
) -> Vote:
    """The vote of neighbours with these ``labels`` and ``distances`` (nearest first) under ``rule``: ``majority``
    (one vote each) or ``weighted`` (``distance_weights``). Unlabelled neighbours count in the denominator."""
    check_vote(rule)
    if rule == "majority":
        return tally(labels, np.ones(len(labels)), "majority")
    if distances is None or len(distances) != len(labels):
        raise ValueError("a weighted vote needs one distance per label")
    return tally(labels, distance_weights(distances), "weighted")
