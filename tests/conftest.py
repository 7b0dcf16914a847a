import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def home(tmp_path, monkeypatch):
    "A fresh workspace for one test (WORKBENCH_HOME), also seen by subprocesses."
    ws = tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_HOME", str(ws))
    return ws


def workbench_cmd(*args, cwd=ROOT, env=None, timeout=600):
    "Run the installed `workbench` command; return the CompletedProcess."
    import subprocess
    exe = Path(sys.executable).parent / "workbench"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
