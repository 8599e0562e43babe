"""The options a training run leaves on ``auto``, chosen from the data once its images are read.

A Siamese model trained with labels on **characters** — ink on a light background (``Preprocess.invert``) in
square inputs, such as handwritten characters, symbols or glyphs — gets the character recipe:

- ``class_augment`` rot4flip: each label turned by 90°, 180° and 270°, and mirrored, becomes a new label (a
  character upside down is another character), eight times the labels to tell apart;
- ``projection`` 256: the loss is computed on a head over the embedding, dropped after training;
- ``ema`` 0.995: the moving average of the weights is what is validated and kept;
- ``epochs`` 20: each epoch holds eight times the images, so 20 of them are 160 passes over the originals;
- ``max_side`` 56: inputs of 56×56 rather than 64×64, three stride-2 stages down to 7×7 instead of four down to
  4×4, in about two thirds of the time. On Omniglot the time limit then no longer binds: EER 0.099, 0.099 and
  0.096 over seeds 0, 1 and 2 (one-shot 0.940, 0.945, 0.943) in 1,041–1,196 s, against 0.115 and 0.925 in
  1,441 s at 64×64, where the limit cut the folds and the final model short, and 0.103, 0.099 and 0.103
  (one-shot 0.943, 0.935, 0.935) in 683–766 s at 48×48.

On Omniglot's unseen alphabets (trained on three others) the recipe took the EER from 0.178 to the figure in
``bench/results/quality.md``; ``bench/results/eer-exploration.md`` has how each part was chosen. Everything else
(photos, faces, clothes, digits in white on black, and signatures, whose inputs are wide) keeps the plain recipe:
no class augmentation, no head, no averaging, 60 epochs, a long side of 64. An option the user set is kept as
it is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from simsearch.io import Preprocess
from simsearch.training.config import TrainConfig

CHARACTERS = "characters"
PLAIN = "plain"

#: What each recipe sets, option by option (only the options left on auto take it).
RECIPES: dict[str, dict[str, Any]] = {
    CHARACTERS: {"class_augment": "rot4flip", "projection": 256, "ema": 0.995, "epochs": 20, "max_side": 56},
    PLAIN: {"class_augment": "none", "projection": 0, "ema": 0.0, "epochs": 60, "max_side": 64},
}

#: The options a recipe may set: a config holds None (``class_augment``: "auto") where the user left them.
AUTO_OPTIONS = tuple(RECIPES[PLAIN])


def is_auto(config: TrainConfig, name: str) -> bool:
    """Whether the user left option ``name`` to the recipe. An input size the user gave (``--size HxW``) makes the
    long side theirs too."""
    value = getattr(config, name)
    if name == "max_side":
        return value is None and config.size == "auto"
    return value == "auto" if name == "class_augment" else value is None


def recipe_for(config: TrainConfig, invert: bool, square: bool) -> tuple[str, str]:
    """The recipe for ``config`` on images that are ink on a light background (``invert``) or not, in square
    inputs or not, and why, in a few words."""
    if config.family_record.objective != "siamese":
        return PLAIN, "the character recipe is for the Siamese family"
    if not config.uses_labels:
        return PLAIN, f"the character recipe needs labels, which the {config.loss} loss does not read"
    if invert and square:
        return CHARACTERS, "ink on a light background in square images, with labels: characters or symbols"
    if not invert:
        return PLAIN, "not ink on a light background"
    return PLAIN, "ink on a light background, but the inputs are not square"


def resolve(config: TrainConfig, spec: Preprocess) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with every option left on auto set by the recipe the data call for, and the record of it that
    ``encoder.training["recipe"]`` keeps: the recipe, why, and which options it set (the user's are kept)."""
    name, why = recipe_for(config, spec.invert, spec.size[0] == spec.size[1])
    chosen = {k: v for k, v in RECIPES[name].items() if is_auto(config, k)}
    return replace(config, **chosen), {"name": name, "why": why, "set": chosen}


def resolved(config: TrainConfig) -> bool:
    """Whether no option is left on auto (``resolve`` has run, or the user set them all)."""
    return not any(is_auto(config, k) for k in AUTO_OPTIONS)


def settled(config: TrainConfig) -> TrainConfig:
    """``config`` as the training loop and the objectives read it: options still on auto (no data was surveyed,
    as when a caller builds an objective itself) take the plain recipe's values."""
    if resolved(config):
        return config
    return replace(config, **{k: v for k, v in RECIPES[PLAIN].items() if is_auto(config, k)})


def max_side_for(config: TrainConfig, invert: bool, square: bool) -> int:
    """The long side of the input (``choose_size``) before the spec exists: ``max_side``, or the recipe's."""
    if config.max_side is not None:
        return config.max_side
    return int(RECIPES[recipe_for(config, invert, square)[0]]["max_side"])
