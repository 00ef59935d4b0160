"""Serve the web demo page with a pema-export web bundle, from local files only, on 127.0.0.1.

    python samples/web/serve.py BUNDLE_DIR [--port 8000]
    python samples/web/serve.py BUNDLE_DIR --screenshot docs/web-demo.png [--text "..."] [--dtype q8]

BUNDLE_DIR is what `pema-export --target web --out BUNDLE_DIR/model.onnx` wrote. The page, the bundle (at
/models/bundle/) and the few files of transformers.js and onnxruntime-web it needs (from node_modules, installed by
`make setup`) are all the server hands out. --screenshot opens the page in Debian's headless chromium through
Playwright, runs one text and saves a PNG. tests/test_web_browser.py uses this module's server and browser set-up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

PAGE = Path(__file__).resolve().parent
REPO = PAGE.parent.parent
NODE_MODULES = REPO / "node_modules"
BUNDLE_URL = "/models/bundle/"

# Each URL the page loads, and the file behind it. The .mjs/.wasm pair is the one transformers.js picks by default.
STATIC_FILES = {
    "/": PAGE / "index.html",
    "/index.html": PAGE / "index.html",
    "/app.js": PAGE / "app.js",
    "/style.css": PAGE / "style.css",
    "/vendor/transformers/transformers.js": NODE_MODULES / "@huggingface/transformers/dist/transformers.js",
    "/vendor/ort/ort-wasm-simd-threaded.asyncify.mjs": NODE_MODULES / "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs",
    "/vendor/ort/ort-wasm-simd-threaded.asyncify.wasm": NODE_MODULES / "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm",
}

CHROMIUM = "/usr/bin/chromium"
# Root needs --no-sandbox; the rest keep Chromium from reaching for the network (which is closed here) at start.
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]


class SetupError(Exception):
    """Something the demo needs is missing; the message says what to run."""


def check_files(bundle_dir: Path) -> None:
    """Fail before serving if the bundle or a node_modules file is missing."""
    missing = [str(path) for path in STATIC_FILES.values() if not path.is_file()]
    if missing:
        raise SetupError(f"{missing[0]} is missing: run `make setup` (it installs transformers.js with npm ci)")
    if not (bundle_dir / "pema-manifest.json").is_file():
        raise SetupError(f"{bundle_dir} holds no pema-manifest.json: export one with "
                         f"`pema-export --target web --out {bundle_dir}/model.onnx ...`")


class DemoHandler(SimpleHTTPRequestHandler):
    """Serves STATIC_FILES and the files inside the bundle; everything else is 404 (no listings, no other path)."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
        ".json": "application/json", ".onnx": "application/octet-stream", ".css": "text/css",
    }

    def __init__(self, *args, bundle_dir: Path, quiet: bool, **kwargs):
        self.bundle_dir = bundle_dir
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        url = unquote(urlsplit(path).path)
        if url in STATIC_FILES:
            return str(STATIC_FILES[url])
        if url.startswith(BUNDLE_URL):
            file = (self.bundle_dir / url[len(BUNDLE_URL):]).resolve()
            if file.is_file() and file.is_relative_to(self.bundle_dir):
                return str(file)
        return ""

    def send_head(self):
        if not self.translate_path(self.path):
            self.send_error(404, "not served by the demo")
            return None
        return super().send_head()

    def end_headers(self) -> None:
        # a re-exported bundle at the same path must be fetched again, not taken from the browser's cache
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # transformers.js probes a file with a GET it aborts after the headers: a closed connection is no error
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def make_server(bundle_dir: Path, port: int = 8000, quiet: bool = False) -> DemoServer:
    """A threaded server on 127.0.0.1:port (0: a free port) for the page and ``bundle_dir``."""
    bundle_dir = Path(bundle_dir).resolve()
    check_files(bundle_dir)
    handler = partial(DemoHandler, bundle_dir=bundle_dir, quiet=quiet)
    return DemoServer(("127.0.0.1", port), handler)


@contextlib.contextmanager
def serving(bundle_dir: Path, port: int = 0, quiet: bool = True) -> Iterator[str]:
    """Serve in a background thread; yields the page's URL."""
    server = make_server(bundle_dir, port, quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def launch_chromium(playwright):
    """Debian's chromium, headless, through Playwright (whose own browser download does not work here).

    Playwright's launch() gives every browser a fresh temporary profile (user-data-dir)."""
    if not Path(CHROMIUM).is_file():
        raise SetupError(f"{CHROMIUM} is missing: run `make setup` (as root it runs apt-get install -y chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def wait_until_ready(page, timeout_ms: int = 120_000) -> None:
    """Wait for the page to finish loading its model: the text box is enabled, or an error is shown."""
    page.wait_for_function(
        "() => !document.getElementById('text').disabled || !document.getElementById('error').hidden",
        timeout=timeout_ms,
    )
    if page.is_visible("#error"):
        raise RuntimeError(f"the page shows: {page.inner_text('#error')}")


def screenshot(bundle_dir: Path, png: Path, text: str, dtype: str) -> str:
    """Open the page, run ``text`` with ``dtype`` as a user does (type, Enter) and save a PNG; returns the answer."""
    from playwright.sync_api import sync_playwright

    with serving(bundle_dir) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 900, "height": 400})
        page.goto(url)
        wait_until_ready(page)
        if page.input_value("#dtype") != dtype:
            page.select_option("#dtype", dtype)
            wait_until_ready(page)
        page.fill("#text", text)
        page.press("#text", "Enter")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        answer = page.get_attribute("#result", "data-label")
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png), full_page=True)
        browser.close()
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle_dir", type=Path, help="a pema-export web bundle (the folder holding onnx/ and tokenizer.json)")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="save a screenshot of the page with one answer, then exit")
    parser.add_argument("--text", default="I was charged twice for order #80431, please refund one",
                        help="the text --screenshot runs")
    parser.add_argument("--dtype", default="q8", choices=["fp32", "q8", "fp16"], help="the model file --screenshot uses")
    args = parser.parse_args(argv)
    try:
        if args.screenshot:
            answer = screenshot(args.bundle_dir, args.screenshot, args.text, args.dtype)
            print(f"{args.screenshot}: {args.text!r} -> {answer}")
            return 0
        server = make_server(args.bundle_dir, args.port)
    except (SetupError, RuntimeError, OSError) as error:
        print(f"serve.py: error: {error}", file=sys.stderr)
        return 2
    print(f"Serving {args.bundle_dir} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
