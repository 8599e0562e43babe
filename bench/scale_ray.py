"""Scale-out with Ray: ``simsearch index --engine ray`` beside the local engine, and a two-node Ray cluster.

    python bench/scale_ray.py                          # every section
    python bench/scale_ray.py --only engines cluster   # some sections

Sections (issue "index --engine ray"):
  engines  a) 10,000 images (MNIST t10k from ../shared/data as 28×28 PNGs, or generated ones without it) indexed
              with ``--engine local`` and ``--engine ray`` into fresh collections, with ``--model pixels`` and
              with a small autoencoder trained once beforehand (``simsearch train --max-seconds``): the wall time
              of each command (the median of ``--repeats`` runs, engines alternating), images/s and the ratio
              ray/local; the same runs through the Python API with the time of each batch, for the steady-state
              throughput (the images after the first batch over the time from the first batch to the last), which
              leaves out Ray's fixed start-up; and the two collections compared (rows, ids, sha256, labels,
              skipped list equal; embeddings within 1e-5, and whether they are bit for bit equal).
  data        the same embedding work as a Ray Data pipeline (``map_batches`` over an actor pool, order
              preserved), for comparison with the engine's plain actors: start-up and steady-state throughput.
              A bench-only prototype; simsearch's engine does not use Ray Data.
  large       the autoencoder row of a) once more on ``--large-images`` images (50,000: the 10,000 and copies
              rolled by a pixel or more), one command per engine: where Ray's fixed start-up is paid back.
  actors   d) what the engine's actors cost to start on a Ray already running: wall time and CPU seconds per
              actor process, beside a plain Ray actor's and a bare ``import torch``; and what starting and
              stopping a local Ray instance takes (``ray.init``, ``ray.shutdown``).
  cluster  b) a two-node Ray cluster on this one machine (``ray start --head --num-cpus=1`` and a second node
              of 1 CPU on the loopback address 127.0.0.2), ``simsearch index --engine ray --address`` into it, the
              batches and actors per node (the line the command prints), the collection compared with the local
              engine's; then ``ray stop`` (which stops every Ray that ``ray start`` started on this machine).
Results go under the key "ray" of bench/results/scale.json (other keys are left as they are), and a table in
bench/results/scale-ray.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import SHARED_DATA, read_idx  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
SIMSEARCH = [PYTHON, "-m", "simsearch"]
RAY = str(Path(PYTHON).with_name("ray"))
#: What ``simsearch index`` prints after a Ray run: batches per node, and actors.
RAY_LINE = re.compile(r"^Ray: ([\d,]+) batch(?:es)? embedded on (\d+) nodes?: (.*)\.$", re.M)
NODE = re.compile(r"(\w{8}) ([\d,]+) \((\d+) actors?\)")
TIME_ROW = re.compile(r"time\s*│\s*([\d.]+) s")


def env() -> dict[str, str]:
    """The environment of every command: no progress bars, and Ray's token authentication on for the drivers
    and nodes alike (Ray 2.60 turns it on for ``ray start --head``, and a client that does not say so is refused;
    older Rays ignore the variable)."""
    return {**os.environ, "SIMSEARCH_PROGRESS": "off", "RAY_AUTH_MODE": "token"}


def busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent busy since boot, all processes together (``/proc/stat``): a Ray run's
    work happens in processes that are not the command's children (raylet, its workers), so only the machine-wide
    count sees it."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def run(args: list[str], timeout: float = 1800) -> tuple[float, str]:
    """Run a command; its wall seconds and stdout (its stderr shown and an error raised when it fails)."""
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


# --- data ---------------------------------------------------------------------------------------------------------


def write_images(folder: Path, n: int) -> str:
    """``n`` 28×28 grey PNGs under ``folder/<label>/``: MNIST's test split when ../shared/data has it, else
    generated patterns. Returns what they are."""
    mnist = SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
    from PIL import Image

    if mnist.exists():
        images, labels = read_idx(mnist), read_idx(mnist.with_name("t10k-labels-idx1-ubyte.gz"))
        if len(images) >= n:
            for i in range(n):
                path = folder / str(labels[i]) / f"{i:05d}.png"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(images[i]).save(path)
            return f"MNIST t10k, first {n:,} (28×28 PNG)"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    for i in range(n):
        path = folder / f"c{i % 10}" / f"{i:05d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        k = i % 10
        wave = np.sin((xx * np.cos(k) + yy * np.sin(k)) * (0.2 + 0.05 * k) + rng.uniform(0, 6.3))
        noise = rng.normal(0, 0.3, (28, 28))
        Image.fromarray(np.clip((wave + noise + 1.5) * 80, 0, 255).astype(np.uint8)).save(path)
    return f"{n:,} generated 28×28 PNG patterns (no ../shared/data)"


def train_model(images: Path, out: Path, seconds: float) -> float:
    if not (out / "encoder.json").exists():
        args = ["train", str(images), "--family", "autoencoder", "--out", str(out), "--device", "cpu"]
        run([*SIMSEARCH, *args, "--max-seconds", str(seconds), "--seed", "0"])
    return seconds


# --- comparing collections -----------------------------------------------------------------------------------------


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Two collections: equal rows (ids, paths, labels, sha256 …), skipped lists and FAISS ids; the largest
    difference between their embeddings, and whether they are equal bit for bit."""
    import faiss

    from simsearch.store.collection import Collection, embeddings_of

    sa, sb = Collection(a).load(), Collection(b).load()
    ea, eb = embeddings_of(sa.meta), embeddings_of(sb.meta)
    ids_a, ids_b = faiss.vector_to_array(sa.index.id_map), faiss.vector_to_array(sb.index.id_map)
    rows_equal = sa.meta.drop_columns(["embedding"]).equals(sb.meta.drop_columns(["embedding"]))
    max_diff = float(np.abs(ea - eb).max()) if ea.shape == eb.shape and len(ea) else None
    return {
        "rows": sa.meta.num_rows,
        "rows_equal": bool(rows_equal),
        "skipped_equal": bool(sa.skipped.equals(sb.skipped)),
        "faiss_ids_equal": bool(np.array_equal(ids_a, ids_b)),
        "embeddings_max_abs_diff": max_diff,
        "embeddings_bit_equal": bool(ea.tobytes() == eb.tobytes()),
        "identical": bool(
            rows_equal
            and sa.skipped.equals(sb.skipped)
            and np.array_equal(ids_a, ids_b)
            and max_diff is not None
            and max_diff <= 1e-5
        ),
    }


