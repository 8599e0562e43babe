"""Quick comparisons of Siamese training recipes on the verification benchmarks' identity folds.

    python bench/verification_explore.py faces '{"loss": "arcface"}'
    python bench/verification_explore.py signatures '{"size": "64x128", "resize": "trim"}'

One model per fold of ``bench/quality.py``'s identity protocol (``bench.identity``: faces 4 folds of 7 people,
signatures 3 folds of writers with their forgeries), trained on the other folds' identities *without* the
cross-fitted calibration that ``simsearch train`` adds (one training per fold, so recipes compare in a fifth of
the time), then scored on the held-out pairs: the EER of each fold's model, their mean, and the mean with a
mirrored-copy test-time average. The second argument is JSON of ``TrainConfig`` fields. Appends one line per run
to ``bench/results/verification-exploration.jsonl``. The recipes' verdicts belong in ``bench/quality.py``'s rows.

Back-ends fitted on each fold's training identities (``back_ends``): LDA of the embeddings (eigen solver, shrinkage
``auto`` or 0.5; ``-cos``: its output normalised, what ``training.discriminant`` does), the best hand-crafted row
alone (faces: LDA on pixels; signatures: LBP χ²), and that row fused with the model by adding the two distances'
ranks among the held-out pairs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import SHARED_DATA, copy_identities, identity_folders
from bench.identity import assign_folds
from simsearch import metrics, vectors
from simsearch.embedding import embed_files
from simsearch.io import find_images
from simsearch.models.encoder import Encoder
from simsearch.models.registry import arch_of
from simsearch.training import TrainConfig
from simsearch.training.loop import fit
from simsearch.training.sampling import encode_labels, split_for_validation, verification_pairs
from simsearch.training.train import build_objective, load_training_images

RESULTS = Path(__file__).parent / "results" / "verification-exploration.jsonl"


@dataclass
class FoldModel:
    """One fold's model (``trained_folds``): its training and held-out images, and the held-out pairs (first,
    second, same)."""

    k: int
    encoder: Encoder
    history: list[dict]
    seconds: float
    train: list
    test: list
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]


def train_once(folder: Path, config: TrainConfig) -> tuple[Encoder, list[dict]]:
    entries, _ = find_images(folder)
    images, labels, spec = load_training_images(entries, config)
    y, _ = encode_labels(labels)
    split = split_for_validation(y, config.val_fraction, config.seed)
    torch.manual_seed(config.seed)
    objective = build_objective(torch.from_numpy(images), y, split, spec, config)
    history = fit(objective, config, task="training")
    module = objective.encoder.cpu().eval()
    return Encoder(config.family, arch_of(module), spec, module, history=history), history


def pairs_of(dataset: str, labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if dataset == "faces":
        y, _ = encode_labels(labels)
        return verification_pairs(y, np.random.default_rng(0), max_genuine=10**9)
    first, second, same = [], [], []
    names = np.array(labels)
    for writer in sorted({n for n in labels if not n.endswith("_forg")}):
        genuine, forged = np.flatnonzero(names == writer), np.flatnonzero(names == f"{writer}_forg")
        for a, i in enumerate(genuine):
            for j in [*genuine[a + 1 :], *forged]:
                first.append(i)
                second.append(j)
                same.append(j in genuine)
    return np.array(first), np.array(second), np.array(same)


def mirrored_average(encoder: Encoder, paths: list[Path]) -> np.ndarray:
    plain = encoder.inference_module

    def both() -> object:
        module = plain()
        return lambda batch: F.normalize(module(batch) + module(batch.flip(-1)), dim=1)

    encoder.inference_module = both  # type: ignore[method-assign]
    try:
        return embed_files(encoder, paths, convert=True, strict=True).embeddings
    finally:
        encoder.inference_module = plain  # type: ignore[method-assign]


def back_ends(dataset: str, encoder: Encoder, train: list, test: list, pairs: tuple) -> dict[str, float]:
    """EERs of back-ends fitted on the training identities' embeddings (and pixels), on the held-out pairs."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from bench.classics import Classic, load_images

    i, j, same = pairs
    z_train = embed_files(encoder, [e.path for e in train], convert=True, strict=True).embeddings
    z_test = embed_files(encoder, [e.path for e in test], convert=True, strict=True).embeddings
    y_train = [str(e.label) for e in train]
    out: dict[str, float] = {}

    def eer(d: np.ndarray) -> float:
        return float(metrics.equal_error_rate(d, same)[0])

    plain = vectors.distances(z_test[i], z_test[j], encoder.metric)
    for shrink in ("auto", 0.5):
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrink).fit(z_train, y_train)
        p = lda.transform(z_test)
        out[f"lda-{shrink}"] = eer(np.linalg.norm(p[i] - p[j], axis=1))
        q = p / np.linalg.norm(p, axis=1, keepdims=True)
        out[f"lda-{shrink}-cos"] = eer(np.linalg.norm(q[i] - q[j], axis=1))
    classic = Classic("lbp" if dataset == "signatures" else "lda", dataset)
    classic.fit(load_images([e.path for e in train], dataset), y_train)
    f = classic.features(load_images([e.path for e in test], dataset))
    d_classic = classic.distance(f[i], f[j])
    out[classic.name] = eer(d_classic)

    def ranked(d: np.ndarray) -> np.ndarray:  # each distance as its quantile among these pairs
        return np.argsort(np.argsort(d)) / len(d)

    out[f"fused-{classic.name}"] = eer(ranked(plain) + ranked(d_classic))
    return out


