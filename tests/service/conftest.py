"""Fixtures of the web page's tests: Debian's chromium driven by playwright (never a browser playwright downloads),
and a tiny collection to serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import browser_page, chromium_path  # noqa: F401 - fixtures this folder's tests use
from tests.conftest import calibrated_pixels_model, write_folder


@pytest.fixture
def small_collection(tmp_path: Path) -> tuple[Path, Path]:
    """A home holding collection ``demo``: 15 labelled 16×16 images (hbars, vbars, blob) indexed with a calibrated
    pixels model (no training, and ``verify`` has a threshold); returns (home, the folder indexed)."""
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.store.collection import Collection

    folder, home = tmp_path / "images", tmp_path / "indexes"
    write_folder(folder, per_class=5)
    model = calibrated_pixels_model(folder, tmp_path / "model")
    index_folder(folder, Collection(home / "demo"), IndexConfig(model=str(model), device="cpu", workers=1))
    return home, folder
