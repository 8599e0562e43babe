"""The generic training loop: it knows nothing about the model beyond an ``Objective`` (batches, a loss, a
validation score), runs for a bounded number of epochs *and* seconds, stops early when the validation score stops
improving, keeps the best weights, and reports through a progress callback.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any

import torch

from simsearch.progress import Progress, no_progress
from simsearch.training.config import TrainConfig
from simsearch.training.ema import WeightAverage
from simsearch.training.objectives import Objective


def fit(
    objective: Objective, config: TrainConfig, progress: Progress = no_progress, task: str = "training"
) -> list[dict[str, Any]]:
    """Minimise ``objective.loss`` over its batches; keep the weights with the best ``objective.validate()``.

    Stops at ``config.epochs``, at ``config.max_seconds``, or after ``config.patience`` epochs without a
    better validation score, whichever comes first. Returns the history, one dict per epoch. With
    ``config.ema``, the moving average of the weights is what is validated and kept.
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
    for epoch in range(1, config.epochs + 1):
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
            if average is not None:
                average.update(model)
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            if time.monotonic() - started > config.max_seconds:
                break
        with average.applied(model) if average is not None else contextlib.nullcontext():
            score = objective.validate()
            improved = best is None or score < best[0] - 1e-6 or not math.isfinite(best[0])
            if improved:
                best = (score, copy.deepcopy(model.state_dict()))
        stale = 0 if improved else stale + 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        record = {
            "epoch": epoch,
            "loss": total / max(seen, 1),
            objective.metric_name: score,
            "seconds": round(time.monotonic() - epoch_started, 3),
        }
        history.append(record)
        progress(task, epoch, config.epochs, f"loss {record['loss']:.4f} · {objective.metric_name} {score:.4f}")
        if stale >= config.patience or time.monotonic() - started > config.max_seconds:
            break
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history
