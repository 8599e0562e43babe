"""Query a collection: nearest neighbours of images, and the label their votes give (unsupervised classification).

This is the public API the CLI calls::

    searcher = Searcher(Collection(Path("indexes/default")))
    results = searcher.query_files([Path("img.png")], k=9)
    searcher.reload_if_newer()  # a server: pick up what `index` has committed since
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import vectors
from simsearch.embedding import check_metric, embed_files
from simsearch.errors import CollectionError, ImageError, ModelError, UsageError, option
from simsearch.io import find_images, source_names
from simsearch.models.encoder import Encoder
from simsearch.models.novelty import REMEDY, unfamiliar, unfamiliar_text
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
    #: Whether the query image is unlike the images the encoder was trained on (``models.novelty``); None when
    #: the encoder cannot tell (no novelty reference), or for a query given as an embedding.
    unfamiliar: bool | None = None

    @property
    def reason(self) -> str | None:
        """Why an open-set query is "unknown": an unfamiliar input, or a nearest neighbour beyond the threshold."""
        if not self.unknown or self.threshold is None:
            return None
        if self.unfamiliar:
            return f"{unfamiliar_text(self.query)} — {REMEDY}"
        if not self.neighbours:
            return "no neighbours"
        return f"nearest {self.neighbours[0].distance:.4f} > threshold {self.threshold:.4f}"

    def to_json(self) -> dict[str, Any]:
        out = {
            "query": self.query,
            "vote": self.vote,
            "vote_share": self.vote_share,
            "votes": self.votes,
            "neighbours": [n.__dict__ for n in self.neighbours],
            "unfamiliar": self.unfamiliar,
        }
        if self.threshold is not None:
            out |= {"threshold": self.threshold, "unknown": self.unknown, "reason": self.reason}
        return out

    def hold_to(self, threshold: float) -> None:
        """Open-set answer: the query is "unknown" (no vote) when the nearest neighbour is beyond ``threshold``, or
        when the query is unlike the images the encoder was trained on (``unfamiliar``)."""
        self.threshold = threshold
        self.unknown = bool(self.unfamiliar) or not self.neighbours or self.neighbours[0].distance > threshold
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


@dataclass(eq=False)
class Generation:
    """One loaded generation of a collection and everything a query reads from it, computed once: a reload swaps
    it whole, and a query reads the one it started with to the end, so its answer is from one generation.

    Two things are made on first use (a GPU copy of the embeddings for re-ranking, and the row of each content
    hash for queries by file), each under ``lock``: a searcher can be shared by threads."""

    manifest: dict[str, Any]
    encoder: Encoder
    index: Any
    spec: vectors.IndexSpec
    params: Any
    float16: bool
    meta: pa.Table  # paths, roots and labels stay Arrow columns: a row is read when it is an answer
    ids: np.ndarray
    embeddings: np.ndarray
    rerank_on_gpu: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    _row_of_sha: dict[str, int] | None = None
    _rerank: GpuRerank | None = None

    def __post_init__(self) -> None:
        self.order = np.argsort(self.ids, kind="stable")
        self.sorted_ids = self.ids[self.order]
        # Ids 0..n-1 in some order (a collection never re-indexed): a row is found by one gather.
        self.dense_ids = bool(self.count) and int(self.sorted_ids[-1]) - int(self.sorted_ids[0]) == self.count - 1
        # FAISS GPU indexes are not safe to search from two threads at once: searches on the GPU take turns.
        self.search_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if vectors.is_on_gpu(self.index) else contextlib.nullcontext()
        )

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    def row_of_sha(self) -> dict[str, int]:
        """Row of each stored content hash: made on the first query by file, not for embedding queries."""
        if self._row_of_sha is None:
            with self.lock:
                if self._row_of_sha is None:
                    column = self.meta.column("sha256").to_pylist()
                    self._row_of_sha = {sha: row for row, sha in enumerate(column)}
        return self._row_of_sha

    def stored_embedding(self, sha256: str) -> np.ndarray | None:
        row = self.row_of_sha().get(sha256)
        return None if row is None else self.embeddings[row]

    def rerank(self) -> GpuRerank:
        """The GPU re-ranker, its copy of the embeddings made on the first search."""
        if self._rerank is None:
            with self.lock:
                if self._rerank is None:
                    self._rerank = GpuRerank(self.embeddings, self.metric)
        return self._rerank

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Metadata row numbers of FAISS ids (any shape)."""
        if self.dense_ids:
            return self.order[ids - self.sorted_ids[0]]
        return self.order[np.searchsorted(self.sorted_ids, ids)]


