"""The field's metrics, in numpy: verification (ROC, AUC, EER, thresholds at a target FAR, a calibrated match
probability) and retrieval (precision@1, precision@k, recall@k, R-precision, MAP@R), plus bootstrap intervals.

Verification works on pair distances (lower is closer): a pair is accepted as "same" when its distance is at
most the threshold. FAR is the share of impostor pairs accepted, FRR the share of genuine pairs rejected.
The tests cross-check these against scikit-learn and pytorch-metric-learning's ``AccuracyCalculator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Operating points stored with every calibration, beside the EER point.
#: The distances simsearch measures embeddings by: Euclidean (``l2``) and 1 − cosine similarity (``cosine``).
METRICS = ("l2", "cosine")
FAR_TARGETS = (("far_1%", 0.01), ("far_0.1%", 0.001))
#: Most points of the ROC curve kept in ``encoder.json`` (enough to pick a threshold for any FAR).
CURVE_POINTS = 256


@dataclass(frozen=True)
class Roc:
    """Every distinct operating point, from accepting nothing to accepting everything.

    ``thresholds[0]`` is -inf (nothing accepted: FAR 0, FRR 1); each later one is a distinct pair distance.
    """

    thresholds: np.ndarray
    far: np.ndarray
    frr: np.ndarray

    @property
    def tar(self) -> np.ndarray:
        return 1.0 - self.frr


class SortedPairs:
    """Pair distances sorted once, so that weighted ROC curves (bootstrap resamples) cost O(n) each."""

    def __init__(self, distances: np.ndarray, same: np.ndarray) -> None:
        distances = np.asarray(distances, np.float64)
        same = np.asarray(same, bool)
        if distances.shape != same.shape or distances.ndim != 1:
            raise ValueError("distances and same must be 1-d arrays of one length")
        if not same.any() or same.all():
            raise ValueError("verification metrics need both genuine and impostor pairs")
        self.order = np.argsort(distances, kind="stable")
        self.distances = distances[self.order]
        self.same = same[self.order]
        # The last position of each run of equal distances: thresholds sit there.
        self.ends = np.flatnonzero(np.r_[self.distances[1:] != self.distances[:-1], True])

    def roc(self, weights: np.ndarray | None = None) -> Roc:
        """The ROC curve; ``weights`` (in the original pair order) counts each pair that many times."""
        w = np.ones(len(self.same)) if weights is None else np.asarray(weights, np.float64)[self.order]
        genuine = np.cumsum(w * self.same)[self.ends]
        impostor = np.cumsum(w * ~self.same)[self.ends]
        total_genuine, total_impostor = genuine[-1], impostor[-1]
        if total_genuine == 0 or total_impostor == 0:
            raise ValueError("verification metrics need both genuine and impostor pairs")
        return Roc(
            thresholds=np.r_[-np.inf, self.distances[self.ends]],
            far=np.r_[0.0, impostor / total_impostor],
            frr=np.r_[1.0, 1.0 - genuine / total_genuine],
        )


def roc_curve(distances: np.ndarray, same: np.ndarray) -> Roc:
    return SortedPairs(distances, same).roc()


def auc_of(roc: Roc) -> float:
    """Area under the ROC curve (TAR against FAR), by the trapezoid rule: ties count half."""
    tar = roc.tar
    return float(np.sum(np.diff(roc.far) * (tar[1:] + tar[:-1]) / 2))


def eer_of(roc: Roc) -> tuple[float, float, float, float]:
    """(eer, threshold, far, frr) at the operating point where FAR and FRR are closest."""
    i = 1 + int(np.argmin(np.abs(roc.far[1:] - roc.frr[1:])))
    return float((roc.far[i] + roc.frr[i]) / 2), float(roc.thresholds[i]), float(roc.far[i]), float(roc.frr[i])


def at_threshold(roc: Roc, threshold: float) -> tuple[float, float]:
    """(far, frr) when pairs with distance ≤ ``threshold`` are accepted."""
    i = int(np.searchsorted(roc.thresholds, threshold, side="right")) - 1
    return float(roc.far[i]), float(roc.frr[i])


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    return auc_of(roc_curve(distances, same))


def equal_error_rate(distances: np.ndarray, same: np.ndarray) -> tuple[float, float, float, float]:
    """(eer, threshold, far, frr) at the operating point where FAR and FRR are closest."""
    return eer_of(roc_curve(distances, same))


def threshold_at_far(distances: np.ndarray, same: np.ndarray, target: float) -> tuple[float, float, float]:
    """(threshold, far, frr): the most accepting threshold whose FAR is at most ``target``."""
    return point_at_far(roc_curve(distances, same), target)


def point_at_far(roc: Roc, target: float) -> tuple[float, float, float]:
    ok = np.flatnonzero(roc.far[1:] <= target)
    i = 1 + int(ok[-1]) if len(ok) else 1
    return float(roc.thresholds[i]), float(roc.far[i]), float(roc.frr[i])


def thin_curve(roc: Roc, points: int = CURVE_POINTS) -> list[list[float]]:
    """At most ``points`` rows ``[threshold, far, frr]`` of the curve, denser where FAR is small (log-spaced),
    always keeping the first point with FAR > 0 and the point where everything is accepted."""
    finite = np.arange(1, len(roc.thresholds))
    if len(finite) > points:
        positive = roc.far[finite] > 0
        targets = np.geomspace(max(roc.far[finite][positive].min(), 1e-9), 1.0, points)
        picks = {int(finite[np.searchsorted(roc.far[finite], t, side="right") - 1]) for t in targets}
        picks |= {int(finite[0]), int(finite[-1])}
        finite = np.array(sorted(i for i in picks if i >= 1))
    return [[float(roc.thresholds[i]), float(roc.far[i]), float(roc.frr[i])] for i in finite]


def fit_match_probability(
    distances: np.ndarray, same: np.ndarray, prior_count: float | None = None
) -> dict[str, float]:
    """A logistic model P(match | distance) = σ(intercept + slope · distance) fitted on labelled pairs, genuine
    and impostor pairs weighted equally (so ``prior`` 0.5: a match and a non-match equally likely a priori).

    Platt's targets (Platt, 1999) instead of 0 and 1: (m₊ + 1)/(m₊ + 2) for genuine pairs and 1/(m₋ + 2) for
    impostors, where m₊ and m₋ count the independent evidence: the pairs by default, or ``prior_count`` (the
    number of identities the pairs come from, as pairs of one identity are not independent). They are a prior
    (Laplace's rule of succession) that keeps the slope finite when the pairs are separable, where a plain
    maximum-likelihood fit is not defined (slope → -∞, every answer 0 or 1): the genuine pairs' probabilities
    then average about (m₊ + 1)/(m₊ + 2), and the fewer the identities the flatter the curve. Fitted by Newton's
    method (the loss is strictly convex)."""
    d = np.asarray(distances, np.float64)
    same = np.asarray(same, bool)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a match probability needs both genuine and impostor pairs")
    m_pos, m_neg = (n_pos, n_neg) if prior_count is None else (prior_count, prior_count)
    target = np.where(same, (m_pos + 1) / (m_pos + 2), 1 / (m_neg + 2))
    weight = np.where(same, 0.5 / n_pos, 0.5 / n_neg)
    centre, scale = float(d.mean()), float(d.std()) or 1.0
    x = np.column_stack([np.ones_like(d), (d - centre) / scale])

    def loss(beta: np.ndarray) -> float:
        z = x @ beta
        return float(np.sum(weight * (np.logaddexp(0, z) - target * z)))

    beta = np.zeros(2)
    for _ in range(100):
        p = 0.5 * (1 + np.tanh(x @ beta / 2))  # σ(z), without overflow
        gradient = x.T @ (weight * (p - target))
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        size, before = 1.0, loss(beta)
        while loss(beta - size * step) > before + 1e-15 and size > 1e-6:  # damped: never uphill
            size /= 2
        beta = beta - size * step
        if np.max(np.abs(size * step)) < 1e-10:
            break
    slope = beta[1] / scale
    return {"intercept": float(beta[0] - slope * centre), "slope": float(slope), "prior": 0.5}


def match_probability(distance: float | np.ndarray, model: dict[str, float], threshold: float | None = None) -> Any:
    """P(match | distance) under ``model`` (``fit_match_probability``). With ``threshold``, under the prior at
    which that threshold is the break-even decision: the intercept shifted so that P = 0.5 exactly there,
    and so the probability agrees with the verdict at the threshold in use (``implied_prior`` gives that prior)."""
    d = np.asarray(distance, np.float64)
    z = model["slope"] * (d - threshold) if threshold is not None else model["intercept"] + model["slope"] * d
    return 0.5 * (1 + np.tanh(z / 2))  # σ(z), without overflow


def implied_prior(model: dict[str, float], threshold: float) -> float:
    """The prior probability of a match at which ``threshold`` is the break-even point of ``model`` (deciding
    'match' exactly when P(match | distance) ≥ 0.5): the prior ``match_probability(..., threshold)`` assumes."""
    logit = -(model["intercept"] + model["slope"] * threshold)
    base = float(model.get("prior", 0.5))
    logit += math.log(base / (1 - base))
    return float(1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, logit)))))


def identity_bootstrap(
    distances: np.ndarray,
    same: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    threshold: float,
    resamples: int,
    rng: np.random.Generator,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% percentile intervals ((far low, high), (frr low, high)) of the FAR and FRR at ``threshold`` when the
    *identities* are resampled with replacement (pairs of one identity are not independent: the interval is as
    wide as the number of identities makes it). ``first``/``second`` are the identity of each pair's two sides;
    an identity drawn c times counts its own pairs c times and a pair with another identity drawn c' times c·c'."""
    d = np.asarray(distances, np.float64)
    same = np.asarray(same, bool)
    ids, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    a, b = inverse[: len(d)], inverse[len(d) :]
    n = len(ids)
    accepted = (d <= threshold).astype(np.float64)
    own = a == b  # genuine pairs and skilled forgeries: one identity
    gen_total = np.bincount(a[same], minlength=n).astype(np.float64)
    gen_rejected = np.bincount(a[same], weights=1 - accepted[same], minlength=n)
    imp_own = ~same & own
    own_total = np.bincount(a[imp_own], minlength=n).astype(np.float64)
    own_accepted = np.bincount(a[imp_own], weights=accepted[imp_own], minlength=n)
    cross = ~same & ~own
    cross_total = np.zeros((n, n))
    cross_accepted = np.zeros((n, n))
    np.add.at(cross_total, (a[cross], b[cross]), 1.0)
    np.add.at(cross_accepted, (a[cross], b[cross]), accepted[cross])
    far: list[float] = []
    frr: list[float] = []
    for start in range(0, resamples, 100):
        draws = min(100, resamples - start)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(draws)]).astype(float)
        imp_num = ((counts @ cross_accepted) * counts).sum(1) + counts @ own_accepted
        imp_den = ((counts @ cross_total) * counts).sum(1) + counts @ own_total
        gen_num, gen_den = counts @ gen_rejected, counts @ gen_total
        far.extend(imp_num[imp_den > 0] / imp_den[imp_den > 0])
        frr.extend(gen_num[gen_den > 0] / gen_den[gen_den > 0])

    def interval(values: list[float]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)

    return interval(far), interval(frr)