# --- sections ------------------------------------------------------------------------------------------------------


class Timed:
    """An Embedder that passes another's batches on and notes when each came, and how many files it held."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.started = 0.0
        self.times: list[float] = []
        self.sizes: list[int] = []

    def embed(self, encoder: Any, jobs: Iterable[Any], total: int) -> Generator[Any, None, None]:
        self.started = time.perf_counter()
        with contextlib.closing(self.engine.embed(encoder, jobs, total)) as batches:
            for batch in batches:
                self.times.append(time.perf_counter())
                self.sizes.append(len(batch.job.paths))
                yield batch

    def figures(self) -> dict[str, float]:
        steady = sum(self.sizes[1:]) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else float("nan")
        return {
            "first_batch_s": round(self.times[0] - self.started, 2),
            "embedding_s": round(self.times[-1] - self.started, 2),
            "steady_images_per_s": round(steady),
        }


def api_run(images: Path, home: Path, model: str, engine_name: str) -> dict[str, Any]:
    """One ``index_folder`` run through the Python API, with the time of each batch."""
    import simsearch.engines.ray as ray_engine
    from simsearch.engines.local import LocalEngine
    from simsearch.engines.ray import RayEngine
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.store.collection import Collection

    target = home / f"api-{Path(model).name}-{engine_name}"
    shutil.rmtree(target, ignore_errors=True)
    engine = Timed(RayEngine() if engine_name == "ray" else LocalEngine())
    phases: dict[str, float] = {}
    connect, start_actors = ray_engine._connect, RayEngine._start_actors

    def timed_connect(*args: Any) -> bool:  # how long starting Ray takes, and then its actors
        begun = time.perf_counter()
        try:
            return connect(*args)
        finally:
            phases["ray_start_s"] = round(time.perf_counter() - begun, 2)

    def timed_start_actors(self: Any, *args: Any) -> None:
        begun = time.perf_counter()
        try:
            start_actors(self, *args)
        finally:
            phases["actors_ready_s"] = round(time.perf_counter() - begun, 2)

    ray_engine._connect, RayEngine._start_actors = timed_connect, timed_start_actors  # type: ignore[method-assign]
    started = time.perf_counter()
    try:
        report = index_folder(images, Collection(target), IndexConfig(model=model, device="cpu"), engine=engine)
    finally:
        ray_engine._connect, RayEngine._start_actors = connect, start_actors  # type: ignore[method-assign]
    out = {"index_folder_s": round(time.perf_counter() - started, 2), **engine.figures(), **phases}
    assert report.added == report.found, (report.added, report.found)
    shutil.rmtree(target, ignore_errors=True)
    return out


def section_engines(args: argparse.Namespace, work: Path, images: Path, model_dir: Path) -> dict[str, Any]:
    home = work / "home"
    out: dict[str, Any] = {}
    for label, model in (("pixels", "pixels"), ("autoencoder", str(model_dir))):
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        reported: dict[str, list[float]] = {"local": [], "ray": []}
        lines: list[str] = []
        for repeat in range(args.repeats):
            for engine in ("local", "ray") if repeat % 2 == 0 else ("ray", "local"):
                name = f"{label}-{engine}"
                shutil.rmtree(home / name, ignore_errors=True)
                command = ["index", str(images), "--home", str(home), "--name", name, "--model", model]
                seconds, stdout = run([*SIMSEARCH, *command, "--device", "cpu", "--engine", engine])
                walls[engine].append(seconds)
                match = TIME_ROW.search(stdout)
                if match:
                    reported[engine].append(float(match.group(1)))
                lines += [match.group(0) for match in RAY_LINE.finditer(stdout)]
        row: dict[str, Any] = {}
        for engine in ("local", "ray"):
            wall = statistics.median(walls[engine])
            row[engine] = {
                "wall_s": round(wall, 2),
                "walls_s": [round(w, 2) for w in walls[engine]],
                "images_per_s": round(args.images / wall),
                "index_report_s": round(statistics.median(reported[engine]), 2) if reported[engine] else None,
            }
        row["ratio_ray_over_local"] = round(row["ray"]["images_per_s"] / row["local"]["images_per_s"], 3)
        row["ray_line"] = lines[-1] if lines else None
        row["api"] = {engine: api_run(images, home, model, engine) for engine in ("local", "ray")}
        row["api"]["steady_ratio_ray_over_local"] = round(
            row["api"]["ray"]["steady_images_per_s"] / row["api"]["local"]["steady_images_per_s"], 3
        )
        row["compared"] = compare(home / f"{label}-local", home / f"{label}-ray")
        out[label] = row
        print(label, json.dumps(row), flush=True)
    return out


def section_data(args: argparse.Namespace, work: Path, images: Path, model_dir: Path) -> dict[str, Any]:
    """The engine's work (load and embed 256 files at a time on 2 single-CPU actors) as a Ray Data pipeline."""
    import ray
    import ray.data

    from simsearch.engines.ray import _model_bytes, _Worker
    from simsearch.io import find_images
    from simsearch.models.encoder import Encoder

    encoder = Encoder.load(model_dir)
    entries, _ = find_images(images)
    cpus = os.cpu_count() or 1
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        model = ray.put(_model_bytes(encoder))

        class Embed:
            def __init__(self, model: list[Any]) -> None:
                self.worker = _Worker(1)
                self.worker.load(ray.get(model[0]), "cpu", 256)

            def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                paths, names = list(batch["path"]), list(batch["name"])
                facts, embeddings, _ = self.worker.run(paths, names, [None] * len(paths), "convert")
                return {"sha256": np.array([f[0] for f in facts]), "embedding": embeddings}  # type: ignore[index]

        pipeline = ray.data.from_items([{"path": str(e.path), "name": e.rel} for e in entries]).map_batches(
            Embed,
            fn_constructor_args=([model],),
            batch_size=256,
            compute=ray.data.ActorPoolStrategy(size=cpus),
            num_cpus=1,
            batch_format="numpy",
        )
        begun = time.perf_counter()
        first, first_size, done, got = None, 0, 0, []
        for batch in pipeline.iter_batches(batch_size=None, batch_format="numpy"):
            if first is None:
                first = time.perf_counter()
                first_size = len(batch["sha256"])
            done += len(batch["sha256"])
            got.extend(batch["sha256"])
        ended = time.perf_counter()
    finally:
        ray.shutdown()
    assert first is not None
    in_order = got == [hashlib.sha256(e.path.read_bytes()).hexdigest() for e in entries]
    return {
        "what": "Ray Data map_batches over an ActorPoolStrategy of one single-CPU actor per core, order preserved, "
        "256 files per batch, the autoencoder; the engine's plain actors do the same work",
        "ray_init_s": round(init_s, 2),
        "first_batch_s": round(first - begun, 2),
        "embedding_s": round(ended - begun, 2),
        "steady_images_per_s": round((done - first_size) / (ended - first)) if ended > first else None,
        "images": done,
        "in_order": in_order,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"node": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"],
                   "cpus": n["Resources"].get("CPU", 0)} for n in ray.nodes()]))
