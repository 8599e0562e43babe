"""The identity protocol of the verification benchmarks (faces, signatures): folds of identities, the pairs of
held-out identities, a cluster bootstrap over identities, and the rates a stored threshold gives.

Every identity is held out in exactly one fold; a row is fitted on the other folds' identities and scored on
the held-out ones; each fold is scored on its own and the folds are averaged. Each pair is owned by one identity (the person of a
genuine pair, the person whose photo or signature an impostor or forgery pair is tested against), so the
bootstrap resamples identities with replacement and keeps all their pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simsearch import metrics


def assign_folds(identities: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Identities dealt to ``folds`` folds: sorted names shuffled with ``default_rng(seed)``, dealt round-robin
    (each fold's names sorted)."""
    names = sorted(set(identities))
    if not 2 <= folds <= len(names):
        raise ValueError(f"{folds} folds need at least {folds} identities, have {len(names)}")
    shuffled = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
    return [sorted(shuffled[k::folds]) for k in range(folds)]


@dataclass(frozen=True)
class Pairs:
    """Pairs of ``files``: rows ``i[n]`` and ``j[n]``, ``same[n]`` when genuine, owned by ``owner[n]``."""

    files: list[Path]
    i: np.ndarray
    j: np.ndarray
    same: np.ndarray
    owner: np.ndarray  # identity names (str)

    def counts(self) -> dict[str, int]:
        return {"genuine": int(self.same.sum()), "impostor": int((~self.same).sum())}


def _collect(files: list[Path], parts: list[tuple[np.ndarray, np.ndarray, bool, str]]) -> Pairs:
    i = np.concatenate([a for a, _, _, _ in parts]).astype(np.int64)
    j = np.concatenate([b for _, b, _, _ in parts]).astype(np.int64)
    same = np.concatenate([np.full(len(a), s) for a, _, s, _ in parts]).astype(bool)
    owner = np.concatenate([np.full(len(a), o, dtype=object) for a, _, _, o in parts])
    return Pairs(files, i, j, same, owner)


def impostor_pairs(people: dict[str, list[Path]], rng: np.random.Generator, ratio: int = 4) -> Pairs:
    """Faces: every genuine pair of each person, and ``ratio`` times as many random impostor pairs owned by
    that person (one of its photos against a photo of another of ``people``)."""
    if len(people) < 2:
        raise ValueError("impostor pairs need at least two identities")
    files: list[Path] = []
    rows: dict[str, np.ndarray] = {}
    for name in sorted(people):
        rows[name] = np.arange(len(files), len(files) + len(people[name]))
        files.extend(people[name])
    parts = []
    for name, own in rows.items():
        a, b = np.triu_indices(len(own), k=1)
        parts.append((own[a], own[b], True, name))
        others = np.concatenate([r for other, r in rows.items() if other != name])
        want = ratio * len(a)
        parts.append((rng.choice(own, want), rng.choice(others, want), False, name))
    return _collect(files, parts)


def forgery_pairs(genuine: dict[str, list[Path]], forgeries: dict[str, list[Path]]) -> Pairs:
    """Signatures: for each writer, every genuine–genuine pair against every genuine–skilled-forgery pair of that
    same writer (12 + 12 signatures: 66 against 144)."""
    files: list[Path] = []
    parts = []
    for name in sorted(genuine):
        own = np.arange(len(files), len(files) + len(genuine[name]))
        files.extend(genuine[name])
        forged = np.arange(len(files), len(files) + len(forgeries[name]))
        files.extend(forgeries[name])
        a, b = np.triu_indices(len(own), k=1)
        parts.append((own[a], own[b], True, name))
        gi, fj = np.meshgrid(own, forged, indexing="ij")
        parts.append((gi.ravel(), fj.ravel(), False, name))
    return _collect(files, parts)


def identity_bootstrap(
    folds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """EER and ROC AUC of one model on identities it never saw: each fold's (distances, same, owner) is scored
    on its own (every fold has its own model, whose distances need not share a scale with another fold's), and
    the figures are the mean over folds, each as [value, low, high] with a 95% percentile interval from
    resampling each fold's owning identities with replacement (all pairs of a drawn identity kept, once per
    draw). ``pooled_eer`` is the EER of all folds' pairs together: above the mean when the fold models' distance
    scales differ, which is what one threshold across models would meet."""
    rng = np.random.default_rng(seed)
    prepared = []
    for distances, same, owner in folds:
        names, codes = np.unique(np.asarray(owner).astype(str), return_inverse=True)
        prepared.append((metrics.SortedPairs(distances, same), np.asarray(same, bool), len(names), codes))
    eers, aucs = [], []
    for _ in range(resamples):
        fold_eer, fold_auc = [], []
        for pairs, same, n_names, codes in prepared:
            weights = np.bincount(rng.integers(0, n_names, n_names), minlength=n_names)[codes]
            if not (weights * same).any() or not (weights * ~same).any():
                break  # a draw of identities with no genuine (or no impostor) pair scores nothing
            roc = pairs.roc(weights.astype(np.float64))
            fold_eer.append(metrics.eer_of(roc)[0])
            fold_auc.append(metrics.auc_of(roc))
        else:
            eers.append(np.mean(fold_eer))
            aucs.append(np.mean(fold_auc))
    rocs = [pairs.roc() for pairs, *_ in prepared]
    value_eer = float(np.mean([metrics.eer_of(roc)[0] for roc in rocs]))
    value_auc = float(np.mean([metrics.auc_of(roc) for roc in rocs]))
    out: dict[str, list[float]] = {}
    for key, value, stats in (("eer", value_eer, eers), ("roc_auc", value_auc, aucs)):
        low, high = np.percentile(stats, [2.5, 97.5])
        out[key] = [round(value, 4), round(float(low), 4), round(float(high), 4)]
    pooled = metrics.equal_error_rate(np.concatenate([f[0] for f in folds]), np.concatenate([f[1] for f in folds]))
    out["pooled_eer"] = [round(float(pooled[0]), 4)]
    return out


def errors_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, int]:
    """What accepting pairs at distance ≤ ``threshold`` does: impostors accepted, genuine pairs rejected, of how
    many (counts, so that folds pool)."""
    same = np.asarray(same, bool)
    accepted = np.asarray(distances) <= threshold
    return {
        "false_accepts": int((accepted & ~same).sum()),
        "impostor": int((~same).sum()),
        "false_rejects": int((~accepted & same).sum()),
        "genuine": int(same.sum()),
    }
