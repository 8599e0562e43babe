"""A moving average of a model's weights, validated and kept instead of the raw weights (``--ema``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch


def warmed_decay(decay: float, step: int) -> float:
    """The decay of update number ``step`` (1, 2, …): ``decay``, or (1 + step) / (10 + step) while that is less
    (the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=…)``). Without it the average forgets its
    random start only after about 1 / (1 − decay) steps: 200 at 0.995, more than a small folder's whole training.
    On 300 Omniglot characters (15 labels, the character recipe, 2 folds of about 80 steps each) the averaged fold
    models then verified their unseen characters at EER 0.32; with the warm-up, 0.12."""
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    """An exponential moving average of a module's weights and floating-point buffers (BatchNorm statistics),
    updated after each optimiser step: ``average ← d · average + (1 - d) · current``, d = ``warmed_decay``.
    Averaged weights lie in a flatter region than the last step's, and usually score better on data unlike the
    training set."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {name: value.detach().clone() for name, value in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Average in ``module``'s weights after optimiser step number ``step`` (counted from 1)."""
        weight = 1 - warmed_decay(self.decay, step)
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value.detach(), weight)
            else:
                self.state[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        """Within the block, ``module`` holds the averaged weights; afterwards, its own again."""
        own = copy.deepcopy(module.state_dict())
        module.load_state_dict(self.state)
        try:
            yield
        finally:
            module.load_state_dict(own)