"""


def section_cluster(args: argparse.Namespace, work: Path, images: Path, model_dir: Path) -> dict[str, Any]:
    home = work / "home"
    port = free_port()
    head = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    out: dict[str, Any] = {
        "commands": [
            f"ray start --head --port={port} --node-ip-address=127.0.0.1 --include-dashboard=false {' '.join(common)}",
            f"ray start --address={head} --node-ip-address=127.0.0.2 {' '.join(common)}",
        ]
    }
    try:
        run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                *common,
            ]
        )
        run([RAY, "start", f"--address={head}", "--node-ip-address=127.0.0.2", *common])
        _, nodes = run([PYTHON, "-c", NODES, head])
        out["nodes"] = json.loads(nodes.strip().splitlines()[-1])
        name = "cluster-autoencoder"
        shutil.rmtree(home / name, ignore_errors=True)
        command = ["index", str(images), "--home", str(home), "--name", name, "--model", str(model_dir)]
        command += ["--device", "cpu", "--engine", "ray", "--address", head]
        out["index_command"] = "simsearch " + " ".join(command)
        seconds, stdout = run([*SIMSEARCH, *command])
        out["wall_s"] = round(seconds, 2)
        out["images_per_s"] = round(args.images / seconds)
        match = RAY_LINE.search(stdout)
        out["ray_line"] = match.group(0) if match else None
        if match:
            out["batches_per_node"] = {n: int(b.replace(",", "")) for n, b, _ in NODE.findall(match.group(3))}
            out["actors_per_node"] = {n: int(a) for n, _, a in NODE.findall(match.group(3))}
        local = home / "autoencoder-local"
        if (local / "manifest.json").exists():
            out["compared_with_local"] = compare(local, home / name)
    finally:
        subprocess.run([RAY, "stop"], capture_output=True, env=env())
        out["stopped"] = "ray stop"
    print("cluster", json.dumps(out), flush=True)
    return out


def section_warm(args: argparse.Namespace, work: Path, images: Path, model_dir: Path) -> dict[str, Any]:
    """The engines on the same images when Ray is already running, as on a cluster a user has: one node of 2 CPUs
    started once (``ray start --head --num-cpus=2``), joined by each ``index --engine ray --address``; the local
    engine beside it, the runs alternating (median of ``--repeats``). What remains of Ray's start-up is its actors'
    (they import torch and load the encoder), and the connection."""
    home = work / "home"
    port = free_port()
    head = f"127.0.0.1:{port}"
    start = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"]
    start += ["--num-cpus=2", "--disable-usage-stats"]
    out: dict[str, Any] = {"commands": ["ray " + " ".join(start[1:])]}
    try:
        run(start)
        for label, model in (("pixels", "pixels"), ("autoencoder", str(model_dir))):
            walls: dict[str, list[float]] = {"local": [], "ray": []}
            cpus: dict[str, list[float]] = {"local": [], "ray": []}
            for repeat in range(args.repeats):
                for engine in ("local", "ray") if repeat % 2 == 0 else ("ray", "local"):
                    name = f"warm-{label}-{engine}"
                    shutil.rmtree(home / name, ignore_errors=True)
                    command = ["index", str(images), "--home", str(home), "--name", name, "--model", model]
                    command += ["--device", "cpu", "--engine", engine]
                    time.sleep(2)  # what the last run left behind settles first
                    before = busy_cpu_seconds()
                    seconds, _ = run([*SIMSEARCH, *command, *(["--address", head] if engine == "ray" else [])])
                    time.sleep(0.5)  # the actors' exit is part of the run's cost
                    cpus[engine].append(busy_cpu_seconds() - before)
                    walls[engine].append(seconds)
            row: dict[str, Any] = {
                engine: {
                    "wall_s": round(statistics.median(walls[engine]), 2),
                    "walls_s": [round(w, 2) for w in walls[engine]],
                    "images_per_s": round(args.images / statistics.median(walls[engine])),
                    "machine_cpu_s": round(statistics.median(cpus[engine]), 2),
                }
                for engine in ("local", "ray")
            }
            row["ratio_ray_over_local"] = round(row["ray"]["images_per_s"] / row["local"]["images_per_s"], 3)
            row["compared"] = compare(home / f"warm-{label}-local", home / f"warm-{label}-ray")
            out[label] = row
            print("warm", label, json.dumps(row), flush=True)
    finally:
        subprocess.run([RAY, "stop"], capture_output=True, env=env())
    return out


def section_large(args: argparse.Namespace, work: Path, images: Path, model_dir: Path) -> dict[str, Any]:
    """Where Ray's fixed start-up is paid back: ``--large-images`` images (the 10,000, and shifted copies of them)
    indexed once with each engine and the autoencoder."""
    from PIL import Image

    large = work / "large"
    sources = sorted(images.rglob("*.png"))
    for i in range(args.large_images):
        source = sources[i % len(sources)]
        path = large / source.parent.name / f"{i:06d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        shift = i // len(sources)  # each round of copies rolled one pixel further right: new files, new content
        with Image.open(source) as img:
            Image.fromarray(np.roll(np.asarray(img), shift, axis=1)).save(path)
    home = work / "home"
    out: dict[str, Any] = {"images": args.large_images}
    for engine in ("local", "ray"):
        name = f"large-{engine}"
        shutil.rmtree(home / name, ignore_errors=True)
        command = ["index", str(large), "--home", str(home), "--name", name, "--model", str(model_dir)]
        seconds, _ = run([*SIMSEARCH, *command, "--device", "cpu", "--engine", engine])
        out[engine] = {"wall_s": round(seconds, 2), "images_per_s": round(args.large_images / seconds)}
    out["ratio_ray_over_local"] = round(out["ray"]["images_per_s"] / out["local"]["images_per_s"], 3)
    out["compared"] = compare(home / "large-local", home / "large-ray")
    print("large", json.dumps(out), flush=True)
    return out


ACTORS = """
import json, logging, os, sys, time
import ray
from simsearch.engines.ray import _model_bytes, _Worker
from simsearch.models.encoder import Encoder

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

