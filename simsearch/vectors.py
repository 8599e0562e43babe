"""FAISS: build, add, remove, search, serialise, GPU placement. NumPy in, NumPy out, no paths.

Every index is wrapped in ``IndexIDMap2`` so that FAISS ids equal the ``id`` column of the metadata.
Distances are returned in the metric's own units: Euclidean distance for ``l2`` (FAISS stores squared
distances; we take the root), ``1 - cosine similarity`` for ``cosine``. Lower is always closer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
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
    """Pairwise distances between matching rows: ``queries`` (q, d) and ``vectors`` (q, k, d) → (q, k)."""
    q = prepare(queries, metric)
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        return (1.0 - np.einsum("qd,qkd->qk", q, v)).astype(np.float32)
    diff = v - q[:, None, :]
    return np.sqrt(np.einsum("qkd,qkd->qk", diff, diff)).astype(np.float32)  # einsum: no (q, k, d) squares


def serialize(index: Any) -> bytes:
    """The index as bytes in FAISS's own format. Pass the CPU index: files are always CPU indexes,
    readable with ``faiss.read_index`` on any machine."""
    return faiss.serialize_index(_on_cpu(index)).tobytes()


def write_file(index: Any, path: Path) -> None:
    """Write the index to ``path`` in FAISS's own format (what ``serialize`` returns) in chunks of 1 MiB:
    no copy of the whole index is made in memory."""
    with open(path, "wb") as f:  # through Python's file: a full disk raises OSError, as any other write does
        faiss.write_index(_on_cpu(index), faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]


def _on_cpu(index: Any) -> Any:
    """What is written to disk: the index itself, or a CPU copy of a GPU one (files are always CPU indexes)."""
    return faiss.index_gpu_to_cpu(index) if is_on_gpu(index) else index


def deserialize(data: bytes) -> Any:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


_GPU_RESOURCES: dict[int, Any] = {}


def gpu_resources(device: int = 0) -> Any:
    """One ``StandardGpuResources`` per GPU for the whole process (FAISS's advice: they hold scratch memory,
    and they must outlive every index placed with them)."""
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[device]


def to_gpu(index: Any, device: int = 0, float16: bool = False) -> Any:
    """A GPU copy of ``index`` when FAISS sees a GPU, else ``index`` itself. ``float16``: flat and IVF-Flat
    vectors are held as float16 on the GPU (half the memory; distances rounded to about 3 digits).

    If FAISS cannot place this index on the GPU (no memory, an index type without a GPU version), the CPU
    index is returned: search still works, only slower.
    """
    if gpu_count() == 0:
        return index
    options = faiss.GpuClonerOptions()
    options.useFloat16 = float16
    try:
        copy: Any = faiss.index_cpu_to_gpu(gpu_resources(device), device, index, options)
    except RuntimeError:
        return index
    # A GPU CAGRA index reads its vectors from the CPU index it was copied from: that one must outlive it.
    copy.referenced_objects = [*getattr(copy, "referenced_objects", []), index]
    return copy


def cagra_available() -> bool:
    """True when this FAISS build has CAGRA (cuVS) and sees a GPU: the ``cagra`` index type can be built."""
    return gpu_count() > 0 and hasattr(faiss, "GpuIndexCagra")


def is_on_gpu(index: Any) -> bool:
    """True when the index, or the index an ``IndexIDMap`` wraps, lives on a GPU."""
    return any(type(part).__name__.startswith("Gpu") for part in _layers(index))


def _layers(index: Any) -> list[Any]:
    """The index and, for an ``IndexIDMap``, the index it wraps (downcast to its own class)."""
    inner = getattr(index, "index", None)
    return [index] if inner is None else [index, faiss.downcast_index(inner)]


# --- index types ------------------------------------------------------------------------------------------------

INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw", "cagra")
#: Types whose building is faster on a GPU: IVF training (k-means) and adds, and CAGRA (GPU only).
GPU_BUILT = ("ivf", "ivfpq", "cagra")
#: ``--type auto`` keeps exact search up to this many vectors: a flat search over them takes a few
#: milliseconds per query on one core at d = 64, and it needs no training and loses no recall.
EXACT_LIMIT = 200_000
#: Recall@10 that ``auto`` tunes approximate search to reach (measured on vectors left out of training).
RECALL_TARGET = 0.95
#: The fewest vectors the trained types (IVF k-means cells, PQ codebooks) are built from: below this
#: FAISS cannot train them, and exact search is faster anyway.
MIN_TRAINED = {"ivf": 100, "ivfpq": 100}


def too_few(kind: str, n: int) -> str:
    """Why an index of type ``kind`` cannot be built over ``n`` vectors, or ""."""
    least = MIN_TRAINED.get(kind, 0)
    if n >= least:
        return ""
    return (
        f"--type {kind} needs at least {least} images to train on, and the collection would hold {n} — "
        "use --type flat (exact search, and fast at this size)"
    )


@dataclass(frozen=True)
class IndexSpec:
    """An index type and its parameters: ``nlist`` (IVF cells), ``pq_m`` (PQ sub-vectors) and ``pq_bits`` (bits
    per sub-vector code), ``hnsw_m`` (graph degree; for CAGRA, the graph degree is 2·``hnsw_m``);
    and the search-time knobs ``nprobe`` (IVF cells visited), ``ef`` (HNSW search breadth; CAGRA's
    ``itopk_size`` on the GPU), ``ef_cpu`` (CAGRA: HNSW's ``efSearch`` when its graph is searched on a CPU,
    tuned apart) and
    ``refine`` (fetch ``refine``·k candidates and re-rank them by exact distance to the stored embeddings:
    PQ codes alone are too coarse for a good recall)."""

    type: str = "flat"
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    hnsw_m: int | None = None
    nprobe: int | None = None
    ef: int | None = None
    refine: int | None = None
    ef_cpu: int | None = None

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}; expected one of {', '.join(INDEX_TYPES)}")

    @property
    def exact(self) -> bool:
        return self.type == "flat"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(
            **{
                k: data[k]
                for k in ("type", "nlist", "pq_m", "pq_bits", "hnsw_m", "nprobe", "ef", "refine", "ef_cpu")
                if k in data
            }
        )


def default_spec(kind: str, n: int, dim: int) -> IndexSpec:
    """Parameters for ``kind`` at ``n`` vectors of ``dim``: about 4·√n IVF cells (a power of two, at least 16,
    and at least 39 training vectors each); PQ with 4 dimensions per byte-sized code; HNSW with 32 links."""
    if kind == "auto":
        kind = "flat" if n <= EXACT_LIMIT else "ivf"
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", hnsw_m=32, ef=64)
    if kind == "cagra":
        return IndexSpec("cagra", hnsw_m=16, ef=64)
    trainable = int(n * 0.9)  # build_tuned keeps up to a tenth out of training, to measure recall on
    nlist = 1 << max(4, round(math.log2(max(4 * math.sqrt(max(n, 1)), 16))))
    nlist = max(1, min(nlist, trainable // 39 or 1))
    if kind == "ivf":
        return IndexSpec("ivf", nlist=nlist, nprobe=min(nlist, 16))
    pq_m = next(m for m in (dim // 4, dim // 2, dim // 8, dim, 1) if m >= 1 and dim % m == 0)
    # 8-bit codes need 256 centroids per sub-vector, so about 10,000 training vectors; fewer get fewer bits.
    pq_bits = max(1, min(8, int(math.log2(max(trainable, 2) / 39)))) if trainable < 256 * 39 else 8
    return IndexSpec("ivfpq", nlist=nlist, pq_m=pq_m, pq_bits=pq_bits, nprobe=min(nlist, 16), refine=8)


def _faiss_metric(metric: str) -> int:
    _check_metric(metric)
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def empty_index(spec: IndexSpec, dim: int, metric: str = "l2") -> Any:
    """An empty index of ``spec``'s type; IVF types need ``train`` before vectors are added. A ``cagra`` index
    is a GPU index (``cagra_available``): its graph is built by its one ``add_with_ids``."""
    if spec.type == "flat":
        return new_index(dim, metric)
    fmetric = _faiss_metric(metric)
    if spec.type == "cagra":
        config = faiss.GpuIndexCagraConfig()  # type: ignore[attr-defined]
        config.graph_degree = 2 * (spec.hnsw_m or 16)
        config.intermediate_graph_degree = 4 * (spec.hnsw_m or 16)
        return faiss.IndexIDMap2(faiss.GpuIndexCagra(gpu_resources(), dim, fmetric, config))  # type: ignore[attr-defined]
    if spec.type == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, spec.hnsw_m or 32, fmetric)
        graph.hnsw.efConstruction = 80
        return faiss.IndexIDMap2(graph)
    quantizer: Any = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    index: Any
    if spec.type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist or 1, fmetric)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist or 1, spec.pq_m or 1, spec.pq_bits or 8, fmetric)
    return index  # FAISS's Python layer keeps the quantizer alive as long as the index


def build_index(
    spec: IndexSpec,
    vectors: np.ndarray,
    ids: np.ndarray,
    metric: str = "l2",
    seed: int = 0,
    train_size: int | None = None,
    holdout: np.ndarray | None = None,
    on_gpu: bool = False,
) -> Any:
    """An index of ``spec`` holding ``vectors`` under ``ids``; IVF types are first trained on a random sample
    of them (at most ``train_size``: default 64 per cell, at least 100,000) that leaves out the rows
    ``holdout`` (so that recall measured on those rows is measured on vectors the training never saw).
    Search parameters are applied.

    With ``on_gpu``, IVF types are trained and filled on the GPU and the GPU index is returned (``_on_cpu``
    copies it back); ``cagra`` is always built on the GPU, and returned there only with ``on_gpu``. Without a
    GPU, a ``cagra`` spec is built as the HNSW graph it is searched as on a CPU."""
    x = prepare(vectors, metric)
    spec = buildable(spec, len(x), x.shape[1])
    if spec.type == "cagra":
        index = empty_index(spec, x.shape[1], metric)
        if len(x):
            index.train(x)  # builds the graph; the add that follows only takes the ids
            index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
        return index if on_gpu else _on_cpu(index)
    index = empty_index(spec, x.shape[1], metric)
    if on_gpu and spec.type in GPU_BUILT:
        index = to_gpu(index)
    if spec.type in ("ivf", "ivfpq"):
        rng = np.random.default_rng(seed)
        pool = np.setdiff1d(np.arange(len(x)), holdout) if holdout is not None else np.arange(len(x))
        size = train_size or max(100_000, 64 * (spec.nlist or 1))
        index.train(x[np.sort(rng.choice(pool, size, replace=False))] if len(pool) > size else x[pool])
    for start in range(0, len(x), 100_000):
        add_vectors(index, x[start : start + 100_000], ids[start : start + 100_000], "l2")
    set_search_params(index, spec)
    return index


def buildable(spec: IndexSpec, n: int, dim: int) -> IndexSpec:
    """``spec``, or where CAGRA cannot be built (no GPU, or FAISS without cuVS) the HNSW index built instead."""
    return default_spec("hnsw", n, dim) if spec.type == "cagra" and not cagra_available() else spec


def set_search_params(index: Any, spec: IndexSpec) -> None:
    """Apply ``nprobe`` / ``ef`` to an index (CPU or GPU, bare or wrapped). A GPU CAGRA index takes its
    breadth with each search instead: see ``search_params``."""
    if is_cagra_on_gpu(index):
        return
    space = (
        faiss.GpuParameterSpace()
        if is_on_gpu(index) and hasattr(faiss, "GpuParameterSpace")
        else faiss.ParameterSpace()
    )
    if spec.nprobe is not None and spec.type in ("ivf", "ivfpq"):
        space.set_index_parameter(index, "nprobe", int(spec.nprobe))
    ef = (spec.ef_cpu or spec.ef) if spec.type == "cagra" else spec.ef
    if ef is not None and spec.type in ("hnsw", "cagra"):
        space.set_index_parameter(index, "efSearch", int(ef))


def is_cagra_on_gpu(index: Any) -> bool:
    return any(type(part).__name__ == "GpuIndexCagra" for part in _layers(index))


def search_params(index: Any, spec: IndexSpec) -> Any:
    """The parameters ``search`` passes to FAISS with each call: ``itopk_size`` for a GPU CAGRA index (the
    breadth of its search), None for every other index (``set_search_params`` has set theirs)."""
    if not is_cagra_on_gpu(index) or spec.ef is None:
        return None
    params = faiss.SearchParametersCagra()  # type: ignore[attr-defined]
    params.itopk_size = int(spec.ef)
    return params


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


def recall_at_k(
    index: Any,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    metric: str = "l2",
    refine: int | None = None,
    query_ids: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    params: Any = None,
) -> float:
    """Share of the exact k nearest ``ids`` (brute force over ``vectors``, or ``truth`` from
    ``exact_neighbours``) that ``index`` returns (after re-ranking ``refine``·k candidates, when given). With
    ``query_ids``, the queries are stored vectors: each one's own id is left out of both lists."""
    if truth is None:
        truth = exact_neighbours(vectors, ids, queries, k, metric, query_ids)
    extra = 1 if query_ids is not None else 0
    if refine:
        _, found = search_refined(index, queries, k + extra, metric, refine, lookup(vectors, ids), params)
    else:
        _, found = search(index, queries, k + extra, metric, params)
    if query_ids is not None:
        found = np.array([[i for i in row if i != own][:k] for row, own in zip(found, query_ids, strict=True)])
    hits = sum(len(set(t[t >= 0]) & set(f[f >= 0])) for t, f in zip(truth, found, strict=True))
    return hits / max(1, truth.size)


