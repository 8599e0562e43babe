"""Interrupted training keeps its work: the checkpoint file, resuming from it to the very weights of a run that was
never interrupted (one split and cross-fitted), a checkpoint of other images or options set aside, and the
learning-rate schedule that cools down before a time limit stops the run."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from simsearch.io import Preprocess
from simsearch.training import TrainConfig, TrainingCheckpoint, train_neural
from simsearch.training.loop import OneCycle


class Stop(KeyboardInterrupt):
    """Stands for Ctrl-C at a chosen epoch."""


def interrupt_at(task_part: str, epoch: int):  # type: ignore[no-untyped-def]
    def progress(task: str, done: int, total: int | None, note: str = "") -> None:
        if task_part in task and done == epoch:
            raise Stop

    return progress


def images_and_labels(labels: int, per_label: int = 8) -> tuple[np.ndarray, list[str | None]]:
    """Labels hard enough to tell apart that the cross-fitted curve chooses a late epoch (4 of 5)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(labels, 1, 8, 8))
    x = np.concatenate([c + 1.5 * rng.normal(size=(per_label, 1, 8, 8)) for c in centres]).astype(np.float32)
    return x, [f"l{i}" for i in range(labels) for _ in range(per_label)]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("family", "labels", "stop_in"),
    [("autoencoder", 0, "training"), ("siamese", 8, "fold 2"), ("siamese", 8, "final")],
)
def test_an_interrupted_run_resumes_to_the_same_weights(
    tmp_path: Path, fast_train: TrainConfig, family: str, labels: int, stop_in: str
) -> None:
    """Ctrl-C after the last epoch of a stage (epoch 3 of a fold, or the final model's last, chosen by the folds);
    the next run resumes from the checkpoint saved an epoch before and ends with exactly the weights, history and
    threshold of a run that was never interrupted."""
    x, y = images_and_labels(max(labels, 4))
    if not labels:
        y = [None] * len(y)
    config = replace(fast_train, family=family, epochs=5, folds=2 if labels else None)
    spec = Preprocess(size=(8, 8))
    whole = train_neural(x, y, spec, config)

    stop_epoch = whole.training["cross_fit"]["final_epochs"] if stop_in == "final" else 3
    assert stop_epoch >= 2
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        train_neural(x, y, spec, config, interrupt_at(stop_in, stop_epoch), TrainingCheckpoint(path, every_seconds=0))
    assert path.is_file()
    checkpoint = TrainingCheckpoint(path, every_seconds=0)
    resumed = train_neural(x, y, spec, config, checkpoint=checkpoint)
    stage = "model" if not labels else stop_in
    assert checkpoint.resumed is not None and checkpoint.resumed.endswith(f"{stage} epoch {stop_epoch - 1}")
    assert resumed.training["resumed_from"] == checkpoint.resumed
    assert same_weights(whole.module, resumed.module)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    if labels:
        assert resumed.threshold is not None and whole.threshold is not None
        assert resumed.threshold["value"] == whole.threshold["value"]
        assert resumed.training["cross_fit"]["pooled_eer"] == whole.training["cross_fit"]["pooled_eer"]


def test_a_checkpoint_of_other_images_or_options_is_set_aside(tmp_path: Path, fast_train: TrainConfig) -> None:
    x, y = images_and_labels(4)
    spec = Preprocess(size=(8, 8))
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        train_neural(x, [None] * len(y), spec, fast_train, interrupt_at("training", 2), TrainingCheckpoint(path, 0))
    other = TrainingCheckpoint(path, 0)
    train_neural(x, [None] * len(y), spec, replace(fast_train, dim=4), checkpoint=other)
    assert other.resumed is None and other.discarded == "it was made from other images or options"
    path.write_bytes(b"not a checkpoint")
    damaged = TrainingCheckpoint(path, 0)
    train_neural(x, [None] * len(y), spec, fast_train, checkpoint=damaged)
    assert damaged.resumed is None and damaged.discarded is not None and "could not be read" in damaged.discarded


def test_the_schedule_cools_down_before_the_time_limit() -> None:
    """Planned for 1,000 steps, the time allows about 100: the cycle is fitted to them, warms up over the first
    15 and ends at the floor; with time to spare it is the step plan's."""
    param = torch.nn.Parameter(torch.zeros(1))
    fitted = OneCycle(torch.optim.AdamW([param], lr=0.01), 0.01, total=1000, seconds=10.0)
    rates = []
    for step in range(1, 1001):
        fitted.step(elapsed=step * 0.1)  # 0.1 s a step: 100 steps fit
        rates.append(fitted.optimiser.param_groups[0]["lr"])
        if fitted.done:
            break
    assert 95 <= step <= 105
    assert max(rates) == pytest.approx(0.01, rel=1e-3) and 12 <= int(np.argmax(rates)) + 1 <= 18
    assert rates[-1] == pytest.approx(0.01 / 25 / 1e4, rel=1e-6)

    free = OneCycle(torch.optim.AdamW([param], lr=0.01), 0.01, total=100, seconds=1e6)
    for step in range(1, 101):
        free.step(elapsed=step * 0.1)
        expected = free.progress
        assert expected == pytest.approx(step / 100)
    assert free.done and math.isclose(free.optimiser.param_groups[0]["lr"], 0.01 / 25 / 1e4, rel_tol=1e-6)
