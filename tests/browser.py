"""A real browser for the tests: Playwright driving Debian's Chromium (no browser download; TOOLCHAIN.md).

`python3 tasks.py test` installs Chromium when it is missing (`apt-get install -y chromium`, as root on Debian);
elsewhere set `WORKBENCH_CHROMIUM` to a Chromium or Chrome binary.
"""
import contextlib, os, shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots of every browser test (ignored by git)
# headless as root on a closed network: no sandbox, no GPU, no background fetches that the network refuses
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    "The Chromium binary to drive, or a clear failure saying how to get one."
    for c in (os.environ.get("WORKBENCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if c and (path := shutil.which(c)): return path
    raise RuntimeError("the browser tests need Chromium: `apt-get install -y chromium` (Debian), or set WORKBENCH_CHROMIUM to its path")


@contextlib.contextmanager
def browser():
    "A headless Chromium, closed afterwards."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=ARGS, headless=True)
        try: yield b
        finally: b.close()


def console_errors(page) -> list[str]:
    "A list that fills with the page's console errors and uncaught exceptions."
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text} ({m.location.get('url', '')})"))
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    return errors


def shot(page, name: str) -> Path:
    "A full-page screenshot kept under tests/artifacts/."
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