def exact_neighbours(
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    metric: str = "l2",
    query_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The ids (q, k) of each query's k nearest ``vectors`` by brute force (its own id left out, with
    ``query_ids``): the ground truth that recall is measured against."""
    exact = new_index(vectors.shape[1], metric)
    add_vectors(exact, vectors, ids, metric)
    extra = 1 if query_ids is not None else 0
    _, truth = search(exact, queries, k + extra, metric)
    if query_ids is not None:
        truth = np.array([[i for i in row if i != own][:k] for row, own in zip(truth, query_ids, strict=True)])
    return truth


def tune(
    spec: IndexSpec,
    index: Any,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    metric: str = "l2",
    target: float = RECALL_TARGET,
    k: int = 10,
    query_ids: np.ndarray | None = None,
) -> tuple[IndexSpec, float]:
    """The smallest ``nprobe`` (IVF) or ``ef`` (HNSW, CAGRA) whose recall@k on ``queries`` reaches ``target``
    (doubling from 1, or 16 for ``ef``), and that recall; the largest tried when none reaches it."""
    if spec.exact:
        return spec, 1.0
    ivf = spec.type in ("ivf", "ivfpq")
    limit = (spec.nlist or 1) if ivf else 512 if is_cagra_on_gpu(index) else 4096
    value = 1 if ivf else 16
    truth = exact_neighbours(vectors, ids, queries, k, metric, query_ids)
    while True:
        candidate = replace(spec, nprobe=min(value, limit)) if ivf else replace(spec, ef=min(value, limit))
        set_search_params(index, candidate)
        params = search_params(index, candidate)
        recall = recall_at_k(index, vectors, ids, queries, k, metric, candidate.refine, query_ids, truth, params)
        if recall >= target or value >= limit:
            return candidate, recall
        value *= 2


def describe(index: Any) -> str:
    """FAISS's class names from the outside in, e.g. ``IndexIDMap2(IndexHNSWFlat)``."""
    outer = type(index).__name__
    inner = getattr(index, "index", None)
    return f"{outer}({type(faiss.downcast_index(inner)).__name__})" if inner is not None else outer


