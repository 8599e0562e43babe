"""Verification metrics against hand-computed values and explicit threshold sweeps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from simsearch import metrics

GENUINE = [0.1, 0.2, 0.3]
IMPOSTOR = [0.25, 0.5, 0.6, 0.7]


def data() -> tuple[np.ndarray, np.ndarray]:
    d = np.array(GENUINE + IMPOSTOR)
    return d, np.array([True] * 3 + [False] * 4)


def sweep(d: np.ndarray, same: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, FAR, FRR) at every distinct distance, accepting pairs with distance ≤ threshold."""
    return [(t, float((d[~same] <= t).mean()), float((d[same] > t).mean())) for t in np.unique(d)]


def test_eer_by_hand() -> None:
    eer, threshold, far, frr = metrics.equal_error_rate(*data())
    # At 0.25: one impostor of four accepted, one genuine of three rejected — the closest FAR and FRR get.
    assert threshold == pytest.approx(0.25)
    assert (far, frr) == pytest.approx((0.25, 1 / 3))
    assert eer == pytest.approx((0.25 + 1 / 3) / 2)


def test_eer_matches_an_explicit_sweep() -> None:
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(1, 0.3, 200), rng.normal(2, 0.4, 500)])
    same = np.arange(700) < 200
    _, threshold, far, frr = metrics.equal_error_rate(d, same)
    best = min(sweep(d, same), key=lambda row: abs(row[1] - row[2]))
    assert threshold == pytest.approx(best[0]) and (far, frr) == pytest.approx(best[1:])


def test_threshold_at_far() -> None:
    d, same = data()
    assert metrics.threshold_at_far(d, same, 0.0) == pytest.approx((0.2, 0.0, 1 / 3))
    assert metrics.threshold_at_far(d, same, 0.3) == pytest.approx((0.3, 0.25, 0.0))


def test_roc_auc_matches_scikit_learn_and_hand_count() -> None:
    d, same = data()
    # Of 12 genuine/impostor pairs, only (0.3, 0.25) is ordered wrongly: AUC = 11/12.
    assert metrics.roc_auc(d, same) == pytest.approx(11 / 12)
    assert metrics.roc_auc(d, same) == pytest.approx(roc_auc_score(same, -d))


def test_calibrate_record() -> None:
    record = metrics.calibrate(*data(), identities=3)
    assert record["value"] == pytest.approx(0.25) and record["operating_point"] == "eer"
    assert record["pairs"] == {"genuine": 3, "impostor": 4} and record["identities"] == 3
    assert record["far_1%"]["far"] <= 0.01 and record["far_0.1%"]["far"] <= 0.001


