"""What each trainable family optimises, one module per kind. An ``Objective`` (``base``) owns the modules being
trained, yields one epoch of batches, computes the loss of a batch, and scores the model on held-out data (lower is
better); the training loop in ``loop.py`` knows nothing else about it.

- ``reconstruction``: ``autoencoder`` reconstructs x from g(x) (optionally plus a contrastive term on labelled
  batches); ``denoising`` reconstructs x from g(corrupted x);
- ``variational``: ``vae``, reconstruction + β·KL, the embedding is μ;
- ``siamese``: a metric-learning loss on embeddings of augmented images: ``contrastive`` or ``triplet`` on
  class-balanced P×K batches, or ``ntxent`` on two augmented views of each image (no labels needed).

``OBJECTIVES`` maps the objective names that the family registry (``simsearch.models.registry``) records to these
classes: the one place where training learns which class trains which family.
"""

from __future__ import annotations

from simsearch.training.objectives.base import Objective
from simsearch.training.objectives.reconstruction import Denoising, Reconstruction
from simsearch.training.objectives.siamese import Siamese
from simsearch.training.objectives.variational import Variational

#: objective name (``Family.objective`` in the registry) → the class that trains it.
OBJECTIVES: dict[str, type[Objective]] = {
    "reconstruction": Reconstruction,
    "denoising": Denoising,
    "variational": Variational,
    "siamese": Siamese,
}


def objective_class(name: str) -> type[Objective]:
    """The class that trains the objective ``name``; ``ValueError`` for a name no class trains."""
    if name not in OBJECTIVES:
        raise ValueError(f"no training objective is called {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "Denoising", "Objective", "Reconstruction", "Siamese", "Variational", "objective_class"]
