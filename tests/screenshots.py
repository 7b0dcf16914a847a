"""Screenshots of the dashboard for the README, from the current workspace (run the main job first).

    .venv/bin/python tests/screenshots.py        # writes docs/img/dashboard-<page>.png

Starts `workbench dashboard` on a free port, tours the pages in Debian's Chromium like the browser test, and keeps
small palette PNGs (900 px wide) of the pages named below.
"""
import os, subprocess, sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from browser import ROOT, browser, console_errors, free_port, login, visit, wait_up  # noqa: E402

PAGES = {"overview": 1250, "versions": 1300, "trends": 1300, "monitoring": 1500, "governance": 1100, "explore": 800}  # page -> height kept (px at 1280 wide)


def main(out: Path = ROOT / "docs" / "img"):
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "workbench"), "dashboard", "--port", str(port)],
                            env={**os.environ, "WORKBENCH_DASHBOARD_PASSWORD": "screenshots"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(f"{url}/login", proc, "the dashboard")
        with browser() as b:
            page = b.new_page(viewport={"width": 1280, "height": max(PAGES.values())})
            errors = console_errors(page)
            login(page, url, "me", "screenshots")
            for key, height in PAGES.items():
                seen = visit(page, url, key)
                if seen["failed"] or errors: sys.exit(f"{key}: {seen} {errors}")
                if seen["empty"]: print(f"{key}: empty states shown: {seen['empty']}")
                tmp = out / f".{key}.png"
                page.screenshot(path=str(tmp), clip={"x": 0, "y": 0, "width": 1280, "height": height})
                im = Image.open(tmp).convert("RGB")
                im = im.resize((900, round(height * 900 / 1280)), Image.LANCZOS).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
                im.save(out / f"dashboard-{key}.png", optimize=True)
                tmp.unlink()
                print(out / f"dashboard-{key}.png", (out / f"dashboard-{key}.png").stat().st_size // 1024, "KB")
    finally:
        proc.terminate(); proc.wait(30)


if __name__ == "__main__":
    main()