def tied_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping genuine and impostor distances, rounded so that many pairs tie."""
    rng = np.random.default_rng(seed)
    d = np.round(np.concatenate([rng.normal(1, 0.4, 300), rng.normal(1.8, 0.5, 900)]), 1)
    return d, np.arange(1200) < 300


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_equals_scikit_learn_with_ties(seed: int) -> None:
    from sklearn.metrics import roc_curve

    d, same = tied_data(seed)
    fpr, tpr, score_thresholds = roc_curve(same, -d, drop_intermediate=False)
    roc = metrics.roc_curve(d, same)
    np.testing.assert_allclose(roc.far, fpr, atol=1e-12)
    np.testing.assert_allclose(roc.tar, tpr, atol=1e-12)
    np.testing.assert_allclose(roc.thresholds[1:], -score_thresholds[1:], atol=1e-12)
    assert roc.thresholds[0] == -np.inf
    assert abs(metrics.roc_auc(d, same) - roc_auc_score(same, -d)) < 1e-12


def test_weighted_roc_equals_the_roc_of_repeated_pairs() -> None:
    d, same = tied_data()
    weights = np.random.default_rng(5).integers(0, 4, len(d))
    weights[0] = weights[-1] = 1  # keep both classes
    weighted = metrics.SortedPairs(d, same).roc(weights)
    repeated = metrics.roc_curve(np.repeat(d, weights), np.repeat(same, weights))
    # The weighted curve keeps the thresholds of zero-weight pairs; at every threshold both agree.
    for t, far, frr in zip(repeated.thresholds[1:], repeated.far[1:], repeated.frr[1:], strict=True):
        assert metrics.at_threshold(weighted, t) == pytest.approx((far, frr), abs=1e-12)
    assert metrics.auc_of(weighted) == pytest.approx(metrics.auc_of(repeated), abs=1e-12)


def test_at_threshold_counts_pairs_at_or_below_it() -> None:
    d, same = data()
    roc = metrics.roc_curve(d, same)
    for t in [0.0, 0.1, 0.22, 0.25, 0.3, 0.65, 1.0]:
        assert metrics.at_threshold(roc, t) == pytest.approx(((d[~same] <= t).mean(), (d[same] > t).mean()))


def test_calibration_stores_a_curve_and_a_match_probability() -> None:
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(1, 0.3, 2000), rng.normal(2, 0.3, 8000)])
    same = np.arange(10_000) < 2000
    record = metrics.calibrate(d, same, identities=50)
    curve = np.array(record["curve"])
    assert 2 < len(curve) <= metrics.CURVE_POINTS
    assert np.all(np.diff(curve[:, 0]) > 0) and np.all(np.diff(curve[:, 1]) >= 0) and np.all(np.diff(curve[:, 2]) <= 0)
    assert curve[-1, 1] == 1.0 and curve[-1, 2] == 0.0
    # Every kept row is a true operating point of the full curve.
    for t, far, frr in curve[::17]:
        assert (far, frr) == pytest.approx(((d[~same] <= t).mean(), (d[same] > t).mean()))
    model = record["probability"]
    p = metrics.match_probability(np.array([0.5, 1.5, 2.5]), model)
    # Equal-variance Gaussians at 1 and 2, classes weighted equally: P(match) is 1/2 midway and falls with distance.
    assert p[0] > 0.99 and p[2] < 0.01 and p[1] == pytest.approx(0.5, abs=0.05)


def test_retrieval_scores_by_hand() -> None:
    # Query label 0 with R = 2 relevant items; neighbours' labels: 0, 1, 0, 1.
    scores = metrics.retrieval_scores(np.array([0]), np.array([[0, 1, 0, 1]]), np.array([2]), k=3)
    assert scores["precision_at_1"][0] == 1.0
    assert scores["precision_at_k"][0] == pytest.approx(2 / 3)
    assert scores["recall_at_k"][0] == 1.0
    assert scores["r_precision"][0] == pytest.approx(1 / 2)
    assert scores["map_at_r"][0] == pytest.approx((1 / 1) / 2)  # only rank 1 is relevant within R = 2
    none = metrics.retrieval_scores(np.array([3]), np.array([[0, 1]]), np.array([0]), k=2)
    assert np.isnan(none["map_at_r"][0]) and none["precision_at_1"][0] == 0.0


def clustered(n_classes: int = 12, per_class: int = 15, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    return (centres[y] + rng.normal(0, 0.9, (len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("split", [None, 0.3])
def test_retrieval_metrics_equal_pytorch_metric_learning(split: float | None) -> None:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from simsearch.evaluation import EvalConfig, choose_protocol, neighbours

    z, y = clustered()
    classes = [str(c) for c in range(12)]
    protocol = choose_protocol(y, classes, EvalConfig(split=split))
    q, g = protocol.queries, protocol.gallery
    counts = np.bincount(y[g], minlength=12)
    relevant = counts[y[q]] - (1 if protocol.leave_one_out else 0)
    _, rows = neighbours(z, "l2", protocol, int(relevant.max()))
    ours = {k: float(np.nanmean(v)) for k, v in metrics.retrieval_scores(y[q], y[rows], relevant, 5).items()}
    calculator = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"))
    if protocol.leave_one_out:
        theirs = calculator.get_accuracy(torch.from_numpy(z), torch.from_numpy(y))
    else:
        theirs = calculator.get_accuracy(
            torch.from_numpy(z[q]), torch.from_numpy(y[q]), torch.from_numpy(z[g]), torch.from_numpy(y[g])
        )
    assert 0.3 < ours["precision_at_1"] < 0.99  # neither trivial nor hopeless
    assert abs(ours["precision_at_1"] - theirs["precision_at_1"]) < 1e-6
    assert abs(ours["r_precision"] - theirs["r_precision"]) < 1e-6
    assert abs(ours["map_at_r"] - theirs["mean_average_precision_at_r"]) < 1e-6


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.7
    large = rng.random(5000) < 0.7
    value, low, high = metrics.bootstrap_mean(small, 500, np.random.default_rng(1))
    assert value == pytest.approx(small.mean()) and low < value < high
    v2, low2, high2 = metrics.bootstrap_mean(large, 500, np.random.default_rng(1))
    assert low2 < v2 < high2 and (high2 - low2) < (high - low) / 5
    # The interval is seeded: the same seed gives the same interval.
    assert metrics.bootstrap_mean(small, 500, np.random.default_rng(1)) == (value, low, high)
    assert np.isnan(metrics.bootstrap_mean(np.array([np.nan]), 20, rng)[0])


def test_bootstrap_pairs_brackets_auc_and_eer() -> None:
    d, same = tied_data()
    pairs = metrics.SortedPairs(d, same)
    auc = metrics.bootstrap_pairs(pairs, metrics.auc_of, 300, np.random.default_rng(0))
    eer = metrics.bootstrap_pairs(pairs, lambda roc: metrics.eer_of(roc)[0], 300, np.random.default_rng(0))
    assert auc[0] == pytest.approx(roc_auc_score(same, -d))
    assert auc[1] < auc[0] < auc[2] and eer[1] < eer[0] < eer[2]
    assert 0 < auc[2] - auc[1] < 0.1


def separable() -> tuple[np.ndarray, np.ndarray]:
    """Genuine distances in [0, 1], impostors in [2, 3]: any threshold in between makes no error."""
    rng = np.random.default_rng(0)
    return np.r_[rng.uniform(0, 1, 200), rng.uniform(2, 3, 800)], np.arange(1000) < 200


def test_match_probability_is_not_saturated_on_separable_pairs() -> None:
    d, same = separable()
    slopes = []
    for prior_count in (None, 21, 4):
        model = metrics.fit_match_probability(d, same, prior_count)
        assert np.isfinite(model["slope"]) and -50 < model["slope"] < 0
        slopes.append(model["slope"])
        p = metrics.match_probability(d, model)
        # Platt's targets pull the genuine pairs' probability to about (m + 1)/(m + 2), not to 1.
        m = 200 if prior_count is None else prior_count
        assert (m + 1) / (m + 2) - 0.03 < p[same].mean() < (m + 1) / (m + 2) + 0.01
        assert p[d > 1.0].max() < 0.6 and p[d < 2.0].min() > 0.4  # the gap is uncertain, 0.5 near its middle
    assert slopes[0] < slopes[1] < slopes[2]  # the fewer the identities, the less certain
    at_21 = metrics.match_probability(np.array([0.0, 3.0]), metrics.fit_match_probability(d, same, 21))
    assert 0.95 < at_21[0] < 0.999 and 0.001 < at_21[1] < 0.05  # shown with 3 decimals: not 1.000 and 0.000


def test_match_probability_is_one_half_at_the_threshold_in_use() -> None:
    d, same = tied_data()
    model = metrics.fit_match_probability(d, same, prior_count=30)
    for threshold in (0.8, 1.37, 2.5):
        assert metrics.match_probability(threshold, model, threshold) == 0.5
        p = metrics.match_probability(np.array([threshold - 0.1, threshold + 0.1]), model, threshold)
        assert p[0] > 0.5 > p[1]
        # It is the posterior under the prior that makes this threshold the break-even point.
        prior = metrics.implied_prior(model, threshold)
        logit = model["intercept"] + model["slope"] * 1.1 + np.log(prior / (1 - prior))
        assert metrics.match_probability(1.1, model, threshold) == pytest.approx(1 / (1 + np.exp(-logit)))
    assert metrics.implied_prior(model, 0.8) < metrics.implied_prior(model, 2.5)  # a looser threshold: more matches


def test_identity_bootstrap_resamples_identities_not_pairs() -> None:
    rng = np.random.default_rng(0)
    n = 12
    # Each identity's genuine distances share an offset: pairs of one identity are not independent.
    offset = rng.normal(0, 0.4, n)
    gi = np.repeat(np.arange(n), 15)
    genuine = 1 + offset[gi] + rng.normal(0, 0.05, len(gi))
    a, b = rng.integers(0, n, 2000), rng.integers(0, n, 2000)
    keep = a != b
    a, b = a[keep], b[keep]
    impostor = 2 + offset[a] + offset[b] + rng.normal(0, 0.05, len(a))
    d = np.r_[genuine, impostor]
    same = np.r_[np.ones(len(gi), bool), np.zeros(len(a), bool)]
    first, second = np.r_[gi, a], np.r_[gi, b]
    threshold = 1.6
    far = float((impostor <= threshold).mean())
    (far_low, far_high), (frr_low, frr_high) = metrics.identity_bootstrap(
        d, same, first, second, threshold, 500, np.random.default_rng(1)
    )
    assert far_low <= far <= far_high and frr_low <= float((genuine > threshold).mean()) <= frr_high
    # Wider than resampling the pairs would say, which treats thousands of correlated pairs as independent.
    pairs = metrics.bootstrap_pairs(
        metrics.SortedPairs(d, same), lambda roc: metrics.at_threshold(roc, threshold)[0], 500, np.random.default_rng(1)
    )
    assert far_high - far_low > 2 * (pairs[2] - pairs[1])
