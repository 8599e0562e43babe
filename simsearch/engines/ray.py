"""The Ray engine: files read, decoded and embedded by a pool of Ray actors, on this machine or on a cluster.

Each actor loads the encoder once — shipped as its model folder's bytes, put in Ray's object store once and
verified by ``Encoder.load`` like any model folder — and then, job by job, reads and decodes the job's files
with simsearch's own ``io.load_image`` (so its arrays are the local engine's, bit for bit) and embeds them. Jobs
go to the actors round robin, at most ``in_flight`` per actor at a time, and come back in the order of the jobs:
what is held in memory stays bounded whatever the folder's size, and the indexing run applies batches in path
order as with the local engine. Only each file's facts (sha256, size, dimensions) and the embeddings travel
back, never the pixels.

There is one actor per GPU when Ray sees GPUs (``device`` auto or cuda), else one single-CPU actor per CPU of
the cluster; never more actors than jobs.

Plain actors rather than Ray Data's ``map_batches`` over an actor pool: on this project's 2-core machine the same
work (10,000 28×28 PNGs, the autoencoder, 256 files a batch, order kept) took Ray Data 5.8 s after ``ray.init``
(first batch after 3.9 s; 5,300 images/s once going), and these actors 3.1 s (ready after 1.7 s; 7,100
images/s), with no planner to tune (``bench/scale_ray.py``, ``bench/results/scale-ray.md``).

Without ``address`` the engine starts a local Ray instance (one CPU per core, no dashboard) when it has work, and
shuts it down when done; where Ray is already initialised in this process (``ray.is_initialized()``) it uses that
instance and leaves it running. With ``address`` it joins that cluster (``ray.init(address=...)``).

**On a cluster, every node must see the same files at the same paths**: the paths sent to the actors are this
machine's absolute paths, and each actor opens them itself, so the images must be on storage that every node
mounts at the same place (NFS, a shared volume). The collection is written by this process alone (actors never
open it); keep it on that storage too when other machines will query it. Every node must have the same
simsearch and its dependencies installed (the same Python environment): only the encoder and the paths are
shipped.

A run closed early (an error, Ctrl-C, SIGTERM: the indexing run closes the generator) cancels the jobs still out,
kills its actors and shuts down a Ray it started; SIGTERM stops the command as it does with the local engine
(``_signal_handlers_kept``, ``_result``).

Ray itself is optional (``pip install 'simsearch[ray]'``): this module imports it only inside ``embed``, and
constructing the engine without it installed is a ``UsageError`` with that remedy.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import importlib.util
import itertools
import logging
import math
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch import progress
from simsearch.engines import EmbeddedBatch, Result, Row, Skip
from simsearch.errors import ImageError, SimsearchError, UsageError, option
from simsearch.io import LoadedImage, LoadJob, load_images
from simsearch.io.channels import ChannelRefused, current_rule, current_tally

if TYPE_CHECKING:  # imported where used: ``RayEngine.start`` runs before this process imports torch
    from simsearch.models.encoder import Encoder

#: The remedy for a missing Ray.
INSTALL_RAY = "pip install 'simsearch[ray]' (or pip install 'ray>=2.9'), or use the local engine"

#: ``device`` values (``IndexConfig.device``'s).
DEVICES = ("auto", "cpu", "cuda")

#: What one file became in an actor: its facts (sha256, bytes, width, height, converted by the channel rule),
#: the error that says why it cannot be used, or None (unchanged: not decoded).
Fact = tuple[str, int, int, int, bool] | ImageError | None


def ray_available() -> bool:
    """Whether Ray can be imported here (without importing it)."""
    return importlib.util.find_spec("ray") is not None


class RayEngine:
    """Decode and embed on Ray actors (see the module docstring).

    ``address``: a Ray cluster to join (``ray.init(address=...)``: ``auto``, ``HOST:PORT`` or ``ray://…``); None
    starts a local Ray instance when one is not running already. ``batch_size``: images per call of the encoder in
    an actor. ``actors``: how many (0: one per GPU, else one per CPU). ``device``: ``auto`` (GPU actors when Ray
    sees GPUs), ``cpu`` or ``cuda`` (GPU actors, or an error). ``in_flight``: jobs queued on each actor at most.
    ``start_seconds``: how long the actors may take to start (placed, and their encoder loaded) before the run
    gives up with a one-line error instead of waiting forever on a cluster too busy to place them.

    After a run, ``batches_per_node`` says how many batches each Ray node (by node id) embedded, and ``actors_per_node``
    how many actors each ran: what a cluster run actually spread where."""

    def __init__(
        self,
        address: str | None = None,
        batch_size: int = 256,
        actors: int = 0,
        device: str = "auto",
        in_flight: int = 2,
        start_seconds: float = 120.0,
    ) -> None:
        if not ray_available():
            raise UsageError("the Ray engine needs Ray, which is not installed", remedy=INSTALL_RAY)
        if device not in DEVICES:
            raise UsageError(f"{option('device')} must be {', '.join(DEVICES)}, not {device!r}")
        if actors < 0 or batch_size < 1 or in_flight < 1:
            raise UsageError("actors must be ≥ 0, batch_size and in_flight ≥ 1")
        if address is not None:
            _check_reachable(address)  # now, before the run trains or writes anything
        self.address = address
        self.batch_size = batch_size
        self.actors = actors
        self.device = device
        self.in_flight = in_flight
        self.start_seconds = start_seconds
        self.batches_per_node: dict[str, int] = {}
        self.actors_per_node: dict[str, int] = {}
        #: Actors started by ``start`` before the encoder was known, and whether that call started Ray.
        self._pool: tuple[list[Any], bool] | None = None
        self._made: tuple[dict[str, Any], int, bool] = ({}, 1, False)

    def __repr__(self) -> str:
        return (
            f"RayEngine(address={self.address!r}, batch_size={self.batch_size}, actors={self.actors}, "
            f"device={self.device!r})"
        )

    def embed(self, encoder: Encoder, jobs: Iterable[LoadJob], total: int) -> Generator[EmbeddedBatch, None, None]:
        self.batches_per_node, self.actors_per_node = {}, {}
        iterator = iter(jobs)
        first = next(iterator, None)
        if first is None:  # nothing to embed: Ray is not even started
            return
        import ray

        if self._pool is not None:  # started early (``start``): the actors only need the encoder
            (actors, started), self._pool = self._pool, None
        else:
            started, actors = _connect(ray, self.address), []
        queue: collections.deque[tuple[LoadJob, Any]] = collections.deque()
        try:
            estimated_jobs = max(1, math.ceil(total / max(1, len(first.paths))))
            self._start_actors(ray, encoder, estimated_jobs, actors)
            rule, tally, channels = current_rule(), current_tally(), encoder.preprocess.channels
            pending: Iterator[LoadJob] = itertools.chain([first], iterator)
            turn = itertools.cycle(actors)

            def submit() -> bool:
                job = next(pending, None)
                if job is None:
                    return False
                paths = [os.path.abspath(path) for path in job.paths]  # every node opens the same absolute paths
                queue.append((job, next(turn).run.remote(paths, list(job.names), list(job.known_sha256), rule)))
                return True

            for _ in range(len(actors) * self.in_flight):
                if not submit():
                    break
            while queue:
                job, ref = queue[0]
                facts, embeddings, node = _get(ray, ref)
                queue.popleft()
                submit()  # the actors keep working while the caller applies this batch
                self.batches_per_node[node] = self.batches_per_node.get(node, 0) + 1
                yield _batch(job, facts, np.array(embeddings, dtype=np.float32), tally, channels)
        finally:
            for _, ref in queue:  # closed early (an error, Ctrl-C): nothing more is wanted
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            _release(ray, actors, started)

    def start(self) -> None:
        """Join the cluster (or start a local Ray) and start the actors now, before the encoder is known: their
        processes start Python and import torch while this one plans the run, and ``embed`` then only ships them
        the encoder. ``close`` releases them when ``embed`` never runs (nothing to embed, an error before it).
        ``index --engine ray --address`` calls it first: on this project's 2-core machine it takes the actors'
        start (1.9 s of a 7.4 s run of 10,000 images) off the critical path."""
        if self._pool is not None:
            return
        import ray

        started = _connect(ray, self.address)
        actors: list[Any] = []
        try:
            self._create_actors(ray, None, actors)
        except BaseException:
            _release(ray, actors, started)
            raise
        self._pool = (actors, started)

    def close(self) -> None:
        """Release what ``start`` started and ``embed`` did not use: kill its actors, and shut down a Ray it
        started. Safe to call at any time, and more than once."""
        if self._pool is not None:
            import ray

            (actors, started), self._pool = self._pool, None
            _release(ray, actors, started)

    def _create_actors(self, ray: Any, jobs: int | None, actors: list[Any]) -> None:
        """Create the actor pool into ``actors``, without an encoder (``_Worker.load`` gives them one): one per GPU
        or per CPU of the cluster (``actors`` when set), at most ``jobs`` when that is known. ``_made`` keeps their
        Ray options, the CPUs each decodes on, and whether they are GPU actors."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if self.device == "cuda" and not gpus:
            raise UsageError(
                "the Ray cluster has no GPU",
                remedy=f"pass {option('device', 'cpu')} or {option('device', 'auto')}, or add GPU nodes",
            )
        on_gpu = gpus > 0 and self.device != "cpu"
        if on_gpu:  # one GPU each, and a share of its node's CPUs (up to 8) to decode on threads
            shares = [
                int(node["Resources"].get("CPU", 0) // node["Resources"]["GPU"])
                for node in ray.nodes()
                if node.get("Alive") and node["Resources"].get("GPU", 0) >= 1
            ]
            per_actor = max(1, min(8, *shares)) if shares else 1
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": per_actor}
            count = self.actors or gpus
        else:
            per_actor = 1
            options = {"num_cpus": 1}
            count = self.actors or cpus
        count = max(1, min(count, jobs) if jobs is not None else count)
        worker = ray.remote(max_restarts=0, max_task_retries=0, **options)(_Worker)
        actors.extend(worker.remote(per_actor) for _ in range(count))
        self._made = (options, per_actor, on_gpu)

    def _start_actors(self, ray: Any, encoder: Encoder, jobs: int, actors: list[Any]) -> None:
        """Start the actor pool into ``actors`` unless ``start`` did (the caller kills them, whatever happens; those
        beyond ``jobs`` are killed now), and wait until each has its encoder loaded; they are counted by node in
        ``actors_per_node``."""
        if not actors:
            self._create_actors(ray, jobs, actors)
        for extra in actors[max(1, jobs) :]:  # started early for a run that turned out smaller
            with contextlib.suppress(Exception):
                ray.kill(extra, no_restart=True)
        del actors[max(1, jobs) :]
        options, per_actor, on_gpu = self._made
        count = len(actors)
        model = ray.put(_model_bytes(encoder))  # once, whatever the number of actors
        device = "cuda" if on_gpu else "cpu"
        ready = [actor.load.remote(model, device, self.batch_size).future() for actor in actors]
        done, _ = concurrent.futures.wait(ready, timeout=self.start_seconds)  # in Python: see _result
        if len(done) < len(ready):
            resources = ray.cluster_resources()
            cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
            what = f"{options.get('num_gpus', 0)} GPU and " if on_gpu else ""
            raise UsageError(
                f"Ray could not start {count} actors ({what}{per_actor} CPU each) in {self.start_seconds:.0f} s; the "
                f"cluster has {cpus} CPUs and {gpus} GPUs",
                remedy="free resources on the cluster (or check that its nodes are up), then run again",
            )
        for node, fingerprint in (_result(ray, future) for future in ready):
            if fingerprint != encoder.fingerprint:
                raise AssertionError(f"a Ray actor loaded an encoder of fingerprint {fingerprint}")
            self.actors_per_node[node] = self.actors_per_node.get(node, 0) + 1


def _connect(ray: Any, address: str | None) -> bool:
    """Make sure Ray is initialised here; True when this call started it (so the run shuts it down)."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    with _signal_handlers_kept():
        if address is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            ray.init(num_cpus=cores or 1, **quiet)
            return True
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:
            raise UsageError(
                f"could not join the Ray cluster at {address!r} ({str(exc).splitlines()[0][:200]})",
                remedy=f"start the cluster first (Ray's 'ray start' on its head node), or fix {option('address')}",
            ) from None
    return True


def _release(ray: Any, actors: list[Any], started: bool) -> None:
    """Kill ``actors``, and shut down Ray when this process ``started`` it."""
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
    if started:
        with _signal_handlers_kept():
            ray.shutdown()


def _check_reachable(address: str, seconds: float = 10.0) -> None:
    """A ``HOST:PORT`` address that nothing answers at is a one-line error now: ``ray.init`` would retry for
    minutes, logging as it goes. (``auto`` and ``ray://`` addresses are left to Ray.)"""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as exc:
        raise UsageError(
            f"no Ray cluster answers at {address!r} ({exc.strerror or exc})",
            remedy=f"start the cluster first (Ray's 'ray start' on its head node, port {port}), or fix {option('address')}",
        ) from None


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put this process's SIGTERM and SIGINT handlers back after the block: Ray's core worker installs a handler
    of its own for SIGTERM that aborts the process at once (exit 134, no clean-up), where simsearch's command line
    stops as on Ctrl-C (the engine's clean-up runs, exit 143)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    kept = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            if handler is not None:  # None: set outside Python, which cannot be put back
                signal.signal(number, handler)


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``, waited for in Python (see ``_result``)."""
    return _result(ray, ref.future())


def _result(ray: Any, future: concurrent.futures.Future[Any]) -> Any:
    """The result of a Ray reference's ``future()``, with simsearch's own errors raised as themselves and a dead
    actor said in one line.

    Waiting on the future happens in Python, so a signal handler's exception (the command line's ``Terminated`` on
    SIGTERM) comes through as itself, where ``ray.get``, which waits in Ray's C++, would turn it into a plain
    ``KeyboardInterrupt`` (and the command would say "Interrupted" and exit 130 instead of 143)."""
    try:
        return future.result()
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, SimsearchError):
            raise exc.cause from None
        raise
    except ray.exceptions.RayActorError:
        raise ImageError(
            "a Ray actor died while decoding or embedding (killed, a node lost, or out of memory?)",
            remedy=f"run again (the work committed so far is kept), with a smaller {option('batch_size')}",
        ) from None


def _model_bytes(encoder: Encoder) -> dict[str, bytes]:
    """The encoder's model folder as {file name: bytes}: what an actor loads (and verifies) as any model folder."""
    with tempfile.TemporaryDirectory(prefix="simsearch-ray-model-") as tmp:
        encoder.write_into(Path(tmp))
        return {path.name: path.read_bytes() for path in sorted(Path(tmp).iterdir())}


def _batch(job: LoadJob, facts: Sequence[Fact], embeddings: np.ndarray, tally: Any, channels: int) -> EmbeddedBatch:
    """An actor's answer for ``job`` as the ``EmbeddedBatch`` the indexing run applies; conversions and refusals
    counted in the caller's channel tally, and a ``progress.DECODED`` event for each decoded file."""
    results: list[Result] = []
    decoded = iter(embeddings)
    watched = progress.observer() is not None
    for name, fact in zip(job.names, facts, strict=True):
        if fact is None:
            results.append(None)
        elif isinstance(fact, ImageError):
            if tally is not None and isinstance(fact, ChannelRefused):
                tally.refused += 1
            results.append(Skip.of(fact, name))
        else:
            sha256, size, width, height, converted = fact
            if tally is not None and converted:
                tally.count(channels, sha256)
            if watched:
                progress.emit(progress.DECODED, name)
            results.append(Row(sha256, size, width, height, next(decoded)))
    if next(decoded, None) is not None:
        raise AssertionError(f"a Ray actor gave more embeddings than images for {job.names[0]}…")
    return EmbeddedBatch(job, results)


class _Worker:
    """A Ray actor (made remote by ``RayEngine``): started with torch imported, then given the encoder once
    (``load``), then jobs read, decoded and embedded."""

    def __init__(self, threads: int) -> None:
        import ray
        import torch

        import simsearch.models.encoder  # noqa: F401  (now, while the driver plans: ``load`` then finds it)

        torch.set_num_threads(threads)
        self.threads = threads
        self.node: str = ray.get_runtime_context().get_node_id()
        self.encoder: Encoder | None = None

    def load(self, model: dict[str, bytes], device: str, batch_size: int) -> tuple[str, str]:
        """Load the encoder from its model folder's bytes; this actor's node, and the encoder's fingerprint."""
        from simsearch.models.encoder import Encoder

        with tempfile.TemporaryDirectory(prefix="simsearch-ray-model-") as tmp:
            for name, data in model.items():
                (Path(tmp) / name).write_bytes(data)
            self.encoder = Encoder.load(Path(tmp), device)
        self.batch_size = batch_size
        return self.node, self.encoder.fingerprint

    def run(
        self, paths: list[str], names: list[str], known: list[str | None], rule: str
    ) -> tuple[list[Fact], np.ndarray, str]:
        """One job: each file's facts (or why it cannot be used, or None when unchanged), the embeddings of those
        decoded in order, and this actor's node."""
        if self.encoder is None:
            raise AssertionError("a Ray actor was given a job before its encoder")
        spec = self.encoder.preprocess
        facts: list[Fact] = []
        arrays: list[np.ndarray] = []
        for image in load_images([Path(p) for p in paths], spec, self.threads, names, known, rule):
            if isinstance(image, LoadedImage):
                facts.append((image.sha256, image.bytes, image.width, image.height, image.converted))
                arrays.append(image.array)
            else:
                facts.append(image)
        if not arrays:
            return facts, np.empty((0, self.encoder.dim), np.float32), self.node
        return facts, self.encoder.embed(np.stack(arrays), self.batch_size), self.node
