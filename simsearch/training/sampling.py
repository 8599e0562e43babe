"""Labelled training data: label codes, identity groups (a writer and the sibling label of their forgeries),
whether labels are identities or classes, validation splits, class-balanced P×K batches (also from groups of labels
the encoder finds alike), and verification pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: With at least this many identity groups, the labels are identities whatever their size, and a single
#: validation split holds out whole groups (identities never seen in training, which is how verification is
#: used). With fewer (ten clothing classes, say), a single split holds out images instead, so that no class is
#: missing from training.
MIN_IDENTITIES_TO_HOLD_OUT = 20
#: Fewer identity groups than ``MIN_IDENTITIES_TO_HOLD_OUT`` are still identities when their labels are small:
#: a median label of fewer than this many images (people, writers, characters: tens of images each). Larger
#: labels (hundreds of images of each clothing class) are classes, which verification meets again.
CLASS_MIN_IMAGES = 100

#: How a label names the skilled forgeries of another (``identity_of``): a suffix of one of its folders
#: (``049_forg`` forges ``049``) or a folder of its own (``001/forged`` and ``forged/001`` forge ``001``).
FORGERY_SUFFIXES = ("_forg", "_forged", "_forgery", "_forgeries", "-forg", "-forged", "-forgery", "-forgeries")
FORGERY_FOLDERS = frozenset({"forg", "forged", "forgery", "forgeries"})
#: Folders that name the genuine side of a writer (``001/genuine`` is writer ``001``).
GENUINE_FOLDERS = frozenset({"genuine", "original"})

#: Kinds of the pairs ``identity_pairs`` makes.
GENUINE, IMPOSTOR, FORGERY = 0, 1, 2


def encode_labels(labels: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """String labels → (n,) int64 codes (-1 for no label) and the sorted class names."""
    classes = sorted({label for label in labels if label is not None})
    code = {name: i for i, name in enumerate(classes)}
    return np.array([code[label] if label is not None else -1 for label in labels], dtype=np.int64), classes


def identity_of(label: str) -> tuple[str, bool]:
    """(identity, forged): the identity a label belongs to, and whether its images are forgeries of it.

    Labels are folder paths relative to the training root (``io.label_of``). A folder ending in one of
    ``FORGERY_SUFFIXES`` (case aside) or named one of ``FORGERY_FOLDERS`` marks forgeries, a folder named one of
    ``GENUINE_FOLDERS`` the genuine side; the identity is the path without them: ``049_forg`` → (``049``, True),
    ``001/forged`` → (``001``, True), ``001/genuine`` → (``001``, False), ``s12`` → (``s12``, False). A label
    that is nothing but such a word (a folder ``forged`` of its own) is an ordinary label."""
    kept: list[str] = []
    forged = False
    for part in label.split("/"):
        low = part.lower()
        if low in FORGERY_FOLDERS:
            forged = True
            continue
        if low in GENUINE_FOLDERS:
            continue
        suffix = next((s for s in FORGERY_SUFFIXES if low.endswith(s) and len(low) > len(s)), None)
        if suffix is not None:
            forged = True
            part = part[: -len(suffix)]
        kept.append(part)
    return ("/".join(kept), forged) if kept else (label, False)


def identity_groups(classes: Sequence[str]) -> np.ndarray:
    """(n_classes,) int64: the identity group of each class (``identity_of``), numbered in sorted order of the
    identities. A writer's genuine label and the labels of their forgeries share a group: they go to one fold
    together, and a genuine–forgery pair of one group is a skilled forgery, not a genuine pair."""
    names = [identity_of(c)[0] for c in classes]
    code = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.array([code[name] for name in names], dtype=np.int64)


def forged_labels(classes: Sequence[str]) -> np.ndarray:
    """(n_classes,) bool: whether each class holds forgeries of its group's identity (``identity_of``)."""
    return np.array([identity_of(c)[1] for c in classes], dtype=bool)


def labels_are_identities(y: np.ndarray, groups: np.ndarray) -> bool:
    """Whether the labels ``y`` (codes; -1 for none) name identities, which verification will meet new ones of
    (people, writers, characters), rather than classes it will meet again (clothing types): with at least
    ``MIN_IDENTITIES_TO_HOLD_OUT`` identity groups always; with fewer, when the median label holds fewer than
    ``CLASS_MIN_IMAGES`` images. ``groups`` is ``identity_groups`` of the classes."""
    labelled = y[y >= 0]
    if len(labelled) == 0:
        return False
    if len(np.unique(groups[np.unique(labelled)])) >= MIN_IDENTITIES_TO_HOLD_OUT:
        return True
    return bool(np.median(np.bincount(labelled)[np.unique(labelled)]) < CLASS_MIN_IMAGES)


@dataclass(frozen=True)
class Split:
    """Row numbers of the training and validation images, and how they were split."""

    train: np.ndarray
    val: np.ndarray
    mode: str  # "identities" (whole labels held out), "images" (images of seen labels), or "unlabelled"