def calibrate(
    distances: np.ndarray, same: np.ndarray, identities: int, prior_count: float | None = None
) -> dict[str, Any]:
    """The threshold record stored in ``encoder.json``: the EER point, the points for FAR = 1% and 0.1%, a
    thinned ROC curve (to pick a threshold for any other FAR) and the match-probability model (``prior_count``:
    see ``fit_match_probability``)."""
    roc = roc_curve(distances, same)
    eer, threshold, far, frr = eer_of(roc)
    record: dict[str, Any] = {
        "value": threshold,
        "operating_point": "eer",
        "eer": eer,
        "far": far,
        "frr": frr,
        "roc_auc": auc_of(roc),
        "pairs": {"genuine": int(np.sum(same)), "impostor": int(np.sum(~np.asarray(same, bool)))},
        "identities": identities,
    }
    for name, target in FAR_TARGETS:
        t, f, r = point_at_far(roc, target)
        record[name] = {"value": t, "far": f, "frr": r}
    record["probability"] = fit_match_probability(distances, same, prior_count)
    record["curve"] = thin_curve(roc)
    return record


# --- retrieval -------------------------------------------------------------------------------------------------


def retrieval_scores(
    query_labels: np.ndarray, neighbour_labels: np.ndarray, relevant: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-query retrieval scores from the labels of each query's neighbours, nearest first.

    ``neighbour_labels`` (q, K) excludes the query itself; ``relevant`` (q,) is R, the number of gallery
    items sharing the query's label. Scores: ``precision_at_1``, ``precision_at_k`` (share of the k nearest
    with the query's label), ``recall_at_k`` (1 when any of the k nearest has it), ``r_precision``
    (precision among the R nearest) and ``map_at_r`` (Musgrave et al.: the mean over the R nearest of the
    precision at each relevant rank, divided by R). Queries with R = 0 get NaN for the R-based scores;
    when K < R the R-based scores only see the K nearest (so pass K ≥ max R for exact values).
    """
    hits = np.asarray(neighbour_labels) == np.asarray(query_labels)[:, None]
    width = hits.shape[1]
    if width == 0:
        raise ValueError("no neighbours to score")
    ranks = np.arange(1, width + 1)
    within_r = ranks[None, :] <= relevant[:, None]
    cumulative = np.cumsum(hits, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(relevant > 0, relevant, np.nan)
        map_at_r = (cumulative / ranks * hits * within_r).sum(1) / r
        r_precision = (hits * within_r).sum(1) / r
    top = hits[:, : min(k, width)]
    return {
        "precision_at_1": hits[:, 0].astype(np.float64),
        "precision_at_k": top.mean(1),
        "recall_at_k": top.any(1).astype(np.float64),
        "r_precision": r_precision,
        "map_at_r": map_at_r,
    }


# --- bootstrap --------------------------------------------------------------------------------------------------


def bootstrap_mean(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the non-NaN ``values`` and its percentile 95% bootstrap interval."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    means = np.empty(resamples)
    for b in range(resamples):
        means[b] = values[rng.integers(0, len(values), len(values))].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def bootstrap_pairs(
    pairs: SortedPairs, statistic: Callable[[Roc], float], resamples: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(value, low, high): ``statistic`` of the ROC curve and its 95% interval over pairs drawn with
    replacement (genuine and impostor pairs resampled separately, so every resample has both)."""
    value = statistic(pairs.roc())
    genuine = np.flatnonzero(pairs.same)
    impostor = np.flatnonzero(~pairs.same)
    n = len(pairs.same)
    stats = np.empty(resamples)
    for b in range(resamples):
        counts = np.bincount(rng.choice(genuine, len(genuine)), minlength=n) + np.bincount(
            rng.choice(impostor, len(impostor)), minlength=n
        )
        weights = np.empty(n)
        weights[pairs.order] = counts  # counts are in sorted order; weights go in original order
        stats[b] = statistic(pairs.roc(weights))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(value), float(low), float(high)
