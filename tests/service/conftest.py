"""Fixtures of the web page's tests: Debian's chromium driven by playwright (never a browser playwright downloads),
and a tiny collection to serve."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import calibrated_pixels_model, write_folder

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: Headless, no sandbox (CI runs as root in a container), /tmp rather than a small container /dev/shm, and no
#: calls home: the page must work offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system's chromium: ``SIMSEARCH_CHROMIUM``, or ``chromium`` / ``chromium-browser`` on the PATH."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("needs the playwright package (pip install -e '.[dev]')")
    path = os.environ.get("SIMSEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("needs Debian's chromium (apt-get install chromium); `make test` installs it where it can")
    return path


@pytest.fixture
def browser_page(chromium_path: str) -> Iterator[Page]:
    """A page of a fresh headless chromium (its own profile folder, removed afterwards)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="simsearch-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
            )
            try:
                context.set_default_timeout(15_000)
                page = context.pages[0] if context.pages else context.new_page()
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


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
