"""Did training buy anything? Right after ``index`` trains an encoder on a labelled folder, its held-out vote
accuracy beside PCA's and raw pixels', measured the same way on the same images.

The images are the ones the training held out for validation: the same sample, labels, calibration plan and seed
give the same split (``training.sampling.split_for_validation``), checked against the counts the encoder recorded
(``Encoder.training["validation"]``); a split that cannot be reproduced is not guessed at. Each held-out image
(at most ``MAX_QUERIES``, a seeded sample) is a query against every other image of a pool — the held-out ones and
a seeded sample of the training ones (at most ``MAX_POOL`` images in all) — and the vote of its ``K`` nearest, as
``query`` votes (``votes.DEFAULT_VOTE``), is its answer. The encoder's embeddings are the ones just
indexed; the baselines see plain [0, 1] pixels at the encoder's input size (letterboxed, inverted like its input,
never trimmed: as ``eval``'s baselines do), and PCA is fitted on at most ``PCA_IMAGES`` of the pool's training
images, with as many components as the encoder has dimensions. A held-out image with no other image of its label
in the pool is left out (nobody can answer it). It costs seconds: one decode of the pool, one small SVD, three
brute-force k-NN searches.

Skipped, silently, for an unlabelled folder (or one label) and for the baselines themselves; with a reason when the
folder is labelled but the comparison cannot be made: too few held-out images with a same-label partner, a
cross-fitted model (its final model trained on every image), or a split that cannot be reproduced.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from simsearch.errors import SimsearchError, option
from simsearch.io import ImageFileEntry, LoadedImage, Preprocess, load_images
from simsearch.models.encoder import Encoder
from simsearch.progress import Progress, no_progress
from simsearch.training import TrainConfig
from simsearch.training.calibrate import METHOD_CROSS_FITTED, METHOD_IDENTITIES, plan_calibration
from simsearch.training.sampling import encode_labels, split_for_validation
from simsearch.training.train import sample_entries
from simsearch.votes import DEFAULT_VOTE, vote

#: Neighbours that vote (``query``'s default k).
K = 9
#: At most this many held-out images are queries (a seeded sample).
MAX_QUERIES = 1000
#: At most this many images in the pool searched (queries included), and at most this many bytes of pixels.
MAX_POOL = 3000
MAX_POOL_BYTES = 128 * 1024 * 1024
#: PCA is fitted on at most this many of the pool's training images.
PCA_IMAGES = 1000
#: Fewer answerable held-out images than this: no comparison (the figures would be noise).
MIN_QUERIES = 20
#: The progress task.
TASK = "comparing with PCA and pixels"


@dataclass
class BaselineCheck:
    """The held-out vote accuracy of the encoder just trained (``family``) and of the baselines, or why it was not
    measured (``reason``)."""

    family: str
    accuracy: dict[str, float] = field(default_factory=dict)  # family, "pca", "pixels" → share of right votes
    queries: int = 0
    pool: int = 0
    k: int = K
    split: str = ""  # the held-out split: images, or identities
    seconds: float = 0.0
    reason: str | None = None

    @property
    def best_baseline(self) -> str | None:
        """The baseline with the highest accuracy (pixels on a tie: the simpler), or None when not measured."""
        baselines = [name for name in ("pixels", "pca") if name in self.accuracy]
        return max(baselines, key=lambda name: self.accuracy[name]) if baselines else None

    @property
    def no_better(self) -> bool:
        """Whether the trained encoder's accuracy is no higher than the best baseline's."""
        best = self.best_baseline
        return best is not None and self.accuracy[self.family] <= self.accuracy[best]

    def lines(self) -> list[str]:
        """What a front end prints: the figures, and when training bought nothing, what to use instead (options
        named with ``errors.option``); or why there are no figures."""
        if self.reason is not None:
            return [f"Held-out vote accuracy not compared with PCA and pixels: {self.reason}."]
        figures = ", ".join(f"{_NAMES.get(name, name)} {value:.3f}" for name, value in self.accuracy.items())
        lines = [
            f"Held-out vote accuracy (k={self.k}; {self.queries:,} images the encoder did not train on, each against "
            f"{self.pool - 1:,} others): {figures}."
        ]
        best = self.best_baseline
        if best is not None and self.no_better:
            lines.append(
                f"The {self.family}'s held-out vote accuracy {self.accuracy[self.family]:.3f} is no better than "
                f"{_POSSESSIVE[best]} {self.accuracy[best]:.3f}: consider {option('model', best)}."
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "accuracy": self.accuracy,
            "queries": self.queries,
            "pool": self.pool,
            "k": self.k,
            "split": self.split,
            "seconds": round(self.seconds, 2),
            "reason": self.reason,
        }


_NAMES = {"pca": "PCA"}
_POSSESSIVE = {"pca": "PCA's", "pixels": "pixels'"}


def compare_with_baselines(
    encoder: Encoder,
    entries: Sequence[ImageFileEntry],
    failed: Collection[str],
    embedded: dict[str, np.ndarray],
    config: TrainConfig,
    progress: Progress = no_progress,
    workers: int = 0,
) -> BaselineCheck | None:
    """The check for ``encoder``, trained now by ``config`` on ``entries`` (the root's images, in path order) of
    which the files ``failed`` (relative paths) could not be decoded; ``embedded``: the embedding indexed for each
    relative path. None when there is nothing to say (no labels, a baseline family)."""
    started = time.monotonic()
    config = replace(config, family=encoder.family)
    if not config.family_record.trained or len({e.label for e in entries if e.label is not None}) < 2:
        return None
    check = BaselineCheck(encoder.family)
    try:
        _measure(check, encoder, entries, failed, embedded, config, progress, workers)
    except SimsearchError as exc:  # an image changed since it was indexed, say: the index itself is fine
        check.reason = f"could not be measured ({exc.reason()})"
    except np.linalg.LinAlgError as exc:
        check.reason = f"could not be measured (PCA: {exc})"
    check.seconds = time.monotonic() - started
    if check.reason is not None:
        check.accuracy = {}
    return check


def _measure(
    check: BaselineCheck,
    encoder: Encoder,
    entries: Sequence[ImageFileEntry],
    failed: Collection[str],
    embedded: dict[str, np.ndarray],
    config: TrainConfig,
    progress: Progress,
    workers: int,
) -> None:
    # The training's sample, as it loaded it (files that failed to decode dropped), and its split.
    sample = [e for e in sample_entries(entries, config.max_images, config.seed) if e.rel not in failed]
    y, classes = encode_labels([e.label for e in sample])
    plan = plan_calibration(y, classes, config.uses_labels, config.folds)
    if plan.method == METHOD_CROSS_FITTED:
        check.reason = "the final model trained on every image (its threshold was cross-fitted), so none was held out"
        return
    if len(np.unique(y[y >= 0])) < 2:
        return
    split = split_for_validation(y, config.val_fraction, config.seed, plan.groups, plan.method == METHOD_IDENTITIES)
    recorded = encoder.training.get("validation") or {}
    if (
        encoder.training.get("images") != len(sample)
        or recorded.get("images") != len(split.val)
        or recorded.get("split") != split.mode
    ):
        check.reason = "the training's held-out split could not be reproduced"
        return
    check.split = split.mode
    rng = np.random.default_rng(config.seed)
    usable = np.array([e.rel in embedded and y[n] >= 0 for n, e in enumerate(sample)], bool)
    held, trained = split.val[usable[split.val]], split.train[usable[split.train]]
    if len(held) > MAX_QUERIES:
        held = np.sort(rng.choice(held, MAX_QUERIES, replace=False))
    d_pixels = encoder.preprocess.channels * encoder.preprocess.size[0] * encoder.preprocess.size[1]
    room = max(0, min(MAX_POOL, MAX_POOL_BYTES // (4 * d_pixels)) - len(held))
    if len(trained) > room:
        trained = np.sort(rng.choice(trained, room, replace=False))
    pool = np.concatenate([held, trained])
    labels = y[pool]
    counts = Counter(labels.tolist())
    answerable = np.array([counts[label] > 1 for label in labels[: len(held)]], bool)
    if len(held) < MIN_QUERIES:
        check.reason = f"only {len(held)} labelled images were held out of training (at least {MIN_QUERIES} are needed)"
        return
    if answerable.sum() < MIN_QUERIES:
        check.reason = (
            f"only {answerable.sum()} held-out images share their label with another image (at least {MIN_QUERIES} "
            "are needed)"
        )
        return
    queries = np.flatnonzero(answerable)  # positions in the pool
    progress(TASK, 0, 3)
    z = np.stack([embedded[sample[n].rel] for n in pool])
    check.accuracy[encoder.family] = vote_accuracy(z, queries, labels, encoder.metric)
    progress(TASK, 1, 3)
    x = _baseline_pixels([sample[n] for n in pool], encoder.preprocess, workers)
    check.accuracy["pca"] = vote_accuracy(_pca(x, len(held), encoder.dim, config.seed), queries, labels, "l2")
    progress(TASK, 2, 3)
    check.accuracy["pixels"] = vote_accuracy(x, queries, labels, "l2")
    progress(TASK, 3, 3)
    check.queries, check.pool = len(queries), len(pool)


def _baseline_pixels(entries: Sequence[ImageFileEntry], spec: Preprocess, workers: int) -> np.ndarray:
    """Plain [0, 1] pixels (n, C·H·W) of ``entries`` at ``spec``'s size and channels: ``eval``'s baseline input."""
    plain = Preprocess(size=spec.size, channels=spec.channels, invert=spec.invert, resize="letterbox")
    rows = []
    names = [e.rel for e in entries]
    for item in load_images([e.path for e in entries], plain, workers, names, channels="convert"):
        if not isinstance(item, LoadedImage):  # decoded a moment ago: changed or removed since
            raise item if isinstance(item, SimsearchError) else SimsearchError("an image changed while it was read")
        rows.append(item.array.reshape(-1))
    return np.stack(rows)


def _pca(x: np.ndarray, skip: int, dim: int, seed: int) -> np.ndarray:
    """``x`` projected on the principal components of at most ``PCA_IMAGES`` of its rows from ``skip`` on (the
    training images: no held-out image is fitted on)."""
    fit = np.arange(skip, len(x))
    if len(fit) > PCA_IMAGES:
        fit = np.sort(np.random.default_rng(seed).choice(fit, PCA_IMAGES, replace=False))
    if len(fit) < 2:  # every pool image is held out (a small folder): fit on them, without labels all the same
        fit = np.arange(len(x))
    mean = x[fit].mean(0)
    centred = x[fit] - mean
    # The components from the n × n Gram matrix (n ≤ PCA_IMAGES): far cheaper than an SVD of n × pixels.
    values, vectors = np.linalg.eigh((centred @ centred.T).astype(np.float64))
    top = np.argsort(values)[::-1][:dim]
    top = top[values[top] > values.max() * 1e-10]
    components = (centred.T @ vectors[:, top].astype(np.float32)) / np.sqrt(values[top]).astype(np.float32)
    return np.ascontiguousarray((x - mean) @ components, dtype=np.float32)


def vote_accuracy(z: np.ndarray, queries: np.ndarray, labels: np.ndarray, metric: str, k: int = K) -> float:
    """The share of ``queries`` (rows of ``z``) whose ``k`` nearest other rows vote for their own label, voting as
    ``query`` does (``votes.DEFAULT_VOTE``: weighted by distance; a tie goes to the tied label met first)."""
    z = np.asarray(z, np.float32)
    if metric == "cosine":
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - (z[queries] @ z.T)
    else:
        squares = np.einsum("nd,nd->n", z, z)
        distance = np.sqrt(np.maximum(squares[queries, None] + squares[None, :] - 2.0 * (z[queries] @ z.T), 0.0))
    distance[np.arange(len(queries)), queries] = np.inf  # not itself
    width = min(k, len(z) - 1)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :width]
    right = 0
    for n, (query, row) in enumerate(zip(queries, nearest, strict=True)):
        answer = vote(labels[row].tolist(), distance[n, row], DEFAULT_VOTE)
        right += answer.label == labels[query]
    return float(right / len(queries))
