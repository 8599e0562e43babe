"""The autoencoders: ``autoencoder`` reconstructs x from g(x) (optionally plus a contrastive term on labelled
batches), ``denoising`` reconstructs x from g(corrupted x). The decoder is trained along and kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simsearch.models.autoencoder import ConvAutoencoder
from simsearch.training.losses import MetricLoss, contrastive_loss
from simsearch.training.objectives.base import Objective

if TYPE_CHECKING:
    from simsearch.training.config import TrainConfig


class Reconstruction(Objective):
    """Plain or denoising autoencoder, with an optional contrastive term when labels exist."""

    #: Whether the encoder sees a corrupted image (the decoder must still give the clean one).
    denoising = False

    def __init__(
        self,
        encoder: nn.Module,
        *args: Any,
        contrastive_weight: float,
        decoder: nn.Module | None = None,
        **kw: Any,
    ) -> None:
        self.autoencoder = ConvAutoencoder(encoder, decoder)
        super().__init__(encoder, self.autoencoder, *args, **kw)
        self.decoder = self.autoencoder.decoder
        self.contrastive_weight = contrastive_weight
        self.contrastive: MetricLoss | None = contrastive_loss() if contrastive_weight > 0 else None

    @classmethod
    def from_config(
        cls,
        encoder: nn.Module,
        decoder: nn.Module | None,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        config: TrainConfig,
    ) -> Objective:
        return cls(
            encoder,
            images,
            labels,
            train_rows,
            val_rows,
            decoder=decoder,
            contrastive_weight=config.contrastive_weight,
            batch_size=cls.batch_size_for(config),
            seed=config.seed,
        )

    def batches(self) -> Iterator[Any]:
        return super().batches() if self.contrastive is None else self.balanced_batches()

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian noise plus 20% of the pixels dropped to the image's minimum (the background)."""
        noise = torch.randn(x.shape, generator=self.generator).to(x.device) * 0.3
        drop = (torch.rand(x.shape, generator=self.generator) < 0.2).to(x.device)
        return torch.where(drop, x.amin(dim=(2, 3), keepdim=True), x + noise)

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        x = self.images[rows]
        source = self.corrupt(x) if self.denoising and self.model.training else x
        z = self.encoder(source)
        loss = F.mse_loss(self.autoencoder.decoder(z).float(), x)
        if self.contrastive is not None and self.model.training:
            loss = loss + self.contrastive_weight * self.contrastive(z, self.labels[rows])
        return loss


class Denoising(Reconstruction):
    """The denoising autoencoder: the encoder sees noisy, partly erased images."""

    denoising = True
