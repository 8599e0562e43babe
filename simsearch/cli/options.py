"""Options and help texts shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HOME_HELP = "Folder that holds named collections."


THRESHOLD_HELP = "Distance threshold: auto (the model's calibrated EER threshold, or the one for --far) or a number."


FAR_HELP = (
    "With --threshold auto: the calibrated threshold whose held-out false-accept rate is at most this (e.g. 0.01)."
)


MODEL_HELP = "A model folder from 'simsearch train' (instead of a collection's encoder)."


SOURCE_NAME_HELP = "Use this collection's encoder (default: the collection 'default'); a path also works."


NAME_HELP = "Collection name (under --home), or a path to a collection folder."


CHANNELS_HELP = (
    "An image whose colour differs from the model's input: convert (colour to grey by luminance, grey to colour by "
    "repeating its channel; a note says how many) or strict (refuse it)."
)


MAX_BOOTSTRAP = 10_000  # evaluation.MAX_BOOTSTRAP, which this module does not import (it needs numpy)


def _home_option() -> Any:
    return typer.Option(Path("indexes"), "--home", envvar="SIMSEARCH_HOME", help=HOME_HELP, show_default=True)


def _channels_option() -> Any:
    """``--channels convert|strict``: the channel rule (``simsearch.io.channels``), spelled the same on every command
    that embeds images with an existing model."""
    return typer.Option("convert", "--channels", help=CHANNELS_HELP, show_default=True)


def _train_config(family: str, dim: int, size: str, epochs: int, max_seconds: float, seed: int, device: str) -> Any:
    from simsearch.training import TrainConfig

    return TrainConfig(
        family=family, dim=dim, size=size, epochs=epochs, max_seconds=max_seconds, seed=seed, device=device
    )


#: Library field names whose command-line flag is not ``--`` + the name with dashes.
FLAG_NAMES = {
    "index_type": "--type",
    "k": "-k",
    "as_json": "--json",
    "folder": "--dir",
    "out_dir": "--out",
    "out_file": "--out",
    "csv_file": "--csv",
    "gpu": "--gpu/--no-gpu",
    "baselines": "--baselines/--no-baselines",
}


def cli_spelling(name: str, value: str | None) -> str:
    """How the command line spells an option an error names: ``--type flat``, ``--rebuild``, ``--far``."""
    flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    return flag if value in (None, "true") else f"{flag} {value}"
