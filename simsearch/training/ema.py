"""A moving average of a model's weights, validated and kept instead of the raw weights (``--ema``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch


class WeightAverage:
    """An exponential moving average of a module's weights and floating-point buffers (BatchNorm statistics),
    updated after each optimiser step: ``average ← decay · average + (1 - decay) · current``. Averaged weights
    lie in a flatter region than the last step's, and usually score better on data unlike the training set."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {name: value.detach().clone() for name, value in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value.detach(), 1 - self.decay)
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
