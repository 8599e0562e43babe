"""The generic training loop: it knows nothing about the model beyond an ``Objective`` (batches, a loss, a
validation score), runs for a bounded number of epochs *and* seconds, stops early when the validation score stops
improving, keeps the best weights, and reports through a progress callback.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from simsearch.errors import DataError
from simsearch.progress import Progress, no_progress
from simsearch.training.config import TrainConfig
from simsearch.training.ema import WeightAverage
from simsearch.training.objectives import Objective


def fit(
    objective: Objective,
    config: TrainConfig,
    progress: Progress = no_progress,
    task: str = "training",
    *,
    epochs: int | None = None,
    validate: Callable[[], float | None] | None = None,
) -> list[dict[str, Any]]:
    """Minimise ``objective.loss`` over its batches; keep the weights with the best ``objective.validate()``.

    Stops at ``config.epochs``, at ``config.max_seconds``, or after ``config.patience`` epochs without a
    better validation score, whichever comes first. Returns the history, one dict per epoch. With
    ``config.ema``, the moving average of the weights is what is validated and kept.

    Cross-fitted calibration (``calibrate.CrossFit``) needs two more things: ``epochs`` stops after that many
    epochs of the schedule ``config.epochs`` sets (the fold models and the final model follow one learning-rate
    schedule, so that epoch e means the same in all of them); ``validate`` scores each epoch instead of
    ``objective.validate()`` (with the weights being validated in place). When it returns None the epoch has no
    score: nothing is recorded for it and those weights are kept (the final model, which has no validation).

    Without ``validate``, when the held-out rows give ``objective.validate()`` nothing to measure
    (``nothing_to_validate``), the epochs have no score either, rather than a meaningless 0. A run that takes no
    optimiser step at all (too few training images to make a batch) raises ``DataError``.
    """
    model = objective.model
    device = objective.images.device
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    steps_per_epoch = max(1, sum(1 for _ in objective.batches()))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch + 1, pct_start=0.15
    )
    amp = device.type == "cuda"
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    stale = 0
    average = WeightAverage(model, config.ema) if config.ema > 0 else None
    last = min(config.epochs, epochs) if epochs is not None else config.epochs
    unmeasured = validate is None and nothing_to_validate(objective)
    steps = 0
    for epoch in range(1, last + 1):
        model.train()
        total, seen = 0.0, 0
        epoch_started = time.monotonic()
        for step, batch in enumerate(objective.batches()):
            if step >= steps_per_epoch:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = objective.loss(batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            steps += 1
            if average is not None:
                average.update(model)
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            if time.monotonic() - started > config.max_seconds:
                break
        with average.applied(model) if average is not None else contextlib.nullcontext():
            score = None if unmeasured else objective.validate() if validate is None else validate()
            improved = score is None or best is None or score < best[0] - 1e-6 or not math.isfinite(best[0])
            if improved:
                best = (math.nan if score is None else score, copy.deepcopy(model.state_dict()))
        stale = 0 if improved else stale + 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        record = {
            "epoch": epoch,
            "loss": total / max(seen, 1),
            **({objective.metric_name: score} if score is not None else {}),
            "seconds": round(time.monotonic() - epoch_started, 3),
        }
        history.append(record)
        shown = f" · {objective.metric_name} {score:.4f}" if score is not None else ""
        progress(task, epoch, last, f"loss {record['loss']:.4f}{shown}")
        if stale >= config.patience or time.monotonic() - started > config.max_seconds:
            break
    if steps == 0:
        n, held = len(objective.train_rows), len(objective.val_rows)
        raise DataError(
            f"training took no step: {n} image{'' if n == 1 else 's'} left to train on after {held} held out for "
            "validation, and a training batch needs at least 2",
            remedy="add more images (a few per label at least)",
        )
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


def nothing_to_validate(objective: Objective) -> bool:
    """Whether ``objective.validate()`` would measure nothing: no held-out rows, or a labelled metric loss with
    no held-out pairs (``val_pairs`` None) and fewer than 2 held-out rows, which make no pair to score."""
    rows = len(objective.val_rows)
    if rows == 0:
        return True
    pairs = getattr(objective, "val_pairs", ())
    return pairs is None and getattr(objective, "loss_name", "") != "ntxent" and rows < 2
