"""A real browser for the tests: Playwright driving Debian's Chromium (no browser download; TOOLCHAIN.md).

`python3 tasks.py test` installs Chromium when it is missing (`apt-get install -y chromium`, as root on Debian);
elsewhere set `WORKBENCH_CHROMIUM` to a Chromium or Chrome binary.
"""
import contextlib, os, shutil, socket, time
from pathlib import Path

import requests

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


def free_port() -> int:
    "A TCP port free on 127.0.0.1 now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_up(url: str, proc, what: str, log: Path | None = None, **kw):
    "Poll `url` until it answers 2xx; fail naming `what` (with its log's tail) when the process exits or a minute passes."
    for _ in range(120):
        try:
            if requests.get(url, timeout=2, **kw).ok: return
        except requests.ConnectionError: pass
        if proc.poll() is not None: break
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not start" + (": " + log.read_text()[-3000:] if log else ""))


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


# what each dashboard page must show once its data exists (Playwright's CSS reaches into Panel's shadow roots)
DASHBOARD_KEYS = {
    "overview": [".wb-kpi", ".wb-status", ".wb-evidence a", ".tabulator-row"],
    "versions": [".wb-frontier canvas", ".tabulator-row"],
    "trends": [".wb-chart canvas", ".tabulator-row"],
    "data": [".tabulator-row"],
    "training": [".wb-chart canvas", ".tabulator-row"],
    "inference": [".tabulator-row"],
    "monitoring": [".wb-chart canvas", ".wb-status", ".tabulator-row"],
    "governance": [".wb-card h1", ".tabulator-row"],
    "jobs": [".tabulator-row", "iframe.wb-notebook"],
    "explore": [".wb-prediction", ".wb-explanation span"],
    "report": ["iframe.wb-report"],
}


def login(page, url: str, user: str, password: str):
    "Sign in through Panel's login form."
    page.goto(f"{url}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.locator("button[type=submit], input[type=submit]").first.click()
    page.wait_for_load_state("networkidle")


def visit(page, url: str, key: str, timeout_ms: int = 120_000) -> dict:
    "Open one dashboard page, wait for its key elements, and report what it shows: counts per key element, empty states, failures."
    page.goto(f"{url}/{key}")
    for sel in DASHBOARD_KEYS[key]: page.locator(sel).first.wait_for(timeout=timeout_ms)
    if key == "explore":  # a new text, the button, and its own explanation (the page opens on an example's)
        page.locator("textarea").fill("Please cancel my subscription before the next renewal")
        page.locator(".bk-btn", has_text="Classify and explain").click()
        page.locator(".wb-explanation", has_text="renewal").wait_for(timeout=timeout_ms)
    if key == "report":  # the report itself inside its frame: its headline table
        page.frame_locator("iframe.wb-report").locator("td", has_text="handled automatically").first.wait_for(timeout=timeout_ms)
    if key == "jobs":  # the executed notebook inside its frame
        page.frame_locator("iframe.wb-notebook").locator(".jp-Cell").first.wait_for(timeout=timeout_ms)
    page.wait_for_timeout(500)  # let charts finish drawing before a screenshot
    return {"counts": {sel: page.locator(sel).count() for sel in DASHBOARD_KEYS[key]},
            "empty": page.locator(".wb-empty").all_inner_texts(), "failed": page.locator(".alert-danger").all_inner_texts()}
