"""The ``simsearch`` command: parses options, calls the library, renders with rich. The only package that prints
or exits. ``app`` holds the Typer app and how commands end, ``render`` everything printed, ``options`` the shared
options; one module per command group registers its commands on the app."""

from simsearch.cli import (  # noqa: F401 - each registers its commands
    collections,
    duplicates,
    evaluate,
    generate,
    index,
    latent_map,
    query,
    serve,
    stability,
    train,
    verify,
)
from simsearch.cli.core import app, entry, main
from simsearch.cli.render import shown

__all__ = ["app", "entry", "main", "shown"]
