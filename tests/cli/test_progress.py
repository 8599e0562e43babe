"""Progress off a terminal (a log, CI): occasional plain lines on stderr — a task's first step, then at most one
line every few seconds or every tenth, and always its last — instead of nothing; ``SIMSEARCH_PROGRESS`` chooses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simsearch.cli import render
from tests.helpers import invoke

SIMSEARCH = str(Path(sys.executable).with_name("simsearch"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_lines(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[float, str, int, int | None, str]]) -> list[str]:
    """The lines ``_PlainProgress`` prints for ``calls`` (time, task, done, total, note)."""
    printed: list[str] = []
    monkeypatch.setattr(render.err, "print", lambda text, **_: printed.append(text))
    clock = Clock()
    progress = render._PlainProgress(seconds=10.0, steps=10, gap=2.0, clock=clock)
    for at, task, done, total, note in calls:
        clock.now = at
        progress(task, done, total, note)
    return printed


def test_training_epochs_the_first_every_tenth_at_most_every_two_seconds_and_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = [(0.5 * epoch, "training autoencoder", epoch, 60, f"loss {1 / epoch:.4f}") for epoch in range(1, 61)]
    assert plain_lines(monkeypatch, calls) == [
        "training autoencoder: epoch 1/60 · loss 1.0000",  # the first
        "training autoencoder: epoch 6/60 · loss 0.1667",  # a tenth done, 2.5 s later
        "training autoencoder: epoch 12/60 · loss 0.0833",
        "training autoencoder: epoch 18/60 · loss 0.0556",
        "training autoencoder: epoch 24/60 · loss 0.0417",
        "training autoencoder: epoch 30/60 · loss 0.0333",
        "training autoencoder: epoch 36/60 · loss 0.0278",
        "training autoencoder: epoch 42/60 · loss 0.0238",
        "training autoencoder: epoch 48/60 · loss 0.0208",
        "training autoencoder: epoch 54/60 · loss 0.0185",
        "training autoencoder: epoch 60/60 · loss 0.0167",  # the last, always
    ]


def test_a_fast_task_gets_its_first_and_last_step_and_a_slow_one_a_line_every_ten_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = [(0.001 * n, "embedding", n * 256, 2560, "") for n in range(1, 11)]
    assert plain_lines(monkeypatch, fast) == ["embedding: 256/2560", "embedding: 2560/2560"]
    slow = [(4.0 * n, "fold 2/4: training siamese (contrastive)", n, 1000, "") for n in range(1, 8)]
    assert plain_lines(monkeypatch, slow) == [
        "fold 2/4: training siamese (contrastive): epoch 1/1000",
        "fold 2/4: training siamese (contrastive): epoch 4/1000",  # 12 s after the first
        "fold 2/4: training siamese (contrastive): epoch 7/1000",
    ]
    unknown = [(20.0 * n, "scoring images", n * 10, None, "") for n in range(3)]
    assert plain_lines(monkeypatch, unknown) == ["scoring images: 0", "scoring images: 10", "scoring images: 20"]


def test_a_repeated_step_is_said_once_and_a_restarted_task_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [(0.0, "building the index", 0, 1, "flat"), (0.1, "building the index", 0, 1, "flat")]
    calls += [(0.2, "building the index", 1, 1, "flat"), (0.3, "embedding", 5, 5, ""), (0.4, "embedding", 2, 3, "")]
    assert plain_lines(monkeypatch, calls) == [
        "building the index: 0/1 · flat",
        "building the index: 1/1 · flat",
        "embedding: 5/5",
        "embedding: 2/3",
    ]


def test_index_off_a_terminal_prints_plain_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, image_folder: Path
) -> None:
    monkeypatch.setenv("SIMSEARCH_PROGRESS", "auto")  # CliRunner's stderr is no terminal
    args = ["--epochs", "3", "--dim", "8", "--max-seconds", "60", "--device", "cpu", "--workers", "1"]
    result = invoke("index", image_folder, "--home", tmp_path / "h", *args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "reading training images: 1/15" and "reading training images: 15/15" in lines
    epochs = [line for line in lines if line.startswith("training autoencoder: epoch ")]
    assert epochs[0].startswith("training autoencoder: epoch 1/3 · loss ")
    assert re.fullmatch(r"training autoencoder: epoch 3/3 · loss \d+\.\d{4} · val_loss \d+\.\d{4}", epochs[-1])
    assert lines[-1] == "embedding: 15/15 · 15 new or changed"
    assert "\x1b" not in result.stderr and "━" not in result.stderr  # no bar, no escape sequence
    monkeypatch.setenv("SIMSEARCH_PROGRESS", "off")
    again = invoke("index", image_folder, "--home", tmp_path / "off", "--model", "pixels")
    assert again.exit_code == 0 and again.stderr == ""


def test_a_real_process_writing_to_a_log_gets_plain_lines(tmp_path: Path, image_folder: Path) -> None:
    env = {**os.environ, "SIMSEARCH_PROGRESS": "auto"}
    args = [SIMSEARCH, "index", str(image_folder), "--home", str(tmp_path / "h"), "--model", "pixels"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [  # pixels reads a sample to choose its input size and channels
        "reading training images: 1/15",
        "reading training images: 15/15",
        "embedding: 15/15 · 15 new or changed",
    ]
