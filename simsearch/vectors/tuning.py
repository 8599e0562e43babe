"""Recall against exact search, and the search breadth (``nprobe``, ``ef``) tuned to reach the recall target on
vectors left out of training.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from simsearch.vectors.gpu import gpu_count, is_cagra_on_gpu, is_on_gpu, on_cpu
from simsearch.vectors.ops import add_vectors, lookup, new_index, search, search_refined
from simsearch.vectors.types import (
    GPU_BUILT,
    RECALL_TARGET,
    IndexSpec,
    build_index,
    buildable,
    describe,
    search_params,
    set_search_params,
)


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
        index = on_cpu(index)
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
