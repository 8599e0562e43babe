"""Labelled training data: label codes, validation splits, class-balanced P×K batches (also from groups of
labels the encoder finds alike), and verification pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: With at least this many labels, validation holds out whole labels (identities never seen in training,
#: which is how verification is used). With fewer (ten clothing classes, say), it holds out images instead,
#: so that no class is missing from training.
MIN_IDENTITIES_TO_HOLD_OUT = 20


def encode_labels(labels: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """String labels → (n,) int64 codes (-1 for no label) and the sorted class names."""
    classes = sorted({label for label in labels if label is not None})
    code = {name: i for i, name in enumerate(classes)}
    return np.array([code[label] if label is not None else -1 for label in labels], dtype=np.int64), classes


@dataclass(frozen=True)
class Split:
    """Row numbers of the training and validation images, and how they were split."""

    train: np.ndarray
    val: np.ndarray
    mode: str  # "identities" (whole labels held out), "images" (images of seen labels), or "unlabelled"


def split_for_validation(y: np.ndarray, fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of the identities (or of the images, see ``MIN_IDENTITIES_TO_HOLD_OUT``)."""
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(y >= 0)
    classes = np.unique(y[labelled])
    if len(classes) >= MIN_IDENTITIES_TO_HOLD_OUT:
        n_val = max(2, round(len(classes) * fraction))
        held = rng.choice(classes, size=n_val, replace=False)
        is_val = np.isin(y, held)
        return Split(np.flatnonzero(~is_val), np.flatnonzero(is_val), "identities")
    order = rng.permutation(len(y))
    n_val = max(1, round(len(y) * fraction)) if len(y) >= 10 else 1
    mode = "images" if len(classes) >= 2 else "unlabelled"
    return Split(np.sort(order[n_val:]), np.sort(order[:n_val]), mode)


def _pk_plan(y: np.ndarray, p: int, k: int) -> tuple[np.ndarray, dict[Any, np.ndarray], int, int]:
    """What both P×K samplers start from: the labels, each label's rows, ``p`` capped at the number of labels,
    and how many batches make one epoch (every labelled image drawn about once)."""
    classes = np.unique(y[y >= 0])
    members = {c: np.flatnonzero(y == c) for c in classes}
    p = min(p, len(classes))
    return classes, members, p, max(1, math.ceil((y >= 0).sum() / (p * k)))


def pk_batches(y: np.ndarray, p: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of class-balanced batches: each holds ``p`` labels × ``k`` images of each (sampled with
    replacement when a label has fewer than ``k``). Every image is drawn about once per epoch."""
    classes, members, p, n_batches = _pk_plan(y, p, k)
    batches = []
    for _ in range(n_batches):
        chosen = rng.choice(classes, size=p, replace=False)
        batches.append(np.concatenate([rng.choice(members[c], size=k, replace=len(members[c]) < k) for c in chosen]))
    return batches


def similar_pk_batches(
    y: np.ndarray, p: int, k: int, group: int, neighbours: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Like ``pk_batches``, but the ``p`` labels of a batch come in groups of ``group`` labels alike: a random
    label and its nearest labels not yet in the batch, so that every batch holds hard negatives.
    ``neighbours[i]`` lists the indices into ``np.unique(y[y >= 0])`` by increasing distance from label i."""
    classes, members, p, n_batches = _pk_plan(y, p, k)
    batches = []
    for _ in range(n_batches):
        taken = np.zeros(len(classes), bool)
        chosen: list[int] = []
        while len(chosen) < p:
            seed = int(rng.choice(np.flatnonzero(~taken)))
            near = [int(c) for c in neighbours[seed] if not taken[c] and c != seed][: group - 1]
            for c in [seed, *near][: p - len(chosen)]:
                taken[c] = True
                chosen.append(c)
        picked = [rng.choice(members[classes[c]], size=k, replace=len(members[classes[c]]) < k) for c in chosen]
        batches.append(np.concatenate(picked))
    return batches


def verification_pairs(
    y: np.ndarray, rng: np.random.Generator, max_genuine: int = 20_000, impostor_ratio: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, same) among labelled rows: every genuine pair (or a sample of ``max_genuine``) and
    ``impostor_ratio`` times as many random impostor pairs."""
    first, second = [], []
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        ii, jj = np.triu_indices(len(idx), k=1)
        first.append(idx[ii])
        second.append(idx[jj])
    gi = np.concatenate(first) if first else np.zeros(0, np.int64)
    gj = np.concatenate(second) if second else np.zeros(0, np.int64)
    if len(gi) > max_genuine:
        keep = rng.choice(len(gi), size=max_genuine, replace=False)
        gi, gj = gi[keep], gj[keep]
    labelled = np.flatnonzero(y >= 0)
    want = max(len(gi), 1) * impostor_ratio
    found_i, found_j, have = [], [], 0
    for _ in range(20):  # random pairs of different labels; a few rounds suffice unless one label dominates
        ii = rng.choice(labelled, size=want * 2)
        jj = rng.choice(labelled, size=want * 2)
        different = y[ii] != y[jj]
        found_i.append(ii[different])
        found_j.append(jj[different])
        have += int(different.sum())
        if have >= want:
            break
    ii, jj = np.concatenate(found_i)[:want], np.concatenate(found_j)[:want]
    same = np.concatenate([np.ones(len(gi), bool), np.zeros(len(ii), bool)])
    return np.concatenate([gi, ii]), np.concatenate([gj, jj]), same


def scoring_pairs(
    y: np.ndarray, rng: np.random.Generator, max_genuine: int = 20_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``verification_pairs``, or None when they cannot score a threshold: fewer than two labels, or no
    genuine pair (every label has a single image)."""
    if len(np.unique(y[y >= 0])) < 2:
        return None
    i, j, same = verification_pairs(y, rng, max_genuine)
    return (i, j, same) if same.any() and not same.all() else None
