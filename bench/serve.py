"""``simsearch serve`` under load: HTTP against the Python API in one process, side by side in one run.

    python bench/serve.py                       # 5,000 Fashion-MNIST images, 1/4/16 clients, 10,000 requests
    python bench/serve.py --images 2000 --requests 2000 --tag quick

A collection of Fashion-MNIST training images (28×28, ../shared/data; generated images where it is missing) is
indexed with the default encoder (an autoencoder, its training cut to ``--train-seconds``). The query is a
test-split image that is not in the collection, so every query runs the encoder. For 1, 4 and 16 concurrent
clients:

- in process: threads calling ``Searcher.query_files([the image], k)`` on one shared searcher;
- HTTP: ``simsearch serve`` in its own process on a loopback port, ApacheBench (``ab``, Debian's apache2-utils)
  uploading the PNG in one ``POST /collections/NAME/query`` per request over keep-alive connections;

each with queries per second and p50/p99 latency; the HTTP figure over the in-process one is the ratio. Then the
server's RSS after 100 requests and after ``--requests`` more (16 clients), and every non-200 answer counted.
Writes bench/results/serve[-TAG].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import SHARED_DATA, read_idx

RESULTS = Path(__file__).resolve().parent / "results"


def fashion(count: int, queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``count`` images to index and ``queries`` other ones (28×28 uint8), and where they came from: the
    Fashion-MNIST subset's test split first for the queries, the rest of both splits for the collection."""
    folder = SHARED_DATA / "fashion-mnist"
    try:
        train = read_idx(folder / "train-images-idx3-ubyte.gz")
        test = read_idx(folder / "t10k-images-idx3-ubyte.gz")
        pool = np.concatenate([test[queries:], train])
        if len(pool) >= count:
            return pool[:count], test[:queries], "Fashion-MNIST"
    except OSError:
        pass
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        rng.integers(0, 256, (queries, 28, 28), dtype=np.uint8),
        "generated noise (../shared/data not found)",
    )


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, image in enumerate(images):
        path = folder / f"{n:06d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "qps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def in_process(searcher: Any, query: Path, clients: int, requests: int, k: int) -> dict[str, float]:
    """``requests`` one-image queries from ``clients`` threads through the Python API."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            start = time.perf_counter()
            searcher.query_files([query], k)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    return summary(latencies, time.perf_counter() - start)


def over_http(url: str, body: Path, clients: int, requests: int) -> dict[str, Any]:
    """``requests`` POSTs of the multipart ``body`` from ``clients`` concurrent keep-alive connections, sent by
    ApacheBench (C: the client takes little of the CPU the server needs). Errors: non-2xx answers, and requests
    that failed to connect, send or receive (not "Length" failures: answers differ in length between batched
    and lone queries, their distances in the last digits)."""
    with tempfile.TemporaryDirectory() as folder:
        percentiles = Path(folder, "percentiles.csv")
        command = ["ab", "-q", "-k", "-n", str(requests), "-c", str(clients), "-p", str(body)]
        command += ["-T", f"multipart/form-data; boundary={BOUNDARY}", "-e", str(percentiles), url]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        served = {
            int(float(p)): float(ms) for p, ms in (line.split(",") for line in percentiles.read_text().splitlines()[1:])
        }
    text = done.stdout
    qps = float(re.search(r"Requests per second:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", text)
    failed = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", text)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, failed.groups())) if failed else 0)
    return {"requests": requests, "qps": qps, "p50_ms": served[50], "p99_ms": served[99], "errors": errors}


BOUNDARY = "simsearch-bench"


def multipart(image: bytes) -> bytes:
    """A request body holding one image as the field ``file``."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="query.png"\r\n'
    return head.encode() + b"Content-Type: image/png\r\n\r\n" + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "simsearch", "serve", "--home", str(home), "--port", "0"]
    command += ["--no-gpu", "--device", "cpu"]
    sink = log.open("wb")
    server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    import httpx

    for _ in range(600):
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text(errors="replace"))
        if found:
            try:
                if httpx.get(found.group(1) + "health", timeout=5).status_code == 200:
                    return server, found.group(1).rstrip("/")
            except httpx.TransportError:
                pass
        if server.poll() is not None:
            raise RuntimeError(f"the server ended: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("the server did not start in 60 s")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# `simsearch serve` under load ({report['date']}, {report['device']})",
        "",
        f"{report['images']} {report['data']} images indexed with the default encoder ({report['encoder']}, "
        f"d={report['dim']}); one 28×28 query image per request (not one of the indexed images), k={report['k']}; "
        "HTTP load from ApacheBench with keep-alive.",
        "",
        "| clients | in-process QPS | p50 / p99 ms | HTTP QPS | p50 / p99 ms | HTTP / in-process | HTTP errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        a, b = row["in_process"], row["http"]
        lines.append(
            f"| {row['clients']} | {a['qps']} | {a['p50_ms']} / {a['p99_ms']} | {b['qps']} | "
            f"{b['p50_ms']} / {b['p99_ms']} | {row['ratio']:.2f} | {b['errors']} |"
        )
    rss = report["rss"]
    lines += [
        "",
        f"Server RSS: {rss['after_100']:.1f} MB after 100 requests, {rss['after_more']:.1f} MB after "
        f"{rss['more']:,} more (16 clients): growth {rss['growth']:+.1%}; HTTP errors in all: {report['errors']}.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=10_000, help="requests of the RSS run (16 clients)")
    parser.add_argument("--per-row", type=int, default=1000, help="requests per throughput row")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("-k", type=int, default=9)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if shutil.which("ab") is None:
        sys.exit("bench/serve.py needs ApacheBench: apt-get install apache2-utils")

    import torch

    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.search import Searcher
    from simsearch.store.collection import Collection
    from simsearch.training import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="simsearch-bench-serve-"))
    train, test, data = fashion(args.images, 1)
    write_pngs(train, work / "images")
    query = write_pngs(test, work / "queries")[0]
    body = work / "body"
    body.write_bytes(multipart(query.read_bytes()))
    home = work / "indexes"
    config = IndexConfig(device="cpu", train=TrainConfig(max_seconds=args.train_seconds, device="cpu"))
    print(f"indexing {args.images} images …", flush=True)
    index_folder(work / "images", Collection(home / "bench"), config)
    searcher = Searcher(Collection(home / "bench"), use_gpu=False, device="cpu")
    searcher.query_files([query] * 20, args.k)  # warm

    rows = []
    server, base = start_server(home, work / "server.log")
    url = f"{base}/collections/bench/query?k={args.k}"
    try:
        over_http(url, body, 1, 100)  # warm, and the first 100 requests
        after_100 = rss_mb(server.pid)
        errors = 0
        for clients in args.clients:
            local = in_process(searcher, query, clients, args.per_row, args.k)
            remote = over_http(url, body, clients, args.per_row)
            errors += remote["errors"]
            rows.append(
                {"clients": clients, "in_process": local, "http": remote, "ratio": remote["qps"] / local["qps"]}
            )
            print(json.dumps(rows[-1]), flush=True)
        more = over_http(url, body, 16, args.requests)
        errors += more["errors"]
        after_more = rss_mb(server.pid)
        served = 100 + len(args.clients) * args.per_row + args.requests
    finally:
        server.terminate()
        server.wait(timeout=60)

    manifest = searcher.manifest
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}",
        "command": " ".join(["python bench/serve.py", *sys.argv[1:]]),
        "data": data,
        "images": args.images,
        "encoder": manifest["encoder"].get("family"),
        "dim": manifest["dim"],
        "k": args.k,
        "rows": rows,
        "rss": {
            "after_100": after_100,
            "after_more": after_more,
            "more": served - 100,
            "growth": after_more / after_100 - 1,
            "load_run": more,
        },
        "errors": errors,
        "server_exit": server.returncode,
    }
    name = "serve" + (f"-{args.tag}" if args.tag else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
