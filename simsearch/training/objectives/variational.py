"""``vae``: reconstruction + β·KL; the embedding is μ, and the decoder (which decodes μ) is kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from simsearch.models.autoencoder import ConvDecoder, ConvEncoder, VariationalAutoencoder
from simsearch.training.losses import vae_loss
from simsearch.training.objectives.base import Objective

if TYPE_CHECKING:
    from simsearch.training.config import TrainConfig


class Variational(Objective):
    def __init__(
        self, encoder: ConvEncoder, *args: Any, beta: float, decoder: ConvDecoder | None = None, **kw: Any
    ) -> None:
        vae = VariationalAutoencoder(encoder, decoder)
        super().__init__(encoder, vae, *args, **kw)
        self.decoder = vae.decoder
        self.beta = beta

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
        if not isinstance(encoder, ConvEncoder) or not isinstance(decoder, (ConvDecoder, type(None))):
            raise TypeError("the variational objective trains a ConvEncoder and a ConvDecoder")
        return cls(
            encoder,
            images,
            labels,
            train_rows,
            val_rows,
            decoder=decoder,
            beta=config.beta,
            batch_size=cls.batch_size_for(config),
            seed=config.seed,
        )

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        x = self.images[rows]
        reconstruction, mu, logvar = self.model(x)
        return vae_loss(reconstruction, x, mu.float(), logvar.float(), self.beta)[0]
