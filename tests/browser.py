"""Debian's chromium driven by playwright, for the tests of pages (the service's web page, the latent map): never a
browser playwright downloads. Fixtures, imported by the conftest.py of the folders whose tests use them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

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
