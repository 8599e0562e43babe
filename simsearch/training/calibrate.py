"""Threshold calibration on held-out labelled pairs (the verification threshold stored in ``encoder.json``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from simsearch import metrics, vectors
from simsearch.models.encoder import Encoder
from simsearch.training.sampling import Split, scoring_pairs


def calibrate_threshold(encoder: Encoder, images: np.ndarray, y: np.ndarray, split: Split) -> dict[str, Any] | None:
    """EER threshold (and those for FAR = 1% and 0.1%) on pairs of held-out images, when they are labelled.
    Distances are the encoder's metric's (``vectors.distances``): the ones ``verify`` and ``eval`` measure."""
    y_val = y[split.val]
    pairs = scoring_pairs(y_val, np.random.default_rng(0))
    if pairs is None:
        return None
    i, j, same = pairs
    z = encoder.embed(images[split.val])
    distances = vectors.distances(z[i], z[j], encoder.metric)
    record = metrics.calibrate(distances, same, identities=len(np.unique(y_val[y_val >= 0])))
    record["split"] = split.mode
    return record
