"""Filtered search (``query --label`` / ``--where``): which way answers a query restricted to a subset of the
collection, measured on every index type simsearch builds.

    python bench/filters.py                    # 100,000 vectors of 64 dimensions; a few minutes on one core
    python bench/filters.py --n 20000 --tag quick

Three ways, each against the exact k nearest of the subset (recall@10) and timed per query (one thread, queries in
batches of 256, as ``query`` batches them):

- **exact subset**: the subset's stored embeddings gathered and searched exhaustively (``faiss.knn``);
- **IDSelector**: the collection's index (built and tuned to recall@10 ≥ 0.95 as ``index`` builds it) searched
  with ``SearchParameters(sel=IDSelectorBitmap)``: FAISS skips the vectors outside the subset while it searches
  (CPU indexes only);
- **IDSelector, breadth / share**: the same with ``nprobe`` or ``ef`` divided by the subset's share of the
  collection (capped at every cell, or ef 4,096), so that about as many subset vectors are visited as an
  unfiltered search visits vectors;
- **post-filter**: the index searched for k / (share of the collection in the subset) × 2 candidates, those
  outside the subset dropped.

The vectors are clustered (1,000 Gaussian clusters), like embeddings; subsets are random (a label or a folder is
not correlated with the clusters here, which is the hard case for the approximate indexes). Writes
bench/results/filters[-TAG].json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simsearch import vectors

K = 10
SHARES = (0.001, 0.01, 0.1, 0.5)
TYPES = ("flat", "ivf", "ivfpq", "hnsw")


def data(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + rng.normal(0, 0.35, (n, dim)).astype(np.float32)
    q = centres[rng.integers(0, 1000, queries)] + rng.normal(0, 0.35, (queries, dim)).astype(np.float32)
    return x, q


def timed(fn: Any, q: np.ndarray) -> tuple[np.ndarray, float]:
    """fn over batches of 256 queries: (ids (q, K), milliseconds per query)."""
    started = time.perf_counter()
    ids = np.concatenate([fn(q[s : s + 256]) for s in range(0, len(q), 256)])
    return ids, 1000 * (time.perf_counter() - started) / len(q)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, (t >= 0).sum())
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--tag", default="")
    parser.add_argument("--markdown", type=Path, help="only rewrite the .md of this result file")
    args = parser.parse_args()
    if args.markdown:
        args.markdown.with_suffix(".md").write_text(markdown(json.loads(args.markdown.read_text())))
        return
    faiss.omp_set_num_threads(1)
    x, q = data(args.n, args.dim, args.queries)
    ids = np.arange(args.n, dtype=np.int64)
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for kind in TYPES:
        started = time.perf_counter()
        index, spec, _ = vectors.build_tuned(vectors.default_spec(kind, args.n, args.dim), x, ids)
        vectors.set_search_params(index, spec)
        build = time.perf_counter() - started
        print(f"{kind}: built in {build:.0f} s ({vectors.describe(index)}, {spec.to_json()})", flush=True)
        for share in SHARES:
            subset = np.sort(rng.choice(args.n, max(K, round(share * args.n)), replace=False))
            mask = np.zeros(args.n, bool)
            mask[subset] = True
            truth = subset[faiss.knn(q, x[subset], K)[1]]

            def exact(batch: np.ndarray, subset: np.ndarray = subset) -> np.ndarray:
                return subset[faiss.knn(batch, x[subset], K)[1]]

            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(args.n, faiss.swig_ptr(bitmap))
            if kind in ("ivf", "ivfpq"):
                params: Any = faiss.SearchParametersIVF(sel=selector, nprobe=spec.nprobe)
            elif kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=spec.ef)
            else:
                params = faiss.SearchParameters(sel=selector)

            refine = spec.refine or 1  # IVF-PQ: refine·k candidates re-ranked by exact distance, as query does

            def reranked(batch: np.ndarray, found: np.ndarray) -> np.ndarray:
                d = vectors.exact_distances(batch, x[np.maximum(found, 0)])
                d[found < 0] = np.inf
                order = np.argsort(d, axis=1, kind="stable")[:, :K]
                return np.where(np.take_along_axis(d, order, 1) < np.inf, np.take_along_axis(found, order, 1), -1)

            def with_selector(
                batch: np.ndarray, index: Any = index, refine: int = refine, params: Any = params
            ) -> np.ndarray:
                return reranked(batch, index.search(batch, K * refine, params=params)[1])

            # The same, its search breadth widened by 1 / share (capped): as many subset vectors visited as an
            # unfiltered search visits vectors.
            widen = len(subset) / args.n
            if kind in ("ivf", "ivfpq"):
                wide_params: Any = faiss.SearchParametersIVF(
                    sel=selector, nprobe=min(spec.nlist or 1, int(np.ceil((spec.nprobe or 1) / widen)))
                )
            elif kind == "hnsw":
                wide_params = faiss.SearchParametersHNSW(
                    sel=selector, efSearch=min(4096, int(np.ceil((spec.ef or 16) / widen)))
                )
            else:
                wide_params = params

            def with_selector_wide(
                batch: np.ndarray, index: Any = index, refine: int = refine, params: Any = wide_params
            ) -> np.ndarray:
                return reranked(batch, index.search(batch, K * refine, params=params)[1])

            wide = min(args.n, int(np.ceil(K / (len(subset) / args.n) * 2)))

            def post_filter(
                batch: np.ndarray, index: Any = index, wide: int = wide, refine: int = refine, mask: np.ndarray = mask
            ) -> np.ndarray:
                found = index.search(batch, wide * refine)[1]
                return reranked(batch, np.where((found >= 0) & mask[np.maximum(found, 0)], found, -1))

            ways = [("exact subset", exact), ("IDSelector", with_selector), ("post-filter", post_filter)]
            if kind != "flat":
                ways.insert(2, ("IDSelector, breadth / share", with_selector_wide))
            for way, fn in ways:
                if way == "post-filter" and wide > 20_000:
                    rows.append(
                        {
                            "type": kind,
                            "share": share,
                            "subset": len(subset),
                            "way": way,
                            "skipped": f"{wide} candidates",
                        }
                    )
                    continue
                found, ms = timed(fn, q)
                short = float(np.mean((found >= 0).sum(1) < K))
                row = {"type": kind, "share": share, "subset": len(subset), "way": way, "recall_at_10": round(recall(found, truth), 4),
                       "ms_per_query": round(ms, 3), "short_answers": round(short, 4)}  # fmt: skip
                rows.append(row)
                print(row, flush=True)
    report = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": K,
        "machine": f"{platform.processor() or platform.machine()}, FAISS {faiss.__version__}, one thread",
        "rows": rows,
    }
    stem = Path(__file__).parent / "results" / ("filters" + (f"-{args.tag}" if args.tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


CONCLUSION = """
What simsearch does with it (`search.Searcher`, `EXACT_SUBSET`): a subset of at most 200,000 images (the size
`index --type auto` keeps exact search for), any subset of a flat index, and any subset of an index held on a GPU
are searched exactly, over the subset's stored embeddings: recall 1, and no slower than exact search over a
collection of that size. A larger subset of an approximate CPU index is searched through the index with an
IDSelector and its breadth (`nprobe`, `ef`) divided by the subset's share (capped at every cell, or ef 4,096),
the row that keeps recall near the unfiltered index's; a query it answers with fewer than k neighbours is searched
exactly. Searching the index with the selector at its tuned breadth (or post-filtering more candidates) loses most
neighbours of a small subset: their nearest lie in cells the search never visits.
"""


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Filtered search: {report['n']:,} vectors, d={report['dim']}, {report['queries']} queries, k={report['k']} "
        "(`bench/filters.py`)",
        "",
        f"{report['machine']}. Recall@10 against the exact k nearest of the subset; ms per query; share of queries",
        "answered with fewer than k neighbours.",
        CONCLUSION,
        "| index | subset | way | recall@10 | ms/query | short answers |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        subset = f"{r['share']:.1%} ({r['subset']:,})"
        if "skipped" in r:
            lines.append(f"| {r['type']} | {subset} | {r['way']} | – | – | skipped ({r['skipped']}) |")
        else:
            lines.append(
                f"| {r['type']} | {subset} | {r['way']} | {r['recall_at_10']:.3f} | "
                f"{r['ms_per_query']:.3f} | {r['short_answers']:.1%} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
