"""FAISS operations on CPU indexes with ids: new, add, remove, search, exact distances, (de)serialise, the checks
that an index can hold a collection's vectors. NumPy in, NumPy out, no paths.

Every index keeps ids equal to the ``id`` column of the metadata. Distances are returned in the metric's own units:
Euclidean distance for ``l2`` (FAISS stores squared distances; we take the root), ``1 - cosine similarity`` for
``cosine``. Lower is always closer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from simsearch.metrics import METRICS
from simsearch.vectors.gpu import on_cpu


def check_metric(metric: str) -> None:
    """``ValueError`` for a metric simsearch cannot measure (see ``exact_distances``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def new_index(dim: int, metric: str = "l2") -> Any:
    """An empty exact index with explicit ids: ``IndexIDMap2(IndexFlatL2 | IndexFlatIP)``."""
    check_metric(metric)
    flat = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(flat)


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """(n, d) float32, C-contiguous; unit length for cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got shape {x.shape}")
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def add_vectors(index: Any, vectors: np.ndarray, ids: np.ndarray, metric: str = "l2") -> None:
    """Add ``vectors`` (n, d) under ``ids`` (n,) int64."""
    x = prepare(vectors, metric)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(x) != len(ids):
        raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
    if x.shape[1] != index.d:
        raise ValueError(f"vectors have d={x.shape[1]}, index has d={index.d}")
    if len(x):
        index.add_with_ids(x, ids)


def knn_l2(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Rows (q, k) of ``vectors`` (n, d) nearest each query by L2, nearest first: FAISS's exact search (the
    kernel of ``IndexFlatL2``) over the array as it is, with no index holding a copy of it."""
    _, rows = faiss.knn(prepare(queries, "l2"), prepare(vectors, "l2"), k, faiss.METRIC_L2)
    return np.asarray(rows)


def remove_ids(index: Any, ids: np.ndarray) -> int:
    """Remove the given ids; returns how many were removed."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if not len(ids):
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))))


def index_problem(index: Any, dim: int, metric: str) -> str:
    """What makes ``index`` unfit to hold a collection's vectors of ``dim`` and ``metric``, or ""."""
    if getattr(index, "id_map", None) is None and faiss.try_extract_index_ivf(index) is None:
        return f"holds a FAISS {type(index).__name__}, not an index with ids (IndexIDMap2 or IVF)"
    if index.d != dim:
        return f"its vectors have d={index.d}, the collection d={dim}"
    if index.metric_type != (faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT):
        return f"its metric does not match the collection's ({metric})"
    if index_ids(index).size != index.ntotal:
        return "its ids and its vectors disagree"
    return ""


def index_ids(index: Any) -> np.ndarray:
    """The ids an index holds (n,) int64, in storage order: an ``IndexIDMap``'s id map, or the ids an IVF
    index keeps in its inverted lists."""
    id_map = getattr(index, "id_map", None)
    if id_map is not None:
        return faiss.vector_to_array(id_map).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ValueError(f"a FAISS {type(index).__name__} keeps no ids")
    lists: Any = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(ivf.nlist) if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def stored_vectors(index: Any, chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The vectors an index holds as they are, in chunks of (ids (m,) int64, vectors (m, d) float32): flat and
    HNSW storage (behind an ``IndexIDMap2``) and IVF-Flat lists. Nothing for PQ codes, which only approximate
    their vectors. Vectors are as stored: unit length for the cosine metric."""
    id_map = getattr(index, "id_map", None)
    if id_map is not None:
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexHNSW)) or not inner.ntotal:
            return
        ids = faiss.vector_to_array(id_map).astype(np.int64)
        # faiss.contrib.torch_utils (imported with pytorch-metric-learning) swaps reconstruct_n for a torch version
        reconstruct_n = getattr(inner, "reconstruct_n_numpy", inner.reconstruct_n)
        for start in range(0, inner.ntotal, chunk):
            count = min(chunk, inner.ntotal - start)
            yield ids[start : start + count], np.asarray(reconstruct_n(start, count))
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat):
        return
    lists: Any = ivf.invlists
    for cell in range(ivf.nlist):
        size = lists.list_size(cell)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(cell), size).astype(np.int64)
            codes = faiss.rev_swig_ptr(lists.get_codes(cell), size * ivf.code_size)
            yield ids, codes.view(np.float32).reshape(size, ivf.d).copy()


def search(
    index: Any, queries: np.ndarray, k: int, metric: str = "l2", params: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of ``queries`` (q, d): ``distances`` (q, k') float32 and ``ids`` (q, k') int64
    with k' = min(k, ntotal), nearest first. Lower distance is closer. ``params``: FAISS search parameters
    (``search_params`` gives those an index needs)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    k_eff = min(k, index.ntotal)
    q = prepare(queries, metric)
    if k_eff == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    # faiss.contrib.torch_utils (which pytorch-metric-learning imports) swaps ``search`` for one without
    # ``params``, keeping FAISS's own as ``search_numpy``.
    run = getattr(index, "search_numpy", index.search)
    raw, ids = run(q, k_eff, params=params) if params is not None else run(q, k_eff)
    return to_distance(raw, metric), ids


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's raw scores → distances: sqrt of squared L2, or 1 - inner product of unit vectors."""
    if metric == "l2":
        return np.sqrt(np.maximum(raw, 0.0)).astype(np.float32)
    return (1.0 - raw).astype(np.float32)


def exact_distances(queries: np.ndarray, vectors: np.ndarray, metric: str = "l2") -> np.ndarray:
    """The distance simsearch measures everywhere (search re-ranking, verification, calibration, eval): between
    each query and its candidates, ``queries`` (q, d) and ``vectors`` (q, k, d) → (q, k) float32. Euclidean for
    ``l2``; ``1 - cosine similarity`` for ``cosine``. A vector is at distance 0 from itself."""
    check_metric(metric)
    q = prepare(queries, metric)
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        return (1.0 - np.einsum("qd,qkd->qk", q, v)).astype(np.float32)
    diff = v - q[:, None, :]
    return np.sqrt(np.einsum("qkd,qkd->qk", diff, diff)).astype(np.float32)  # einsum: no (q, k, d) squares


def distances(a: np.ndarray, b: np.ndarray, metric: str = "l2") -> np.ndarray:
    """``exact_distances`` between matching rows of ``a`` and ``b`` (n, d) → (n,) float32: pairs to verify."""
    b = np.asarray(b, dtype=np.float32)
    if b.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got shape {b.shape}")
    return exact_distances(a, b[:, None, :], metric)[:, 0]


def serialize(index: Any) -> bytes:
    """The index as bytes in FAISS's own format. Pass the CPU index: files are always CPU indexes,
    readable with ``faiss.read_index`` on any machine."""
    return faiss.serialize_index(on_cpu(index)).tobytes()


def write_file(index: Any, path: Path) -> None:
    """Write the index to ``path`` in FAISS's own format (what ``serialize`` returns) in chunks of 1 MiB:
    no copy of the whole index is made in memory."""
    with open(path, "wb") as f:  # through Python's file: a full disk raises OSError, as any other write does
        faiss.write_index(on_cpu(index), faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]


def deserialize(data: bytes) -> Any:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def supports_removal(index: Any) -> bool:
    """HNSW graphs (CAGRA's too) cannot drop vectors: such an index is rebuilt from the stored embeddings."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") and hasattr(index, "id_map") else index
    return not isinstance(inner, faiss.IndexHNSW)


def search_refined(
    index: Any, queries: np.ndarray, k: int, metric: str, refine: int, vectors_of: Any, params: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """``search`` for ``refine``·k candidates, then exact distances to ``vectors_of(ids)`` (q, k', d) and the
    k nearest of them: (distances, ids), nearest first."""
    _, ids = search(index, queries, k * max(1, refine), metric, params)
    distances = exact_distances(queries, vectors_of(np.maximum(ids, 0)), metric)
    distances[ids < 0] = np.inf  # fewer results than asked for
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, 1), np.take_along_axis(ids, order, 1)


def lookup(vectors: np.ndarray, ids: np.ndarray) -> Any:
    """A function ids (any shape) → their rows of ``vectors`` (ids need not be sorted)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    return lambda wanted: vectors[order[np.searchsorted(sorted_ids, wanted)]]
