"""Check the CUDA paths on a GPU machine: training and embedding on CUDA, FAISS search on the GPU.

Run after ``simsearch demo`` has built the 'demo' collection (``bench/gpu_check.sh`` does both). Writes a JSON
summary to the path given as the first argument. Everything is compared with the CPU path in the same run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from simsearch import vectors
from simsearch.io import label_of, load_image
from simsearch.search import Searcher, vote_accuracy
from simsearch.store.collection import Collection


def main(out: Path, home: Path = Path("indexes"), demo_dir: Path = Path("simsearch-demo")) -> None:
    queries_dir = demo_dir / "queries"
    queries = sorted(queries_dir.rglob("*.png"))
    truth = [label_of(q.relative_to(queries_dir).as_posix()) for q in queries]
    collection = Collection(home / "demo")
    report: dict[str, object] = {
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "faiss_gpus": vectors.gpu_count(),
        "encoder_training_device": collection.load_encoder().training.get("device"),
    }
    gpu = Searcher(collection, use_gpu=True, device="cuda")
    cpu = Searcher(collection, use_gpu=False, device="cpu")
    report["faiss_index_on_gpu"] = gpu.on_gpu
    report["encoder_device"] = str(gpu.encoder.device)
    r_gpu, r_cpu = gpu.query_files(queries, 9), cpu.query_files(queries, 9)
    same_ids = sum(
        [n.id for n in a.neighbours] == [n.id for n in b.neighbours] for a, b in zip(r_gpu, r_cpu, strict=True)
    )
    report["queries"] = len(queries)
    report["identical_neighbour_lists_gpu_vs_cpu"] = same_ids
    report["vote_accuracy_gpu"] = vote_accuracy(r_gpu, truth)
    report["vote_accuracy_cpu"] = vote_accuracy(r_cpu, truth)
    # Embedding agreement between CUDA and CPU on the same preprocessed batch.
    loaded = [load_image(q, gpu.encoder.preprocess) for q in queries]
    batch = np.stack([item.array for item in loaded if item is not None])
    e_gpu, e_cpu = gpu.encoder.embed(batch), cpu.encoder.embed(batch)
    report["embedding_max_abs_diff_cuda_vs_cpu"] = float(np.abs(e_gpu - e_cpu).max())
    # Self-queries are at distance 0 on the GPU path too (distances are recomputed exactly).
    self_rows = gpu.embeddings[:500]
    d, rows = gpu.search_embeddings(self_rows, 1)
    report["self_query_first_and_zero"] = bool((rows[:, 0] == np.arange(len(self_rows))).all() and (d[:, 0] == 0).all())
    # Raw FAISS GPU flat search on the collection's vectors, beside the same search through simsearch.
    x = np.tile(gpu.embeddings, (max(1, 200_000 // len(gpu.embeddings)), 1))
    q = x[:10_000] + np.random.default_rng(0).normal(0, 0.01, (10_000, x.shape[1])).astype(np.float32)
    index = vectors.new_index(x.shape[1])
    vectors.add_vectors(index, x, np.arange(len(x)))
    g = vectors.to_gpu(index)
    vectors.search(g, q[:100], 10)
    t = time.perf_counter()
    vectors.search(g, q, 10)
    report["gpu_flat_search_10k_queries_200k_vectors_s"] = round(time.perf_counter() - t, 4)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
