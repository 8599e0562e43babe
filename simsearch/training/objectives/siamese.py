"""``siamese``: a metric-learning loss on embeddings of augmented images: ``contrastive`` or ``triplet`` on
class-balanced P×K batches, or ``ntxent`` on two augmented views of each image (no labels needed). Validation:
verification EER on held-out pairs, when they are labelled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simsearch import metrics
from simsearch.training.augment import augment, mirror_for
from simsearch.training.losses import MARGIN_LOSSES, margin_loss, metric_loss
from simsearch.training.objectives.base import Objective
from simsearch.training.sampling import scoring_pairs

if TYPE_CHECKING:
    from simsearch.training.config import TrainConfig


class Siamese(Objective):
    """Metric learning on augmented images. Validation: verification EER on held-out pairs, when labelled."""

    normalize = True  # the losses compare directions: embeddings on the unit sphere
    default_batch_size = 256  # more pairs and triplets per batch, which metric learning feeds on

    def __init__(
        self,
        encoder: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        *,
        loss: str,
        margin: float | None,
        augment: float,
        projection: int = 0,
        similar_labels: int = 0,
        mirror: bool = False,
        **kw: Any,
    ) -> None:
        # SimCLR's projection head: the loss sees g(z), search uses z, which then keeps more than the training
        # labels need, and so serves unseen labels better. Trained along, dropped afterwards.
        self.projector: nn.Module | None = None
        if projection > 0:
            dim = int(cast(int, encoder.dim))
            self.projector = nn.Sequential(
                nn.Linear(dim, projection),
                nn.BatchNorm1d(projection),
                nn.ReLU(inplace=True),
                nn.Linear(projection, dim),
            )
        # A margin loss holds a weight vector per training label: trained with the encoder, dropped afterwards.
        self.criterion = (
            margin_loss(loss, classes=int(labels.max()) + 1, dim=int(cast(int, encoder.dim)), margin=margin)
            if loss in MARGIN_LOSSES
            else metric_loss(loss, margin)
        )
        parts = {"encoder": encoder, "projector": self.projector, "criterion": self.criterion}
        trained = {
            name: part for name, part in parts.items() if part is not None and any(True for _ in part.parameters())
        }
        model = encoder if list(trained) == ["encoder"] else nn.ModuleDict(trained)
        super().__init__(encoder, model, images, labels, train_rows, val_rows, **kw)
        self.similar_labels = similar_labels
        self.loss_name = loss
        self.strength = augment
        self.mirror = mirror
        y_val = self.labels[self.val_rows].cpu().numpy()
        self.val_pairs = scoring_pairs(y_val, np.random.default_rng(0), max_genuine=5000)
        if self.val_pairs is not None:
            self.metric_name = "val_eer"

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
        if decoder is not None:
            raise TypeError("the siamese objective trains no decoder")
        return cls(
            encoder,
            images,
            labels,
            train_rows,
            val_rows,
            loss=config.loss,
            margin=config.margin,
            augment=config.augment,
            projection=config.projection_units,
            similar_labels=config.similar_labels,
            mirror=mirror_for(config.mirror, images),
            batch_size=cls.batch_size_for(config),
            seed=config.seed,
        )

    @classmethod
    def task(cls, config: TrainConfig) -> str:
        return f"training {config.family} ({config.loss})"

    def batches(self) -> Iterator[Any]:
        return super().batches() if self.loss_name == "ntxent" else self.balanced_batches(self.similar_labels)

    def embed_for_loss(self, x: torch.Tensor) -> torch.Tensor:
        # With readout "features" the loss trains the head, and search reads the feature map it sits on.
        head = getattr(self.encoder, "head_embedding", None)
        z = head(x) if callable(head) and getattr(self.encoder, "readout", "head") != "head" else self.encoder(x)
        return z if self.projector is None else F.normalize(self.projector(z), dim=1)

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        x = self.images[rows]
        if self.loss_name == "ntxent":
            views = torch.cat([self.augmented(x), self.augmented(x)])
            ids = torch.arange(len(x), device=x.device).repeat(2)
            return self.criterion(self.embed_for_loss(views), ids)
        return self.criterion(self.embed_for_loss(self.augmented(x)), self.labels[rows])

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.generator, self.strength, mirror=self.mirror)

    @torch.no_grad()
    def validate(self) -> float:
        if self.val_pairs is None:
            return super().validate()
        i, j, same = self.val_pairs
        z = self.embed_rows(self.val_rows)
        distances = (z[i] - z[j]).norm(dim=1).cpu().numpy()
        return metrics.equal_error_rate(distances, same)[0]
