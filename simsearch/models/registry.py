"""The families of encoders: one record each, the one list that everything else reads.

Training validation (``TrainConfig``), ``build_module`` and ``build_decoder``, the checks of ``encoder.json``, the
command line's ``--help`` and the README's family table all read ``REGISTRY``. A family names the ``nn.Module``
classes it is made of, as ``"module:Class"`` inside ``simsearch.models``, imported when first used: listing the
families (``simsearch --help``) imports no torch. Its ``objective`` is a name that ``simsearch.training.objectives``
maps to the class that trains it (the models layer imports nothing from training).

Adding a family is one ``register(Family(...))`` line here (and its row in the README's table, which a test
compares with this list), plus a module for whatever it does not share with the families before it: its
architecture, here in ``models/``, or its objective, in ``training/objectives/``, which then also gets its entry in
``OBJECTIVES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simsearch.errors import option

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    """One family of encoders.

    ``encoder`` and ``decoder`` are ``"module:Class"`` in ``simsearch.models``; each class is rebuilt from the
    keyword arguments its ``arch`` property gives (stored in ``encoder.json``), and a decoder class also has a
    ``mirroring(encoder)`` constructor. ``objective`` is ``None`` for the families fitted or fixed without the
    training loop (the baselines). ``needs_labels``: whether its default training reads the sub-folder labels.
    ``description`` is one line, shown by ``simsearch train --help`` (which separates families with ``;``, so it
    holds none) and in the README's family table.
    """

    name: str
    description: str
    encoder: str
    decoder: str | None = None
    objective: str | None = None
    needs_labels: bool = False

    @property
    def encoder_class(self) -> type[nn.Module]:
        cls: type[nn.Module] = _resolve(self.encoder)
        return cls

    @property
    def decoder_class(self) -> type[nn.Module] | None:
        if self.decoder is None:
            return None
        cls: type[nn.Module] = _resolve(self.decoder)
        return cls

    @property
    def trained(self) -> bool:
        """Whether the training loop fits it (else it is a baseline: fitted in closed form, or fixed)."""
        return self.objective is not None

    def decoder_for(self, encoder: nn.Module) -> nn.Module | None:
        """A new decoder that mirrors ``encoder`` (randomly initialised), or None for a family without one."""
        if self.decoder is None:
            return None
        decoder: nn.Module = _resolve(self.decoder).mirroring(encoder)
        return decoder


#: Every family, by name, in the order ``--help`` and the README list them.
REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in REGISTRY:
        raise ValueError(f"family {family.name!r} is registered already")
    REGISTRY[family.name] = family
    return family


register(
    Family(
        "autoencoder",
        f"reconstruct x from g(x) (add {option('contrastive_weight', 'W')} to pull same-label images together too)",
        encoder="autoencoder:ConvEncoder",
        decoder="autoencoder:ConvDecoder",
        objective="reconstruction",
    )
)
register(
    Family(
        "denoising",
        "reconstruct x from g(noisy, partly erased x)",
        encoder="autoencoder:ConvEncoder",
        decoder="autoencoder:ConvDecoder",
        objective="denoising",
    )
)
register(
    Family(
        "vae",
        f"reconstruction + β·KL(N(μ,σ) ‖ N(0,1)), the embedding is μ ({option('beta')} trades reconstruction for a "
        "smoother space)",
        encoder="autoencoder:ConvEncoder",
        decoder="autoencoder:ConvDecoder",
        objective="variational",
    )
)
register(
    Family(
        "siamese",
        f"a metric-learning loss on augmented images, embeddings on the unit sphere: {option('loss', 'contrastive')} "
        f"(same-label pairs pulled to 0, different pairs pushed beyond {option('margin')}, 1.0), triplet (anchor "
        f"nearer its positive than its negative by {option('margin')}, 0.2, on semi-hard triplets mined in the batch), "
        "arcface, cosface or subcenter (margin-based classification over the training labels, the standard of face "
        "recognition: a weight per label, dropped after training), or ntxent (two augmented views of one image agree, "
        "SimCLR's NT-Xent: no labels needed)",
        encoder="autoencoder:ConvEncoder",
        objective="siamese",
        needs_labels=True,
    )
)
register(Family("pca", "PCA fitted on the folder (a baseline)", encoder="baseline:PCAEncoder"))
register(Family("pixels", "the raw pixels (a baseline)", encoder="baseline:PixelEncoder"))


def family_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_family(name: str) -> Family:
    """The family called ``name``; ``ValueError`` (listing the known ones) for any other name."""
    family = REGISTRY.get(name) if isinstance(name, str) else None
    if family is None:
        raise ValueError(f"unknown family {str(name)[:40]!r}; known: {', '.join(REGISTRY)}")
    return family


def build_module(family: str, arch: dict[str, Any]) -> nn.Module:
    """Rebuild a family's encoder module from the keyword arguments stored in ``encoder.json`` (``arch``)."""
    return get_family(family).encoder_class(**arch)


def build_decoder(family: str, arch: dict[str, Any]) -> nn.Module:
    """Rebuild a family's decoder module from the keyword arguments stored in ``encoder.json`` (``decoder.arch``)."""
    cls = get_family(family).decoder_class
    if cls is None:
        raise ValueError(f"the {family} family has no decoder")
    return cls(**arch)


def arch_of(module: nn.Module) -> dict[str, Any]:
    """The keyword arguments a module was built with (its ``arch`` property): what ``encoder.json`` stores, and
    what rebuilds it (``type(module)(**arch_of(module))``)."""
    arch = getattr(module, "arch", None)
    if not isinstance(arch, dict):
        raise TypeError(f"{type(module).__name__} does not give its constructor arguments (an 'arch' property)")
    return dict(arch)


def _resolve(reference: str) -> Any:
    """``"module:Name"`` → ``simsearch.models.module.Name`` (only inside this package)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(f"simsearch.models.{module}"), name)
