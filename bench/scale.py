"""Scale: what a commit writes (segments, format 2), what a query holds in memory, and 10M vectors.

    python bench/scale.py                                    # every section
    python bench/scale.py --only write query                 # some sections
    python bench/scale.py --old /tmp/simsearch-format-1      # the same, side by side with an older checkout

Sections (issue "Past one machine"):
  write      20,000 generated 32×32 grey PNGs indexed with ``--model pixels`` and ``--checkpoint-every 1000``
             (through ``index_folder``, in this process): the bytes written into the collection folder (every file
             and folder at its rename into place, and every journal) over the final folder's size, and the wall
             time of each commit (``Collection.commit``): the first, the last, the largest.
  query      100,000 generated 32×32 RGB PNGs indexed with ``--model pixels`` (3,072-d: 1.23 GB of vectors), then
             ``simsearch query IMAGE -k 5`` and ``simsearch info`` run as commands: wall seconds and peak RSS
             (``ru_maxrss`` of the command's process).
  tenmillion 10,000,000 generated 64-d vectors (2.56 GB) committed as ten checkpoints of 1,000,000 rows, merged as
             ``index`` merges them (a thread beside the writer, the tier policy at its defaults): build seconds,
             bytes written, the folder's size; then ``simsearch query --id 5 -k 5`` and ``simsearch info`` as
             commands: seconds and peak RSS.
  shards     an IVF index over 1,000,000 generated 64-d vectors, its quantiser trained once, filled by one add and
             in 8 shards on threads then merged (FAISS ``merge_from``): seconds, the same cells, recall@10 tuned.

With ``--old PATH`` (a checkout of an older simsearch, e.g. ``git worktree add /tmp/old 7795015``), the write and
query sections run that version too, in subprocesses with ``PYTHONPATH=PATH``, on the same images. Results go under
the keys "write", "query" and "tenmillion" of bench/results/scale.json (other keys are left as they are), and a
table in bench/results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def write_images(folder: Path, n: int, mode: str, seed: int = 0) -> None:
    """``n`` 32×32 PNGs (``L`` or ``RGB``): blurred noise with a bar, in 10 sub-folders."""
    from PIL import Image

    if folder.is_dir() and len(list(folder.rglob("*.png"))) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for i in range(n):
        sub = folder / f"c{i % 10}"
        if i < 10:
            sub.mkdir(parents=True, exist_ok=True)
        x = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
        x = np.kron(x, np.ones((4, 4, 1), np.uint8))
        x[:, (i % 10) * 3 : (i % 10) * 3 + 2] = 255
        Image.fromarray(x[..., 0] if channels == 1 else x, mode).save(sub / f"{i:07d}.png")


# --- write: bytes written and commit times ---------------------------------------------------------------------

WRITE_CHILD = r"""
import json, os, sys, time
from pathlib import Path
from simsearch import progress
from simsearch.indexing import IndexConfig, index_folder
from simsearch.store import collection as store

images, target = Path(sys.argv[1]), Path(sys.argv[2])
written, commits = [0], []

def size(path):
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0

merges = []
def observer(event, subject):
    if event == progress.RENAMED:
        written[0] += size(target / subject.rstrip("/"))
        if "-merged" in subject:
            merges.append(subject)
    elif event == progress.JOURNAL_WRITTEN:
        written[0] += size(target / subject)

real = store.Collection.commit
def timed(self, *args, **kwargs):  # (seconds, whether it wrote rows: not the first, the encoder's alone)
    started = time.perf_counter()
    try:
        return real(self, *args, **kwargs)
    finally:
        commits.append((time.perf_counter() - started, args[0].num_rows > 0))
store.Collection.commit = timed

started = time.perf_counter()
with progress.observing(observer):
    report = index_folder(images, store.Collection(target), IndexConfig(model="pixels", device="cpu", checkpoint_every=1000))
