"Distributed training: `workbench train` under torchrun with 2 processes on CPU (gloo), end to end."
import json, os, subprocess, sys
from pathlib import Path

import mlflow
from conftest import ROOT

from workbench.config import mlflow_experiment
from workbench.data import prepare
from workbench.sample import generate_tickets
from workbench.testing import tiny_model
from workbench.train import TrainConfig


def _torchrun(*args, env=None, timeout=600):
    exe = Path(sys.executable).parent / "torchrun"
    return subprocess.run([str(exe), "--standalone", *map(str, args)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_ddp_two_processes_on_cpu(home, tmp_path):
    generate_tickets(500, seed=5).write_csv(tmp_path / "t.csv")
    prepare(tmp_path / "t.csv", home / "datasets" / "t")
    cfg = TrainConfig(base_model=str(tiny_model(tmp_path / "tiny")), epochs=2, lr=5e-3, batch_size=16, max_length=64,
                      target_modules=("query", "value"), patience=0).save(tmp_path / "cfg.json")
    out = home / "training" / "ddp"
    r = _torchrun("--nproc_per_node", "2", "--no-python", Path(sys.executable).parent / "workbench", "train",
                  "--dataset", home / "datasets" / "t", "--out", out, "--config", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    assert res["epochs_run"] == 2 and 0 <= res["val_macro_f1"] <= 1
    assert (out / "model" / "model.safetensors").exists() and len(list((out / "checkpoints").glob("epoch-*.pt"))) == 2
    mlflow_experiment()
    run = mlflow.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert len(mlflow.search_runs(search_all_experiments=True)) == 1  # only rank 0 logs


def test_train_command_reports_bad_input(home, tmp_path):
    exe = Path(sys.executable).parent / "workbench"
    r = subprocess.run([str(exe), "train", "--dataset", tmp_path / "missing"], capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 2 and "not a prepared dataset" in r.stderr
    r = subprocess.run([str(exe), "train", "--dataset", tmp_path, "--set", "lr=0"], capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 2 and "lr must be > 0" in r.stderr
