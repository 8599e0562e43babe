"""Fixtures of the latent-space tests: Debian's chromium driven by playwright (for the map's page)."""

from tests.browser import browser_page, chromium_path  # noqa: F401 - fixtures this folder's tests use
