"""What each trainable family optimises. An ``Objective`` owns the module being trained, yields one epoch of
batches, computes the loss of a batch, and scores the model on held-out data (lower is better); the
training loop in ``train.py`` knows nothing else about it.

- ``autoencoder``: reconstruct x from g(x) (optionally plus a contrastive term on labelled batches);
- ``denoising``: reconstruct x from g(corrupted x);
- ``vae``: reconstruction + β·KL, the embedding is μ;
- ``siamese``: a metric-learning loss on embeddings of augmented images: ``contrastive`` or ``triplet`` on
  class-balanced P×K batches, or ``ntxent`` on two augmented views of each image (no labels needed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simsearch import metrics
from simsearch.models.autoencoder import ConvAutoencoder, ConvEncoder, VariationalAutoencoder
from simsearch.training.augment import augment
from simsearch.training.losses import MetricLoss, contrastive_loss, metric_loss, vae_loss
from simsearch.training.sampling import pk_batches, scoring_pairs, similar_pk_batches


class Objective:
    """Base: holds the data on the training device and the encoder that will be kept."""

    #: What ``validate`` returns, for the progress bar and the history.
    metric_name = "val_loss"

    def __init__(
        self,
        encoder: ConvEncoder,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        batch_size: int,
        seed: int,
    ) -> None:
        self.encoder, self.model = encoder, model
        self.images, self.labels = images, labels
        self.train_rows, self.val_rows = train_rows, val_rows
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def batches(self) -> Iterator[Any]:
        """One epoch of shuffled row-number batches."""
        order = self.rng.permutation(self.train_rows)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            if len(rows) >= 2:
                yield rows

    def balanced_batches(self, similar: int = 0) -> Iterator[Any]:
        """One epoch of P×K batches: P labels × K images each, K ≥ 4 and P·K ≈ the batch size. With ``similar``
        > 1, the labels come in groups of that many labels whose images the current encoder finds most alike."""
        y = self.labels[self.train_rows].cpu().numpy()
        k = max(4, self.batch_size // max(1, len(np.unique(y[y >= 0]))))
        p = max(2, self.batch_size // k)
        if similar > 1:
            neighbours = self.label_neighbours(y)
            batches = similar_pk_batches(y, p, k, similar, neighbours, self.rng)
        else:
            batches = pk_batches(y, p, k, self.rng)
        for batch in batches:
            yield self.train_rows[batch]

    def label_neighbours(self, y: np.ndarray, per_label: int = 2) -> np.ndarray:
        """For each label of ``y`` (rows of ``train_rows``), the labels by increasing distance between the mean
        embeddings of ``per_label`` random images of each."""
        members = [np.flatnonzero(y == c) for c in np.unique(y[y >= 0])]
        picks = np.stack([self.rng.choice(m, size=per_label, replace=len(m) < per_label) for m in members])
        z = self.embed_rows(self.train_rows[picks.ravel()]).view(len(members), per_label, -1).mean(dim=1)
        z = F.normalize(z, dim=1)
        return torch.cdist(z, z).argsort(dim=1).cpu().numpy()

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over the held-out rows, in eval mode."""
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.val_rows), self.batch_size):
            rows = self.val_rows[start : start + self.batch_size]
            total += float(self.loss(rows)) * len(rows)
            count += len(rows)
        self.model.train()
        return total / max(count, 1)

    @torch.no_grad()
    def embed_rows(self, rows: np.ndarray) -> torch.Tensor:
        self.encoder.eval()
        out = torch.cat([self.encoder(self.images[rows[s : s + 512]]).float() for s in range(0, len(rows), 512)])
        self.encoder.train()
        return out


class Reconstruction(Objective):
    """Plain or denoising autoencoder, with an optional contrastive term when labels exist."""

    def __init__(self, encoder: ConvEncoder, *args: Any, denoising: bool, contrastive_weight: float, **kw: Any) -> None:
        self.autoencoder = ConvAutoencoder(encoder)
        super().__init__(encoder, self.autoencoder, *args, **kw)
        self.denoising = denoising
        self.contrastive_weight = contrastive_weight
        self.contrastive: MetricLoss | None = contrastive_loss() if contrastive_weight > 0 else None

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


class Variational(Objective):
    def __init__(self, encoder: ConvEncoder, *args: Any, beta: float, **kw: Any) -> None:
        super().__init__(encoder, VariationalAutoencoder(encoder), *args, **kw)
        self.beta = beta

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        x = self.images[rows]
        reconstruction, mu, logvar = self.model(x)
        return vae_loss(reconstruction, x, mu.float(), logvar.float(), self.beta)[0]


class Siamese(Objective):
    """Metric learning on augmented images. Validation: verification EER on held-out pairs, when labelled."""

    def __init__(
        self,
        encoder: ConvEncoder,
        *args: Any,
        loss: str,
        margin: float | None,
        augment: float,
        projection: int = 0,
        similar_labels: int = 0,
        **kw: Any,
    ) -> None:
        # SimCLR's projection head: the loss sees g(z), search uses z, which then keeps more than the training
        # labels need, and so serves unseen labels better. Trained along, dropped afterwards.
        self.projector: nn.Module | None = None
        if projection > 0:
            self.projector = nn.Sequential(
                nn.Linear(encoder.dim, projection),
                nn.BatchNorm1d(projection),
                nn.ReLU(inplace=True),
                nn.Linear(projection, encoder.dim),
            )
        model = encoder if self.projector is None else nn.ModuleDict({"encoder": encoder, "projector": self.projector})
        super().__init__(encoder, model, *args, **kw)
        self.similar_labels = similar_labels
        self.loss_name = loss
        self.strength = augment
        self.criterion = metric_loss(loss, margin)
        y_val = self.labels[self.val_rows].cpu().numpy()
        self.val_pairs = scoring_pairs(y_val, np.random.default_rng(0), max_genuine=5000)
        if self.val_pairs is not None:
            self.metric_name = "val_eer"

    def batches(self) -> Iterator[Any]:
        return super().batches() if self.loss_name == "ntxent" else self.balanced_batches(self.similar_labels)

    def embed_for_loss(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return z if self.projector is None else F.normalize(self.projector(z), dim=1)

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        x = self.images[rows]
        if self.loss_name == "ntxent":
            views = torch.cat([augment(x, self.generator, self.strength), augment(x, self.generator, self.strength)])
            ids = torch.arange(len(x), device=x.device).repeat(2)
            return self.criterion(self.embed_for_loss(views), ids)
        return self.criterion(self.embed_for_loss(augment(x, self.generator, self.strength)), self.labels[rows])

    @torch.no_grad()
    def validate(self) -> float:
        if self.val_pairs is None:
            return super().validate()
        i, j, same = self.val_pairs
        z = self.embed_rows(self.val_rows)
        distances = (z[i] - z[j]).norm(dim=1).cpu().numpy()
        return metrics.equal_error_rate(distances, same)[0]
