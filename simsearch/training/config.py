"""What a training run is asked to do (``TrainConfig``), checked when it is made, and the input size it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from simsearch.errors import UsageError, option
from simsearch.io import (
    MAX_GAMMA,
    MAX_SIDE,
    RESIZE_MODES,
)
from simsearch.models.autoencoder import READOUTS
from simsearch.models.registry import REGISTRY, Family, family_names
from simsearch.training.augment import CLASS_AUGMENTS, MIRROR_MODES
from simsearch.training.losses import LOSSES

#: The families ``train`` makes (all of the registry's), and those the training loop fits, as registered when
#: this module was imported. ``TrainConfig`` reads the registry itself.
TRAINABLE = family_names()
NEURAL = tuple(family.name for family in REGISTRY.values() if family.trained)

T = TypeVar("T")


#: ``--readout``: auto (the feature map for cross-fitted identities in photos, else the head), or ``READOUTS``.
READOUT_MODES = ("auto", *READOUTS)
#: ``--discriminant``: chosen on the unseen identities of the cross-fitted folds, or never.
DISCRIMINANT_MODES = ("auto", "no")


@dataclass(frozen=True)
class TrainConfig:
    """How to build an encoder from a folder. ``max_seconds`` bounds training time whatever ``epochs`` says."""

    family: str = "autoencoder"
    loss: str = "contrastive"
    margin: float | None = None
    beta: float = 1.0
    contrastive_weight: float = 0.0
    augment: float = 0.5
    #: ``auto`` (and None for ``epochs``, ``ema`` and ``projection``): chosen from the data by ``training.recipe``.
    class_augment: str = "auto"
    dim: int = 64
    size: str = "auto"
    resize: str = "auto"
    max_side: int | None = None
    invert: str = "auto"
    #: The power the [0, 1] intensities are raised to before normalising (``Preprocess.gamma``); 1: as they are.
    gamma: float = 1.0
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float = 2e-3
    max_seconds: float = 300.0
    max_images: int = 20_000
    val_fraction: float = 0.15
    patience: int = 12
    #: Folds of the cross-fitted threshold calibration (``calibrate.plan_calibration``): None chooses K from the
    #: identities; 1 turns it off (one validation split, as a quick run); K ≥ 2 asks for K (two groups a fold).
    folds: int | None = None
    ema: float | None = None
    projection: int | None = None
    similar_labels: int = 0
    mirror: str = "no"
    #: Siamese, cross-fitted: ``auto`` scores the folds through the discriminant back-end too and keeps it when
    #: that is better on the unseen identities (``training.discriminant``); ``no`` (the default) never fits it.
    discriminant: str = "no"
    #: Siamese: what the model searches with, the head's ``dim`` numbers (``head``) or the flattened last feature
    #: map, the head then trained as a projection head (``features``; ``models.autoencoder.ConvEncoder``); ``auto``:
    #: the feature map when training is cross-fitted over identities (verification will meet new ones) on images
    #: that are not ink on paper, and not ``discriminant`` auto (fitted on the head's embeddings); else the head.
    readout: str = "auto"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.family not in REGISTRY:
            raise UsageError(f"unknown family {self.family!r}", remedy=f"use one of: {', '.join(family_names())}")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}", remedy=f"use one of: {', '.join(LOSSES)}")
        if self.resize not in ("auto", *RESIZE_MODES):
            raise UsageError(
                f"{option('resize')} must be auto or one of {', '.join(RESIZE_MODES)}, not {self.resize!r}"
            )
        if self.invert not in ("auto", "yes", "no"):
            raise UsageError(f"{option('invert')} must be auto, yes or no, not {self.invert!r}")
        if not (math.isfinite(self.gamma) and 0 < self.gamma <= MAX_GAMMA):
            raise UsageError(
                f"{option('gamma')} must be above 0 and at most {MAX_GAMMA:g}, not {self.gamma}",
                remedy="0.5 (the square root) weighs where there is ink or fabric more than how bright it is; 1 "
                "keeps the intensities as they are",
            )
        if self.batch_size is not None and self.batch_size < 2:
            raise UsageError(f"{option('batch_size')} must be at least 2, not {self.batch_size}")
        if self.dim < 1:
            raise UsageError(f"{option('dim')} must be at least 1, not {self.dim}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise UsageError(f"{option('ema')} must be in [0, 1) (0: off; 0.995, say), not {self.ema}")
        if (self.projection or 0) < 0 or self.similar_labels < 0:
            raise UsageError(f"{option('projection')} and {option('similar_labels')} must be ≥ 0")
        if (self.projection or 0) > 0 and self.family_record.objective != "siamese":
            raise UsageError(
                f"{option('projection')} is a head for the Siamese losses: use it with {option('family', 'siamese')}"
            )
        if self.similar_labels > 1 and not (self.family_record.objective == "siamese" and self.uses_labels):
            raise UsageError(
                f"{option('similar_labels')} builds batches of labels: use it with {option('family', 'siamese')} "
                f"and {option('loss', 'contrastive')} or triplet"
            )
        if self.mirror not in MIRROR_MODES:
            raise UsageError(f"{option('mirror')} must be one of {', '.join(MIRROR_MODES)}, not {self.mirror!r}")
        if self.discriminant not in DISCRIMINANT_MODES:
            raise UsageError(
                f"{option('discriminant')} must be one of {', '.join(DISCRIMINANT_MODES)}, not {self.discriminant!r}"
            )
        if self.discriminant != "no" and self.family_record.objective != "siamese":
            raise UsageError(
                f"{option('discriminant')} is a back-end of the Siamese family: use it with "
                f"{option('family', 'siamese')}"
            )
        if self.readout not in READOUT_MODES:
            raise UsageError(f"{option('readout')} must be one of {', '.join(READOUT_MODES)}, not {self.readout!r}")
        if self.readout == "features" and self.family_record.objective != "siamese":
            raise UsageError(
                f"{option('readout', self.readout)} is for the Siamese family: use it with {option('family', 'siamese')}"
            )
        if self.readout == "features" and self.discriminant != "no":
            raise UsageError(
                f"{option('readout', self.readout)} and {option('discriminant', self.discriminant)} do not go together",
                remedy=f"the discriminant back-end is fitted on the head's embeddings: drop {option('discriminant')}",
            )
        if self.class_augment not in ("auto", *CLASS_AUGMENTS):
            raise UsageError(
                f"{option('class_augment')} must be auto or one of {', '.join(CLASS_AUGMENTS)}, not "
                f"{self.class_augment!r}"
            )
        if self.class_augment not in ("auto", "none") and not self.uses_labels:
            raise UsageError(
                f"{option('class_augment')} makes new labels, so it needs a labelled loss: "
                f"{option('family', 'siamese')} with {option('loss', 'contrastive')} or triplet, or "
                f"{option('contrastive_weight')}"
            )
        if self.folds is not None and self.folds < 1:
            raise UsageError(f"{option('folds')} must be auto or at least 1 (1: no cross-fitting), not {self.folds}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"{option('epochs')} must be at least 1, not {self.epochs}")
        if self.max_seconds <= 0:
            raise UsageError(f"the training time limit must be positive, not {self.max_seconds}")
        if self.beta < 0 or self.contrastive_weight < 0 or (self.margin is not None and self.margin <= 0):
            raise UsageError(
                f"{option('beta')} and {option('contrastive_weight')} must be ≥ 0, and {option('margin')} > 0"
            )
        parse_size(self.size)

    @property
    def epoch_count(self) -> int:
        """``epochs``, once chosen (``training.recipe.resolve``, or ``settled``)."""
        return _chosen(self.epochs, "epochs")

    @property
    def ema_decay(self) -> float:
        """``ema``, once chosen (0: off)."""
        return _chosen(self.ema, "ema")

    @property
    def projection_units(self) -> int:
        """``projection``, once chosen (0: off)."""
        return _chosen(self.projection, "projection")

    @property
    def family_record(self) -> Family:
        """The family's record in the registry."""
        return REGISTRY[self.family]

    @property
    def uses_labels(self) -> bool:
        """Whether training reads the labels: a family that needs them (the Siamese labelled losses; NT-Xent needs
        none), or an autoencoder's contrastive term."""
        return (self.family_record.needs_labels and self.loss != "ntxent") or self.contrastive_weight > 0


def _chosen(value: T | None, name: str) -> T:
    if value is None:
        raise ValueError(f"{name} is still on auto: training.recipe.resolve chooses it from the data")
    return value


def parse_size(text: str) -> tuple[int, int] | None:
    """``auto`` → None; ``HxW`` (or ``N`` for N×N) → (H, W)."""
    if text == "auto":
        return None
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1 or max(dims) > MAX_SIDE:
        raise UsageError(f"{option('size')} must be 'auto' or HxW such as 64x64 (sides 1..{MAX_SIDE}), not {text!r}")
    return dims[0], dims[1]


def choose_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Keep the images' aspect ratio, never upscale, and cap the long side at ``max_side``; for images more than
    twice as long as they are wide (a signature on its line) the long side may reach twice ``max_side``, so
    that the short side keeps at least half of ``max_side``."""
    long_side, short_side = max(height, width), min(height, width)
    cap = max_side if short_side * max_side / long_side >= max_side / 2 else 2 * max_side
    scale = min(1.0, cap / long_side)
    return max(4, round(height * scale)), max(4, round(width * scale))
