"""The verification threshold stored in ``encoder.json``, and how honestly it was obtained.

Which method (``plan_calibration``):

- **cross-fitted** (labels are identities, the training reads them, at least ``MIN_GROUPS_TO_CROSS_FIT``
  identity groups): the identity groups are split into K folds; one model per fold is trained on the other
  folds' identities and scores pairs of its own held-out identities after every epoch. The pooled distances of
  every fold choose the number of epochs (``CrossFit.best_epoch``) and, at that epoch, calibrate the threshold,
  its FAR interval (a bootstrap over identities) and the match probability. The final model is then trained on
  every identity for that many epochs. Every pair was scored by a model that never saw either of its identities,
  which is how verification meets new people: the FAR it promises is one measured on unseen identities;
- **held-out identities** (identities, at least ``MIN_GROUPS_TO_CROSS_FIT`` groups, but a family whose training
  ignores the labels, or ``folds=1``): one model, a share of the groups held out (two at least);
- **held-out images** otherwise: images of the training labels held out. For classes (ten clothing types) the
  threshold holds for those labels; for identities too few to hold any out (fewer than
  ``MIN_GROUPS_TO_CROSS_FIT`` groups) it is **not calibrated on unseen identities**: the record then promises no
  FAR (no ``far``, ``eer``, curve nor probability), only a threshold to start from.

Pairs (``sampling.identity_pairs``): genuine pairs within one genuine label; impostors are random pairs of
different identity groups, plus skilled forgeries (a writer's genuine image against a forgery of that writer:
``049`` against ``049_forg``). Two forgeries of one writer are neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from simsearch import metrics, vectors
from simsearch.models.encoder import Encoder
from simsearch.training.discriminant import apply_discriminant, fit_discriminant
from simsearch.training.sampling import (
    FORGERY,
    GENUINE,
    IMPOSTOR,
    Split,
    forged_labels,
    identity_groups,
    identity_pairs,
    labels_are_identities,
)

#: Cross-fitting needs at least this many identity groups: two folds of two, so that each fold model trains on
#: two identities and scores impostor pairs between two others.
MIN_GROUPS_TO_CROSS_FIT = 4
#: At most this many folds; fewer with few groups (two per fold at least) or many images (see ``fold_count``).
MAX_FOLDS = 5
#: ``fold_count`` keeps K × images at most about this: the folds together then cost about K − 1 trainings of the
#: final model, and a folder of 300 images trains with the defaults (3 folds) in under ten minutes on two CPU cores.
FOLD_WORK_IMAGES = 1000
#: A fold model stops early (``patience``) only when it holds out this many identity groups and this many genuine
#: pairs at least. With fewer its own EER curve is too noisy to stop on (on 5 held-out faces it went 0.09, 0.28,
#: then 0.01 by epoch 33): it trains every epoch and the pooled curve of all folds decides. As every fold must
#: reach the chosen epoch, one fold stopping early caps the others (``CrossFit.run``).
MIN_IDENTITIES_FOR_PATIENCE = 20
MIN_GENUINE_PAIRS_FOR_PATIENCE = 200
#: Resamples of the identity bootstrap of the FAR interval.
BOOTSTRAP_RESAMPLES = 1000

METHOD_CROSS_FITTED = "cross-fitted"
METHOD_IDENTITIES = "held-out identities"
METHOD_IMAGES = "held-out images"


@dataclass(frozen=True)
class CalibrationPlan:
    """How the threshold of a training run will be calibrated (see the module's docstring)."""

    method: str  # METHOD_CROSS_FITTED, METHOD_IDENTITIES, METHOD_IMAGES, or "none" (unlabelled)
    folds: int  # K for cross-fitting, else 1
    groups: np.ndarray  # identity group per class code (``sampling.identity_groups``)
    forged: np.ndarray  # whether each class holds forgeries (``sampling.forged_labels``)
    identities: bool  # whether the labels are identities (``sampling.labels_are_identities``)
    reason: str = ""  # why the threshold is not calibrated on unseen identities, when it is not

    @property
    def n_groups(self) -> int:
        return len(np.unique(self.groups))

    @property
    def unseen(self) -> bool:
        """Whether the calibration pairs come from identities the scoring model never saw."""
        return self.method in (METHOD_CROSS_FITTED, METHOD_IDENTITIES)


def fold_count(n_groups: int, n_images: int, requested: int | None = None) -> int:
    """K: ``requested`` (capped so that every fold holds two groups), else min(``MAX_FOLDS``, groups // 2,
    max(2, ``FOLD_WORK_IMAGES`` // images)): more folds for small, cheap folders (each fold model then trains on
    more of the identities), fewer for large ones, where two folds already hold many identities each."""
    most = n_groups // 2
    if requested is not None:
        return max(2, min(requested, most))
    return max(2, min(MAX_FOLDS, most, FOLD_WORK_IMAGES // max(n_images, 1)))


def plan_calibration(
    y: np.ndarray, classes: Sequence[str], uses_labels: bool, folds: int | None = None, grown: int = 1
) -> CalibrationPlan:
    """The calibration method for labels ``y`` (codes into ``classes``): see the module's docstring.
    ``uses_labels``: whether training reads the labels (else a held-out model is honest without cross-fitting);
    ``folds``: None (choose K), 1 (no cross-fitting: one split) or K; ``grown``: how many times class augmentation
    multiplies the images a model trains on (the work ``fold_count`` bounds)."""
    groups, forged = identity_groups(classes), forged_labels(classes)
    labelled = y[y >= 0]
    if len(np.unique(labelled)) < 2:
        return CalibrationPlan("none", 1, groups, forged, False)
    identities = labels_are_identities(y, groups)
    n_groups = len(np.unique(groups[np.unique(labelled)]))
    if not identities:
        return CalibrationPlan(METHOD_IMAGES, 1, groups, forged, False)
    if n_groups >= MIN_GROUPS_TO_CROSS_FIT:
        if uses_labels and folds != 1:
            return CalibrationPlan(
                METHOD_CROSS_FITTED, fold_count(n_groups, len(labelled) * grown, folds), groups, forged, True
            )
        return CalibrationPlan(METHOD_IDENTITIES, 1, groups, forged, True)
    reason = (
        f"only {n_groups} identit{'y' if n_groups == 1 else 'ies'}: at least {MIN_GROUPS_TO_CROSS_FIT} are needed "
        "to calibrate on identities the model never saw"
    )
    return CalibrationPlan(METHOD_IMAGES, 1, groups, forged, True, reason)


def fold_of_groups(groups: np.ndarray, folds: int, seed: int) -> dict[int, int]:
    """Fold of each identity group: the groups shuffled, then dealt out in turn (fold sizes differ by one)."""
    order = np.random.default_rng(seed).permutation(np.unique(groups))
    return {int(g): i % folds for i, g in enumerate(order)}


def pooled_record(
    distances: np.ndarray,
    kind: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    *,
    method: str,
    identities: int,
    labels: int,
    folds: int = 1,
    epochs: int | None = None,
    unseen: bool = True,
    reason: str = "",
    seed: int = 0,
) -> dict[str, Any] | None:
    """The threshold record from calibration pairs: ``distances``, their ``kind`` (``sampling.GENUINE`` …) and
    the identity group of each side (``first``, ``second``). None when there are not both genuine and impostor
    pairs. With ``unseen``, the FAR and FRR intervals come from a bootstrap over the identities, else (classes)
    over the pairs; with a ``reason`` (identities, but none unseen) the record keeps the threshold only
    (``not_calibrated_record``)."""
    same = kind == GENUINE
    if not same.any() or same.all():
        return None
    pairs = {
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "skilled_forgery": int((kind == FORGERY).sum()),
    }
    prior_count = identities if method != METHOD_IMAGES else None
    record = metrics.calibrate(distances, same, identities=identities, prior_count=prior_count)
    calibration: dict[str, Any] = {
        "method": method,
        "unseen_identities": unseen,
        "folds": folds,
        "identities": identities,
        "labels": labels,
        "pairs": pairs,
        "far_interval": None,
        "frr_interval": None,
        "epochs": epochs,
    }
    threshold = record["value"]
    forgeries = kind == FORGERY
    if forgeries.any():
        calibration["far_skilled_forgery"] = float(np.mean(distances[forgeries] <= threshold))
        random = kind == IMPOSTOR
        calibration["far_random"] = float(np.mean(distances[random] <= threshold)) if random.any() else None
    if reason:  # identities too few to hold any out: no promise about new ones
        return not_calibrated_record(record, calibration, reason)
    rng = np.random.default_rng(seed)
    if unseen:
        far, frr = metrics.identity_bootstrap(distances, same, first, second, threshold, BOOTSTRAP_RESAMPLES, rng)
        calibration["far_interval"], calibration["frr_interval"] = list(far), list(frr)
    else:  # held-out images of classes: the pairs are what varies
        sorted_pairs = metrics.SortedPairs(distances, same)
        far_b = metrics.bootstrap_pairs(sorted_pairs, lambda r: metrics.at_threshold(r, threshold)[0], 200, rng)
        frr_b = metrics.bootstrap_pairs(sorted_pairs, lambda r: metrics.at_threshold(r, threshold)[1], 200, rng)
        calibration["far_interval"], calibration["frr_interval"] = [far_b[1], far_b[2]], [frr_b[1], frr_b[2]]
    record["calibration"] = calibration
    record["split"] = {METHOD_CROSS_FITTED: "cross-fitted", METHOD_IDENTITIES: "identities"}.get(method, "images")
    return record


def not_calibrated_record(record: dict[str, Any], calibration: dict[str, Any], reason: str) -> dict[str, Any]:
    """A record that keeps the threshold (the EER point of held-out images of the training identities: a place to
    start) but promises nothing about new identities: no EER, FAR, FRR, FAR points, curve nor probability."""
    kept = {key: record[key] for key in ("value", "operating_point", "pairs", "identities")}
    measured_on_seen = ("far_skilled_forgery", "far_random")
    calibration = {k: v for k, v in calibration.items() if k not in measured_on_seen}
    return {
        **kept,
        "eer": None,
        "far": None,
        "frr": None,
        "split": "images",
        "calibration": {**calibration, "unseen_identities": False, "reason": reason},
    }


def calibrate_threshold(
    encoder: Encoder,
    images: np.ndarray,
    y: np.ndarray,
    split: Split,
    plan: CalibrationPlan | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The threshold of a single-split run (``held-out identities`` or ``held-out images``), on pairs of the
    held-out rows; ``plan`` (default: every label its own identity, the split's mode deciding the method) says
    which labels are one identity and how far the result may be trusted. Distances are the encoder's metric's
    (``vectors.distances``): the ones ``verify`` and ``eval`` measure."""
    y_val = y[split.val]
    n_classes = int(y.max()) + 1 if (y >= 0).any() else 0
    if plan is None:
        method = METHOD_IDENTITIES if split.mode == "identities" else METHOD_IMAGES
        plan = CalibrationPlan(method, 1, np.arange(n_classes), np.zeros(n_classes, bool), split.mode == "identities")
    if len(np.unique(y_val[y_val >= 0])) < 2:
        return None
    i, j, kind = identity_pairs(y_val, plan.groups, plan.forged, np.random.default_rng(seed))
    if not (kind == GENUINE).any():
        return None
    z = encoder.embed(images[split.val])
    distances = vectors.distances(z[i], z[j], encoder.metric)
    group = plan.groups[np.maximum(y_val, 0)]
    labelled = y_val[y_val >= 0]
    return pooled_record(
        distances,
        kind,
        group[i],
        group[j],
        method=plan.method,
        identities=len(np.unique(plan.groups[np.unique(labelled)])),
        labels=len(np.unique(labelled)),
        unseen=plan.unseen,
        reason=plan.reason,
        seed=seed,
    )


#: ``train_fold(fold, train_rows, held_rows, max_epochs, observe)`` trains the model of one fold on
#: ``train_rows`` for at most ``max_epochs`` epochs and calls ``observe(z, z_train, y_train, features)`` after
#: every epoch with the embeddings (held rows × d) of ``held_rows`` by the weights of that epoch (and, for the
#: discriminant back-end, its labelled training rows' embeddings and labels, else None; for the ``features``
#: readout, the held rows' flattened feature maps, else None); ``observe`` returns that epoch's EER on the fold's
#: calibration pairs (None when they cannot give one), for early stopping and progress.
Observer = Callable[..., float | None]
FoldTrainer = Callable[[int, np.ndarray, np.ndarray, int, Observer], None]
#: The ways a fold model's pairs are scored: its embeddings as they are, through the discriminant back-end fitted
#: on the fold's own training identities (``training.discriminant``), and by the feature map under the head (the
#: ``features`` readout of ``models.autoencoder.ConvEncoder``).
PLAIN, DISCRIMINANT, FEATURES = "plain", "discriminant", "features"
VARIANTS = (PLAIN, DISCRIMINANT, FEATURES)


@dataclass
class FoldScores:
    """One fold: the rows it held out, its calibration pairs (row numbers), and their distances at every epoch
    (``distances``), through the discriminant back-end fitted on the fold's training rows (``discriminant``) and by
    the feature map (``features``); the plain distances again where a way was not scored."""

    held: np.ndarray
    identities: int
    i: np.ndarray
    j: np.ndarray
    kind: np.ndarray
    distances: list[np.ndarray] = field(default_factory=list)
    discriminant: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)

    def scored(self, variant: str) -> list[np.ndarray]:
        """The distances of every epoch, scored as ``variant`` says (one of ``VARIANTS``)."""
        return {DISCRIMINANT: self.discriminant, FEATURES: self.features}.get(variant, self.distances)

    def saved(self) -> list[np.ndarray]:
        """What a checkpoint keeps of each epoch: one (3, pairs) array (plain, discriminant, features), or the
        plain distances alone where no other way was scored (they are then the same array)."""
        ways = zip(self.distances, self.discriminant, self.features, strict=True)
        return [d if e is d and f is d else np.stack([d, e, f]) for d, e, f in ways]

    def restore(self, saved: Sequence[np.ndarray]) -> None:
        """Take back what ``saved`` gave (or, from a checkpoint of an older version, each epoch's plain distances
        alone, or plain and discriminant: a way it did not score is the plain distances again)."""
        saved = [np.asarray(s) for s in saved]
        self.distances[:] = [s if s.ndim == 1 else s[0] for s in saved]
        self.discriminant[:] = [s if s.ndim == 1 else s[1] for s in saved]
        self.features[:] = [s if s.ndim == 1 else s[2] if len(s) > 2 else s[0] for s in saved]

    @property
    def patient(self) -> bool:
        """Whether this fold has enough identities and pairs to stop early on its own curve."""
        genuine = int((self.kind == GENUINE).sum())
        return self.identities >= MIN_IDENTITIES_FOR_PATIENCE and genuine >= MIN_GENUINE_PAIRS_FOR_PATIENCE


class CrossFit:
    """Cross-fitted calibration over identity groups (see the module's docstring): ``run`` trains a model per fold
    through a ``FoldTrainer``; ``curve`` is the pooled EER at every epoch all folds reached; ``best_epoch`` the
    epoch the final model should train for; ``record(epoch)`` the threshold record at an epoch."""

    def __init__(
        self,
        y: np.ndarray,
        plan: CalibrationPlan,
        seed: int = 0,
        metric: str = "l2",
        max_genuine: int = 20_000,
        variants: Sequence[str] = VARIANTS,
    ) -> None:
        self.y, self.plan, self.seed, self.metric = y, plan, seed, metric
        #: The ways of scoring the final model may take (``choose``), and that a fold's early stopping reads.
        self.variants = tuple(variants)
        labelled = np.flatnonzero(y >= 0)
        self.group = np.full(len(y), -1, np.int64)
        self.group[labelled] = plan.groups[y[labelled]]
        self.fold_of = fold_of_groups(self.group[labelled], plan.folds, seed)
        rng = np.random.default_rng(seed)
        self.folds: list[FoldScores] = []
        for k in range(plan.folds):
            held = labelled[np.isin(self.group[labelled], [g for g, f in self.fold_of.items() if f == k])]
            i, j, kind = identity_pairs(y[held], plan.groups, plan.forged, rng, max_genuine // plan.folds)
            identities = len(np.unique(self.group[held]))
            self.folds.append(FoldScores(held, identities, held[i], held[j], kind))

    def train_rows(self, k: int) -> np.ndarray:
        """Every row but fold ``k``'s held-out ones (unlabelled rows included: no identity of theirs is scored)."""
        return np.setdiff1d(np.arange(len(self.y)), self.folds[k].held)

    def run(self, train_fold: FoldTrainer, max_epochs: int) -> None:
        """Train every fold's model; each later fold stops where the earliest-stopped one did (no epoch beyond
        it could be chosen)."""
        for k, fold in enumerate(self.folds):
            cap = min([max_epochs, *(len(f.distances) for f in self.folds[:k])])
            train_fold(k, self.train_rows(k), fold.held, cap, self._observer(fold))

    def _observer(self, fold: FoldScores) -> Observer:
        """What a fold's trainer calls after each epoch (``Observer``): keeps the distances of the fold's pairs,
        plain, through the discriminant back-end fitted on the training rows given, and by the feature maps
        given, and returns the lowest EER of the ways the final model may take (``variants``; the fold model is
        as good as the best of them)."""
        row = {int(r): n for n, r in enumerate(fold.held)}
        a = np.array([row[int(r)] for r in fold.i], np.int64)
        b = np.array([row[int(r)] for r in fold.j], np.int64)
        same = fold.kind == GENUINE
        usable = bool(same.any() and not same.all())

        def observe(
            z: np.ndarray,
            z_train: np.ndarray | None = None,
            y_train: np.ndarray | None = None,
            features: np.ndarray | None = None,
        ) -> float | None:
            d = vectors.distances(z[a], z[b], self.metric).astype(np.float32)
            axes = (
                fit_discriminant(z_train, y_train, most=self.discriminant_axes)
                if z_train is not None and y_train is not None
                else None
            )
            if axes is not None:
                p = apply_discriminant(z, axes)
                e = vectors.distances(p[a], p[b], self.metric).astype(np.float32)
            else:
                e = d
            f = d if features is None else vectors.distances(features[a], features[b], self.metric).astype(np.float32)
            fold.distances.append(d)
            fold.discriminant.append(e)
            fold.features.append(f)
            if not usable:
                return None
            ways = {PLAIN: d, DISCRIMINANT: e, FEATURES: f}
            chosen = {id(ways[v]): ways[v] for v in self.variants}.values()
            return min(metrics.equal_error_rate(x, same)[0] for x in chosen)

        return observe

    @property
    def epochs(self) -> int:
        """The epochs every fold reached."""
        return min(len(f.distances) for f in self.folds)

    def pooled(self, epoch: int, variant: str = PLAIN) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(distances, kind, first group, second group) of every fold's pairs at ``epoch`` (1-based), scored as
        ``variant`` says."""
        d = np.concatenate([f.scored(variant)[epoch - 1] for f in self.folds])
        kind = np.concatenate([f.kind for f in self.folds])
        first = np.concatenate([self.group[f.i] for f in self.folds])
        second = np.concatenate([self.group[f.j] for f in self.folds])
        return d.astype(np.float64), kind, first, second

    def curve(self, variant: str = PLAIN) -> list[float]:
        """The pooled EER at every epoch all folds reached (NaN where the pairs cannot give one)."""
        out = []
        for epoch in range(1, self.epochs + 1):
            d, kind, _, _ = self.pooled(epoch, variant)
            same = kind == GENUINE
            out.append(metrics.equal_error_rate(d, same)[0] if same.any() and not same.all() else math.nan)
        return out

    def fold_curves(self) -> list[list[float]]:
        """Each fold's own EER at each of its epochs (NaN where it has no genuine or no impostor pair)."""
        out = []
        for f in self.folds:
            same = f.kind == GENUINE
            ok = same.any() and not same.all()
            out.append([metrics.equal_error_rate(d, same)[0] if ok else math.nan for d in f.distances])
        return out

    @cached_property
    def discriminant_axes(self) -> int:
        """The most axes every fold's back-end can have (its training labels − 1): the final model's back-end
        keeps that many, so that its distances have the scale its threshold was calibrated on."""
        return min(len(np.unique(self.y[r][self.y[r] >= 0])) - 1 for r in map(self.train_rows, range(len(self.folds))))

    def choose(self) -> tuple[str, int]:
        """How the final model scores pairs and how long it trains: the variant (one of ``variants``) and epoch of
        the lowest smoothed pooled EER (``best_epoch``); the earlier in ``variants`` when they tie."""
        best: tuple[float, str, int] | None = None
        for variant in self.variants:
            epoch = self.best_epoch(variant)
            score = self.smoothed(variant)
            value = float(score[epoch - 1]) if len(score) and not np.isnan(score[epoch - 1]) else math.inf
            if best is None or value < best[0] - 1e-12:
                best = (value, variant, epoch)
        assert best is not None
        return best[1], best[2]

    def smoothed(self, variant: str = PLAIN) -> np.ndarray:
        """The pooled EER curve smoothed by a moving mean over three epochs (NaN epochs counted as the worst)."""
        curve = np.array(self.curve(variant), np.float64)
        if not len(curve) or np.isnan(curve).all():
            return curve
        filled = np.where(np.isnan(curve), np.nanmax(curve), curve)
        return np.array([filled[max(0, e - 1) : e + 2].mean() for e in range(len(filled))])

    def best_epoch(self, variant: str = PLAIN) -> int:
        """The epoch to train the final model for: the lowest pooled EER, the curve first smoothed by a moving
        mean over three epochs (an epoch is chosen on the trend, not on one lucky epoch of a few pairs); the
        latest of equals (the longer-trained model, when the pairs cannot tell them apart: an EER of 0, say). Choosing on the pairs the threshold is then calibrated on biases the reported EER
        down a little (the minimum of a noisy curve); the threshold itself is measured at that epoch."""
        smooth = self.smoothed(variant)
        if not len(smooth) or np.isnan(smooth).all():
            return max(1, len(smooth))
        return int(np.flatnonzero(smooth <= smooth.min() + 1e-12)[-1]) + 1

    def record(self, epoch: int, final_epochs: int | None = None, variant: str = PLAIN) -> dict[str, Any] | None:
        """The threshold record from the pooled pairs at ``epoch``, scored as ``variant`` says; ``final_epochs``:
        how long the final model trained (stored as ``calibration.epochs``)."""
        d, kind, first, second = self.pooled(epoch, variant)
        labelled = self.y[self.y >= 0]
        record = pooled_record(
            d,
            kind,
            first,
            second,
            method=METHOD_CROSS_FITTED,
            identities=self.plan.n_groups if len(labelled) else 0,
            labels=len(np.unique(labelled)),
            folds=self.plan.folds,
            epochs=final_epochs if final_epochs is not None else epoch,
            seed=self.seed,
        )
        if record is not None:
            record["calibration"]["chosen_epoch"] = epoch
            record["calibration"]["discriminant"] = variant == DISCRIMINANT
        return record
