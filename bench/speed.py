"""Speed and memory of simsearch, each figure a ratio measured side by side in one run.

    python bench/speed.py                          # every section on this machine
    python bench/speed.py --only search types      # some sections
    python bench/speed.py --only search types --sizes 1000000 10000000 --device cuda --tag gpu
    python bench/speed.py --only real --device cuda --tag gpu      # index types on 1M real embeddings

Sections (issue "Fast at any size"):
  index   a) ``simsearch index`` throughput with the default encoder (trained once beforehand) over the
             decode-only throughput of the same files with Pillow on every core (the floor);
  search  b) search QPS through simsearch's API (``Searcher.search_embeddings``) over raw FAISS on the same
             index and queries;
  cli     c) ``simsearch --help`` wall time, and a cold ``simsearch query`` over ``python -c "import torch, faiss"``;
  types   d) generated vectors (a Gaussian mixture, like clustered embeddings): build time, QPS and recall@10 of
             each index type, tuned to recall@10 ≥ 0.95 on held-out queries where it can be (CAGRA only where
             FAISS has cuVS and a GPU);
  real    d) the same on real embeddings: the default encoder's embeddings of variants of the Fashion-MNIST
             images in ../shared/data (not run unless named: it trains an encoder first);
  rss     e) peak RSS of ``simsearch index`` over 10k versus 100k generated images.
Results are merged into bench/results/speed[-TAG].json, one key per section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
SIMSEARCH = [PYTHON, "-m", "simsearch"]


def median_time(fn: Any, repeats: int, *args: Any) -> float:
    """Median wall seconds of ``fn(*args)`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- generated data ---------------------------------------------------------------------------------------------


def mixture(n: int, dim: int, seed: int, centres: int = 1000) -> np.ndarray:
    """``n`` vectors from a mixture of ``centres`` Gaussians (unit centres, noise 0.35): clustered like embeddings."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 1_000_000):
        m = min(1_000_000, n - start)
        out[start : start + m] = means[rng.integers(0, centres, m)]
        out[start : start + m] += rng.standard_normal((m, dim), dtype=np.float32) * 0.35
    return out


def write_images(folder: Path, n: int, size: tuple[int, int], fmt: str, seed: int = 0) -> Path:
    """``n`` images of ``size`` (W, H): blocky random shapes in ten folders, saved as PNG or JPEG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    for i in range(n):
        path = folder / f"c{i % 10}" / f"{i:07d}{suffix}"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        img.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return folder


def _decode(paths: list[str]) -> int:
    from PIL import Image

    for p in paths:
        with Image.open(p) as img:
            img.load()
    return len(paths)


def decode_floor(files: list[Path], workers: int) -> float:
    """Images per second that Pillow alone decodes (open + full decode) on ``workers`` processes."""
    chunks = [[str(f) for f in files[i :: workers * 8]] for i in range(workers * 8)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode, chunks[:workers]))  # warm the workers
        started = time.perf_counter()
        done = sum(pool.map(_decode, chunks))
        return done / (time.perf_counter() - started)


# --- sections ---------------------------------------------------------------------------------------------------


def section_index(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """a) index throughput over the decode floor, for small PNGs and for photo-sized JPEGs."""
    out: dict[str, Any] = {"workers": os.cpu_count()}
    for name, n, size, fmt in (
        ("png-64x64", args.index_images, (64, 64), "PNG"),
        ("jpeg-640x480", args.index_images // 4, (640, 480), "JPEG"),
    ):
        folder = write_images(work / f"images-{name}", n, size, fmt)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        model = work / f"model-{name}"
        if not model.exists():
            run([*SIMSEARCH, "train", str(folder), "--out", str(model), "--max-seconds", "30", "--device", args.device])
        floors, rates = [], []
        for attempt in range(args.repeats):
            floors.append(decode_floor(files, os.cpu_count() or 1))
            home = work / f"home-{name}-{attempt}"
            started = time.perf_counter()
            run([*SIMSEARCH, "index", str(folder), "--model", str(model), "--home", str(home), "--device", args.device])
            rates.append(len(files) / (time.perf_counter() - started))
            shutil.rmtree(home)
        floor, rate = statistics.median(floors), statistics.median(rates)
        encode = embed_only(model, args.device)
        out[name] = {
            "images": len(files),
            "decode_floor_per_s": round(floor, 1),
            "index_per_s": round(rate, 1),
            "ratio": round(rate / floor, 3),
            # Where the time goes: the encoder alone on ready arrays (no decoding), in this process.
            "embed_only_per_s": round(encode, 1),
            "index_over_embed_only": round(rate / encode, 3),
        }
        print("index", name, out[name], flush=True)
    return out


def embed_only(model: Path, device: str, n: int = 4096) -> float:
    """Images per second of ``Encoder.embed`` alone on ready (random) arrays, batches of 256."""
    from simsearch.models.encoder import Encoder

    encoder = Encoder.load(model, device=device)
    x = np.random.default_rng(0).standard_normal((n, encoder.preprocess.channels, *encoder.preprocess.size))
    x = x.astype(np.float32)
    encoder.embed(x[:256])  # warm up
    started = time.perf_counter()
    encoder.embed(x, 256)
    return n / (time.perf_counter() - started)


def build_collection(folder: Path, x: np.ndarray) -> Path:
    """A collection holding ``x`` (n, 64) as the embeddings of a pixels encoder on 8×8 images."""
    import pyarrow as pa

    from simsearch.io import Preprocess
    from simsearch.store.collection import SKIPPED_SCHEMA, Collection, meta_table
    from simsearch.training import pixels_encoder

    encoder = pixels_encoder(Preprocess(size=(8, 8), channels=1))
    n = len(x)
    rows = {
        "id": np.arange(n, dtype=np.int64),
        "path": pa.array([f"{i}.png" for i in range(n)]),
        "root": pa.array(["/generated"] * n),
        "label": pa.nulls(n, pa.string()),
        "sha256": pa.array([f"{i:064x}" for i in range(n)]),
        "bytes": np.zeros(n, np.int64),
        "mtime": np.zeros(n),
        "width": np.full(n, 8, np.int32),
        "height": np.full(n, 8, np.int32),
    }
    collection = Collection(folder)
    with collection.lock():  # a flat collection: its index is filled from the segment on load
        table, skipped = meta_table(rows, x, 64), SKIPPED_SCHEMA.empty_table()
        collection.commit(table, [], skipped, encoder, None, ["/generated"], segments=None)
    return folder


def section_search(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """b) QPS of ``Searcher.search_embeddings`` over raw FAISS ``index.search`` on the same index and queries.
    On a GPU, also with the index held in float16 (the searcher then re-ranks 2·k candidates exactly), and
    that search's recall@10 against the float32 one (exact)."""
    from simsearch.search import Searcher
    from simsearch.store.collection import Collection

    out: dict[str, Any] = {}
    for n in args.sizes:
        x = mixture(n, 64, seed=1)
        queries = mixture(args.queries, 64, seed=2)
        folder = build_collection(work / f"search-{n}", x)
        del x
        rows: dict[str, Any] = {}
        truth = None
        for variant in ("float32", "float16") if args.device != "cpu" else ("float32",):
            searcher = Searcher(Collection(folder), use_gpu=args.device != "cpu", float16=variant == "float16")
            rows[variant] = search_ratio(searcher, queries, args.repeats)
            _, found = searcher.search_embeddings(queries, 10)
            if truth is None:
                truth = found  # float32 flat search is exact
            else:
                rows[variant]["recall_at_10_vs_float32"] = round(
                    float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])), 4
                )
            print("search", n, variant, rows[variant], flush=True)
            del searcher
        out[str(n)] = {"vectors": n, "queries": args.queries, "k": 10, **rows}
        shutil.rmtree(folder)
    return out


def search_ratio(searcher: Any, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    """Raw FAISS QPS on the searcher's own index (an ``IndexFlatL2`` over its embeddings where it searches them
    without an index) against ``search_embeddings``, alternated, medians."""
    import faiss

    from simsearch import vectors

    raw = searcher.index  # the very index the searcher uses (on the GPU when it is there)
    if raw is None:  # an exact L2 collection on the CPU is searched over its embeddings: raw FAISS gets a flat index
        raw = faiss.IndexFlatL2(searcher.embeddings.shape[1])
        raw.add(np.ascontiguousarray(searcher.embeddings))
    raw.search(queries[:10], 10)
    searcher.search_embeddings(queries[:10], 10)
    t_raw, t_api = [], []
    for _ in range(repeats):  # alternate, so that drift hits both alike
        t_raw.append(median_time(raw.search, 1, queries, 10))
        t_api.append(median_time(searcher.search_embeddings, 1, queries, 10))
    qps_raw, qps_api = len(queries) / statistics.median(t_raw), len(queries) / statistics.median(t_api)
    return {
        "on_gpu": vectors.is_on_gpu(raw),
        "index": vectors.describe(raw),
        "raw_faiss_qps": round(qps_raw, 1),
        "simsearch_qps": round(qps_api, 1),
        "ratio": round(qps_api / qps_raw, 3),
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def section_cli(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """c) ``--help`` wall time; cold ``query`` over ``import torch, faiss`` (alternated, medians)."""
    from PIL import Image

    folder = work / "cli-images"
    for i in range(20):
        path = folder / f"c{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
    home = work / "cli-home"
    run([*SIMSEARCH, "index", str(folder), "--model", "pixels", "--home", str(home)])
    console = shutil.which("simsearch", path=str(Path(PYTHON).parent)) or "simsearch"
    commands = {
        "help": [console, "--help"],
        "query": [
            console,
            "query",
            str(folder / "c0" / "0.png"),
            "-k",
            "5",
            "--home",
            str(home),
            "--device",
            args.device,
        ],
        "import": [PYTHON, "-c", "import torch, faiss"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.repeats * 2 + 1):
        for key, command in commands.items():
            started = time.perf_counter()
            run(command)
            times[key].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "help_s": round(med["help"], 3),
        "query_cold_s": round(med["query"], 3),
        "import_torch_faiss_s": round(med["import"], 3),
        "query_over_import": round(med["query"] / med["import"], 3),
    }
    print("cli", out, flush=True)
    return out


def section_types(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """d) every index type on generated vectors: build seconds, QPS, recall@10 (tuned to 0.95 when it can)."""
    out: dict[str, Any] = {}
    for n in args.sizes:
        x = mixture(n, 64, seed=1)
        held_out = mixture(args.tune_queries, 64, seed=3)  # never in the index nor in any training sample
        queries = mixture(args.queries, 64, seed=2)
        out[str(n)] = type_rows(x, held_out, queries, args, f"types {n}")
    return out


def type_rows(
    x: np.ndarray, held_out: np.ndarray, queries: np.ndarray, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    """Build each of ``args.types`` over ``x`` (on the GPU with ``--device cuda``: IVF and CAGRA built there,
    flat copied there; HNSW has no GPU form), tune it on ``held_out``, and time ``queries`` through it."""
    from simsearch import vectors

    gpu = args.device != "cpu"
    ids = np.arange(len(x), dtype=np.int64)
    lookup = vectors.lookup(x, ids)
    truth = vectors.exact_neighbours(x, ids, queries[:1000], 10)
    kinds = list(args.types) + (["flat_float16"] if gpu and "flat" in args.types else [])
    rows: dict[str, Any] = {}
    for kind in kinds:
        if kind == "cagra" and not vectors.cagra_available():
            rows[kind] = {"skipped": "this FAISS build has no CAGRA (cuVS), or sees no GPU"}
            continue
        spec = vectors.default_spec(kind.removesuffix("_float16"), len(x), x.shape[1])
        started = time.perf_counter()
        index = vectors.build_index(spec, x, ids, on_gpu=gpu and spec.type in vectors.GPU_BUILT)
        if gpu and spec.type == "flat":
            index = vectors.to_gpu(index, float16=kind == "flat_float16")
        build_s = time.perf_counter() - started
        tuned, tune_recall = vectors.tune(spec, index, x, ids, held_out)
        vectors.set_search_params(index, tuned)
        params = vectors.search_params(index, tuned)
        nq = len(queries) if kind != "flat" or gpu else min(len(queries), 1000)
        batch = queries[:nq]
        if tuned.refine:
            search: Any = vectors.search_refined
            search_args: tuple[Any, ...] = (index, batch, 10, "l2", tuned.refine, lookup, params)
        else:
            search, search_args = vectors.search, (index, batch, 10, "l2", params)
        search(*search_args)
        seconds = median_time(search, args.repeats, *search_args)
        recall = vectors.recall_at_k(index, x, ids, queries[:1000], 10, "l2", tuned.refine, truth=truth, params=params)
        rows[kind] = {
            "spec": tuned.to_json(),
            "index": vectors.describe(index),
            "on_gpu": vectors.is_on_gpu(index),
            "build_s": round(build_s, 2),
            "qps": round(nq / seconds, 1),
            "recall_at_10": round(recall, 4),
            "tuning_recall_at_10": round(tune_recall, 4),
        }
        print(label, kind, rows[kind], flush=True)
        del index
    flat_qps = rows.get("flat", {}).get("qps")
    if flat_qps:
        for row in rows.values():
            if "qps" in row:
                row["speedup_over_flat"] = round(row["qps"] / flat_qps, 2)
    return rows


def section_real(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """d) on real embeddings: the default encoder, trained on the Fashion-MNIST subset of ../shared/data,
    embeds ``--real-size`` variants of its 8,058 images (shifted by up to 2 pixels, contrast ×0.8–1.2,
    Gaussian noise σ 0.03); queries and tuning queries are other variants, never indexed."""
    sys.path.insert(0, str(ROOT / "bench"))
    from datasets import SHARED_DATA, export_fashion

    from simsearch.io import load_image
    from simsearch.models.encoder import Encoder

    if not (SHARED_DATA / "fashion-mnist").exists():
        return {"skipped": f"no benchmark data at {SHARED_DATA}"}
    folder = work / "real-fashion"
    export_fashion(folder / "train", "train")
    export_fashion(folder / "t10k", "t10k")
    model = work / "real-model"
    if not model.exists():
        started = time.perf_counter()
        run([*SIMSEARCH, "train", str(folder), "--out", str(model), "--max-seconds", "60", "--device", args.device])
        print("real: trained the default encoder in", round(time.perf_counter() - started, 1), "s", flush=True)
    encoder = Encoder.load(model, device=args.device)
    files = sorted(folder.rglob("*.png"))
    base = np.stack([item.array for item in (load_image(f, encoder.preprocess) for f in files) if item is not None])

    def variants(n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, encoder.dim), np.float32)
        for start in range(0, n, 65_536):
            m = min(65_536, n - start)
            batch = base[rng.integers(0, len(base), m)].copy()
            shifts = rng.integers(-2, 3, (m, 2))
            for dy, dx in {(int(a), int(b)) for a, b in shifts}:
                pick = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                batch[pick] = np.roll(batch[pick], (dy, dx), axis=(2, 3))
            batch *= rng.uniform(0.8, 1.2, (m, 1, 1, 1)).astype(np.float32)
            batch += rng.normal(0, 0.03, batch.shape).astype(np.float32)
            out[start : start + m] = encoder.embed(batch, 4096)
        return out

    started = time.perf_counter()
    x = variants(args.real_size, 11)
    embed_s = time.perf_counter() - started
    held_out, queries = variants(args.tune_queries, 12), variants(args.queries, 13)
    print("real: embedded", len(x), "variants in", round(embed_s, 1), "s", flush=True)
    return {
        "images": len(base),
        "vectors": len(x),
        "dim": encoder.dim,
        "encoder": encoder.family,
        "embed_s": round(embed_s, 1),
        "types": type_rows(x, held_out, queries, args, "real"),
    }


def section_rss(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """e) peak RSS of ``simsearch index`` over 10k and 100k generated images, with the default encoder (an
    autoencoder trained once, for 30 s, on the smaller folder) and with raw pixels (d = 3,072: the worst case
    for whatever is kept per image)."""
    out: dict[str, Any] = {}
    folders = {n: write_images(work / f"rss-{n}", n, (32, 32), "PNG", seed=5) for n in args.rss_sizes}
    model = work / "rss-model"
    if not model.exists():
        small = folders[min(folders)]
        run([*SIMSEARCH, "train", str(small), "--out", str(model), "--max-seconds", "30", "--device", "cpu"])
    for encoder in ("autoencoder", "pixels"):
        rows: dict[str, Any] = {}
        for n, folder in folders.items():
            home = work / f"rss-home-{encoder}-{n}"
            choice = str(model) if encoder == "autoencoder" else "pixels"
            command = [*SIMSEARCH, "index", str(folder), "--model", choice, "--home", str(home), "--device", "cpu"]
            rows[str(n)] = {"images": n, "peak_rss_mb": round(peak_rss(command) / 2**20, 1)}
            print("rss", encoder, rows[str(n)], flush=True)
            shutil.rmtree(home)
        sizes = [str(n) for n in args.rss_sizes]
        rows["ratio"] = round(rows[sizes[1]]["peak_rss_mb"] / rows[sizes[0]]["peak_rss_mb"], 3)
        out[encoder] = rows
    return out


RSS_WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if done.returncode:
    sys.exit(done.stderr[-2000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss(command: list[str]) -> int:
    """Peak resident set size (bytes) of ``command``, measured by a small wrapper process: Linux carries a
    forked child's peak RSS across ``exec``, so a child forked straight from this (large) process would
    report at least this process's size."""
    done = subprocess.run([PYTHON, "-c", RSS_WRAPPER, *command], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr}")
    return int(done.stdout.strip()) * 1024  # Linux reports KiB


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-2000:]}")


SECTIONS = {
    "index": section_index,
    "search": section_search,
    "cli": section_cli,
    "types": section_types,
    "real": section_real,
    "rss": section_rss,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=[s for s in SECTIONS if s != "real"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000_000], help="vectors for search and types")
    parser.add_argument("--types", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw", "cagra"])
    parser.add_argument("--real-size", type=int, default=1_000_000, help="embeddings for the real section")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--tune-queries", type=int, default=1000)
    parser.add_argument("--index-images", type=int, default=20_000)
    parser.add_argument("--rss-sizes", nargs=2, type=int, default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: GPU FAISS search and CUDA embedding")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="simsearch-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"speed{'-' + args.tag if args.tag else ''}.json"
    results: dict[str, Any] = json.loads(target.read_text()) if target.exists() else {}
    import torch

    results["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    for name in args.only:
        results[name] = {**SECTIONS[name](args, work), "command": " ".join(["python bench/speed.py", *sys.argv[1:]])}
        target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {target}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
