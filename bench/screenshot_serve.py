"""The README's screenshot of ``simsearch serve``'s page: docs/serve.png.

Builds a collection of the bundled digits (pixels model: no training), serves it on a loopback port, and in
Debian's headless chromium (never a browser playwright downloads) searches one held-out digit and verifies a pair.

    .venv/bin/python bench/screenshot_serve.py [--out docs/serve.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("needs Debian's chromium (apt-get install chromium), or --chromium PATH")

    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from simsearch.demo import export_digits
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.service import create_app
    from simsearch.store.collection import Collection

    with tempfile.TemporaryDirectory(prefix="simsearch-screenshot-") as tmp:
        work = Path(tmp)
        images, queries = export_digits(work / "digits")
        home = work / "indexes"
        index_folder(images, Collection(home / "digits"), IndexConfig(model="pixels", device="cpu"))

        server = uvicorn.Server(uvicorn.Config(create_app(home=home), host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        try:
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    work / "profile",
                    executable_path=args.chromium,
                    headless=True,
                    args=CHROMIUM_ARGS,
                    viewport={"width": 1040, "height": 480},
                )
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(base + "/")
                expect(page.locator("#collection option")).to_have_text(["digits"])
                page.fill("#k", "6")
                page.set_input_files("#query-file", str(sorted((queries / "3").iterdir())[0]))
                expect(page.locator(".neighbour")).to_have_count(6)
                page.wait_for_function("[...document.querySelectorAll('.neighbour img')].every(i => i.naturalWidth)")
                a, b = sorted((images / "7").iterdir())[:2]
                page.set_input_files("#verify-a", str(a))
                page.set_input_files("#verify-b", str(b))
                page.fill("#verify-threshold", "3")  # the pixels model has no calibrated threshold
                page.click("#verify-button")
                expect(page.locator("#verdict .decision")).to_be_visible()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                context.close()
        finally:
            server.should_exit = True
            thread.join(10)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
