"""Convolutional autoencoder ``AE(x) = h(g(x))``: the encoder ``g`` embeds for search; the decoder ``h`` is kept
beside it (``decoder.safetensors``) to map embeddings back to images.

The backbone adapts to any input size: it halves the resolution with strided convolutions until the
feature map is at most 7 pixels on its short side (at most four times), then a linear layer maps it to ``dim``.
The decoder mirrors it and resamples to the exact input size, so odd sizes such as 28×28 or 120×300 work.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_WIDTHS = (32, 64, 128, 256)


def n_downsamples(size: tuple[int, int], max_levels: int = 4) -> int:
    """How many stride-2 stages take the short side of ``size`` down to at most 7 pixels."""
    side, levels = min(size), 0
    while side > 7 and levels < max_levels:
        side = (side + 1) // 2
        levels += 1
    return max(levels, 1)


#: ``ConvEncoder(readout=…)``: the embedding is the head's output, or the flattened last feature map.
READOUTS = ("head", "features")


def output_width(arch: dict[str, Any]) -> int:
    """The width of the embeddings a ``ConvEncoder`` built from ``arch`` gives: the discriminant back-end's axes
    when it ends with one, the flattened feature map's C·H·W with ``readout="features"``, else ``dim``."""
    if arch.get("discriminant"):
        return int(arch["discriminant"])
    if arch.get("readout", "head") == "features":
        h, w = (int(v) for v in arch["size"])
        for _ in arch["widths"]:
            h, w = (h + 1) // 2, (w + 1) // 2
        return int(arch["widths"][-1]) * h * w
    return int(arch["dim"])


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvEncoder(nn.Module):
    """``g``: (n, channels, H, W) → (n, dim). The one backbone of every trained family.

    ``normalize`` puts embeddings on the unit sphere (the Siamese family, whose losses compare directions);
    Euclidean distance between unit vectors orders neighbours exactly as cosine similarity does.

    ``readout``: what the module gives as the embedding. ``head`` (the default): the linear head's ``dim``
    numbers. ``features``: the last feature map itself, flattened and on the unit sphere (C·H·W numbers; the
    head is then trained as a projection head, ``head_embedding``, and not used for search). Trained on a few
    hundred images of a few dozen people, the head fits those people; the feature map keeps more of what tells
    new people apart (``bench/results/verification-exploration.md``).
    """

    discriminant_axes: torch.Tensor

    def __init__(
        self,
        channels: int,
        size: tuple[int, int] | list[int],
        dim: int,
        widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS,
        normalize: bool = False,
        discriminant: int = 0,
        readout: str = "head",
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; expected one of {', '.join(READOUTS)}")
        self.readout = readout
        self.channels, self.size, self.dim = channels, (int(size[0]), int(size[1])), dim
        self.normalize = normalize
        self.discriminant = 0
        if discriminant:
            self.set_discriminant(torch.zeros(dim, int(discriminant)))
        levels = n_downsamples(self.size, len(widths))
        self.widths = tuple(int(w) for w in widths[:levels])
        stages: list[nn.Module] = []
        c = channels
        h, w = self.size
        for width in self.widths:
            stages += [_block(c, width, 2), _block(width, width, 1)]
            c, h, w = width, (h + 1) // 2, (w + 1) // 2
        self.features = nn.Sequential(*stages)
        self.feature_shape = (c, h, w)
        self.head = nn.Linear(c * h * w, dim)

    @property
    def arch(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this module (``ConvEncoder(**arch)``), as stored in ``encoder.json``."""
        arch: dict[str, Any] = {
            "channels": self.channels,
            "size": list(self.size),
            "dim": self.dim,
            "widths": list(self.widths),
            "normalize": self.normalize,
        }
        if self.discriminant:  # only then: a model without one keeps the arch (and fingerprint) it always had
            arch["discriminant"] = self.discriminant
        if self.readout != "head":  # likewise
            arch["readout"] = self.readout
        return arch

    def set_discriminant(self, axes: torch.Tensor) -> None:
        """End the encoder with a fixed linear map to ``axes.shape[1]`` dimensions and a normalisation: the
        discriminant back-end (``training.discriminant``), stored with the weights."""
        if axes.ndim != 2 or axes.shape[0] != self.dim:
            raise ValueError(f"discriminant axes must be ({self.dim}, m), not {tuple(axes.shape)}")
        self.discriminant = int(axes.shape[1])
        self.register_buffer("discriminant_axes", axes.detach().float().clone())

    @contextlib.contextmanager
    def reading(self, readout: str) -> Iterator[None]:
        """Give ``readout``'s embeddings inside the block (the cross-fitted folds score both), then as before."""
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; expected one of {', '.join(READOUTS)}")
        before, self.readout = self.readout, readout
        try:
            yield
        finally:
            self.readout = before

    def head_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output (on the unit sphere with ``normalize``): what a metric loss trains on."""
        z = self.head(self.features(x).flatten(1))
        return F.normalize(z, dim=1) if self.normalize else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.readout == "features"
        z = F.normalize(self.features(x).flatten(1), dim=1) if features else self.head_embedding(x)
        if self.discriminant:
            z = F.normalize(z @ self.discriminant_axes, dim=1)
        return z


class ConvDecoder(nn.Module):
    """``h``: (n, dim) → (n, channels, H, W), the mirror of the ``ConvEncoder`` with the same arguments."""

    def __init__(
        self,
        channels: int,
        size: tuple[int, int] | list[int],
        dim: int,
        widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS,
    ) -> None:
        super().__init__()
        self.channels, self.size, self.dim = channels, (int(size[0]), int(size[1])), dim
        self.widths = tuple(int(w) for w in widths[: n_downsamples(self.size, len(widths))])
        if not self.widths:
            raise ValueError("a decoder needs at least one width")
        h, w = self.size
        for _ in self.widths:
            h, w = (h + 1) // 2, (w + 1) // 2
        c = self.widths[-1]
        self.start = (c, h, w)
        self.head = nn.Linear(dim, c * h * w)
        stages: list[nn.Module] = []
        widths = [*list(self.widths[::-1]), self.widths[0]]
        for c_in, c_out in itertools.pairwise(widths):
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), _block(c_in, c_out, 1)]
        self.features = nn.Sequential(*stages)
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    @classmethod
    def mirroring(cls, encoder: nn.Module) -> ConvDecoder:
        """The decoder for ``encoder`` (a ``ConvEncoder``): same channels, size, dim and widths."""
        if not isinstance(encoder, ConvEncoder):
            raise TypeError(f"a ConvDecoder mirrors a ConvEncoder, not a {type(encoder).__name__}")
        return cls(encoder.channels, encoder.size, encoder.dim, encoder.widths)

    @property
    def arch(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this module (``ConvDecoder(**arch)``), as stored in ``encoder.json``."""
        return {"channels": self.channels, "size": list(self.size), "dim": self.dim, "widths": list(self.widths)}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.head(z)).view(-1, *self.start)
        x = self.features(x)
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.out(x)


class ConvAutoencoder(nn.Module):
    """The whole autoencoder, used while training; ``encoder`` and ``decoder`` are what is saved."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder if decoder is not None else ConvDecoder.mirroring(encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class VariationalAutoencoder(nn.Module):
    """VAE: the encoder's head gives μ (the embedding kept for search), a second head gives log σ² (used only
    while training); the decoder is kept, and decodes μ."""

    def __init__(self, encoder: ConvEncoder, decoder: ConvDecoder | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.logvar = nn.Linear(encoder.head.in_features, encoder.dim)
        self.decoder = decoder if decoder is not None else ConvDecoder.mirroring(encoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar); the decoder sees a sample of N(mu, σ²) while training, mu otherwise."""
        h = self.encoder.features(x).flatten(1)
        mu, logvar = self.encoder.head(h), self.logvar(h).clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z), mu, logvar
