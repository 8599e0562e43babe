"""Interrupted training keeps its work: ``train`` killed with ``kill -9`` mid-way resumes from its checkpoint and ends
with the same weights as a run that was never interrupted (CPU, same seed); SIGTERM says truly what was kept.

Each process is a real ``simsearch train`` (forked by tests/fork_server.py) that dies at a chosen event of
simsearch's observer: the checkpoint written after an epoch."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from simsearch.store.collection import Collection, embeddings_of
from tests.conftest import Child, ForkServer

ARGS = ["--epochs", "6", "--dim", "8", "--batch-size", "4", "--device", "cpu", "--checkpoint-seconds", "0"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "weights.safetensors")


def terminate_when_paused(fork_server: ForkServer, child: Child) -> None:
    """Wait until ``child`` pauses at its chosen event (a checkpoint just written), then send it SIGTERM."""
    deadline = time.monotonic() + 60
    while "paused" not in (child.log.read_text() if child.log.exists() else ""):
        assert time.monotonic() < deadline and fork_server.running(child), child.output()
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGTERM)
    fork_server.wait(child)


def test_train_killed_mid_way_resumes_to_the_same_weights(
    fork_server: ForkServer, image_folder: Path, tmp_path: Path
) -> None:
    whole = fork_server.wait(fork_server.start("train", image_folder, "--out", tmp_path / "whole", *ARGS))
    assert whole.status == {"exit": 0}, whole.output()

    target = tmp_path / "models" / "m"
    checkpoint = target.with_name(".m.training.ckpt")
    killed = fork_server.wait(fork_server.start("train", image_folder, "--out", target, *ARGS, kill_at=2))
    assert killed.killed, killed.output()
    assert killed.events() == [f"training checkpoint written model epoch {e}" for e in (1, 2, 3)]
    assert checkpoint.is_file() and not target.exists()

    resumed = fork_server.wait(fork_server.start("train", image_folder, "--out", target, *ARGS))
    assert resumed.status == {"exit": 0}, resumed.output()
    assert "Resumed an interrupted run from its checkpoint (model epoch 3)." in resumed.output()
    assert resumed.events()[0] == "training checkpoint written model epoch 4"  # it went on from epoch 4
    assert not checkpoint.exists()  # the model is saved: the checkpoint is gone
    a, b = weights(tmp_path / "whole"), weights(target)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_says_where_the_kept_work_is(fork_server: ForkServer, image_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "m"
    release = tmp_path / "never"
    child = fork_server.start("train", image_folder, "--out", target, *ARGS, pause_at=1, release=release)
    terminate_when_paused(fork_server, child)
    assert child.status == {"exit": 143}, child.output()
    kept = target.with_name(".m.training.ckpt")
    assert (
        f"Terminated: training stopped; its work up to model epoch 2 is kept in {kept} ({target} is as it was): "
        "run the same command again to resume." in " ".join(child.output().split())
    )
    assert kept.is_file() and not target.exists()


def test_index_killed_while_training_resumes_its_training(
    fork_server: ForkServer, image_folder: Path, tmp_path: Path
) -> None:
    """``index`` trains its encoder first: killed then, the collection holds only the training checkpoint, and the
    next run resumes the training, commits the same encoder as an uninterrupted run, and removes the checkpoint."""
    args = [*ARGS, "--workers", "1"]
    home = tmp_path / "home"
    whole = fork_server.wait(fork_server.start("index", image_folder, "--home", home, "--name", "whole", *args))
    assert whole.status == {"exit": 0}, whole.output()

    killed = fork_server.wait(fork_server.start("index", image_folder, "--home", home, "--name", "c", *args, kill_at=1))
    assert killed.killed, killed.output()
    assert killed.events() == [f"training checkpoint written model epoch {e}" for e in (1, 2)]
    assert (home / "c" / "training.ckpt").is_file() and not (home / "c" / "manifest.json").exists()

    resumed = fork_server.wait(fork_server.start("index", image_folder, "--home", home, "--name", "c", *args))
    assert resumed.status == {"exit": 0}, resumed.output()
    assert "Resumed an interrupted training from its checkpoint (model epoch 2)." in resumed.output()
    assert not (home / "c" / "training.ckpt").exists()
    a, b = Collection(home / "whole").load(), Collection(home / "c").load()
    assert a.manifest["encoder"]["fingerprint"] == b.manifest["encoder"]["fingerprint"]
    assert np.array_equal(embeddings_of(a.meta), embeddings_of(b.meta))


def test_sigterm_while_index_trains_says_where_the_kept_training_is(
    fork_server: ForkServer, image_folder: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    child = fork_server.start(
        "index", image_folder, "--home", home, "--name", "c", *ARGS, pause_at=0, release=tmp_path / "never"
    )
    terminate_when_paused(fork_server, child)
    assert child.status == {"exit": 143}, child.output()
    kept = home / "c" / "training.ckpt"
    assert (
        f"Terminated: training stopped; its work up to model epoch 1 is kept in {kept}: run the same command again "
        "to resume." in " ".join(child.output().split())
    )
