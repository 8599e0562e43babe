"""FAISS: build, add, remove, search, serialise, GPU placement. NumPy in, NumPy out, no paths.

Every index is wrapped in ``IndexIDMap2`` so that FAISS ids equal the ``id`` column of the metadata.
Distances are returned in the metric's own units: Euclidean distance for ``l2`` (FAISS stores squared
distances; we take the root), ``1 - cosine similarity`` for ``cosine``. Lower is always closer.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

METRICS = ("l2", "cosine")


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with a CPU-only build or no GPU)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def new_index(dim: int, metric: str = "l2") -> Any:
    """An empty exact index with explicit ids: ``IndexIDMap2(IndexFlatL2 | IndexFlatIP)``."""
    _check_metric(metric)
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


def search(index: Any, queries: np.ndarray, k: int, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of ``queries`` (q, d): ``distances`` (q, k') float32 and ``ids`` (q, k') int64
    with k' = min(k, ntotal), nearest first. Lower distance is closer."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    k_eff = min(k, index.ntotal)
    q = prepare(queries, metric)
    if k_eff == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    raw, ids = index.search(q, k_eff)
    return to_distance(raw, metric), ids


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's raw scores → distances: sqrt of squared L2, or 1 - inner product of unit vectors."""
    if metric == "l2":
        return np.sqrt(np.maximum(raw, 0.0)).astype(np.float32)
    return (1.0 - raw).astype(np.float32)


def exact_distances(queries: np.ndarray, vectors: np.ndarray, metric: str = "l2") -> np.ndarray:
    """Pairwise distances between matching rows: ``queries`` (q, d) and ``vectors`` (q, k, d) → (q, k)."""
    q = prepare(queries, metric)
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        return (1.0 - np.einsum("qd,qkd->qk", q, v)).astype(np.float32)
    return np.linalg.norm(v - q[:, None, :], axis=-1).astype(np.float32)


def serialize(index: Any) -> bytes:
    """The index as bytes in FAISS's own format. Pass the CPU index: files are always CPU indexes,
    readable with ``faiss.read_index`` on any machine."""
    if is_on_gpu(index):
        index = faiss.index_gpu_to_cpu(index)
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> Any:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


_GPU_RESOURCES: dict[int, Any] = {}


def gpu_resources(device: int = 0) -> Any:
    """One ``StandardGpuResources`` per GPU for the whole process (FAISS's advice: they hold scratch memory,
    and they must outlive every index placed with them)."""
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[device]


def to_gpu(index: Any, device: int = 0) -> Any:
    """A GPU copy of ``index`` when FAISS sees a GPU, else ``index`` itself.

    If FAISS cannot place this index on the GPU (no memory, an index type without a GPU version), the CPU
    index is returned: search still works, only slower.
    """
    if gpu_count() == 0:
        return index
    try:
        return faiss.index_cpu_to_gpu(gpu_resources(device), device, index)
    except RuntimeError:
        return index


def is_on_gpu(index: Any) -> bool:
    """True when the index, or the index an ``IndexIDMap`` wraps, lives on a GPU."""
    inner = getattr(index, "index", None)
    names = [type(index).__name__]
    if inner is not None:
        names.append(type(faiss.downcast_index(inner)).__name__)
    return any(name.startswith("Gpu") for name in names)
