"""The whole flow on a sample that ships inside a dependency: scikit-learn's 8×8 handwritten digits.

Exports the digits as PNG files in one folder per label, keeps a stratified share aside as queries, indexes
the rest twice (the default autoencoder, and the raw-pixels baseline), and measures how often the k
neighbours' vote gives the held-out image's true label.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from simsearch.indexing import IndexConfig, IndexReport, index_folder
from simsearch.io import label_of, save_png
from simsearch.progress import Progress, no_progress
from simsearch.search import QueryResult, Searcher, vote_accuracy
from simsearch.store.collection import Collection


@dataclass
class DemoReport:
    images_dir: Path
    queries_dir: Path
    k: int
    reports: dict[str, IndexReport] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    examples: list[QueryResult] = field(default_factory=list)
    n_queries: int = 0


def export_digits(folder: Path, holdout: float = 0.1, seed: int = 0) -> tuple[Path, Path]:
    """Write the digits as ``folder/images/<label>/<n>.png`` and ``folder/queries/<label>/<n>.png``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    images_dir, queries_dir = folder / "images", folder / "queries"
    for label in np.unique(digits.target):
        members = np.flatnonzero(digits.target == label)
        held = set(rng.choice(members, size=max(1, round(len(members) * holdout)), replace=False).tolist())
        for i in members:
            target = queries_dir if i in held else images_dir
            path = target / str(label) / f"{i:04d}.png"
            if not path.exists():
                save_png(pixels[i], path)
    return images_dir, queries_dir


def run_demo(
    folder: Path,
    home: Path,
    k: int = 9,
    config: IndexConfig = IndexConfig(),
    progress: Progress = no_progress,
    families: tuple[str, ...] = ("autoencoder", "pixels"),
) -> DemoReport:
    images_dir, queries_dir = export_digits(folder)
    queries = sorted(queries_dir.rglob("*.png"))
    truth = [label_of(q.relative_to(queries_dir).as_posix()) for q in queries]
    report = DemoReport(images_dir, queries_dir, k, n_queries=len(queries))
    for family in families:
        name = "demo" if family == families[0] else f"demo-{family}"
        collection = Collection(home / name)
        model = None if collection.exists() else family
        cfg = replace(config, model=model)
        report.reports[family] = index_folder(images_dir, collection, cfg, progress)
        results = Searcher(collection).query_files(queries, k)
        report.accuracy[family] = vote_accuracy(results, truth)
        if family == families[0]:
            report.examples = results[:: max(1, len(results) // 3)][:3]
    return report