def plan(requested: str, n: int, dim: int, current: IndexSpec | None, trained_on: int | None) -> IndexSpec | None:
    """The index a collection of ``n`` vectors should have now, or None to keep ``current``.

    ``auto`` keeps exact search up to ``EXACT_LIMIT`` vectors and an approximate type beyond (the current
    one if approximate, else IVF). An IVF index is retrained once the collection has grown four-fold since
    its training, as its cells are then too crowded. A CAGRA graph is rebuilt whenever the collection has
    changed since it was built and a GPU can rebuild it: vectors added on a CPU go into its HNSW form only,
    and the GPU takes only a graph that CAGRA built (see ``gpu_ready``). ``ValueError`` (``too_few``): ``n`` is
    too few vectors to build the requested type from.
    """
    if requested == "auto":
        kind = "flat" if n <= EXACT_LIMIT else (current.type if current and not current.exact else "ivf")
    else:
        kind = requested
    if too_few(kind, n):
        raise ValueError(too_few(kind, n))
    if current is None or current.type != kind:
        return default_spec(kind, n, dim)
    if kind in ("ivf", "ivfpq") and trained_on and n > 4 * trained_on:
        return default_spec(kind, n, dim)
    if kind == "cagra" and trained_on != n and cagra_available():
        return default_spec(kind, n, dim)
    return None


