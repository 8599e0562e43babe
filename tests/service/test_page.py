"""The web page at ``/`` in a real browser (Debian's headless chromium) against a real server on a loopback port:
search shows the neighbours with thumbnails that load, verify shows a verdict, errors and the token prompt show,
and nothing is fetched from anywhere but the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect

from simsearch.service import create_app


@contextmanager
def serve(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a background thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def record_hosts(page: Page) -> list[str]:
    """The host of every request the page makes from now on (an object URL counts as its origin's)."""
    hosts: list[str] = []
    page.on("request", lambda request: hosts.append(urlsplit(request.url.removeprefix("blob:")).hostname or ""))
    return hosts


def open_page(page: Page, base: str) -> None:
    page.goto(base + "/")
    expect(page.locator("#collection option")).to_have_text(["demo"])


def test_search_shows_the_neighbours_with_their_thumbnails(
    browser_page: Page, small_collection: tuple[Path, Path]
) -> None:
    home, folder = small_collection
    page = browser_page
    hosts = record_hosts(page)
    with serve(create_app(home=home, names=None)) as base:
        open_page(page, base)
        page.fill("#k", "5")
        # An indexed image, uploaded under a name that is markup: it must show as text.
        name = "<em>bars &amp; more.png"  # (no slash: the server keeps only an upload's base name)
        page.set_input_files(
            "#query-file", {"name": name, "mimeType": "image/png", "buffer": (folder / "vbars" / "2.png").read_bytes()}
        )
        cells = page.locator(".result .neighbours .neighbour")
        expect(cells).to_have_count(5)
        first = cells.first
        expect(first.locator(".rank")).to_have_text("#1")
        expect(first.locator(".distance")).to_have_text("0.0000")
        expect(first.locator(".label")).to_have_text("vbars")
        expect(first.locator(".path")).to_have_text("vbars/2.png")
        expect(page.locator(".result .vote .label")).to_have_text("vbars")
        expect(page.locator(".result .query-name")).to_have_text(name)
        assert page.locator("#results em").count() == 0
        page.wait_for_function(
            "[...document.querySelectorAll('.neighbour img, .preview')].every(i => i.complete && i.naturalWidth > 0)"
        )
        expect(page.locator("#message")).to_be_hidden()
        expect(page.locator("#map-link")).to_be_hidden()  # the server has no latent map yet
    assert hosts and set(hosts) == {"127.0.0.1"}, hosts


def test_verify_shows_a_verdict_and_errors_show_with_their_remedy(
    browser_page: Page, small_collection: tuple[Path, Path], tmp_path: Path
) -> None:
    home, folder = small_collection
    page = browser_page
    with serve(create_app(home=home, names=None)) as base:
        open_page(page, base)
        expect(page.locator("#verify-source")).to_have_value("collection:demo")
        page.click("#verify-button")
        expect(page.locator("#message")).to_have_text("choose two images to verify")

        page.set_input_files("#verify-a", str(folder / "hbars" / "0.png"))
        page.set_input_files("#verify-b", str(folder / "hbars" / "1.png"))
        page.click("#verify-button")
        verdict = page.locator("#verdict")
        expect(verdict.locator(".decision")).to_have_text("Match")
        expect(verdict).to_contain_text("Distance")
        expect(verdict).to_contain_text("eer")  # the calibrated operating point
        expect(page.locator("#message")).to_be_hidden()

        page.set_input_files("#verify-b", str(folder / "blob" / "0.png"))
        page.click("#verify-button")
        expect(verdict.locator(".decision")).to_have_text("No match")

        # A file that is no image: the server's error and remedy, and no verdict.
        page.set_input_files("#verify-b", {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"})
        page.click("#verify-button")
        expect(page.locator("#message")).to_be_visible()
        expect(page.locator("#message")).to_contain_text("notes.png")
        expect(verdict).to_be_empty()

        # An error with a remedy shows both: "error — remedy".
        page.fill("#k", "5000")
        page.set_input_files("#query-file", str(folder / "blob" / "1.png"))
        expect(page.locator("#message")).to_contain_text("k: ")
        expect(page.locator("#message")).to_contain_text(" — fix the request")
        expect(page.locator(".neighbour")).to_have_count(0)


def test_a_token_protected_server_asks_for_the_token(browser_page: Page, small_collection: tuple[Path, Path]) -> None:
    home, folder = small_collection
    page = browser_page
    with serve(create_app(home=home, names=None, token="s3cret")) as base:
        page.goto(base + "/")
        expect(page.locator("#token")).to_be_visible()
        expect(page.locator("#message")).to_contain_text("access token")
        expect(page.locator("#collection option")).to_have_count(0)

        page.fill("#token-input", "wrong")
        page.press("#token-input", "Enter")
        expect(page.locator("#token")).to_be_visible()

        page.fill("#token-input", "s3cret")
        page.press("#token-input", "Enter")
        expect(page.locator("#collection option")).to_have_text(["demo"])
        expect(page.locator("#token")).to_be_hidden()
        expect(page.locator("#message")).to_be_hidden()

        # Thumbnails cannot send the header: they carry ?token=, and load.
        page.fill("#k", "3")
        page.set_input_files("#query-file", str(folder / "blob" / "1.png"))
        expect(page.locator(".neighbour")).to_have_count(3)
        page.wait_for_function("[...document.querySelectorAll('.neighbour img')].every(i => i.naturalWidth > 0)")
