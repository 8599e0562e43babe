"""Encoder architectures, one family per file. ``build_module`` rebuilds any of them from its stored arguments."""

from __future__ import annotations

from typing import Any

from torch import nn

from simsearch.models.autoencoder import ConvEncoder
from simsearch.models.baseline import PCAEncoder, PixelEncoder

#: family name → the nn.Module class of its *encoder* (the part kept for search).
ENCODER_CLASSES: dict[str, type[nn.Module]] = {
    "autoencoder": ConvEncoder,
    "denoising": ConvEncoder,
    "vae": ConvEncoder,
    "siamese": ConvEncoder,
    "pixels": PixelEncoder,
    "pca": PCAEncoder,
}

FAMILIES = tuple(ENCODER_CLASSES)


def build_module(family: str, arch: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder module from its family and the keyword arguments stored in ``encoder.json``."""
    cls = ENCODER_CLASSES[family]
    return cls(**arch)