seconds = time.perf_counter() - started
final = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
manifest = json.loads((target / "manifest.json").read_text())
with_rows = [t for t, rows in commits if rows]
print(json.dumps({
    "images": report.count, "seconds": seconds, "bytes_written": written[0], "final_bytes": final,
    "amplification": written[0] / final, "commits": len(commits), "commit_seconds": [t for t, _ in commits],
    "commits_with_rows": len(with_rows), "first_commit_s": with_rows[0], "last_commit_s": with_rows[-1],
    "largest_commit_s": max(with_rows), "last_over_first": with_rows[-1] / with_rows[0],
    "largest_over_first": max(with_rows) / with_rows[0], "format": manifest["format"],
    "segments": len(manifest.get("segments", [])), "merges_written": merges,
    "merges_installed": [s["name"] for s in manifest.get("segments", []) if "-merged" in s["name"]],
}))
"""


def run_child(code: str, args: list[str], pythonpath: Path | None) -> dict[str, Any]:
    env = dict(os.environ, SIMSEARCH_PROGRESS="off")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd="/tmp")
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def section_write(work: Path, old: Path | None) -> dict[str, Any]:
    images = work / "write-images"
    write_images(images, 20_000, "L")
    result: dict[str, Any] = {"command": "index_folder(images, c, IndexConfig(model='pixels', checkpoint_every=1000))"}
    for name, path in (("segments", ROOT), ("format_1", old)):
        if path is None:
            continue
        target = work / f"write-{name}"
        shutil.rmtree(target, ignore_errors=True)
        result[name] = run_child(WRITE_CHILD, [str(images), str(target)], path)
        print(name, {k: v for k, v in result[name].items() if k != "commit_seconds"}, flush=True)
    return result


# --- query and info: seconds and peak RSS of the commands ---------------------------------------------------------

MEASURE = r"""
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - started
print(json.dumps({"exit": done.returncode, "seconds": seconds,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "tail": (done.stdout + done.stderr)[-400:]}))
"""


def measure(argv: list[str], pythonpath: Path | None) -> dict[str, Any]:
    """Run a command in a fresh process and return its exit, seconds and peak RSS."""
    env = dict(os.environ, SIMSEARCH_PROGRESS="off")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, env=env, cwd="/tmp")
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    if result["exit"]:
        raise RuntimeError(result["tail"])
    return result


def measure_median(argv: list[str], pythonpath: Path | None, runs: int = 5) -> dict[str, Any]:
    """``measure`` ``runs`` times: the median seconds (a short command's time is mostly noise), the largest RSS."""
    results = [measure(argv, pythonpath) for _ in range(runs)]
    seconds = sorted(r["seconds"] for r in results)
    return {
        "seconds": seconds[len(seconds) // 2],
        "runs_s": seconds,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in results),
    }


def baseline_rss() -> int:
    """Peak RSS of a process that only imports what a query needs (torch, faiss, pyarrow): the constant."""
    code = "import torch, faiss, pyarrow.parquet, simsearch.search"
    return int(measure([sys.executable, "-c", code], ROOT)["peak_rss_bytes"])


def simsearch_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from simsearch.cli import main; main()", *args]


def section_query(work: Path, old: Path | None) -> dict[str, Any]:
    images = work / "query-images"
    write_images(images, 100_000, "RGB", seed=1)
    probe = next((images / "c3").glob("*.png"))
    result: dict[str, Any] = {"images": 100_000, "vector_bytes": 100_000 * 3072 * 4, "baseline_rss": baseline_rss()}
    for name, path in (("segments", ROOT), ("format_1", old)):
        if path is None:
            continue
        home = work / f"query-home-{name}"
        shutil.rmtree(home, ignore_errors=True)
        index = measure(simsearch_argv("index", str(images), "--home", str(home), "--model", "pixels"), path)
        again = measure(simsearch_argv("index", str(images), "--home", str(home), "--model", "pixels"), path)
        query = measure(simsearch_argv("query", str(probe), "-k", "5", "--home", str(home)), path)
        info = measure_median(simsearch_argv("info", "--home", str(home)), path, runs=5 if path == ROOT else 1)
        result[name] = {
            "index_seconds": index["seconds"],
            "index": {k: index[k] for k in ("seconds", "peak_rss_bytes")},
            "index_unchanged": {k: again[k] for k in ("seconds", "peak_rss_bytes")},
            "query": {k: query[k] for k in ("seconds", "peak_rss_bytes")},
            "info": {k: info[k] for k in ("seconds", "peak_rss_bytes")},
            "query_rss_over_vectors": query["peak_rss_bytes"] / result["vector_bytes"],
            "query_rss_less_baseline_over_vectors": (query["peak_rss_bytes"] - result["baseline_rss"])
            / result["vector_bytes"],
        }
        print(name, result[name], flush=True)
    result["commands"] = [
        "simsearch index IMAGES --model pixels (twice: a new collection, then nothing changed)",
        "simsearch query IMAGE -k 5",
        "simsearch info",
    ]
    return result


# --- ten million vectors -----------------------------------------------------------------------------------------

BUILD_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import pyarrow as pa
from simsearch import progress
from simsearch.io import Preprocess
from simsearch.store.collection import SKIPPED_SCHEMA, Collection
from simsearch.store.formats import meta_table
from simsearch.training import pixels_encoder

target, n, step = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
encoder = pixels_encoder(Preprocess(size=(8, 8), channels=1))  # 64-d
written = [0]
def observer(event, subject):
    if event == progress.RENAMED and (target / subject).is_file():
        written[0] += (target / subject).stat().st_size
collection = Collection(target)
rng = np.random.default_rng(0)
started = time.perf_counter()
merge, manifest, state, commits = None, None, None, []
with progress.observing(observer), collection.lock():
    for start in range(0, n, step):
        ids = np.arange(start, start + step, dtype=np.int64)
        x = rng.standard_normal((step, 64), dtype=np.float32)
        rows = {
            "id": ids, "path": pa.array([f"{i:08d}.png" for i in ids]), "root": pa.array(["/generated"] * step),
            "label": pa.nulls(step, pa.string()), "sha256": pa.array([f"{i:064x}" for i in ids]),
            "bytes": np.zeros(step, np.int64), "mtime": np.zeros(step), "width": np.full(step, 8, np.int32),
            "height": np.full(step, 8, np.int32),
        }
        table = meta_table(rows, x, 64)
        last = start + step >= n
        merged = merge.result(wait=last) if merge is not None else None
        t = time.perf_counter()
        manifest, state = collection.commit(
            table, [], SKIPPED_SCHEMA.empty_table(), encoder, manifest, ["/generated"], segments=state,
            merges=[merged] if merged else [],
        )
        commits.append(time.perf_counter() - t)
        if merge is not None and (merged is not None or merge.error is not None):
            collection.merge_done(merge)
            merge = None
        if merge is None and not last:
            merge = collection.start_merge(state, 10)
seconds = time.perf_counter() - started
final = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
print(json.dumps({"rows": n, "seconds": seconds, "bytes_written": written[0], "final_bytes": final,
                  "segments": len(manifest["segments"]), "commit_seconds": commits}))
"""


def section_tenmillion(work: Path, n: int) -> dict[str, Any]:
    home = work / "ten-million"
    shutil.rmtree(home, ignore_errors=True)
    build = run_child(BUILD_CHILD, [str(home / "big"), str(n), str(n // 10)], ROOT)
    print("build", {k: v for k, v in build.items() if k != "commit_seconds"}, flush=True)
    os.sync()  # the build's 2.6 GB reach the disk now, not while the query and info are timed
    query = measure(simsearch_argv("query", "--id", "5", "-k", "5", "--home", str(home), "--name", "big"), ROOT)
    info = measure_median(simsearch_argv("info", "--home", str(home), "--name", "big"), ROOT)
    vector_bytes = n * 64 * 4
    result = {
        "rows": n,
        "vector_bytes": vector_bytes,
        "build": build,
        "query": {k: query[k] for k in ("seconds", "peak_rss_bytes")},
        "query_rss_over_vectors": query["peak_rss_bytes"] / vector_bytes,
        "baseline_rss": (base := baseline_rss()),
        "query_rss_less_baseline_over_vectors": (query["peak_rss_bytes"] - base) / vector_bytes,
        "info": {k: info[k] for k in ("seconds", "peak_rss_bytes")},
        "commands": ["simsearch query --id 5 -k 5 --name big", "simsearch info --name big"],
    }
    print(result["query"], result["info"], flush=True)
    shutil.rmtree(home, ignore_errors=True)
    return result


# --- shards: an IVF index filled in shards ----------------------------------------------------------------------


def section_shards(n: int) -> dict[str, Any]:
    """An IVF index over ``n`` generated 64-d vectors (clustered: 1,000 centres), its quantiser trained once:
    filled by one ``add`` against filled in shards on threads and merged (``vectors.types.add_sharded``);
    the share of vectors in the same cell both ways (batches of other sizes round distances differently, so a
    vector on a cell's border may go either way); recall@10 tuned on the sharded one as ``build_tuned`` does."""
    import faiss

    from simsearch import vectors
    from simsearch.vectors.types import add_sharded

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, 64), dtype=np.float32) * 3
    x = (centres[rng.integers(0, 1000, n)] + rng.standard_normal((n, 64), dtype=np.float32)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    spec = vectors.default_spec("ivf", n, 64)
    started = time.perf_counter()
    trained = vectors.empty_index(spec, 64, "l2")
    trained.train(x[rng.choice(n, min(n, 64 * (spec.nlist or 1)), replace=False)])
    train_s = time.perf_counter() - started
    plain, sharded = faiss.clone_index(trained), faiss.clone_index(trained)
    started = time.perf_counter()
    for start in range(0, n, 100_000):
        vectors.add_vectors(plain, x[start : start + 100_000], ids[start : start + 100_000])
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    add_sharded(sharded, x, ids, workers=2, shard=max(1, n // 8))
    sharded_s = time.perf_counter() - started

    def cells(index: Any) -> np.ndarray:  # the cell of each id
        cell = np.empty(n, np.int64)
        for c in range(index.nlist):
            size = index.invlists.list_size(c)
            if size:
                cell[faiss.rev_swig_ptr(index.invlists.get_ids(c), size)] = c
        return cell

    same = float((cells(plain) == cells(sharded)).mean()) if plain.ntotal == sharded.ntotal == n else 0.0
    held = rng.choice(n, 1000, replace=False)
    tuned, recall = vectors.tune(spec, sharded, x, ids, x[held], query_ids=ids[held])
    result = {
        "vectors": n,
        "nlist": spec.nlist,
        "train_seconds": train_s,
        "add_plain_seconds": plain_s,
        "add_sharded_seconds": sharded_s,
        "shards": 8,
        "same_cell_share": same,
        "nprobe": tuned.nprobe,
        "recall_at_10": recall,
    }
    print("shards", result, flush=True)
    return result


# --- results -------------------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    gb = 1e9
    lines = ["# Scale: segments, query memory, 10M vectors", "", f"Machine: {results.get('machine', '?')}", ""]
    write = results.get("write")
    if write:
        lines += [
            "## Write amplification (20,000 images, `--model pixels`, `--checkpoint-every 1000`)",
            "",
            "Commit times are those of the commits that wrote rows (the first commit, of the encoder alone, and a last"
            " one that only installs a merge, are left out).",
            "",
            "| version | written | final size | written / final | commits | first | last | last / first | largest / first |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("segments", "format_1"):
            r = write.get(name)
            if r:
                lines.append(
                    f"| {name} | {r['bytes_written'] / 1e6:.0f} MB | {r['final_bytes'] / 1e6:.0f} MB | "
                    f"{r['amplification']:.2f}× | {r['commits_with_rows']} | {r['first_commit_s']:.3f} s | "
                    f"{r['last_commit_s']:.3f} s | {r['last_over_first']:.2f}× | {r['largest_over_first']:.2f}× |"
                )
        lines.append("")
    query = results.get("query")
    if query:
        lines += [
            f"## Query and info (100,000 32×32 RGB images, `--model pixels`: {query['vector_bytes'] / gb:.2f} GB of "
            "vectors)",
            "",
            f"The constant: a process that imports torch, faiss, pyarrow and simsearch.search and does nothing else "
            f"peaks at {query.get('baseline_rss', 0) / gb:.2f} GB.",
            "",
            "| version | `query -k 5` | peak RSS | RSS / vectors | (RSS − constant) / vectors | `info` | peak RSS |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("segments", "format_1"):
            r = query.get(name)
            if r:
                lines.append(
                    f"| {name} | {r['query']['seconds']:.1f} s | {r['query']['peak_rss_bytes'] / gb:.2f} GB | "
                    f"{r['query_rss_over_vectors']:.2f}× | {r.get('query_rss_less_baseline_over_vectors', 0):.2f}× | "
                    f"{r['info']['seconds']:.2f} s | "
                    f"{r['info']['peak_rss_bytes'] / gb:.2f} GB |"
                )
        lines += [
            "",
            "The writer, `index` on the same images: a new collection, then again with nothing changed (peak RSS "
            "/ vectors, the constant included).",
            "",
            "| version | new: time | peak RSS | / vectors | unchanged: time | peak RSS | / vectors |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("segments", "format_1"):
            r = query.get(name)
            if r and "index" in r:
                a, b = r["index"], r["index_unchanged"]
                lines.append(
                    f"| {name} | {a['seconds']:.1f} s | {a['peak_rss_bytes'] / gb:.2f} GB | "
                    f"{a['peak_rss_bytes'] / query['vector_bytes']:.2f}× | {b['seconds']:.1f} s | "
                    f"{b['peak_rss_bytes'] / gb:.2f} GB | {b['peak_rss_bytes'] / query['vector_bytes']:.2f}× |"
                )
        lines.append("")
    big = results.get("tenmillion")
    if big:
        b = big["build"]
        lines += [
            f"## {big['rows']:,} generated 64-d vectors ({big['vector_bytes'] / gb:.2f} GB), ten checkpoints",
            "",
            f"- build: {b['seconds']:.0f} s, {b['bytes_written'] / gb:.2f} GB written, folder {b['final_bytes'] / gb:.2f} GB, "
            f"{b['segments']} segments",
            f"- `query --id 5 -k 5`: {big['query']['seconds']:.1f} s, peak RSS {big['query']['peak_rss_bytes'] / gb:.2f} GB "
            f"({big['query_rss_over_vectors']:.2f}× the vectors; less the constant of "
            f"{big.get('baseline_rss', 0) / gb:.2f} GB, {big.get('query_rss_less_baseline_over_vectors', 0):.2f}×)",
            f"- `info`: {big['info']['seconds']:.2f} s, peak RSS {big['info']['peak_rss_bytes'] / gb:.2f} GB",
            "",
        ]
    shards = results.get("shards")
    if shards:
        lines += [
            f"## An IVF index filled in shards ({shards['vectors']:,} clustered 64-d vectors, {shards['nlist']} cells)",
            "",
            f"- quantiser trained once: {shards['train_seconds']:.0f} s; filled by one add {shards['add_plain_seconds']:.1f} s, "
            f"in {shards['shards']} shards on 2 threads then merged {shards['add_sharded_seconds']:.1f} s; vectors "
            f"in the same cell both ways: {shards.get('same_cell_share', 0):.4%}; recall@10 "
            f"{shards['recall_at_10']:.3f} at nprobe {shards['nprobe']}",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["write", "query", "tenmillion", "shards"])
    parser.add_argument("--old", type=Path, default=None, help="an older checkout to measure side by side")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the tenmillion section")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "simsearch-scale")
    parser.add_argument("--render", action="store_true", help="only write scale.md again from scale.json")
    args = parser.parse_args()
    path = RESULTS / "scale.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.render:
        args.work.mkdir(parents=True, exist_ok=True)
        results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        for section in args.only:
            started = time.time()
            if section == "write":
                results["write"] = section_write(args.work, args.old)
            elif section == "query":
                results["query"] = section_query(args.work, args.old)
            elif section == "tenmillion":
                results["tenmillion"] = section_tenmillion(args.work, args.rows)
            elif section == "shards":
                results["shards"] = section_shards(1_000_000)
            print(f"{section}: {time.time() - started:.0f} s", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "scale.md").write_text(render(results) + "\n")


if __name__ == "__main__":
    main()