def gpu_ready(info: dict[str, Any], count: int) -> bool:
    """Whether a collection's index (its manifest record ``info``, ``count`` vectors) may be copied to a GPU:
    every type may, except a CAGRA graph that vectors were added to on a CPU since CAGRA built it."""
    return info.get("type") != "cagra" or info.get("trained_on") == count


def build_tuned(
    spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, metric: str = "l2", seed: int = 0, n_queries: int = 1000
) -> tuple[Any, IndexSpec, dict[str, Any]]:
    """Build ``spec`` over ``vectors``, tune its search breadth on up to ``n_queries`` stored vectors left out of
    training, and return the CPU index, the tuned spec and the record for the manifest (with its recall@10).

    When FAISS sees a GPU, IVF and CAGRA indexes are built and tuned there (``build_index``); a build the GPU
    cannot take (no memory, PQ codes under 8 bits) is made on the CPU instead. Without a GPU, ``cagra`` is
    recorded as the ``hnsw`` index it is then built as."""
    rng = np.random.default_rng(seed)
    n_held = min(n_queries, max(1, len(vectors) // 10))
    held = np.sort(rng.choice(len(vectors), n_held, replace=False)) if len(vectors) else np.zeros(0, np.int64)
    spec = buildable(spec, len(vectors), vectors.shape[1])
    gpu_build = gpu_count() > 0 and spec.type in GPU_BUILT
    try:
        index = build_index(spec, vectors, ids, metric, seed, holdout=held, on_gpu=gpu_build)
    except RuntimeError:
        if not gpu_build or spec.type == "cagra":
            raise
        index = build_index(spec, vectors, ids, metric, seed, holdout=held)
    recall = 1.0
    if not spec.exact and len(vectors) > 10:
        spec, recall = tune(spec, index, vectors, ids, vectors[held], metric, query_ids=ids[held])
    on_gpu = is_on_gpu(index)  # a GPU build that FAISS could not place there stayed on the CPU
    if on_gpu:
        index = _on_cpu(index)
    extra: dict[str, Any] = {}
    if spec.type == "cagra" and len(vectors) > 10:  # the CPU searches the same graph as HNSW: its own breadth
        cpu, cpu_recall = tune(
            IndexSpec("hnsw", ef=spec.ef), index, vectors, ids, vectors[held], metric, query_ids=ids[held]
        )
        spec = replace(spec, ef_cpu=cpu.ef)
        extra["recall_at_10_cpu"] = round(cpu_recall, 4)
    set_search_params(index, spec)
    info = {
        **spec.to_json(),
        "exact": spec.exact,
        "factory": describe(index),
        "built_on": "gpu" if on_gpu else "cpu",
        "trained_on": len(vectors),
        "recall_at_10": round(recall, 4) if not spec.exact else 1.0,
        "recall_queries": 0 if spec.exact else int(n_held),
        **extra,
    }
    return index, spec, info
