"""Encoder (and decoder) architectures, one family per file; ``registry`` is the one list of families.

Importing this package imports no torch: the registry names its classes and imports them when first used.
``build_module`` and ``build_decoder`` rebuild a family's modules from the arguments stored in ``encoder.json``.
"""

from __future__ import annotations

from typing import Any

from simsearch.models.registry import (
    REGISTRY,
    Family,
    arch_of,
    build_decoder,
    build_module,
    family_names,
    get_family,
    register,
)

__all__ = ["REGISTRY", "Family", "arch_of", "build_decoder", "build_module", "family_names", "get_family", "register"]


def __getattr__(name: str) -> Any:
    """The names of old: ``FAMILIES`` (the family names) and ``ENCODER_CLASSES`` (name → encoder class), read
    from the registry when asked, so that they always list what is registered."""
    if name == "FAMILIES":
        return family_names()
    if name == "ENCODER_CLASSES":
        return {family.name: family.encoder_class for family in REGISTRY.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
