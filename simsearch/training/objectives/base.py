"""The base ``Objective``: the data on the training device, the modules being trained, one epoch of batches,
and the validation score (lower is better). The training loop (``loop.fit``) knows nothing else about a family."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simsearch.training.sampling import pk_batches, similar_pk_batches

if TYPE_CHECKING:
    from simsearch.training.config import TrainConfig


class Objective:
    """Base: holds the data on the training device, the encoder that will be kept, and the decoder kept with it
    (``decoder``, None for the families without one)."""

    #: What ``validate`` returns, for the progress bar and the history.
    metric_name = "val_loss"
    #: Whether the encoder this objective trains puts its embeddings on the unit sphere.
    normalize: ClassVar[bool] = False
    #: Images per batch when ``--batch-size`` is not given.
    default_batch_size: ClassVar[int] = 128

    def __init__(
        self,
        encoder: nn.Module,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        batch_size: int,
        seed: int,
    ) -> None:
        self.encoder, self.model = encoder, model
        self.decoder: nn.Module | None = None
        self.images, self.labels = images, labels
        self.train_rows, self.val_rows = train_rows, val_rows
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

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
        """The objective a training run's ``config`` asks for, training ``encoder`` (and ``decoder``, made by the
        family's registry record) on ``images``."""
        raise NotImplementedError

    @classmethod
    def batch_size_for(cls, config: TrainConfig) -> int:
        """``--batch-size``, or this objective's default."""
        return config.batch_size if config.batch_size is not None else cls.default_batch_size

    @classmethod
    def task(cls, config: TrainConfig) -> str:
        """What the progress bar calls the training run."""
        return f"training {config.family}"

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