class Bare:  # a Ray worker and nothing else
    def pid(self):
        return os.getpid()

ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
model = ray.put(_model_bytes(Encoder.load(sys.argv[2])))
out = {}
for name, cls in (("bare", Bare), ("worker", _Worker)):
    started = time.perf_counter()
    actors = [ray.remote(num_cpus=1, max_restarts=0)(cls).remote(*([1] if cls is _Worker else [])) for _ in range(2)]
    if cls is _Worker:
        ray.get([a.load.remote(model, "cpu", 256) for a in actors])
        pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
    else:
        pids = ray.get([a.pid.remote() for a in actors])
    out[name] = {"ready_s": time.perf_counter() - started, "cpu_s": [cpu_seconds(p) for p in pids]}
    for a in actors:
        ray.kill(a)
    time.sleep(1)
print(json.dumps(out))
"""

LOCAL_RAY = """
import json, logging, time
import ray
started = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
up = time.perf_counter()
ray.shutdown()
print(json.dumps({"init_s": up - started, "shutdown_s": time.perf_counter() - up}))
"""

TORCH_CPU = """
import resource
import torch
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime)
"""


def section_actors(args: argparse.Namespace, work: Path, images: Path, model_dir: Path) -> dict[str, Any]:
    """What the Ray engine's actors cost to start, with nothing else running: on a Ray already running (one node
    of 2 CPUs), a driver starts two plain actors (a Ray worker process and nothing more), then two of the
    engine's actors (a Ray worker that imports torch and simsearch's encoder, then loads the encoder), each pair
    at once; the wall time until both answer, and each actor process's CPU seconds (``/proc/PID/stat``), median
    of ``--repeats``. Beside them, the CPU seconds of ``import torch`` in a bare Python process, and first (before
    that Ray is started) the wall time of ``ray.init(num_cpus=2)`` and of ``ray.shutdown()``. On a machine
    with 2 cores, these CPU seconds are what a Ray run adds to the local engine's work before it embeds."""
    port = free_port()
    head = f"127.0.0.1:{port}"
    start = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"]
    start += ["--num-cpus=2", "--disable-usage-stats"]
    runs: list[dict[str, Any]] = []
    torch_cpu: list[float] = []
    local = [json.loads(run([PYTHON, "-c", LOCAL_RAY])[1].strip().splitlines()[-1]) for _ in range(args.repeats)]
    try:
        run(start)
        time.sleep(2)
        for _ in range(args.repeats):
            runs.append(json.loads(run([PYTHON, "-c", ACTORS, head, str(model_dir)])[1].strip().splitlines()[-1]))
            torch_cpu.append(float(run([PYTHON, "-c", TORCH_CPU])[1].strip()))
    finally:
        subprocess.run([RAY, "stop"], capture_output=True, env=env())
    out: dict[str, Any] = {"commands": ["ray " + " ".join(start[1:])], "repeats": args.repeats}
    for name in ("bare", "worker"):
        out[name] = {
            "ready_s": round(statistics.median(r[name]["ready_s"] for r in runs), 2),
            "cpu_s_per_actor": round(statistics.median(c for r in runs for c in r[name]["cpu_s"]), 2),
        }
    out["torch_import_cpu_s"] = round(statistics.median(torch_cpu), 2)
    out["local_ray"] = {k: round(statistics.median(r[k] for r in local), 2) for k in ("init_s", "shutdown_s")}
    print("actors", json.dumps(out), flush=True)
    return out