class Searcher:
    """A loaded collection (one consistent generation) ready to answer queries.

    A server can hold one: ``reload_if_newer`` switches to a newer generation once one is committed, and queries
    may run on several threads meanwhile (each is answered from the generation it started with)."""

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
        for name, value in ((option("nprobe"), nprobe), (option("ef"), ef)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, not {value}")
        self.collection = collection
        self.use_gpu, self.device, self.nprobe, self.ef, self.want_float16 = use_gpu, device, nprobe, ef, float16
        self._reload_lock = threading.Lock()
        self._stamp = self._manifest_stamp()
        self._current = self._load(None)

    # --- the generation queries read (each property reads the current one) ---------------------------------------

    @property
    def current(self) -> Generation:
        return self._current

    @property
    def generation(self) -> int:
        return self._current.generation

    @property
    def manifest(self) -> dict[str, Any]:
        return self._current.manifest

    @property
    def metric(self) -> str:
        return self._current.metric

    @property
    def encoder(self) -> Encoder:
        return self._current.encoder

    @property
    def index(self) -> Any:
        return self._current.index

    @property
    def float16(self) -> bool:
        return self._current.float16

    @property
    def meta(self) -> pa.Table:
        return self._current.meta

    @property
    def embeddings(self) -> np.ndarray:
        return self._current.embeddings

    @property
    def dense_ids(self) -> bool:
        return self._current.dense_ids

    @property
    def count(self) -> int:
        return self._current.count

    @property
    def on_gpu(self) -> bool:
        return vectors.is_on_gpu(self._current.index)

    # --- loading and reloading ---------------------------------------------------------------------------------

    def _manifest_stamp(self) -> tuple[int, ...] | None:
        """What changes whenever a commit replaces the manifest (a rename: a new file), read without opening it."""
        try:
            st = os.stat(self.collection.manifest_path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, previous: Generation | None) -> Generation:
        """Load the collection's current generation; its encoder is ``previous``'s when the fingerprint is equal."""
        snapshot = self.collection.load()
        manifest = snapshot.manifest
        fingerprint = manifest["encoder"]["fingerprint"]
        if previous is not None and previous.encoder.fingerprint == fingerprint:
            encoder = previous.encoder
        else:
            encoder = self.collection.load_encoder(manifest, device=self.device)
            encoder.inference_module()  # built now, not by the first of several threads
        check_metric(snapshot.metric, self.collection.path)
        if encoder.metric != snapshot.metric:
            raise CollectionError(
                f"the collection's metric ({snapshot.metric}) is not its encoder's ({encoder.metric})",
                file=self.collection.path,
                remedy=f"rebuild it with {option('rebuild', 'true')}",
            )
        info = manifest.get("index") or {}
        float16 = self.want_float16
        gpu = self.use_gpu and vectors.gpu_ready(info, snapshot.meta.num_rows)
        index = vectors.to_gpu(snapshot.index, float16=bool(float16)) if gpu else snapshot.index
        if gpu and float16 is None and not vectors.is_on_gpu(index) and vectors.gpu_count():  # float32 did not fit
            index = vectors.to_gpu(snapshot.index, float16=True)
            float16 = True
        on_gpu = vectors.is_on_gpu(index)
        spec = vectors.IndexSpec.from_json(info) if info.get("type") else vectors.IndexSpec("flat")
        spec = replace(spec, nprobe=self.nprobe or spec.nprobe, ef=self.ef or spec.ef, ef_cpu=self.ef or spec.ef_cpu)
        vectors.set_search_params(index, spec)
        return Generation(
            manifest=manifest,
            encoder=encoder,
            index=index,
            spec=spec,
            params=vectors.search_params(index, spec),
            float16=bool(float16) and on_gpu,
            meta=snapshot.meta,
            ids=int64_column(snapshot.meta, "id"),
            embeddings=embeddings_of(snapshot.meta),
            # A GPU search is re-ranked on the GPU too (the embeddings are copied there on the first search).
            rerank_on_gpu=on_gpu and GpuRerank.available(),
        )

    def reload_if_newer(self) -> bool:
        """Switch to the collection's newest generation if one was committed since this searcher loaded; returns
        whether it did. Cheap when nothing changed: one ``stat`` of the manifest (a commit replaces it), nothing
        read. Queries running meanwhile finish on the generation they started with; the encoder is loaded again
        only when the collection's has changed (``index --rebuild``). A collection that can no longer be loaded
        raises (and the next call tries again), and the searcher keeps answering from the generation it holds."""
        if self._manifest_stamp() == self._stamp:
            return False
        with self._reload_lock:
            stamp = self._manifest_stamp()  # before reading: a commit landing after it is seen by the next call
            if stamp == self._stamp:
                return False
            current = self._current
            if self.collection.read_manifest() == current.manifest:  # rewritten, but the same generation
                self._stamp = stamp
                return False
            self._current = self._load(current)
            self._stamp = stamp
            return True

    # --- queries -----------------------------------------------------------------------------------------------

    def search_embeddings(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows for each query embedding: (distances (q, k'), rows (q, k')), k' = min(k, n).

        Distances are recomputed exactly from the stored embeddings, so an indexed image queried by itself
        is at distance 0 whatever rounding the index's fast path introduced. An approximate index may find
        fewer than k' neighbours for a query: the missing places have distance ``inf``.
        """
        return self._search(self._current, queries, k)

    def _search(self, g: Generation, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise UsageError(f"{option('k')} must be at least 1, not {k}")
        dim = g.embeddings.shape[1]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise UsageError(f"query embeddings must have shape (q, {dim}), not {queries.shape}")
        if not np.isfinite(queries).all():  # FAISS would answer with made-up neighbours
            raise ModelError(
                "the encoder gave a NaN or infinite embedding",
                file=self.collection.path,
                remedy="check the query images, or rebuild the collection with another model",
            )
        # Coarse codes (IVF-PQ) fetch refine·k candidates for the exact re-ranking; float16 vectors twice k.
        wider = g.spec.refine or (2 if g.float16 else 1)
        with g.search_lock:
            _, ids = vectors.search(g.index, queries, k * wider, g.metric, g.params)
        k = min(k, g.count)
        found = ids >= 0  # an approximate index may return fewer than asked for
        rows = g.rows_of(np.where(found, ids, g.sorted_ids[0] if g.count else 0))
        if g.rerank_on_gpu:
            distances, order = g.rerank()(queries, rows, found, k)
        else:
            with np.errstate(over="ignore"):
                distances = vectors.exact_distances(queries, g.embeddings[rows], g.metric)
            distances[~found] = np.inf
            order = np.argsort(distances, axis=1, kind="stable")[:, :k]
            distances = np.take_along_axis(distances, order, 1)
        if np.isnan(distances).any() or (np.isinf(distances) & np.take_along_axis(found, order, 1)).any():
            raise ModelError(  # float32 overflow: the order would be meaningless
                "a query embedding is too large to compare with the collection's (its distances overflow)",
                file=self.collection.path,
                remedy="check the query images, or rebuild the collection with another model",
            )
        return distances, np.take_along_axis(rows, order, 1)

    def query_arrays(self, images: np.ndarray, names: Sequence[str], k: int) -> list[QueryResult]:
        """Neighbours and votes for preprocessed ``images`` (q, C, H, W)."""
        g = self._current
        results = self._answers(g, g.encoder.embed(images), names, k)
        flags = unfamiliar(g.encoder, images)
        for n, result in enumerate(results):
            result.unfamiliar = None if flags is None else bool(flags[n])
        return results

    def query_embeddings(self, queries: np.ndarray, names: Sequence[str], k: int) -> list[QueryResult]:
        """Neighbours and votes for query embeddings (q, d)."""
        return self._answers(self._current, queries, names, k)

    def _answers(self, g: Generation, queries: np.ndarray, names: Sequence[str], k: int) -> list[QueryResult]:
        distances, rows = self._search(g, queries, k)
        # Cell by cell: Arrow's take would import pandas (a second on a cold query).
        columns = [g.meta.column(c) for c in ("path", "root", "label")]
        results = []
        for name, dist_row, row_row in zip(names, distances, rows, strict=True):
            neighbours = [
                Neighbour(rank + 1, int(g.ids[r]), float(d), *(c[int(r)].as_py() for c in columns))
                for rank, (d, r) in enumerate(zip(dist_row, row_row, strict=True))
                if np.isfinite(d)
            ]
            vote, share, tally = vote_label([n.label for n in neighbours])
            results.append(QueryResult(name, neighbours, vote, share, tally))
        return results

    def query_files(
        self,
        paths: Sequence[Path | bytes],
        k: int,
        batch_size: int = 256,
        on_error: Callable[[ImageError], None] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[QueryResult]:
        """Neighbours and votes for image files, embedded in batches (``embedding.embed_files``, as ``verify``
        and ``eval`` embed them) with one FAISS search per batch.

        An unreadable file raises ``ImageError``, or, with ``on_error``, is passed to it and left out.
        A file whose content (sha256) is already in the collection is not embedded again: its stored
        embedding is used, so an indexed image queried by itself is at distance exactly 0 (a convolution
        run on a batch of another size can differ in the last bits). Images are converted to the encoder's
        channels, as ``index`` converts them. A file may also be given as its bytes (an upload). ``names``: how
        results and errors name the files (default: their paths).
        """
        g = self._current
        names = source_names(paths) if names is None else list(names)
        results: list[QueryResult] = []
        for start in range(0, len(paths), batch_size):
            batch = list(paths[start : start + batch_size])
            batch_names = names[start : start + batch_size]
            embedded = embed_files(
                g.encoder,
                batch,
                names=batch_names,
                convert=True,
                strict=on_error is None,
                stored=g.stored_embedding,
                batch_size=batch_size,
            )
            for _, error in embedded.errors:
                assert on_error is not None
                on_error(error)
            if embedded.kept:
                answers = self._answers(g, embedded.embeddings, [batch_names[n] for n in embedded.kept], k)
                flags = embedded.unfamiliar
                for n, answer in enumerate(answers):
                    answer.unfamiliar = None if flags is None else bool(flags[n])
                results += answers
        return results


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
            raise ImageError("no such image file or folder", file=path, remedy="check the path")
    return files, problems


def vote_accuracy(results: Sequence[QueryResult], truth: Sequence[str | None]) -> float:
    """Share of queries whose voted label equals the true one."""
    if not results:
        return float("nan")
    return sum(r.vote == t for r, t in zip(results, truth, strict=True)) / len(results)
