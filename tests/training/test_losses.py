"""Losses against values worked out by hand and by explicit loops over a handful of hand-placed points."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from simsearch.training.losses import contrastive_loss, metric_loss, ntxent_loss, triplet_loss, vae_loss


def unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], 1).float()


def test_contrastive_by_hand() -> None:
    # (1,0) and (0,1) share label 0; (-1,0) has label 1. Margin 1.5.
    z, y = unit(0, 90, 180), torch.tensor([0, 0, 1])
    # positive pair at distance √2 → loss √2; negatives at 2 (beyond the margin → 0) and √2 → 1.5 - √2.
    # Each part is averaged over its non-zero terms, then the two are added: √2 + (1.5 - √2) = 1.5.
    assert float(contrastive_loss(1.5)(z, y)) == pytest.approx(1.5, abs=1e-5)


def contrastive_by_loops(z: np.ndarray, y: np.ndarray, margin: float) -> float:
    pos, neg = [], []
    for i, j in itertools.permutations(range(len(z)), 2):
        d = np.linalg.norm(z[i] - z[j])
        (pos if y[i] == y[j] else neg).append(d if y[i] == y[j] else max(0.0, margin - d))
    mean_nonzero = lambda v: np.mean([x for x in v if x > 0]) if any(x > 0 for x in v) else 0.0  # noqa: E731
    return mean_nonzero(pos) + mean_nonzero(neg)


def test_contrastive_by_loops() -> None:
    z = unit(0, 20, 100, 130, 250, 300)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = contrastive_by_loops(z.numpy(), y.numpy(), 1.0)
    assert float(contrastive_loss(1.0)(z, y)) == pytest.approx(expected, abs=1e-5)


def test_triplet_semihard_by_loops() -> None:
    z = unit(0, 30, 50, 200, 210, 260)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    margin = 0.5
    violations = []
    zn = z.numpy()
    for a, p, n in itertools.permutations(range(6), 3):
        if y[a] != y[p] or y[a] == y[n]:
            continue
        d_ap, d_an = np.linalg.norm(zn[a] - zn[p]), np.linalg.norm(zn[a] - zn[n])
        if 0 < d_an - d_ap <= margin:  # semi-hard: negative beyond the positive, within the margin
            violations.append(max(0.0, d_ap - d_an + margin))
    nonzero = [v for v in violations if v > 0]
    assert nonzero, "the points must give some semi-hard triplets"
    assert float(triplet_loss(margin)(z, y)) == pytest.approx(np.mean(nonzero), abs=1e-5)


def test_ntxent_by_loops() -> None:
    z = unit(0, 10, 90, 120)
    ids = torch.tensor([0, 1, 0, 1])  # views 0 and 2 of image 0, views 1 and 3 of image 1
    t = 0.1
    zn = z.numpy()
    terms = []
    for a, p in itertools.permutations(range(4), 2):
        if ids[a] != ids[p]:
            continue
        s = lambda i, j: float(zn[i] @ zn[j]) / t  # noqa: E731 - unit vectors: cosine
        negatives = [math.exp(s(a, n)) for n in range(4) if ids[n] != ids[a]]
        terms.append(-math.log(math.exp(s(a, p)) / (math.exp(s(a, p)) + sum(negatives))))
    assert float(ntxent_loss(t)(z, ids)) == pytest.approx(np.mean(terms), rel=1e-5)


def test_ntxent_equals_pytorch_metric_learning() -> None:
    from pytorch_metric_learning.losses import NTXentLoss

    z = torch.randn(24, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(12).repeat(2)
    reference = NTXentLoss(temperature=0.1)(z, ids)
    assert float(ntxent_loss(0.1)(z, ids)) == pytest.approx(float(reference), rel=1e-5)
    labels = torch.tensor([0, 0, 0, 1, 1, 2] * 4)  # several positives per anchor, too
    assert float(ntxent_loss(0.5)(z, labels)) == pytest.approx(float(NTXentLoss(temperature=0.5)(z, labels)), rel=1e-5)


def test_vae_loss_by_hand() -> None:
    x = torch.zeros(2, 1, 1, 2)
    recon = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 1.0]]]])  # squared errors per image: 5 and 1 → mean 3
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.zeros(2, 2)
    # KL per image: -0.5·Σ(1 + 0 - mu² - 1) = 0.5·Σmu² → 0.5 and 0 → mean 0.25
    total, r, kl = vae_loss(recon, x, mu, logvar, beta=4.0)
    assert (float(r), float(kl), float(total)) == pytest.approx((3.0, 0.25, 4.0))


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        metric_loss("nonsense")


# --- margin losses (ArcFace, CosFace, sub-centre ArcFace) --------------------------------------------------------


def set_weights(loss: torch.nn.Module, degrees: list[float]) -> None:
    """Point the margin loss's label weights (columns of W) at these angles in the plane."""
    inner = loss.loss  # MetricLoss wraps the pytorch-metric-learning module
    with torch.no_grad():
        inner.W.copy_(unit(*degrees).T)