SECTIONS = {
    "engines": section_engines,
    "data": section_data,
    "cluster": section_cluster,
    "large": section_large,
    "warm": section_warm,
    "actors": section_actors,
}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# `simsearch index --engine ray` (bench/scale_ray.py)",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPU cores ({result['machine']['platform']}), "
        f"Ray {result['machine']['ray']}, {result['images']}; {result['date']} (1-minute load average "
        f"{result['load_average_before']:.2f} before, {result.get('load_average_after', 0):.2f} after, the bench's "
        "own runs included).",
        "",
    ]
    engines = result.get("engines")
    if engines:
        lines += [
            f"## a) local engine against Ray engine, {result['image_count']:,} images, fresh collections",
            "",
            "| model | local: wall s (images/s) | ray: wall s (images/s) | ray/local | steady-state images/s local, ray "
            "(ray/local) | Ray: start, actors ready, first batch | same collection |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, row in engines.items():
            api, cmp = row["api"], row["compared"]
            same = "yes" if cmp["identical"] else "NO"
            same += f" (max diff {cmp['embeddings_max_abs_diff']:.1e}{', bit for bit' if cmp['embeddings_bit_equal'] else ''})"
            lines.append(
                f"| {label} | {row['local']['wall_s']} ({row['local']['images_per_s']:,}) | {row['ray']['wall_s']} "
                f"({row['ray']['images_per_s']:,}) | {row['ratio_ray_over_local']} | "
                f"{api['local']['steady_images_per_s']:,}, {api['ray']['steady_images_per_s']:,} "
                f"({api['steady_ratio_ray_over_local']}) | {api['ray'].get('ray_start_s')} s, "
                f"{api['ray'].get('actors_ready_s')} s, at {api['ray']['first_batch_s']} s | {same} |"
            )
        lines += [
            "",
            "Wall: the whole `simsearch index` command (median of the runs). Steady state: through the Python API, "
            "the images after the first batch over the time from the first batch to the last, leaving out the "
            "start-up (for Ray: starting a local Ray instance, then its actors, which import torch and load the "
            "encoder; the first batch comes only after that, counted from the engine's start). Once started, "
            "the actors embed as fast as the local engine or faster; what separates the wall times is that "
            "fixed start-up, and Ray's shutdown at the end, on a run the local engine finishes in a few seconds.",
            "",
        ]
    large = result.get("large")
    if large:
        cmp = large["compared"]
        lines += [
            f"## The autoencoder on {large['images']:,} images (one command per engine)",
            "",
            f"local {large['local']['wall_s']} s ({large['local']['images_per_s']:,} images/s), ray "
            f"{large['ray']['wall_s']} s ({large['ray']['images_per_s']:,} images/s): ray/local "
            f"**{large['ratio_ray_over_local']}**; same collection: {'yes' if cmp['identical'] else 'NO'} "
            f"(max embedding difference {cmp['embeddings_max_abs_diff']:.1e}).",
            "",
        ]
    data = result.get("data")
    if data:
        lines += [
            "## Ray Data, for comparison (bench-only prototype)",
            "",
            f"{data['what']}: first batch after {data['first_batch_s']} s, all {data['images']:,} after "
            f"{data['embedding_s']} s (after ray.init's {data['ray_init_s']} s), steady state "
            f"{data['steady_images_per_s']:,} images/s, order kept: {data['in_order']}.",
            "",
        ]
    cluster = result.get("cluster")
    if cluster:
        lines += ["## b) two Ray nodes on this machine (1 CPU each)", "", *[f"    {c}" for c in cluster["commands"]]]
        lines += [f"    {cluster.get('index_command', '')}", "    ray stop", ""]
        lines += [
            f"Nodes: {', '.join(n['node'][:8] + ' at ' + n['address'] for n in cluster.get('nodes', []))}. "
            f"`index` took {cluster.get('wall_s')} s ({cluster.get('images_per_s', 0):,} images/s) and said: "
            f"`{cluster.get('ray_line')}`",
        ]
        if "compared_with_local" in cluster:
            cmp = cluster["compared_with_local"]
            lines.append(
                f"Same collection as the local engine's: {'yes' if cmp['identical'] else 'NO'} (max embedding "
                f"difference {cmp['embeddings_max_abs_diff']:.1e})."
            )
        lines.append("")
    warm = result.get("warm")
    if warm:
        lines += [
            "## c) Ray already running (one node of 2 CPUs, started once), joined by each run",
            "",
            *[f"    {c}" for c in warm["commands"]],
            "",
            "Machine CPU: the CPU seconds the whole machine spent busy from the command's start to half a second after"
            " its end (`/proc/stat`; Ray's own processes included, the idle cluster's upkeep too), median of the runs.",
            "",
            "| model | local: wall s (images/s) | ray --address: wall s (images/s) | ray/local | machine CPU s: local, ray "
            "| same collection |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label in ("pixels", "autoencoder"):
            row = warm.get(label)
            if row:
                lines.append(
                    f"| {label} | {row['local']['wall_s']} ({row['local']['images_per_s']:,}) | "
                    f"{row['ray']['wall_s']} ({row['ray']['images_per_s']:,}) | {row['ratio_ray_over_local']} | "
                    f"{row['local'].get('machine_cpu_s', '–')}, {row['ray'].get('machine_cpu_s', '–')} | "
                    f"{'yes' if row['compared']['identical'] else 'NO'} |"
                )
        lines.append("")
    actors = result.get("actors")
    if actors:
        bare, worker = actors["bare"], actors["worker"]
        lines += [
            "## d) What the actors cost to start (Ray already running, nothing else busy)",
            "",
            *[f"    {c}" for c in actors["commands"]],
            "",
            "| two actors started at once | wall s until both answer | CPU s per actor process |",
            "| --- | --- | --- |",
            f"| plain (a Ray worker, nothing more) | {bare['ready_s']} | {bare['cpu_s_per_actor']} |",
            f"| the engine's (a Ray worker that imports torch and loads the encoder) | {worker['ready_s']} | "
            f"{worker['cpu_s_per_actor']} |",
            "",
            f"`import torch` alone in a bare Python process: {actors['torch_import_cpu_s']} CPU s (median of "
            f"{actors['repeats']}). Starting a local Ray (`ray.init(num_cpus=2)`, no dashboard, before the cluster "
            f"above is started) took {actors['local_ray']['init_s']} s and `ray.shutdown()` "
            f"{actors['local_ray']['shutdown_s']} s, with nothing else running. A Ray run on this 2-core machine starts two such actors while the command "
            "imports torch and plans, so it adds about twice the engine actor's CPU seconds to the local "
            "engine's work before its first batch: the ratios of a) and c) on 10,000 images are that start-up "
            "against a run of a few seconds, not the embedding rate (the steady state of a).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2, help="command runs per engine and model (median)")
    parser.add_argument("--large-images", type=int, default=50_000, help="images of the 'large' section")
    parser.add_argument("--train-seconds", type=float, default=30.0, help="the autoencoder's training time limit")
    parser.add_argument("--work", type=Path, default=None, help="keep images, model and collections here")
    args = parser.parse_args()
    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="simsearch-scale-ray-"))
    images, model_dir = work / "images", work / "model"
    try:
        source = write_images(images, args.images)
        train_model(images, model_dir, args.train_seconds)
        result: dict[str, Any] = {
            "command": " ".join(["python bench/scale_ray.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"),
            "images": source,
            "image_count": args.images,
            "autoencoder": f"simsearch train --family autoencoder --max-seconds {args.train_seconds:g} --seed 0",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "ray": ray.__version__},
            "load_average_before": os.getloadavg()[0],  # timings mean little on a machine busy with other work
        }
        for name in args.only:
            result[name] = SECTIONS[name](args, work, images, model_dir)
        result["load_average_after"] = os.getloadavg()[0]
        RESULTS.mkdir(parents=True, exist_ok=True)
        target = RESULTS / "scale.json"
        merged: dict[str, Any] = json.loads(target.read_text()) if target.exists() else {}
        merged["ray"] = {**merged.get("ray", {}), **result}  # only this key (another script owns the others); the
        # sections not run now keep their last figures
        target.write_text(json.dumps(merged, indent=2) + "\n")
        (RESULTS / "scale-ray.md").write_text(markdown(merged["ray"]))
        print(markdown(merged["ray"]))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
