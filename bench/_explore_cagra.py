import sys, time
import numpy as np, faiss
sys.path.insert(0, "bench")
from speed import mixture
from simsearch import vectors
x = mixture(1_000_000, 64, 1); q = mixture(1000, 64, 2); ids = np.arange(len(x))
truth = vectors.exact_neighbours(x, ids, q, 10)
for algo in ("IVF_PQ", "NN_DESCENT"):
    for deg in (32, 64):
        cfg = faiss.GpuIndexCagraConfig(); cfg.graph_degree = deg; cfg.intermediate_graph_degree = 2 * deg
        cfg.build_algo = getattr(faiss, f"graph_build_algo_{algo}")
        idx = faiss.IndexIDMap2(faiss.GpuIndexCagra(vectors.gpu_resources(), 64, faiss.METRIC_L2, cfg))
        t = time.time(); idx.train(x); idx.add_with_ids(x, ids); b = time.time() - t
        for itopk in (64, 256):
            p = faiss.SearchParametersCagra(); p.itopk_size = itopk
            print(algo, deg, itopk, round(b, 1), vectors.recall_at_k(idx, x, ids, q, 10, truth=truth, params=p), flush=True)
        del idx
