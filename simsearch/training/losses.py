"""Losses: thin wrappers over pytorch-metric-learning, plus the VAE objective.

Each metric-learning loss takes ``embeddings`` (n, d) and ``labels`` (n,) int64; pairs or triplets are formed
inside the batch. Distances are Euclidean, matching the ``l2`` metric the collection searches with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# pytorch-metric-learning is imported by the functions that build its losses: it brings scipy with it (0.8 s),
# which `simsearch index --model M` and `query` never need.

#: Margin-based classification losses (the standard of face recognition): a weight vector per training label,
#: logits ``scale · cos`` with a margin on the true label's angle; only the embedding is kept for search.
MARGIN_LOSSES = ("arcface", "cosface", "subcenter")
LOSSES = ("contrastive", "triplet", "ntxent", *MARGIN_LOSSES)
#: Each margin loss's default margin (ArcFace's in degrees, CosFace's on the cosine) and logit scale.
MARGIN_DEFAULTS = {"arcface": 28.6, "cosface": 0.35, "subcenter": 28.6}
MARGIN_SCALE = 30.0


class MetricLoss(nn.Module):
    """A pytorch-metric-learning loss with an optional miner: ``loss(embeddings, labels) → scalar``."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None) -> None:
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        if self.miner is None:
            return self.loss(embeddings, labels)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


def contrastive_loss(margin: float = 1.0) -> MetricLoss:
    """Same pairs pulled to distance 0, different pairs pushed beyond ``margin`` (Hadsell, Chopra, LeCun 2006)."""
    from pytorch_metric_learning import distances, losses

    return MetricLoss(losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=distances.LpDistance()))


def triplet_loss(margin: float = 0.2) -> MetricLoss:
    """Anchor closer to its positive than to its negative by ``margin``, on semi-hard triplets mined in the batch."""
    from pytorch_metric_learning import distances, losses, miners

    distance = distances.LpDistance()
    return MetricLoss(
        losses.TripletMarginLoss(margin=margin, distance=distance),
        miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance),
    )


class NTXent(nn.Module):
    """NT-Xent (SimCLR's normalised temperature-scaled cross entropy) over a batch of labelled embeddings.

    For each positive pair (a, p): ``-log(exp(s_ap) / (exp(s_ap) + Σ_n exp(s_an)))`` with ``s`` the cosine
    similarity over ``temperature`` and ``n`` every embedding of another label; the mean over positive pairs.
    Equal to pytorch-metric-learning's ``NTXentLoss`` (a test checks it), which builds per-pair index lists
    and takes seconds on a batch of 512 where this dense form takes milliseconds.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings.float(), dim=1)
        sim = z @ z.T / self.temperature
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        negatives = torch.logsumexp(sim.masked_fill(same, float("-inf")), dim=1, keepdim=True)
        per_pair = torch.logaddexp(sim, negatives.expand_as(sim)) - sim
        return per_pair[positive].mean()


def ntxent_loss(temperature: float = 0.1) -> MetricLoss:
    """NT-Xent (SimCLR): two views of one image are the only positives; labels are view-pair ids."""
    return MetricLoss(NTXent(temperature))


def margin_loss(
    name: str, classes: int, dim: int, margin: float | None = None, scale: float = MARGIN_SCALE
) -> nn.Module:
    """``arcface`` (additive angular margin, Deng et al. 2019), ``cosface`` (additive cosine margin, Wang et al.
    2018) or ``subcenter`` (ArcFace with 3 centres per label, robust to odd images, Deng et al. 2020), from
    pytorch-metric-learning, over ``classes`` labels of ``dim``-d embeddings. The module holds the label weights,
    which are trained along with the encoder: ``loss(embeddings, labels) → scalar``."""
    from pytorch_metric_learning import losses

    if name not in MARGIN_LOSSES:
        raise ValueError(f"unknown margin loss {name!r}; expected one of {MARGIN_LOSSES}")
    if classes < 2:
        raise ValueError(f"a margin loss needs at least 2 labels, not {classes}")
    kind = {"arcface": losses.ArcFaceLoss, "cosface": losses.CosFaceLoss, "subcenter": losses.SubCenterArcFaceLoss}
    value = MARGIN_DEFAULTS[name] if margin is None else margin
    return MetricLoss(kind[name](num_classes=classes, embedding_size=dim, margin=value, scale=scale))


def metric_loss(name: str, margin: float | None = None) -> MetricLoss:
    if name == "contrastive":
        return contrastive_loss(1.0 if margin is None else margin)
    if name == "triplet":
        return triplet_loss(0.2 if margin is None else margin)
    if name == "ntxent":
        return ntxent_loss()
    if name in MARGIN_LOSSES:
        raise ValueError(f"the {name} loss holds weights per label: build it with margin_loss")
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")


def vae_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, reconstruction, KL) per image, averaged over the batch.

    Reconstruction is the summed squared error per image; KL is that of N(mu, exp(logvar)) from N(0, 1),
    summed over the latent dimensions. ``beta`` weighs KL (β-VAE): higher gives a smoother latent space.
    """
    recon = (reconstruction.float() - target).pow(2).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()
    return recon + beta * kl, recon, kl
