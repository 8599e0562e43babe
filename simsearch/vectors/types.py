"""Index types and their parameters (``IndexSpec``): which type a collection should have (``plan``), empty indexes of
each type, building one over vectors, and the search parameters each takes.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from simsearch.errors import UsageError, option
from simsearch.vectors.gpu import cagra_available, gpu_resources, is_cagra_on_gpu, is_on_gpu, on_cpu, to_gpu
from simsearch.vectors.ops import add_vectors, check_metric, new_index, prepare

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


def too_few(kind: str, n: int) -> UsageError | None:
    """Why an index of type ``kind`` cannot be built over ``n`` vectors, or None."""
    least = MIN_TRAINED.get(kind, 0)
    if n >= least:
        return None
    return UsageError(
        f"{option('index_type', kind)} needs at least {least} images to train on, and the collection would hold {n}",
        remedy=f"use {option('index_type', 'flat')} (exact search, and fast at this size)",
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
    check_metric(metric)
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
    workers: int = 0,
) -> Any:
    """An index of ``spec`` holding ``vectors`` under ``ids``; IVF types are first trained on a random sample
    of them (at most ``train_size``: default 64 per cell, at least 100,000) that leaves out the rows
    ``holdout`` (so that recall measured on those rows is measured on vectors the training never saw).
    Search parameters are applied.

    With ``on_gpu``, IVF types are trained and filled on the GPU and the GPU index is returned (``on_cpu``
    copies it back); ``cagra`` is always built on the GPU, and returned there only with ``on_gpu``. Without a
    GPU, a ``cagra`` spec is built as the HNSW graph it is searched as on a CPU. An IVF index of
    ``SHARDED_MIN`` vectors or more is filled in shards on ``workers`` threads (``add_sharded``; 0: one per
    ``SHARD_CORES`` cores, and no shards below two)."""
    x = prepare(vectors, metric)
    spec = buildable(spec, len(x), x.shape[1])
    if spec.type == "cagra":
        index = empty_index(spec, x.shape[1], metric)
        if len(x):
            index.train(x)  # builds the graph; the add that follows only takes the ids
            index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
        return index if on_gpu else on_cpu(index)
    index = empty_index(spec, x.shape[1], metric)
    if on_gpu and spec.type in GPU_BUILT:
        index = to_gpu(index)
    if spec.type in ("ivf", "ivfpq"):
        rng = np.random.default_rng(seed)
        pool = np.setdiff1d(np.arange(len(x)), holdout) if holdout is not None else np.arange(len(x))
        size = train_size or max(100_000, 64 * (spec.nlist or 1))
        index.train(x[np.sort(rng.choice(pool, size, replace=False))] if len(pool) > size else x[pool])
    workers = workers or (os.cpu_count() or 1) // SHARD_CORES
    if spec.type in ("ivf", "ivfpq") and not is_on_gpu(index) and len(x) >= SHARDED_MIN and workers >= 2:
        add_sharded(index, x, ids, workers)
    else:
        for start in range(0, len(x), 100_000):
            add_vectors(index, x[start : start + 100_000], ids[start : start + 100_000], "l2")
    set_search_params(index, spec)
    return index


#: Vectors from which an IVF index is filled in shards (``add_sharded``).
SHARDED_MIN = 1_000_000
#: Cores per shard thread (each add already runs on FAISS's OpenMP threads): shards are added in parallel only
#: on machines with at least twice this many cores. On a 2-core CPU, 8 shards on 2 threads took 9.3 s to fill
#: 1M × 64 where one add took 6.0 s (``bench/scale.py``, shards).
SHARD_CORES = 4


def add_sharded(index: Any, vectors: np.ndarray, ids: np.ndarray, workers: int = 0, shard: int = 1_000_000) -> None:
    """Fill a trained, empty IVF ``index`` in shards: each shard of ``shard`` vectors is added to a copy of the
    trained index on its own thread (``workers``; 0: one per core), and the shards are merged into ``index``
    with FAISS's ``merge_from`` (the inverted lists appended, nothing computed again). The quantiser is trained
    once; a vector lands in the cell a plain ``add`` puts it in, but for rounding at a cell's border (batches of
    other sizes round distances differently: 1 vector of 1M in ``bench/scale.py``)."""
    import concurrent.futures

    starts = list(range(0, len(vectors), shard))
    workers = workers or max(1, min(len(starts), os.cpu_count() or 1))

    if index.ntotal:
        raise ValueError("add_sharded fills an empty index")
    parts: list[Any] = [faiss.clone_index(index) for _ in starts]  # copies of the trained, empty index

    def fill(n: int) -> int:
        add_vectors(parts[n], vectors[starts[n] : starts[n] + shard], ids[starts[n] : starts[n] + shard], "l2")
        return n

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # FAISS releases the GIL while it adds
        for done in concurrent.futures.as_completed([pool.submit(fill, n) for n in range(len(starts))]):
            n = done.result()
            index.merge_from(parts[n], 0)  # moves the shard's lists: it is empty afterwards
            parts[n] = None


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


def search_params(index: Any, spec: IndexSpec) -> Any:
    """The parameters ``search`` passes to FAISS with each call: ``itopk_size`` for a GPU CAGRA index (the
    breadth of its search), None for every other index (``set_search_params`` has set theirs)."""
    if not is_cagra_on_gpu(index) or spec.ef is None:
        return None
    params = faiss.SearchParametersCagra()  # type: ignore[attr-defined]
    params.itopk_size = int(spec.ef)
    return params


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
    and the GPU takes only a graph that CAGRA built (see ``gpu_ready``). ``UsageError`` (``too_few``): ``n`` is
    too few vectors to build the requested type from.
    """
    if requested == "auto":
        kind = "flat" if n <= EXACT_LIMIT else (current.type if current and not current.exact else "ivf")
    else:
        kind = requested
    problem = too_few(kind, n)
    if problem is not None:
        raise problem
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