def cross_entropy_by_hand(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_cosface_by_hand() -> None:
    from simsearch.training.losses import margin_loss

    loss = margin_loss("cosface", classes=2, dim=2, margin=0.35, scale=30.0)
    set_weights(loss, [0, 90])
    # One embedding at 30°, label 0: cos to its label 0.866, to the other 0.5; CosFace subtracts the margin
    # from the true label's cosine, then scales.
    c_true, c_other = math.cos(math.radians(30)), math.cos(math.radians(60))
    expected = cross_entropy_by_hand([30 * (c_true - 0.35), 30 * c_other], 0)
    assert loss(unit(30), torch.tensor([0])).item() == pytest.approx(expected, rel=1e-4)


def test_arcface_by_hand() -> None:
    from simsearch.training.losses import margin_loss

    loss = margin_loss("arcface", classes=3, dim=2, margin=20.0, scale=30.0)
    set_weights(loss, [0, 90, 200])
    # Two embeddings: at 40° (label 0: angle 40° to its weight, + 20° margin) and at 100° (label 2: 100° away,
    # + 20°). The loss is the mean cross entropy.
    z, y = unit(40, 100), torch.tensor([0, 2])
    first = cross_entropy_by_hand(
        [30 * math.cos(math.radians(60)), 30 * math.cos(math.radians(50)), 30 * math.cos(math.radians(160))], 0
    )
    second = cross_entropy_by_hand(
        [30 * math.cos(math.radians(100)), 30 * math.cos(math.radians(10)), 30 * math.cos(math.radians(120))], 2
    )
    assert loss(z, y).item() == pytest.approx((first + second) / 2, rel=1e-4)


def test_arcface_past_the_fold_keeps_decreasing() -> None:
    from simsearch.training.losses import margin_loss

    # Beyond 180° − margin, cos(θ + m) would turn back up; ArcFace uses cos θ − m·sin m there instead.
    loss = margin_loss("arcface", classes=2, dim=2, margin=30.0, scale=10.0)
    set_weights(loss, [0, 180])
    m = math.radians(30)
    target = math.cos(math.radians(170)) - m * math.sin(m)
    expected = cross_entropy_by_hand([10 * target, 10 * math.cos(math.radians(10))], 0)
    assert loss(unit(170), torch.tensor([0])).item() == pytest.approx(expected, rel=1e-4)


def test_subcenter_arcface_takes_the_nearest_centre_of_each_label() -> None:
    from simsearch.training.losses import margin_loss

    loss = margin_loss("subcenter", classes=2, dim=2, margin=20.0, scale=30.0)
    # Three centres per label, label-major columns: label 0's at 0°, 120° and 240°, label 1's at 200°, 300°, 330°.
    set_weights(loss, [0, 120, 240, 200, 300, 330])
    # An embedding at 100°, label 0: its nearest label-0 centre is 120° (20° away, + 20° margin); label 1's
    # nearest is 200° (100° away).
    expected = cross_entropy_by_hand([30 * math.cos(math.radians(40)), 30 * math.cos(math.radians(100))], 0)
    assert loss(unit(100), torch.tensor([0])).item() == pytest.approx(expected, rel=1e-4)


def test_margin_losses_refuse_what_they_cannot_train() -> None:
    from simsearch.training.losses import margin_loss

    with pytest.raises(ValueError, match="at least 2 labels"):
        margin_loss("arcface", classes=1, dim=8)
    with pytest.raises(ValueError, match="margin_loss"):
        metric_loss("arcface")
