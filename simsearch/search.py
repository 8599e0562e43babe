"""Query a collection: nearest neighbours of images, and the label their votes give (unsupervised classification).

This is the public API the CLI calls::

    searcher = Searcher(Collection(Path("indexes/default")))
    results = searcher.query_files([Path("img.png")], k=9)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import vectors
from simsearch.errors import ImageError, ModelError, UsageError
from simsearch.io import LoadedImage, find_images, load_images
from simsearch.store.collection import Collection, embeddings_of, int64_column


@dataclass(frozen=True)
class Neighbour:
    rank: int
    id: int
    distance: float
    path: str
    root: str
    label: str | None


@dataclass
class QueryResult:
    """The neighbours of one query, nearest first, and the label they vote for (None if none is labelled)."""

    query: str
    neighbours: list[Neighbour]
    vote: str | None = None
    vote_share: float = 0.0
    votes: dict[str, int] = field(default_factory=dict)
    #: Open set: the threshold the nearest neighbour was held to, and whether it was beyond it ("unknown").
    threshold: float | None = None
    unknown: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {
            "query": self.query,
            "vote": self.vote,
            "vote_share": self.vote_share,
            "votes": self.votes,
            "neighbours": [n.__dict__ for n in self.neighbours],
        }
        if self.threshold is not None:
            out |= {"threshold": self.threshold, "unknown": self.unknown}
        return out

    def hold_to(self, threshold: float) -> None:
        """Open-set answer: when the nearest neighbour is beyond ``threshold`` the query is "unknown" (no vote)."""
        self.threshold = threshold
        self.unknown = not self.neighbours or self.neighbours[0].distance > threshold
        if self.unknown:
            self.vote, self.vote_share = None, 0.0


def vote_label(labels: Sequence[str | None]) -> tuple[str | None, float, dict[str, int]]:
    """Majority label among ``labels`` (nearest first), its share of all of them, and the tally.

    A tie goes to the label whose first vote is nearest. Unlabelled neighbours count in the denominator.
    """
    tally = Counter(label for label in labels if label is not None)
    if not tally:
        return None, 0.0, {}
    top = max(tally.values())
    winner = next(label for label in labels if label is not None and tally[label] == top)
    return winner, top / len(labels), dict(tally.most_common())


class Searcher:
    """A loaded collection (one consistent generation) ready to answer queries."""

    def __init__(
        self,
        collection: Collection,
        use_gpu: bool = True,
        device: str = "auto",
        nprobe: int | None = None,
        ef: int | None = None,
        float16: bool | None = None,
    ) -> None:
        """``use_gpu``: search on the GPU when FAISS sees one. ``float16``: a flat or IVF-Flat index is held there
        in float16 (half the memory; 2·k candidates re-ranked by exact float32 distances); None: in float32, or
        in float16 when float32 does not fit (then on the CPU when neither does)."""
        self.collection = collection
        snapshot = collection.load()
        self.manifest = snapshot.manifest
        self.metric = snapshot.metric
        self.encoder = collection.load_encoder(snapshot.manifest, device=device)
        info = snapshot.manifest.get("index") or {}
        gpu = use_gpu and vectors.gpu_ready(info, snapshot.meta.num_rows)
        self.index = vectors.to_gpu(snapshot.index, float16=bool(float16)) if gpu else snapshot.index
        if gpu and float16 is None and not self.on_gpu and vectors.gpu_count():  # float32 did not fit
            self.index = vectors.to_gpu(snapshot.index, float16=True)
            float16 = True
        self.float16 = bool(float16) and self.on_gpu
        spec = vectors.IndexSpec.from_json(info) if info.get("type") else vectors.IndexSpec("flat")
        for name, value in (("nprobe", nprobe), ("ef", ef)):
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be at least 1, not {value}")
        self.spec = replace(spec, nprobe=nprobe or spec.nprobe, ef=ef or spec.ef, ef_cpu=ef or spec.ef_cpu)
        vectors.set_search_params(self.index, self.spec)
        self.params = vectors.search_params(self.index, self.spec)
        meta = snapshot.meta
        self.ids = int64_column(meta, "id")
        self.order = np.argsort(self.ids, kind="stable")
        self.sorted_ids = self.ids[self.order]
        self.meta = meta  # paths, roots and labels stay Arrow columns: a row is read when it is an answer
        self.embeddings = embeddings_of(meta)
        # Ids 0..n-1 in some order (a collection never re-indexed): a row is found by one gather.
        self.dense_ids = bool(self.count) and int(self.sorted_ids[-1]) - int(self.sorted_ids[0]) == self.count - 1
        # A GPU search is re-ranked on the GPU too (the embeddings are copied there on the first search).
        self.rerank_on_gpu = self.on_gpu and GpuRerank.available()
        self._rerank: GpuRerank | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    @cached_property
    def row_of_sha(self) -> dict[str, int]:
        """Row of each stored content hash: made on the first query by file, not for embedding queries."""
        return {sha: row for row, sha in enumerate(self.meta.column("sha256").to_pylist())}

    @property
    def on_gpu(self) -> bool:
        return vectors.is_on_gpu(self.index)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Metadata row numbers of FAISS ids (any shape)."""
        if self.dense_ids:
            return self.order[ids - self.sorted_ids[0]]
        return self.order[np.searchsorted(self.sorted_ids, ids)]

    def search_embeddings(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows for each query embedding: (distances (q, k'), rows (q, k')), k' = min(k, n).

        Distances are recomputed exactly from the stored embeddings, so an indexed image queried by itself
        is at distance 0 whatever rounding the index's fast path introduced. An approximate index may find
        fewer than k' neighbours for a query: the missing places have distance ``inf``.
        """
        if k < 1:
            raise UsageError(f"-k must be at least 1, not {k}")
        dim = self.embeddings.shape[1]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise UsageError(f"query embeddings must have shape (q, {dim}), not {queries.shape}")
        if not np.isfinite(queries).all():  # FAISS would answer with made-up neighbours
            raise ModelError(
                f"{self.collection.path}: the encoder gave a NaN or infinite embedding — check the query images, "
                "or rebuild the collection with another model"
            )
        # Coarse codes (IVF-PQ) fetch refine·k candidates for the exact re-ranking; float16 vectors twice k.
        wider = self.spec.refine or (2 if self.float16 else 1)
        _, ids = vectors.search(self.index, queries, k * wider, self.metric, self.params)
        k = min(k, self.count)
        found = ids >= 0  # an approximate index may return fewer than asked for
        rows = self.rows_of(np.where(found, ids, self.sorted_ids[0] if self.count else 0))
        if self.rerank_on_gpu:
            if self._rerank is None:
                self._rerank = GpuRerank(self.embeddings, self.metric)
            distances, order = self._rerank(queries, rows, found, k)
        else:
            with np.errstate(over="ignore"):
                distances = vectors.exact_distances(queries, self.embeddings[rows], self.metric)
            distances[~found] = np.inf
            order = np.argsort(distances, axis=1, kind="stable")[:, :k]
            distances = np.take_along_axis(distances, order, 1)
        if np.isnan(distances).any() or (np.isinf(distances) & np.take_along_axis(found, order, 1)).any():
            raise ModelError(  # float32 overflow: the order would be meaningless
                f"{self.collection.path}: a query embedding is too large to compare with the collection's "
                "(its distances overflow) — check the query images, or rebuild the collection with another model"
            )
        return distances, np.take_along_axis(rows, order, 1)

    def query_arrays(self, images: np.ndarray, names: Sequence[str], k: int) -> list[QueryResult]:
        """Neighbours and votes for preprocessed ``images`` (q, C, H, W)."""
        return self.query_embeddings(self.encoder.embed(images), names, k)

    def query_embeddings(self, queries: np.ndarray, names: Sequence[str], k: int) -> list[QueryResult]:
        """Neighbours and votes for query embeddings (q, d)."""
        distances, rows = self.search_embeddings(queries, k)
        # Cell by cell: Arrow's take would import pandas (a second on a cold query).
        columns = [self.meta.column(c) for c in ("path", "root", "label")]
        results = []
        for name, dist_row, row_row in zip(names, distances, rows, strict=True):
            neighbours = [
                Neighbour(rank + 1, int(self.ids[r]), float(d), *(c[int(r)].as_py() for c in columns))
                for rank, (d, r) in enumerate(zip(dist_row, row_row, strict=True))
                if np.isfinite(d)
            ]
            vote, share, tally = vote_label([n.label for n in neighbours])
            results.append(QueryResult(name, neighbours, vote, share, tally))
        return results

    def query_files(
        self,
        paths: Sequence[Path],
        k: int,
        batch_size: int = 256,
        on_error: Callable[[ImageError], None] | None = None,
    ) -> list[QueryResult]:
        """Neighbours and votes for image files, embedded in batches with one FAISS search per batch.

        An unreadable file raises ``ImageError``, or, with ``on_error``, is passed to it and left out.
        A file whose content (sha256) is already in the collection is not embedded again: its stored
        embedding is used, so an indexed image queried by itself is at distance exactly 0 (a convolution
        run on a batch of another size can differ in the last bits).
        """
        results: list[QueryResult] = []
        for start in range(0, len(paths), batch_size):
            batch = list(paths[start : start + batch_size])
            loaded: list[LoadedImage] = []
            names: list[str] = []
            for path, item in zip(
                batch, load_images(batch, self.encoder.preprocess, names=[str(p) for p in batch]), strict=True
            ):
                if isinstance(item, ImageError):
                    if on_error is None:
                        raise item
                    on_error(item)
                    continue
                assert item is not None
                loaded.append(item)
                names.append(str(path))
            if loaded:
                results += self.query_embeddings(self.embed_loaded(loaded), names, k)
        return results

    def embed_loaded(self, loaded: Sequence[LoadedImage]) -> np.ndarray:
        """Embeddings (n, d) of loaded images: stored ones for indexed content, the encoder's for the rest."""
        rows = [self.row_of_sha.get(item.sha256) for item in loaded]
        out = np.empty((len(loaded), self.embeddings.shape[1]), dtype=np.float32)
        new = [i for i, row in enumerate(rows) if row is None]
        if new:
            out[new] = self.encoder.embed(np.stack([loaded[i].array for i in new]))
        for i, row in enumerate(rows):
            if row is not None:
                out[i] = self.embeddings[row]
        return out


class GpuRerank:
    """Exact re-ranking on the GPU: the collection's float32 embeddings held there (as torch tensors), and each
    query's candidates gathered, measured and sorted there, so that a GPU search is not left waiting on the
    CPU. The same float32 arithmetic as ``vectors.exact_distances``: a stored vector is at distance 0 from
    itself."""

    def __init__(self, embeddings: np.ndarray, metric: str) -> None:
        import torch

        self.torch, self.metric = torch, metric
        self.device = torch.device("cuda")
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(self.device)
        if metric == "cosine":
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.embeddings = x

    @staticmethod
    def available() -> bool:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return False
        return torch.cuda.is_available()

    def __call__(
        self, queries: np.ndarray, rows: np.ndarray, found: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances (q, k), order (q, k)): the k nearest of each query's candidate ``rows``."""
        torch = self.torch
        q = torch.from_numpy(vectors.prepare(queries, self.metric)).to(self.device)
        r = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device)
        v = self.embeddings[r]  # (q, k', d)
        if self.metric == "cosine":
            distances = 1.0 - torch.einsum("qd,qkd->qk", q, v)
        else:
            diff = v - q[:, None, :]
            distances = torch.einsum("qkd,qkd->qk", diff, diff).sqrt()
        distances = distances.masked_fill(~torch.from_numpy(found).to(self.device), float("inf"))
        distances, order = torch.sort(distances, dim=1, stable=True)
        return distances[:, :k].cpu().numpy(), order[:, :k].cpu().numpy()


def expand_query_paths(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Query arguments → image files: a folder stands for every image under it (recognised by content, in
    path order). Returns the files, and "path: reason" for files under folders that look like images but
    are not, or cannot be read."""
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            entries, skipped = find_images(Path(path))
            files += [e.path for e in entries]
            problems += [f"{Path(path) / s.rel}: {s.reason}" for s in skipped]
        elif Path(path).is_file():
            files.append(Path(path))
        else:
            raise ImageError(f"{path}: no such image file or folder — check the path")
    return files, problems


def vote_accuracy(results: Sequence[QueryResult], truth: Sequence[str | None]) -> float:
    """Share of queries whose voted label equals the true one."""
    if not results:
        return float("nan")
    return sum(r.vote == t for r, t in zip(results, truth, strict=True)) / len(results)
