"""The Ray engine (``simsearch.engines.ray``) indexes a folder to the collection the local engine makes.

One local Ray instance (2 CPUs, a small object store, no dashboard) serves the whole module; the engine finds
it initialised and neither starts nor stops Ray. Checked: the same collection as the local engine (rows, ids,
sha256, labels, skipped list; embeddings within 1e-5) with bad files, an incremental second run and a colour
image converted for a grey model; jobs come back in order; a generator closed early leaves no actor holding a
CPU; SIGTERM stops a run as the command line means it to; ``index --engine ray`` end to end, ``--address``
without it, or where no cluster answers, refused in one line.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from simsearch.engines import Row
from simsearch.engines.local import LocalEngine
from simsearch.errors import DataError, UsageError
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import LoadJob, Preprocess, find_images
from simsearch.store.collection import Collection, embeddings_of
from tests.conftest import consistent_snapshot, pattern
from tests.engines.test_engines import assert_same_batches, summary
from tests.helpers import error_lines, invoke
from tests.indexing.test_indexing import write_broken_files

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'simsearch[ray]')")

from simsearch.engines.ray import RayEngine  # noqa: E402 - after the skip: its tests need Ray

CPUS = 2


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    """One local Ray for the module: engines use it as they find it, and leave it running."""
    ray.init(
        num_cpus=CPUS,
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def free_cpus() -> float:
    return float(ray.available_resources().get("CPU", 0.0))


def wait_for_free_cpus(seconds: float = 30.0) -> float:
    """The CPUs free in the Ray instance once killed actors have given theirs back (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while free_cpus() < CPUS and time.monotonic() < deadline:
        time.sleep(0.1)
    return free_cpus()


def assert_equivalent_collection(a: Collection, b: Collection) -> None:
    """The same collection, embeddings within 1e-5 (Ray's actors embed on one thread each, which may round
    differently from the local engine's threads)."""
    sa, sb = consistent_snapshot(a), consistent_snapshot(b)
    assert sa.meta.drop_columns(["embedding"]).equals(sb.meta.drop_columns(["embedding"]))  # ids, paths, sha256…
    np.testing.assert_allclose(embeddings_of(sa.meta), embeddings_of(sb.meta), rtol=0, atol=1e-5)
    assert sa.skipped.equals(sb.skipped)
    ids_a, ids_b = faiss.vector_to_array(sa.index.id_map), faiss.vector_to_array(sb.index.id_map)
    np.testing.assert_array_equal(ids_a, ids_b)
    vectors_a = np.stack([sa.index.index.reconstruct(i) for i in range(sa.index.ntotal)])
    vectors_b = np.stack([sb.index.index.reconstruct(i) for i in range(sb.index.ntotal)])
    np.testing.assert_allclose(vectors_a, vectors_b, rtol=0, atol=1e-5)
    volatile = ("created", "updated", "sha256")  # sha256: of the files, whose embeddings may differ in rounding
    assert {k: v for k, v in sa.manifest.items() if k not in volatile} == {
        k: v for k, v in sb.manifest.items() if k not in volatile
    }


def test_the_ray_engine_makes_the_local_collection(image_folder: Path, tmp_path: Path) -> None:
    write_broken_files(image_folder)
    config = IndexConfig(model="pixels", device="cpu", workers=2, batch_size=4, checkpoint_every=4)
    local, on_ray = Collection(tmp_path / "local"), Collection(tmp_path / "ray")
    engine = RayEngine(batch_size=4)

    first = index_folder(image_folder, local, config)
    assert summary(index_folder(image_folder, on_ray, config, engine=engine)) == summary(first)
    assert first.added == 15 and len(first.skipped) == 3
    assert_equivalent_collection(local, on_ray)
    assert sum(engine.actors_per_node.values()) == CPUS  # one single-CPU actor per CPU of the instance
    assert sum(engine.batches_per_node.values()) == 4  # 15 images and the truncated one (the scan skips the rest)
    assert ray.is_initialized() and wait_for_free_cpus() == CPUS  # Ray left running, its actors gone

    # Since then: one file deleted, one changed, one added, a broken one fixed, a colour one added (made grey).
    rng = np.random.default_rng(3)
    (image_folder / "blob" / "0.png").unlink()
    Image.fromarray(pattern("hbars", rng)).save(image_folder / "vbars" / "1.png")
    Image.fromarray(pattern("blob", rng)).save(image_folder / "blob" / "new.png")
    shutil.copy(image_folder / "blob" / "1.png", image_folder / "broken" / "truncated.png")
    Image.fromarray(np.stack([pattern("dots", rng)] * 2 + [pattern("blob", rng)], axis=-1)).save(
        image_folder / "blob" / "colour.png"
    )
    second = index_folder(image_folder, local, config)
    again = index_folder(image_folder, on_ray, config, engine=engine)
    assert summary(again) == summary(second)
    assert (second.added, second.updated, second.removed, second.unchanged) == (3, 1, 1, 13)
    assert second.channels is not None and again.channels is not None
    assert again.channels.to_json() == second.channels.to_json() and second.channels.to_grey == 1
    assert_equivalent_collection(local, on_ray)

    # A strict run fails at the same file whichever engine embeds, and leaves no actor behind.
    (image_folder / "broken").rename(tmp_path / "broken")
    (image_folder / "hbars" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for collection, chosen in ((local, None), (on_ray, engine)):
        with pytest.raises(DataError, match=r"hbars/zz-broken\.png: "):
            index_folder(
                image_folder, collection, IndexConfig(model="pixels", device="cpu", strict=True), engine=chosen
            )
    assert_equivalent_collection(local, on_ray)
    assert wait_for_free_cpus() == CPUS


def test_jobs_come_back_in_order_and_closing_early_ends_the_actors(image_folder: Path) -> None:
    write_broken_files(image_folder)
    entries, _ = find_images(image_folder)
    from simsearch.training import pixels_encoder

    encoder = pixels_encoder(Preprocess(size=(16, 16), channels=1))
    jobs = [
        LoadJob([e.path for e in entries[i : i + 2]], [e.rel for e in entries[i : i + 2]], [None] * 2)
        for i in range(0, len(entries), 2)
    ]
    engine = RayEngine(batch_size=3)
    got = list(engine.embed(encoder, iter(jobs), len(entries)))
    want = list(LocalEngine(workers=2, batch_size=3).embed(encoder, iter(jobs), len(entries)))
    assert_same_batches(got, want, jobs, atol=1e-5)
    for batch in got:  # copies, not views of Ray's object store
        assert all(r.embedding.flags.writeable for r in batch.results if isinstance(r, Row))
    assert wait_for_free_cpus() == CPUS

    # Closed after its first batch (the caller's error or Ctrl-C): outstanding work cancelled, actors killed.
    batches = engine.embed(encoder, iter(jobs), len(entries))
    assert next(batches).job == jobs[0]
    assert free_cpus() == 0  # the two actors hold a CPU each while the run goes on
    batches.close()
    assert wait_for_free_cpus() == CPUS
    assert ray.is_initialized()  # the engine did not start this Ray, so it leaves it running

    # No work, no actors: nothing is started.
    assert list(engine.embed(encoder, iter([]), 0)) == [] and engine.batches_per_node == {}


def test_actors_started_early_are_used_then_released(image_folder: Path, tmp_path: Path) -> None:
    """``start`` places the actors before the encoder is known; ``embed`` gives them the encoder and uses them
    (those beyond the jobs killed); ``close`` releases actors no run used."""
    config = IndexConfig(model="pixels", device="cpu", batch_size=4)
    engine = RayEngine(batch_size=4)
    engine.start()
    assert placed()  # both actors placed, with no encoder yet
    started = index_folder(image_folder, Collection(tmp_path / "early"), config, engine=engine)
    assert started.added == 15 and sum(engine.actors_per_node.values()) == CPUS
    assert wait_for_free_cpus() == CPUS and ray.is_initialized()
    assert_equivalent_collection(Collection(tmp_path / "early"), index_local(image_folder, tmp_path / "local", config))

    engine.start()
    small = tmp_path / "small"
    small.mkdir()
    for name in ("1.png", "2.png"):
        shutil.copy(image_folder / "blob" / name, small / name)
    index_folder(small, Collection(tmp_path / "one"), config, engine=engine)  # one job: one actor kept
    assert engine.actors_per_node and sum(engine.actors_per_node.values()) == 1
    assert wait_for_free_cpus() == CPUS

    engine.start()
    engine.start()  # a second call keeps the actors it has
    assert engine._pool is not None and len(engine._pool[0]) == CPUS
    assert placed()
    engine.close()  # nothing embedded: the actors are let go
    engine.close()
    assert wait_for_free_cpus() == CPUS and ray.is_initialized()


def test_index_with_an_address_starts_the_actors_first(image_folder: Path, tmp_path: Path) -> None:
    """``--address``: the actors are started before the run plans (``cli.index._early``), then used."""
    address = ray.get_runtime_context().gcs_address  # this module's Ray, joined as a cluster would be
    home = tmp_path / "home"
    result = invoke(
        "index", image_folder, "--model", "pixels", "--engine", "ray", "--address", address, "--home", home,
        "--batch-size", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Ray: 4 batches embedded on 1 node: " in result.stdout and "(2 actors)." in result.stdout
    assert wait_for_free_cpus() == CPUS
    again = invoke("index", image_folder, "--engine", "ray", "--address", address, "--home", home)
    assert again.exit_code == 0 and "Nothing to embed" in again.stdout  # the early actors let go unused
    assert wait_for_free_cpus() == CPUS and ray.is_initialized()


def placed(seconds: float = 30.0) -> bool:
    """Whether every CPU of the instance is taken (actors are placed a moment after they are asked for)."""
    deadline = time.monotonic() + seconds
    while free_cpus() > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return free_cpus() == 0


def index_local(images: Path, path: Path, config: IndexConfig) -> Collection:
    collection = Collection(path)
    index_folder(images, collection, config)
    return collection


def test_index_engine_ray_on_the_command_line(image_folder: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = invoke("index", image_folder, "--model", "pixels", "--engine", "ray", "--home", home, "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "Ray: 4 batches embedded on 1 node: " in result.stdout and "(2 actors)." in result.stdout
    local = invoke("index", image_folder, "--model", "pixels", "--home", home, "--name", "local", "--batch-size", "4")
    assert local.exit_code == 0, local.output
    assert "Ray:" not in local.stdout
    assert_equivalent_collection(Collection(home / "default"), Collection(home / "local"))
    # Nothing to embed (the actors only read and hash the files): nothing said of Ray.
    again = invoke("index", image_folder, "--engine", "ray", "--home", home)
    assert again.exit_code == 0 and "Nothing to embed" in again.stdout and "Ray:" not in again.stdout

    refused = invoke("index", image_folder, "--address", "127.0.0.1:6379", "--home", home)
    assert refused.exit_code == 2 and error_lines(refused) == [
        "Error: --address names a Ray cluster, which only the Ray engine uses — add --engine ray, or drop --address"
    ]
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nobody = invoke(
        "index", image_folder, "--engine", "ray", "--address", f"127.0.0.1:{port}", "--home", home, "-n", "x"
    )
    assert nobody.exit_code == 2 and error_lines(nobody) == [
        f"Error: no Ray cluster answers at '127.0.0.1:{port}' (Connection refused) — start the cluster first (Ray's "
        f"'ray start' on its head node, port {port}), or fix --address"
    ]
    assert not (home / "x").exists()  # refused before anything was written
    unknown = invoke("index", image_folder, "--engine", "spark", "--home", home)
    assert unknown.exit_code == 2 and error_lines(unknown) == ["Error: --engine must be local or ray, not 'spark'"]


SIGTERM_DURING_A_RUN = """
import logging, os, signal, threading, time
import ray
from simsearch.engines.ray import _connect, _get

class Terminated(KeyboardInterrupt):
    pass

def on_sigterm(signum, frame):
    raise Terminated

signal.signal(signal.SIGTERM, on_sigterm)
assert _connect(ray, None)  # a local Ray, started here
assert signal.getsignal(signal.SIGTERM) is on_sigterm, signal.getsignal(signal.SIGTERM)

@ray.remote(num_cpus=0)
def slow():
    time.sleep(60)

threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    _get(ray, slow.remote())
except Terminated:
    print("Terminated")
finally:
    ray.shutdown()
"""


def test_sigterm_during_a_run_stops_it_as_the_command_line_does() -> None:
    """Ray's core worker installs a SIGTERM handler that aborts the process (exit 134, no clean-up); the engine puts
    the command line's back, and waits in Python, so that its ``Terminated`` reaches the command (exit 143)."""
    done = subprocess.run([sys.executable, "-c", SIGTERM_DURING_A_RUN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "Terminated", done.stderr[-2000:]


def test_without_ray_the_engine_says_how_to_install_it(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simsearch.engines.ray

    monkeypatch.setattr(simsearch.engines.ray, "ray_available", lambda: False)
    with pytest.raises(UsageError, match=r"pip install 'simsearch\[ray\]'"):
        RayEngine()
    result = invoke("index", image_folder, "--engine", "ray", "--home", tmp_path / "home")
    assert result.exit_code == 2 and error_lines(result) == [
        "Error: the Ray engine needs Ray, which is not installed — pip install 'simsearch[ray]' (or pip install "
        "'ray>=2.9'), or use the local engine"
    ]
    assert not (tmp_path / "home").exists()  # refused before anything was written
