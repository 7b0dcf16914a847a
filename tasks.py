#!/usr/bin/env python3
"""Set up the project and run it: `python3 tasks.py main` (the main job) or `python3 tasks.py test` (every test).

Needs only Python 3.11 and pip. Creates `.venv/` with the pinned dependencies of `constraints.txt`
(re-installed when `constraints.txt` or `settings.ini` change), then runs the command inside it.
"""
import filecmp, hashlib, os, shutil, subprocess, sys, tempfile, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".workbench-installed"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONHASHSEED": "0"}


def sh(*cmd, **kw):
    "Run `cmd` in the project's environment; exit with its code when it fails."
    env = {**os.environ, **OFFLINE, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(VENV)}
    print("+", " ".join(map(str, cmd)), flush=True)
    rc = subprocess.call([str(c) for c in cmd], cwd=kw.pop("cwd", ROOT), env=env, **kw)
    if rc: sys.exit(rc)


def setup():
    "Create `.venv` and install the project with the pinned dependencies, unless already done for these pins."
    if sys.version_info[:2] < (3, 11): sys.exit(f"workbench needs Python >= 3.11, this is {sys.version.split()[0]}")
    want = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in ("constraints.txt", "settings.ini", "setup.py"))).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want: return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e", ".[dev]")
    STAMP.write_text(want)


def check_sync():
    "Fail when `nbdev_export` or `nbdev_clean` would change anything: the notebooks are the source of the package."
    with tempfile.TemporaryDirectory() as tmp:
        for p in ("settings.ini", "nbs", "workbench"):
            src, dst = ROOT / p, Path(tmp) / p
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")) if src.is_dir() else shutil.copy(src, dst)
        sh(BIN / "nbdev_export", cwd=tmp)
        sh(BIN / "nbdev_clean", cwd=tmp)
        diffs = []
        def walk(cmp, rel=""):
            diffs.extend(f"{rel}{f}" for f in cmp.diff_files + cmp.left_only + cmp.right_only)
            for name, sub in cmp.subdirs.items(): walk(sub, f"{rel}{name}/")
        for p in ("nbs", "workbench"):
            walk(filecmp.dircmp(ROOT / p, Path(tmp) / p, ignore=["__pycache__", ".ipynb_checkpoints"]), f"{p}/")
        # dircmp compares shallowly by stat; confirm with contents
        diffs = [d for d in diffs if not ((ROOT / d).is_file() and (Path(tmp) / d).is_file() and filecmp.cmp(ROOT / d, Path(tmp) / d, shallow=False))]
        if diffs:
            sys.exit("notebooks and package disagree; run `.venv/bin/nbdev_export && .venv/bin/nbdev_clean` and commit:\n  " + "\n  ".join(diffs))
    print("notebooks and package agree", flush=True)


def main_job(args):
    "The main job: the `main` pipeline (prepare -> train -> evaluate -> score) on the sample tickets, CPU-sized."
    sh(BIN / "workbench", "run", "main", *args)


def chromium():
    "The browser tests drive Chromium (Debian's, through Playwright): install it when missing and this is root on Debian, else say how."
    if os.environ.get("WORKBENCH_CHROMIUM") or any(shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")): return
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        sys.exit("the browser tests need Chromium: `sudo apt-get install -y chromium` (Debian), or set WORKBENCH_CHROMIUM to a Chromium or Chrome binary")
    print("+ apt-get install -y chromium  (for the browser tests)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.call(["apt-get", "install", "-y", "-q", "chromium"], env=env):  # stale package lists: refresh them once
        subprocess.check_call(["apt-get", "update", "-q"], env=env)
        subprocess.check_call(["apt-get", "install", "-y", "-q", "chromium"], env=env)


def test(args):
    "Every test: notebook/package sync, the notebooks' own tests, then pytest (with a real browser for the dashboard and JupyterLab)."
    chromium()
    check_sync()
    sh(BIN / "nbdev_test", "--n_workers", "2", "--do_print")
    sh(BIN / "python", "-m", "pytest", "-q", *args)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["help"]
    if cmd not in ("setup", "main", "test"): sys.exit(__doc__ + "\nusage: python3 tasks.py setup|main|test [args...]")
    setup()
    if cmd == "main": main_job(rest)
    elif cmd == "test": test(rest)