def trained_folds(dataset: str, config: TrainConfig) -> Iterator[FoldModel]:
    """One model per identity fold of ``dataset`` (``bench.identity``), trained on the other folds' identities
    (``train_once``), with the held-out pairs (``pairs_of``) it is scored on."""
    source = SHARED_DATA / ("faces-att" if dataset == "faces" else "signatures-sigcomp")
    identities = identity_folders(source)
    folds = assign_folds(sorted(identities), 4 if dataset == "faces" else 3)
    with tempfile.TemporaryDirectory(prefix="simsearch-explore-") as tmp:
        for k, held in enumerate(folds):
            others = [i for f in folds if f is not held for i in f]
            train = copy_identities(Path(tmp) / f"train{k}", identities, others)
            test = copy_identities(Path(tmp) / f"test{k}", identities, held)
            started = time.perf_counter()
            encoder, history = train_once(train, config)
            seconds = time.perf_counter() - started
            test_entries, _ = find_images(test)
            train_entries, _ = find_images(train)
            pairs = pairs_of(dataset, [str(e.label) for e in test_entries])
            yield FoldModel(k, encoder, history, seconds, train_entries, test_entries, pairs)


def main() -> None:
    dataset = sys.argv[1]
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    config = TrainConfig(**{"family": "siamese", "device": "cpu", **overrides})
    eers, mirrored, seconds = [], [], []
    extra: dict[str, list[float]] = {}
    for fold in trained_folds(dataset, config):
        encoder, (i, j, same) = fold.encoder, fold.pairs
        seconds.append(fold.seconds)
        paths = [e.path for e in fold.test]
        for out, z in ((eers, embed_files(encoder, paths, convert=True, strict=True).embeddings),
                       (mirrored, mirrored_average(encoder, paths))):  # fmt: skip
            out.append(metrics.equal_error_rate(vectors.distances(z[i], z[j], encoder.metric), same)[0])
        for name, eer in back_ends(dataset, encoder, fold.train, fold.test, fold.pairs).items():
            extra.setdefault(name, []).append(eer)
        print(
            f"fold {fold.k}: EER {eers[-1]:.3f} (mirrored average {mirrored[-1]:.3f}), {len(fold.history)} epochs; "
            + ", ".join(f"{name} {v[-1]:.3f}" for name, v in extra.items()),
            flush=True,
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "dataset": dataset,
        "config": overrides,
        "fold_eer": [round(e, 4) for e in eers],
        "mean_eer": round(float(np.mean(eers)), 4),
        "mirrored_average_mean_eer": round(float(np.mean(mirrored)), 4),
        "seconds": round(sum(seconds)),
        "back_ends": {name: round(float(np.mean(v)), 4) for name, v in extra.items()},
        "back_end_folds": {name: [round(e, 4) for e in v] for name, v in extra.items()},
    }
    print(json.dumps(result))
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
