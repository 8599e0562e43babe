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