def split_for_validation(
    y: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None, by_identity: bool | None = None
) -> Split:
    """Hold out ``fraction`` of the identities (at least two), or of the images: ``by_identity`` says which (None:
    identities when there are ``MIN_IDENTITIES_TO_HOLD_OUT`` or more). With ``groups`` (``identity_groups`` of the
    classes), identities are groups: a writer's forgeries go with them."""
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(y >= 0)
    classes = np.unique(y[labelled])
    group_of = groups if groups is not None else np.arange(int(y.max()) + 1 if len(labelled) else 0)
    identities = np.unique(group_of[classes])
    if by_identity is None:
        by_identity = len(identities) >= MIN_IDENTITIES_TO_HOLD_OUT
    if by_identity and len(identities) >= 4:
        n_val = min(max(2, round(len(identities) * fraction)), len(identities) - 2)
        held = rng.choice(identities, size=n_val, replace=False)
        is_val = (y >= 0) & np.isin(group_of[np.maximum(y, 0)], held)
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


def within_label_pairs(
    y: np.ndarray, labels: np.ndarray, max_pairs: int, rng: np.random.Generator, sort: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows (i < j) that share one of ``labels``, or a random sample of ``max_pairs`` of them
    (in row order with ``sort``)."""
    first, second = [], []
    for c in labels:
        idx = np.flatnonzero(y == c)
        ii, jj = np.triu_indices(len(idx), k=1)
        first.append(idx[ii])
        second.append(idx[jj])
    gi = np.concatenate(first) if first else np.zeros(0, np.int64)
    gj = np.concatenate(second) if second else np.zeros(0, np.int64)
    if len(gi) > max_pairs:
        keep = rng.choice(len(gi), size=max_pairs, replace=False)
        keep = np.sort(keep) if sort else keep
        gi, gj = gi[keep], gj[keep]
    return gi, gj


def different_pairs(
    pool: np.ndarray, key: np.ndarray, want: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``want`` random pairs of rows of ``pool`` whose ``key`` (label or identity group) differs; a few
    rounds of draws suffice unless one key dominates."""
    found_i, found_j, have = [], [], 0
    for _ in range(20):
        ii = rng.choice(pool, size=want * 2)
        jj = rng.choice(pool, size=want * 2)
        different = key[ii] != key[jj]
        found_i.append(ii[different])
        found_j.append(jj[different])
        have += int(different.sum())
        if have >= want:
            break
    ii = np.concatenate(found_i)[:want] if found_i else np.zeros(0, np.int64)
    jj = np.concatenate(found_j)[:want] if found_j else np.zeros(0, np.int64)
    return ii, jj


def verification_pairs(
    y: np.ndarray, rng: np.random.Generator, max_genuine: int = 20_000, impostor_ratio: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, same) among labelled rows: every genuine pair (or a sample of ``max_genuine``) and
    ``impostor_ratio`` times as many random impostor pairs."""
    gi, gj = within_label_pairs(y, np.unique(y[y >= 0]), max_genuine, rng, sort=False)
    ii, jj = different_pairs(np.flatnonzero(y >= 0), y, max(len(gi), 1) * impostor_ratio, rng)
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


def identity_pairs(
    y: np.ndarray,
    groups: np.ndarray,
    forged: np.ndarray,
    rng: np.random.Generator,
    max_genuine: int = 20_000,
    impostor_ratio: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibration pairs (i, j, kind) among labelled rows, where ``groups`` and ``forged`` (per class code, see
    ``identity_groups`` and ``forged_labels``) say which labels are one identity and which hold forgeries:

    - ``GENUINE``: two images of one genuine label (every pair, or a sample of ``max_genuine``). Two forgeries
      of one writer are no genuine pair of that writer (nor an impostor pair): they are left out;
    - ``IMPOSTOR``: ``impostor_ratio`` times as many random pairs of genuine images of different groups;
    - ``FORGERY``: a genuine image and a forgery of the same group (skilled forgeries), every pair or a sample
      of ``impostor_ratio × max_genuine``.
    """
    labelled = np.flatnonzero(y >= 0)
    group = np.full(len(y), -1, np.int64)
    group[labelled] = groups[y[labelled]]
    is_forged = np.zeros(len(y), bool)
    is_forged[labelled] = forged[y[labelled]]
    genuine_rows = labelled[~is_forged[labelled]]
    gi, gj = within_label_pairs(y, np.unique(y[genuine_rows]), max_genuine, rng)
    fi_parts, fj_parts = [], []
    for g in np.unique(group[labelled[is_forged[labelled]]]):
        real = genuine_rows[group[genuine_rows] == g]
        fake = labelled[(group[labelled] == g) & is_forged[labelled]]
        fi_parts.append(np.repeat(real, len(fake)))
        fj_parts.append(np.tile(fake, len(real)))
    fi = np.concatenate(fi_parts) if fi_parts else np.zeros(0, np.int64)
    fj = np.concatenate(fj_parts) if fj_parts else np.zeros(0, np.int64)
    if len(fi) > impostor_ratio * max_genuine:
        keep = np.sort(rng.choice(len(fi), size=impostor_ratio * max_genuine, replace=False))
        fi, fj = fi[keep], fj[keep]
    pool = genuine_rows if len(np.unique(group[genuine_rows])) >= 2 else labelled
    want = max(len(gi), 1) * impostor_ratio
    if len(np.unique(group[pool])) >= 2:
        ii, jj = different_pairs(pool, group, want, rng)
    else:
        ii = jj = np.zeros(0, np.int64)
    kind = np.concatenate([np.full(len(gi), GENUINE), np.full(len(ii), IMPOSTOR), np.full(len(fi), FORGERY)]).astype(
        np.int8
    )
    return np.concatenate([gi, ii, fi]), np.concatenate([gj, jj, fj]), kind
