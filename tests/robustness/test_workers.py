"""A killed ``index`` leaves no decoding worker behind, and no lock: the next ``index`` runs at once.

Runs of 2,000 images or more decode in forked worker processes. Each test starts a real ``simsearch index``
(through the fork server), holds it after its first embedded batch, notes its worker processes, kills it from
outside — SIGKILL or SIGTERM — and checks that the workers end with it and the next run takes the lock.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.io import PROCESS_MIN_IMAGES
from simsearch.store.collection import Collection
from tests.conftest import ForkServer, consistent_snapshot, pattern


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat_file.parent.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many") / "images"
    rng = np.random.default_rng(0)
    for i in range(PROCESS_MIN_IMAGES + 200):
        kind = ("hbars", "vbars", "blob")[i % 3]
        path = root / kind / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern(kind, rng)).save(path)
    return root


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_index_leaves_no_worker_and_no_lock(
    fork_server: ForkServer, many_images: Path, quick_tmp: Path, sig: int
) -> None:
    home = quick_tmp / "home"
    args = ["index", many_images, "--home", home, "--model", "pixels", "--device", "cpu", "--workers", "2"]
    # Each step of the child takes half a second longer: time to look at it after its first embedded batch.
    child = fork_server.start(*args, "--checkpoint-every", "256", step_delay=0.5)
    deadline = time.monotonic() + 60
    while not any("embedded a batch" in event for event in child.events()):
        assert time.monotonic() < deadline and fork_server.running(child), child.output()
        time.sleep(0.01)
    workers = children_of(child.pid)
    assert len(workers) == 2, (workers, child.output())  # this run's decoding processes
    os.kill(child.pid, sig)
    fork_server.wait(child)
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], "decoding workers outlived the killed index"
    # The lock went with them: the next run does not wait, and finishes the job.
    again = fork_server.wait(fork_server.start(*args), timeout=120)
    assert again.status == {"exit": 0}, again.output()
    assert consistent_snapshot(Collection(home / "default")).meta.num_rows == PROCESS_MIN_IMAGES + 200
