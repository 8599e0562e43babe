"""Baselines that learn little or nothing: raw pixels, and PCA fitted on the folder.

They share the encoder interface so that every comparison in simsearch runs through the same code path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PixelEncoder(nn.Module):
    """The preprocessed pixels themselves: (n, channels, H, W) → (n, channels·H·W)."""

    def __init__(self, channels: int, size: tuple[int, int] | list[int], dim: int) -> None:
        super().__init__()
        if dim != channels * int(size[0]) * int(size[1]):
            raise ValueError(f"pixels encoder: dim {dim} != channels·H·W = {channels}·{size[0]}·{size[1]}")
        self.channels, self.size, self.dim = channels, (int(size[0]), int(size[1])), dim

    @property
    def arch(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this module, as stored in ``encoder.json``."""
        return {"channels": self.channels, "size": list(self.size), "dim": self.dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class PCAEncoder(nn.Module):
    """Projection onto the top ``dim`` principal components of the training images."""

    def __init__(self, channels: int, size: tuple[int, int] | list[int], dim: int) -> None:
        super().__init__()
        n_inputs = channels * int(size[0]) * int(size[1])
        self.channels, self.size, self.dim = channels, (int(size[0]), int(size[1])), dim
        self.mean: torch.Tensor
        self.components: torch.Tensor
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("components", torch.zeros(dim, n_inputs))

    @property
    def arch(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this module, as stored in ``encoder.json``."""
        return {"channels": self.channels, "size": list(self.size), "dim": self.dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.components.T

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> PCAEncoder:
        """Fit on (n, channels, H, W) images: exact SVD of the centred data (n and inputs are modest here)."""
        flat = x.flatten(1).double()
        mean = flat.mean(0)
        _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        k = min(self.dim, vh.shape[0])
        self.mean.copy_(mean.float())
        self.components.zero_()
        self.components[:k].copy_(vh[:k].float())
        return self
