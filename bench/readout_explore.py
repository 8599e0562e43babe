"""What a Siamese model's layers hold for unseen identities: the head's embedding against the feature map under it.

    python bench/readout_explore.py faces '{}'
    python bench/readout_explore.py faces '{"epochs": 30, "dim": 256, "seed": 1}'

The folds and training of ``bench/verification_explore.py`` (one model per identity fold, no cross-fitting), then
each fold's held-out pairs scored by, each vector put on the unit sphere first:

- ``emb``: the model's embedding (the head's output), as search uses it without ``--readout``;
- ``flat-cos``: the last feature map flattened (what ``--readout features`` searches with);
- ``pooled-cos``: the mean and the maximum of every stage's map, side by side;
- ``pre-lda-cos``, ``pooled-lda-cos``, ``flat-lda-cos``: those through an LDA fitted on the fold's training
  identities (Ledoit–Wolf shrinkage; the flattened map, thousands wide, by the SVD solver without it), normalised;
- ``pcaM`` / ``pcaMc``: the normalised feature map projected on its first M principal axes over the training
  identities' images (``c``: centred first), normalised again: whether a narrower vector keeps what it gains.

Prints each fold's EERs and their means; the verdicts are in ``bench/results/verification-exploration.md``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.verification_explore import trained_folds
from simsearch import metrics
from simsearch.embedding import embed_files
from simsearch.io import load_images
from simsearch.io.channels import current_rule
from simsearch.models.encoder import Encoder


def layers(encoder: Encoder, paths: list[Path]) -> dict[str, np.ndarray]:
    """The head's output before normalising (``pre``), every stage's pooled map (``pooled``), the last map
    flattened (``flat``)."""
    items = list(load_images(paths, encoder.preprocess, 1, [str(p) for p in paths], channels=current_rule(None)))
    x = torch.from_numpy(np.stack([item.array for item in items]))
    module = encoder.module.eval()
    pooled = []
    with torch.no_grad():
        for n, layer in enumerate(module.features):
            x = layer(x)
            if n % 2 == 1:  # the end of a stage (a stride-2 block, then a stride-1 block)
                pooled.append(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1))
        flat = x.flatten(1)
        return {"pre": module.head(flat).numpy(), "pooled": torch.cat(pooled, 1).numpy(), "flat": flat.numpy()}


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from simsearch.training import TrainConfig

    dataset = sys.argv[1]
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    config = TrainConfig(**{"family": "siamese", "device": "cpu", **overrides})
    results: dict[str, list[float]] = {}
    for fold in trained_folds(dataset, config):
        i, j, same = fold.pairs
        y_train = [str(e.label) for e in fold.train]

        def score(name: str, v: np.ndarray, same: np.ndarray = same, i: np.ndarray = i, j: np.ndarray = j) -> None:
            v = unit(v)
            results.setdefault(name, []).append(
                float(metrics.equal_error_rate(np.linalg.norm(v[i] - v[j], axis=1), same)[0])
            )

        score("emb", embed_files(fold.encoder, [e.path for e in fold.test], convert=True, strict=True).embeddings)
        a = layers(fold.encoder, [e.path for e in fold.train])
        b = layers(fold.encoder, [e.path for e in fold.test])
        for kind in ("pre", "pooled", "flat"):
            wide = a[kind].shape[1] >= 3000
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lda = LinearDiscriminantAnalysis(
                    solver="svd" if wide else "eigen", shrinkage=None if wide else "auto"
                ).fit(a[kind], y_train)
            score(f"{kind}-lda-cos", lda.transform(b[kind]))
            if kind != "pre":
                score(f"{kind}-cos", b[kind])
        train_flat, test_flat = unit(a["flat"]), unit(b["flat"])
        mean = train_flat.mean(0)
        axes = np.linalg.svd(train_flat - mean, full_matrices=False)[2]
        for m in (32, 64, 128):
            score(f"pca{m}c", (test_flat - mean) @ axes[:m].T)
            score(f"pca{m}", test_flat @ axes[:m].T)
        print(fold.k, {n: round(v[-1], 3) for n, v in results.items()}, f"{len(fold.history)} epochs", flush=True)
    print("MEAN", json.dumps(overrides), {n: round(float(np.mean(v)), 4) for n, v in results.items()}, flush=True)


if __name__ == "__main__":
    main()
