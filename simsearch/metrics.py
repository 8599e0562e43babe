"""Verification metrics on distances (lower is closer): ROC AUC, EER, and thresholds at a target FAR.

A pair is accepted as "same" when its distance is at most the threshold. FAR is the share of impostor pairs
accepted, FRR the share of genuine pairs rejected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _roc(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, frr, thresholds) over every distinct operating point, thresholds increasing in strictness."""
    fpr, tpr, score_thresholds = roc_curve(
        same.astype(int), -np.asarray(distances, np.float64), drop_intermediate=False
    )
    return fpr, 1.0 - tpr, -score_thresholds


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    return float(roc_auc_score(same.astype(int), -np.asarray(distances, np.float64)))


def equal_error_rate(distances: np.ndarray, same: np.ndarray) -> tuple[float, float, float, float]:
    """(eer, threshold, far, frr) at the operating point where FAR and FRR are closest."""
    far, frr, thresholds = _roc(distances, same)
    finite = np.isfinite(thresholds)
    far, frr, thresholds = far[finite], frr[finite], thresholds[finite]
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(thresholds[i]), float(far[i]), float(frr[i])


def threshold_at_far(distances: np.ndarray, same: np.ndarray, target: float) -> tuple[float, float, float]:
    """(threshold, far, frr): the most accepting threshold whose FAR is at most ``target``."""
    far, frr, thresholds = _roc(distances, same)
    ok = np.flatnonzero((far <= target) & np.isfinite(thresholds))
    i = int(ok[-1]) if len(ok) else 0
    return float(thresholds[i]), float(far[i]), float(frr[i])


def calibrate(distances: np.ndarray, same: np.ndarray, identities: int) -> dict[str, Any]:
    """The threshold record stored in ``encoder.json``: the EER point and the points for FAR = 1% and 0.1%."""
    eer, threshold, far, frr = equal_error_rate(distances, same)
    record: dict[str, Any] = {
        "value": threshold,
        "operating_point": "eer",
        "eer": eer,
        "far": far,
        "frr": frr,
        "roc_auc": roc_auc(distances, same),
        "pairs": {"genuine": int(same.sum()), "impostor": int((~same).sum())},
        "identities": identities,
    }
    for name, target in (("far_1%", 0.01), ("far_0.1%", 0.001)):
        t, f, r = threshold_at_far(distances, same, target)
        record[name] = {"value": t, "far": f, "frr": r}
    return record
