"""End to end: the job notebooks and pipelines through the real `workbench` command, papermill kernels and MLflow (SQLite).

One workspace for the module: the `train` pipeline runs once with tiny parameters, the other tests build on it.
"""
import json
from pathlib import Path

import mlflow
import polars as pl
import pytest
from conftest import ROOT, workbench_cmd

# tiny and fast: the smoke-test profile (LoRA, one epoch) at 200 training rows of 32 tokens; a gate that lets it through
TINY = ["-f", str(ROOT / "nbs" / "jobs" / "smoke.yaml"), "-p", "train_rows=200", "-p", "max_length=32", "-p", "min_lift_sd=0", "-p", "max_parity_drop=1",
        "-p", "max_p95_ms=10000", "-p", "latency_samples=5"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    "A workspace with a small copy of the sample tickets."
    root = tmp_path_factory.mktemp("pipelines")
    tickets = pl.read_csv(ROOT / "sample_data" / "tickets.csv", infer_schema=False)
    tickets.head(800).write_csv(root / "tickets.csv")
    pl.read_csv(ROOT / "sample_data" / "tickets_drift.csv", infer_schema=False).head(300).write_csv(root / "new.csv")
    return root


def wb(ws, *args, **kw):
    return workbench_cmd(*args, env={"WORKBENCH_HOME": str(ws / "workspace"), **kw.pop("env", {})}, **kw)


def run_record(ws, stdout):
    run_id = stdout.split("\nrun ")[1].split(":")[0]
    return json.loads((ws / "workspace" / "runs" / run_id / "run.json").read_text())


@pytest.fixture(scope="module")
def trained(ws):
    "The `train` pipeline on the small tickets (prepare -> train -> evaluate)."
    r = wb(ws, "run", "train", "-p", f"prepare.source={ws / 'tickets.csv'}", "-p", "dataset=small", *TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, run_record(ws, r.stdout)


def _client(ws):
    uri = f"sqlite:///{ws / 'workspace' / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def test_train_pipeline_records_everything(ws, trained):
    r, rec = trained
    assert rec["status"] == "succeeded" and [s["status"] for s in rec["steps"]] == ["succeeded"] * 3
    root = ws / "workspace" / "runs" / rec["run_id"]
    for i, job in enumerate(["prepare", "train", "evaluate"], 1):  # one folder per step with its executed notebook
        nb = json.loads((root / f"{i:02d}-{job}" / f"{job}.ipynb").read_text())
        assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    out = {s["id"]: s["outputs"] for s in rec["steps"]}
    assert rec["steps"][1]["resolved"]["dataset_dir"] == out["prepare"]["dataset_dir"]  # wiring
    assert rec["steps"][2]["resolved"]["model_dir"] == out["train"]["model_dir"]
    assert out["evaluate"]["alias"] == "champion" and out["evaluate"]["model_version"] == "1"
    assert "workbench serve --model models:/small@champion" in r.stdout  # the summary says how to serve the new champion
    for text in ("model        small version 1 (", "alias champion (gate: promoted)", "macro-F1     ", "plain fp32 ", "baseline     lift ", "cost         $",
                 "executed notebooks", "mlflow ui --backend-store-uri sqlite:///"):
        assert text in r.stdout, text
    lin = json.loads((root / "lineage.json").read_text())
    assert lin["lineage_id"] == rec["lineage_id"] and lin["model"] == {"name": "small", "version": "1", "alias": "champion"}
    assert lin["data_fingerprints"]["prepare"] == out["prepare"]["data_fingerprint"] and lin["git_commit"]
    assert [s["notebook_sha256"] for s in lin["steps"]] and lin["steps"][1]["mlflow_run_id"]
    client = _client(ws)
    parent = client.get_run(rec["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["workbench.lineage_id"] == rec["lineage_id"]
    children = client.search_runs([rec["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["01-prepare", "02-train", "03-evaluate"]
    for c in children:
        assert c.info.status == "FINISHED" and c.data.metrics["duration_s"] > 0
        assert [a.path for a in client.list_artifacts(c.info.run_id, "notebook")] == [f"notebook/{c.data.tags['workbench.job']}.ipynb"]
    train_child = next(c for c in children if c.info.run_name == "02-train")
    assert train_child.data.params["epochs"] == "1" and train_child.data.tags["output.training_run_id"] == out["train"]["training_run_id"]
    assert client.get_model_version_by_alias("small", "champion").version in (1, "1")
    # the cost ledger's inputs: every attempt's kernel CPU, priced; the run's total, also in MLflow
    attempts = [a for s in rec["steps"] for a in s["attempts"]]
    assert all(a["cpu_s"] > 0 and a["usd"] > 0 and a["gpu_s"] == 0 for a in attempts), attempts
    assert abs(rec["cost"]["usd"] - sum(a["usd"] for a in attempts)) < 1e-12 and parent.data.metrics["usd"] == rec["cost"]["usd"]
    assert all(c.data.metrics["cpu_s"] > 0 for c in children)
    # the evidence of version 1: its held-out predictions and every candidate's test report
    ev = ws / "workspace" / "evidence" / "small" / "v1"
    held, cands = pl.read_parquet(ev / "heldout.parquet"), pl.read_parquet(ev / "candidates.parquet")
    assert held.columns == ["label", "prediction", "confidence"] and held.height == out["evaluate"]["value"]["rows"]
    assert set(out["evaluate"]["macro_f1_by_variant"]) == set(cands["variant"])


def _metrics(rec):
    m = json.loads((Path(next(s for s in rec["steps"] if s["id"] == "train")["outputs"]["model_dir"]).parent / "metrics.json").read_text())
    for h in m["history"]: h.pop("seconds")
    ev = next(s for s in rec["steps"] if s["id"] == "evaluate")["outputs"]
    # Every variant's quality must repeat. Which variant is served is picked by measured throughput, so it may differ.
    return m, ev["macro_f1_fp32"], ev["macro_f1_by_variant"]


def test_train_twice_gives_identical_metrics_and_lineage(ws, trained):
    _, first = trained
    r = wb(ws, "run", "train", "-p", f"prepare.source={ws / 'tickets.csv'}", "-p", "dataset=small", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    second = run_record(ws, r.stdout)
    assert second["run_id"] != first["run_id"]
    assert _metrics(second) == _metrics(first)
    assert second["lineage_id"] == first["lineage_id"]
    assert next(s for s in second["steps"] if s["id"] == "evaluate")["outputs"]["model_version"] == "2"  # as good: promoted


def test_lineage_changes_with_parameters_and_data(ws, tmp_path):
    "A prepare-only pipeline: the same file twice shares a lineage; a new parameter or new file content does not."
    (tmp_path / "p.yaml").write_text("pipelines:\n  data:\n    steps: [prepare]\n")
    src = tmp_path / "t.csv"
    pl.read_csv(ws / "tickets.csv", infer_schema=False).head(300).write_csv(src)
    env = {"WORKBENCH_PIPELINES": str(tmp_path / "p.yaml")}
    def lineage(*extra):
        r = wb(ws, "run", "data", "-p", f"source={src}", "-p", "dataset=lin", *extra, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return run_record(ws, r.stdout)["lineage_id"]
    a = lineage()
    assert lineage() == a
    assert lineage("-p", "stratify=true") != a
    pl.read_csv(ws / "tickets.csv", infer_schema=False).slice(300, 50).write_csv(src)  # same path, new content
    assert lineage() != a


def test_score_pipeline_uses_the_champion(ws, trained):
    r = wb(ws, "run", "score", "-p", f"source={ws / 'new.csv'}")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = run_record(ws, r.stdout)
    out = rec["steps"][0]["outputs"]
    champion = str(_client(ws).get_model_version_by_alias("small", "champion").version)
    assert out["scored_model_version"] == champion and out["model_uri"] == f"models:/small/{champion}"
    pred = pl.read_parquet(out["predictions"])
    quarantined = pl.read_parquet(Path(out["predictions"]).with_name("predictions.quarantine.parquet")).height if out["rows_quarantined"] else 0
    assert pred.height + quarantined == 300 and out["rows_scored"] + out["rows_failed"] == pred.height
    labels = sorted(c.removeprefix("p_") for c in pred.columns if c.startswith("p_"))
    assert len(labels) == 8 and set(pred["prediction"].drop_nulls()) <= set(labels)
    assert ((pred.select(pl.sum_horizontal(pl.col("^p_.*$")))).to_series() - 1).abs().max() < 1e-5
    assert (pred["model_version"] == champion).all()
    assert "labelled     macro-F1" in r.stdout and "predictions  " in r.stdout
    lin = json.loads((ws / "workspace" / "runs" / rec["run_id"] / "lineage.json").read_text())
    assert lin["inputs_used"]["score"]["model"] == f"models:/small/{champion}"
    again = run_record(ws, wb(ws, "run", "score", "-p", f"source={ws / 'new.csv'}").stdout)
    other = ws / "other.csv"; pl.read_csv(ws / "new.csv", infer_schema=False).head(10).write_csv(other)
    changed = run_record(ws, wb(ws, "run", "score", "-p", f"source={other}").stdout)
    assert again["lineage_id"] == rec["lineage_id"] != changed["lineage_id"]


@pytest.mark.parametrize("source,expect", [("tickets_dirty.csv", "quarantined"), ("folder", "skipped file"), ("empty", "nothing")])
def test_score_job_on_bad_input(ws, trained, tmp_path, source, expect):
    if source == "empty": (tmp_path / "empty").mkdir(); src = tmp_path / "empty"
    elif source == "folder":
        (tmp_path / "land").mkdir()
        pl.read_csv(ws / "new.csv", infer_schema=False).head(40).write_csv(tmp_path / "land" / "a.csv")
        (tmp_path / "land" / "b.parquet").write_bytes(b"not parquet")
        src = tmp_path / "land"
    else: src = ROOT / "sample_data" / source
    r = wb(ws, "job", "score", "-p", f"source={src}", "-p", "on_bad_file=skip", "-p", f"out={tmp_path / 'p.parquet'}")
    assert r.returncode == 0, r.stderr[-3000:]
    pred = pl.read_parquet(tmp_path / "p.parquet")
    if expect == "quarantined":
        q = pl.read_parquet(tmp_path / "p.quarantine.parquet")
        n_in = pl.read_csv(src, infer_schema=False, encoding="utf8-lossy", truncate_ragged_lines=True).height
        assert pred.height + q.height == n_in and q["reason"].null_count() == 0
    elif expect == "nothing":
        assert pred.height == 0 and "nothing to score" in r.stdout
    else:
        assert pred.height == 40 and "skipped file" in r.stdout and "b.parquet" in r.stdout


@pytest.mark.parametrize("method,extra", [("lora", []), ("full", ["-p", "lr=5e-5", "-p", "class_weights=none"])])
def test_train_job_matrix(ws, trained, method, extra):
    dataset = next(s for s in trained[1]["steps"] if s["id"] == "prepare")["outputs"]["dataset_dir"]
    r = wb(ws, "job", "train", "-p", f"dataset_dir={dataset}", "-p", f"method={method}", "-p", "train_rows=64", "-p", "max_length=32", "-p", "epochs=1",
           *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"training     {method} on small" in r.stdout
    nb = Path(r.stdout.split("executed notebook:")[1].strip())
    assert (nb.parent / "training" / "model" / "model.safetensors").is_file()


def test_failed_step_skips_the_rest_and_names_the_cell(ws, trained):
    r = wb(ws, "run", "train", "-p", f"prepare.source={ws / 'tickets.csv'}", "-p", "dataset=small", "-p", "base_model=/no/such/model", *TINY)
    assert r.returncode == 1
    assert "step 'train' failed: job 'train' failed in cell [" in r.stderr and "Traceback" not in r.stderr
    assert "], line 6 `res = train(cfg, data," in r.stderr  # the line of the job notebook, not of a library
    assert "FileNotFoundError: base_model '/no/such/model' is not a local Hugging Face model folder" in r.stderr
    assert "later steps skipped: ['evaluate']" in r.stderr and "resume with: workbench run train --resume train-" in r.stderr
    run_id = r.stderr.split("--resume ")[1].split()[0]
    rec = json.loads((ws / "workspace" / "runs" / run_id / "run.json").read_text())
    assert [s["status"] for s in rec["steps"]] == ["succeeded", "failed", "skipped"] and rec["status"] == "failed"
    nb = Path(rec["steps"][1]["notebook"])
    assert str(nb) in r.stderr
    outputs = [o for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "error" and "/no/such/model" in o.get("evalue", "") for o in outputs)
    assert _client(ws).get_run(rec["mlflow"]["run_id"]).info.status == "FAILED"


def test_resume_continues_from_the_failed_step(ws, trained, tmp_path):
    later = tmp_path / "later.csv"
    r = wb(ws, "run", "score", "-p", f"source={later}", "--retries", "1")
    assert r.returncode == 1 and "no such file or folder" in r.stderr
    run_id = r.stderr.split("--resume ")[1].split()[0]
    rec = json.loads((ws / "workspace" / "runs" / run_id / "run.json").read_text())
    assert len(rec["steps"][0]["attempts"]) == 2 and Path(rec["steps"][0]["attempts"][0]["notebook"]).name == "score.attempt1.ipynb"
    pl.read_csv(ws / "new.csv", infer_schema=False).head(20).write_csv(later)  # the file arrives
    assert "keeps its parameters" in wb(ws, "run", "score", "--resume", run_id, "-p", "batch_size=8").stderr
    r = wb(ws, "run", "score", "--resume", run_id)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((ws / "workspace" / "runs" / run_id / "run.json").read_text())
    assert rec["status"] == "succeeded" and len(rec["steps"][0]["attempts"]) == 3 and rec["steps"][0]["outputs"]["rows_scored"] == 20
    assert _client(ws).get_run(rec["mlflow"]["run_id"]).info.status == "FINISHED"


def test_bad_parameters_are_rejected_before_any_kernel(ws, tmp_path):
    runs = ws / "workspace" / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    cases = [(["-p", "epochs=three"], "parameter 'epochs' of job 'train' expects int, got 'three'"),
             (["-p", "method=qlora"], "expects Literal['lora', 'full'], got 'qlora'"),
             (["-p", "nope=1"], "no step of pipeline 'train' has a parameter 'nope'"),
             (["-p", "dataset_dir=/x"], "is wired to '${prepare.dataset_dir}'; it cannot be set"),
             (["-p", "evaluate.epochs=2"], "job 'evaluate' has no parameter 'epochs'"),
             (["-p", "run_dir=/x"], "is set by the runner"),
             (["-p", "epochs=-1"], "parameter 'epochs' of job 'train' must be >= 1, got -1"),
             (["-p", "lr=-1"], "parameter 'lr' of job 'train' must be >= 0, got -1.0")]
    (tmp_path / "bad.yaml").write_text("epochs: 2.5\n")
    (tmp_path / "good.yaml").write_text("epochs: 2\nprepare.source: /no/such.csv\n")
    cases.append((["-f", str(tmp_path / "bad.yaml")], "expects int, got 2.5"))
    cases.append((["-f", str(tmp_path / "missing.yaml")], "no parameters file"))
    for args, message in cases:
        r = wb(ws, "run", "train", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    r = wb(ws, "job", "train", "-p", "epochs=-1")  # one job on its own: the same check, before its kernel
    assert r.returncode == 2, r.stderr
    assert "must be >= 1, got -1" in r.stderr, r.stderr
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # nothing started
    r = wb(ws, "run", "train", "-f", str(tmp_path / "good.yaml"), "-p", "epochs=3")  # the file parses; -p wins; prepare fails
    assert r.returncode == 1
    rec = json.loads((ws / "workspace" / "runs" / r.stderr.split("--resume ")[1].split()[0] / "run.json").read_text())
    assert rec["steps"][1]["params"]["epochs"] == 3 and rec["steps"][0]["params"]["source"] == "/no/such.csv"


def test_one_pipeline_never_runs_twice_at_once(ws):
    from filelock import FileLock
    locks = ws / "workspace" / "runs" / ".locks"; locks.mkdir(parents=True, exist_ok=True)
    (locks / "score.run").write_text("score-held-by-test")
    with FileLock(locks / "score.lock"):
        r = wb(ws, "run", "score")
    assert r.returncode == 3 and "pipeline 'score' is already running (run score-held-by-test)" in r.stderr


def test_a_job_on_its_own_takes_the_run_locks(ws):
    "`workbench job` takes the job's lock as `workbench run` does: it never runs beside a pipeline that runs it."
    from filelock import FileLock
    locks = ws / "workspace" / "runs" / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "job-score.run").write_text("score-pipeline-run")
    with FileLock(locks / "job-score.lock"):
        r = wb(ws, "job", "score")
    assert r.returncode == 3, r.stderr
    assert "job 'score' is running in another run (run score-pipeline-run)" in r.stderr, r.stderr


def test_promote_and_audit_from_the_command_line(ws, trained):
    "`workbench promote` re-runs the gate on an existing version; `--force` needs a reason; `workbench audit` sees alias moves outside the gate."
    client = _client(ws)
    name = "small"
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    r = wb(ws, "promote", name, champion, "--min-macro-f1", "1.0")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL quality" in r.stdout, r.stdout
    assert f"workbench promote {name} {champion} --force --reason" in r.stderr, r.stderr
    r = wb(ws, "promote", name, champion, "--min-macro-f1", "1.0", "--force")
    assert r.returncode == 2, r.stderr
    assert "force needs a reason" in r.stderr, r.stderr
    r = wb(ws, "promote", name, champion, "--min-macro-f1", "1.0", "--force", "--reason", "drill by the tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "forced" in r.stdout, r.stdout
    r = wb(ws, "audit", name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "drill by the tests" in r.stdout, r.stdout
    assert "as the gate set it" in r.stdout, r.stdout
    client.delete_registered_model_alias(name, "champion")  # a move with the MLflow client leaves no record of its own
    try:
        r = wb(ws, "audit", name)
        assert r.returncode == 1, r.stdout
        assert f"WARNING: champion was removed outside the gate (the gate last set it to v{champion})" in r.stdout, r.stdout
        import os, panel as pn
        old_home = os.environ.get("WORKBENCH_HOME")
        os.environ["WORKBENCH_HOME"] = str(ws / "workspace")
        try:
            from workbench.dashboard import Overview
            pn.state.clear_caches()
            alerts = [a.object for a in Overview(model=name).content().select(pn.pane.Alert)]
            assert any("Moved outside the gate" in a for a in alerts), alerts  # the dashboard says so too
        finally:
            if old_home is None: os.environ.pop("WORKBENCH_HOME")
            else: os.environ["WORKBENCH_HOME"] = old_home
            pn.state.clear_caches()
        r = wb(ws, "promote", name, "999")
        assert r.returncode == 2, r.stderr
        assert f"versions of '{name}':" in r.stderr and f"workbench promote {name}" in r.stderr, r.stderr
    finally: client.set_registered_model_alias(name, "champion", champion)
    assert wb(ws, "audit", name).returncode == 0


def test_a_refused_first_model_falls_back_and_says_so(ws, trained):
    "The gate refuses a first model (here on latency): the evaluate job falls back to the best baseline (`fallback_for`), gates it too, and its summary names each refusal."
    _, rec = trained
    model_dir = next(s for s in rec["steps"] if s["id"] == "train")["outputs"]["model_dir"]
    r = wb(ws, "job", "evaluate", "-p", f"model_dir={model_dir}", "-p", "dataset=small", "-p", "name=refused", "-p", "variants=int8",
           "-p", "max_p95_ms=0.0001", "-p", "latency_samples=3")
    client = _client(ws)
    try:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        line = next(l for l in r.stdout.splitlines() if l.startswith("fallback"))
        versions = {int(v.version): v.tags for v in client.search_model_versions("name = 'refused'")}
        for n, tags in versions.items():  # each registered version was refused on latency and is named in the line
            assert f"the gate refused v{n} ({tags['blend'] if tags['variant'] == 'baseline' else tags['variant']}" in line and tags["gate.decision"] == "refused", (line, tags)
        last = versions[max(versions)]
        assert last["variant"] == "baseline" and last["blend"] == "tfidf" and line.count("latency") == len(versions), line  # it ends on the baseline
        assert "champion" not in client.get_registered_model("refused").aliases  # nobody passed: no champion (a challenger)
    finally:  # the later tests share this workspace and name no model: leave it with one registered model, as it was
        if client.search_registered_models("name = 'refused'"):
            client.delete_registered_model("refused")


def test_schedules_from_the_command_line(ws, tmp_path):
    (tmp_path / "p.yaml").write_text("pipelines:\n  data:\n    steps: [prepare]\n"
                                     "schedules:\n  nightly:\n    pipeline: data\n    cron: '30 1 * * 1-5'\n    params: {dataset: sched}\n")
    env = {"WORKBENCH_PIPELINES": str(tmp_path / "p.yaml")}
    r = wb(ws, "schedule", "--list", env=env)
    assert r.returncode == 0 and "nightly" in r.stdout and "'30 1 * * 1-5'" in r.stdout
    r = wb(ws, "schedule", "--crontab", env=env)
    assert "\n30 1 * * 1-5 cd " in r.stdout and "workbench run data -p dataset=sched >> " in r.stdout
    (tmp_path / "p.yaml").write_text("pipelines:\n  data:\n    steps: [prepare]\nschedules:\n  bad:\n    pipeline: data\n    cron: '0 3 * * 9'\n")
    r = wb(ws, "schedule", "--list", env=env)
    assert r.returncode == 2 and "schedule 'bad': bad cron '0 3 * * 9'" in r.stderr


def test_a_scheduled_run_starts_a_real_pipeline_run(ws, tmp_path, monkeypatch):
    "What the scheduler does at a fire time: `python -m workbench.cli run ...` in its own process, logged."
    (tmp_path / "p.yaml").write_text("pipelines:\n  data:\n    steps: [prepare]\n")
    monkeypatch.setenv("WORKBENCH_PIPELINES", str(tmp_path / "p.yaml"))
    monkeypatch.setenv("WORKBENCH_HOME", str(ws / "workspace"))
    from workbench.jobs import Schedule, run_scheduled
    s = Schedule("nightly-data", "data", "0 2 * * *", {"source": str(ws / "tickets.csv"), "dataset": "scheduled"})
    assert run_scheduled(s) == 0
    log = (ws / "workspace" / "logs" / "nightly-data.log").read_text()
    assert "run data -p source=" in log and ": succeeded in" in log


def _wait(cond, timeout=120, every=0.5):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (v := cond()): return v
        time.sleep(every)
    raise AssertionError("timed out")


def test_sigterm_interrupts_a_run_cleanly(ws, trained):
    import os, signal, subprocess, sys
    exe = Path(sys.executable).parent / "workbench"
    env = {**os.environ, "WORKBENCH_HOME": str(ws / "workspace")}
    p = subprocess.Popen([str(exe), "run", "score", "-p", f"source={ws / 'new.csv'}"], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def started():
        runs = sorted((ws / "workspace" / "runs").glob("score-*/run.json"), key=lambda f: f.stat().st_mtime)
        rec = json.loads(runs[-1].read_text()) if runs else None
        return rec if rec and rec["steps"][0]["status"] == "running" and rec["status"] == "running" else None
    rec = _wait(started)
    import time; time.sleep(2)  # inside the kernel
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    rec = json.loads((ws / "workspace" / "runs" / rec["run_id"] / "run.json").read_text())
    assert rec["status"] == "interrupted" and rec["steps"][0]["status"] == "failed"
    assert _client(ws).get_run(rec["mlflow"]["run_id"]).info.status == "KILLED"
    attempt = rec["steps"][0]["attempts"][-1]
    assert attempt["status"] == "interrupted" and _client(ws).get_run(attempt["mlflow_run_id"]).info.status == "KILLED"
    r = wb(ws, "run", "score", "--resume", rec["run_id"])  # the lock is free again, and the run can finish
    assert r.returncode == 0, r.stderr[-2000:]
    assert "succeeded" in wb(ws, "jobs", "runs", "score").stdout


def test_the_scheduler_runs_a_pipeline_and_stops_cleanly(ws, tmp_path):
    import os, signal, subprocess, sys
    (tmp_path / "p.yaml").write_text("pipelines:\n  data:\n    steps: [prepare]\n"
                                     f"schedules:\n  every5:\n    pipeline: data\n    cron: '*/5 * * * * *'\n"
                                     f"    params: {{source: '{ws / 'tickets.csv'}', dataset: sched5}}\n")
    exe = Path(sys.executable).parent / "workbench"
    env = {**os.environ, "WORKBENCH_HOME": str(ws / "workspace"), "WORKBENCH_PIPELINES": str(tmp_path / "p.yaml")}
    p = subprocess.Popen([str(exe), "schedule"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = ws / "workspace" / "logs" / "every5.log"
    try: _wait(lambda: log.exists() and ": succeeded in" in log.read_text(), timeout=90)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "every5: data, next at" in out
    assert "schedule every5: starting run data -p source=" in err and "schedule every5: done after" in err


def test_monitor_pipeline_flags_the_drifted_batch_and_writes_the_model_card(ws, trained):
    r = wb(ws, "run", "monitor", "-p", f"source={ws / 'new.csv'}", "-p", "dataset=small", "-p", "explain_rows=8", "-p", "embedding_rows=100")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = run_record(ws, r.stdout)
    out = {s["id"]: s["outputs"] for s in rec["steps"]}
    m = out["monitor"]
    assert (m["status"], m["recommendation"]) == ("alert", "retrain") and {"channel", "product"} <= set(m["drifted"]), m["summary"]
    assert rec["steps"][1]["resolved"]["predictions"] == out["score"]["predictions"]  # wiring
    report = json.loads(Path(m["report"]).read_text())
    champion = str(_client(ws).get_model_version_by_alias("small", "champion").version)
    assert report["model"]["uri"] == f"models:/small/{champion}" and report["rows"]["current"] == out["score"]["rows_scored"]
    assert report["performance"]["current"]["n"] == out["score"]["rows_scored"]  # the batch came with labels
    run = _client(ws).get_run(m["mlflow_run_id"])
    assert run.data.tags["status"] == "alert" and run.data.metrics["features.psi.product"] >= 0.25 and run.data.metrics["status_code"] == 3
    md = Path(out["govern"]["model_card_md"]).read_text()
    for section in ("## Intended use", "## Training", "## Test metrics and quantization parity", "## Data", "## Slices", "## Personal data",
                    "## What the model looks at", "## Drift baseline", "## Latest monitoring", "## Limitations", "## Lineage"):
        assert section in md, section
    assert "Status **alert**" in md and "the model was trained on this version" in md
    assert _client(ws).get_model_version("small", champion).tags["model_card"] == out["govern"]["model_card"]
    assert out["retrain"]["retrained"] is False and "not enabled" in out["retrain"]["summary"]


def test_monitor_job_on_a_fresh_batch_raises_no_alarm(ws, trained, tmp_path):
    """A batch from the training distribution: no alert, and no drift in the data, the text or the predictions.
    The tiny model here is close to random (macro-F1 about 0.1 on 80 validation rows), so its performance
    comparison may land at `warn`; on the main job's model the same batch reports `ok` (see the README)."""
    from workbench.sample import generate_tickets
    generate_tickets(400, seed=11).write_csv(tmp_path / "fresh.csv")
    r = wb(ws, "job", "score", "-p", f"source={tmp_path / 'fresh.csv'}", "-p", f"out={tmp_path / 'fresh.parquet'}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = wb(ws, "job", "monitor", "-p", f"predictions={tmp_path / 'fresh.parquet'}", "-p", "dataset=small", "-p", "embedding_rows=100")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.split("report       ")[1].split()[0]).read_text())
    assert report["status"] in ("ok", "warn") and not [c for c in report["checks"] if c["status"] == "alert"], r.stdout[-3000:]
    assert not [c for c in report["checks"] if c["status"] != "ok" and "performance" not in c["check"]], report["checks"]


def test_monitor_job_on_bad_input(ws, trained, tmp_path):
    "An empty log window and a batch without labels, a column or the model's probabilities: a status and reasons, no crash."
    (tmp_path / "log").mkdir()
    r = wb(ws, "job", "monitor", "-p", f"inference_log={tmp_path / 'log'}", "-p", "dataset=small")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "status       insufficient (recommendation: none); 0 rows" in r.stdout
    pred = next(s for s in trained[1]["steps"] if s["id"] == "prepare")["outputs"]["dataset_dir"]
    scored = run_record(ws, wb(ws, "run", "score", "-p", f"source={ws / 'new.csv'}").stdout)["steps"][0]["outputs"]["predictions"]
    df = pl.read_parquet(scored)
    df.drop("label", "region", *[c for c in df.columns if c.startswith("p_")]).write_parquet(tmp_path / "odd.parquet")
    r = wb(ws, "job", "monitor", "-p", f"predictions={tmp_path / 'odd.parquet'}", "-p", f"dataset_dir={pred}", "-p", "embedding_rows=0")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.split("report       ")[1].split()[0]).read_text())
    why = {(c["check"], c["subject"]): (c["status"], c["detail"]) for c in report["checks"]}
    assert why[("feature drift", "region")] == ("error", "missing in the current batch")
    assert why[("estimated performance", "macro_f1")][0] == "error" and why[("realized performance", "macro_f1")][0] == "insufficient"
    assert report["status"] == "alert"  # the product and channel drift are still seen


def test_monitor_reads_the_inference_log(ws, trained, tmp_path):
    "Requests to a real `workbench serve` with metadata, then the monitor job on the log: features from the metadata, latency against the SLO."
    import requests
    from test_serve import KEY, Server
    rows = pl.read_csv(ws / "new.csv", infer_schema=False).head(60)
    srv = Server(ws / "workspace", "--model", "models:/small@champion", "--log-dir", tmp_path / "log", "--log-flush-s", "0.2")
    try:
        for r in rows.iter_rows(named=True):
            meta = {k: r[k] for k in ("channel", "product", "region", "customer_tier", "language")}
            a = requests.post(f"{srv.url}/predict", json={"text": f"{r['subject']}\n\n{r['body']}", "ids": [r["id"]], "metadata": meta}, headers={"X-API-Key": KEY}, timeout=30)
            assert a.status_code == 200, a.text
    finally:
        assert srv.stop() in (0, -15), srv.log()
    rows.select("id", "label").write_csv(tmp_path / "labels.csv")  # the true queues, known later
    r = wb(ws, "job", "monitor", "-p", f"inference_log={tmp_path / 'log'}", "-p", "since=1h", "-p", "dataset=small", "-p", "embedding_rows=50",
           "-p", f"labels={tmp_path / 'labels.csv'}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.split("report       ")[1].split()[0]).read_text())
    assert report["rows"]["current"] == 60 and report["source"].startswith("inference log")
    assert report["performance"]["current"]["n"] == 60 and "60 of 60 rows have a known label" in r.stdout  # joined on the client's ids
    assert {f["column"] for f in report["features"]} >= {"channel", "product"} and sum(w["requests"] for w in report["slo"]) == 60
    assert any(c["subject"] == "product" and c["status"] == "alert" for c in report["checks"])


def test_continuous_retraining_on_alert(ws, trained):
    "retrain=true: the alert retrains on the old and new data together, and the new version goes through the gate."
    before = {mv.version for mv in _client(ws).search_model_versions("name='tickets'")}
    r = wb(ws, "run", "monitor", "-p", f"source={ws / 'new.csv'}", "-p", "dataset=small", "-p", "retrain=true", "-p", "explain_rows=0",
           "-p", "embedding_rows=50", "-p", "train_rows=200", "-p", "max_length=32", "-p", "epochs=1", "-p", "method=lora",
           "-p", "latency_samples=5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = {s["id"]: s["outputs"] for s in run_record(ws, r.stdout)["steps"]}
    rt = out["retrain"]
    assert rt["retrained"] is True and rt["model_version"] not in before and rt["alias"] in ("champion", "challenger")
    first = next(s for s in trained[1]["steps"] if s["id"] == "prepare")["outputs"]["rows_curated"]
    assert rt["rows_curated"] > first  # the new batch was added to the training data
    train_run = json.loads((ws / "workspace" / "runs" / rt["train_run_id"] / "run.json").read_text())
    assert train_run["status"] == "succeeded" and train_run["steps"][0]["params"]["source"] == str(ws / "new.csv")
    decision = _client(ws).get_model_version("small", rt["model_version"]).tags["gate.decision"]
    assert decision in ("promoted", "refused") and (decision == "promoted") == rt["promoted"]
    # the same batch again (a daily run while the alert lasts): nothing new to learn from, no training
    again = wb(ws, "job", "retrain", "-p", "recommendation=retrain", "-p", "status=alert", "-p", "retrain=true", "-p", f"source={ws / 'new.csv'}", "-p", "dataset=small")
    assert again.returncode == 0 and "already in dataset 'small'" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]


def test_dashboard_pages_and_login(ws, trained, monkeypatch, tmp_path):
    "`workbench dashboard` on this module's workspace (trained, scored, monitored, retrained): every page has data; the login refuses a wrong password."
    import subprocess, sys
    import requests
    import panel as pn
    monkeypatch.setenv("WORKBENCH_HOME", str(ws / "workspace"))
    if not list((ws / "workspace" / "monitoring").glob("*/*.json")):  # run on its own (-k): make the records the earlier tests leave
        r = wb(ws, "run", "monitor", "-p", f"source={ws / 'new.csv'}", "-p", "dataset=small", "-p", "explain_rows=4", "-p", "embedding_rows=50")
        assert r.returncode == 0, r.stderr[-3000:]
    if not any("slo" in json.loads(f.read_text()) for f in (ws / "workspace" / "monitoring").glob("*/*.json")):  # latency windows come from monitoring the log
        test_monitor_reads_the_inference_log(ws, trained, tmp_path)
    r = wb(ws, "run", "report")  # the stakeholder report: value, cost, versions, trends as one HTML file
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report_run = run_record(ws, r.stdout)
    report = Path(report_run["steps"][1]["outputs"]["report_html"])
    page_html = report.read_text()
    assert "<script" not in page_html.lower() and "default-src 'none'" in page_html and "handled automatically" in page_html
    assert "from workbench.ledger import" not in page_html  # outputs only, no code
    import html as html_lib
    from workbench.dashboard import PAGES
    from workbench.interactive import ValueExplorer
    pn.state.clear_caches()
    champion_v = str(_client(ws).get_model_version_by_alias("small", "champion").version)
    from workbench.jobs import list_runs
    from workbench.ledger import headline, headline_rows
    top = headline("small", runs=[x for x in list_runs() if x["run_id"] != report_run["run_id"]])  # as the report saw the workspace
    for v in headline_rows(top)["value"]: assert html_lib.escape(v) in page_html, v  # the report's numbers are the dashboard's
    tags = _client(ws).get_model_version("small", champion_v).tags
    assert ValueExplorer.for_version("small", champion_v).last["automation_rate"] == float(tags["value.automation_rate"])
    for key, cls in PAGES.items():  # in-process: each page built from the real records, no empty state, no error
        content = cls().content()
        alerts = [a.object for a in content.select(pn.pane.Alert)] if hasattr(content, "select") else [content.object]
        assert not alerts, (key, alerts)
    from workbench.dashboard import explain_text
    champion = str(_client(ws).get_model_version_by_alias("small", "champion").version)
    shown = explain_text(f"models:/small/{champion}", "I was charged twice this month, mail me at jane@example.com")
    html = " ".join(p.object for p in shown.select(pn.pane.HTML))
    assert "<span" in html and "EMAIL" in html and "jane" not in html  # the served model's view: cleaned and redacted
    assert explain_text(f"models:/small/{champion}", " \u200b ").alert_type == "warning"  # nothing to classify
    from browser import DASHBOARD_KEYS, browser, console_errors, free_port, login, shot, visit, wait_up
    port = free_port()
    exe = Path(sys.executable).parent / "workbench"
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([str(exe), "dashboard", "--port", str(port)], env={**__import__("os").environ, "WORKBENCH_DASHBOARD_PASSWORD": "right-pw"},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(f"{url}/login", proc, "the dashboard", tmp_path / "dashboard.log")
        assert requests.get(f"{url}/overview", allow_redirects=False, timeout=10).status_code == 302  # to the login page
        bad = requests.Session()
        r = bad.post(f"{url}/login", data={"username": "me", "password": "wrong"}, allow_redirects=False, timeout=10)
        assert "error=" in r.headers["location"] and bad.get(f"{url}/overview", allow_redirects=False, timeout=10).status_code == 302
        good = requests.Session()
        assert good.post(f"{url}/login", data={"username": "me", "password": "right-pw"}, allow_redirects=False, timeout=10).headers["location"].endswith("/")
        assert good.get(f"{url}/nowhere", timeout=10).status_code == 404
        # a real browser: the login form, then every page with its key elements, no console error, nothing fetched from outside
        assert set(DASHBOARD_KEYS) == set(PAGES)
        with browser() as b:
            page = b.new_page(viewport={"width": 1400, "height": 1600})
            errors = console_errors(page)
            page.on("request", lambda r: r.url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")) or errors.append(f"outside request: {r.url}"))
            login(page, url, "me", "wrong")
            assert "/login" in page.url and "Invalid" in page.locator(".errormessage").inner_text()
            shot(page, "dashboard-login-refused")
            login(page, url, "me", "right-pw")
            for key in PAGES:
                try: seen = visit(page, url, key)
                finally: shot(page, f"dashboard-{key}")
                assert not seen["empty"] and not seen["failed"], (key, seen)
                assert not errors, (key, errors, (tmp_path / "dashboard.log").read_text()[-2000:])
            assert visit(page, url, "training")["counts"][".wb-chart canvas"] > 0
            # a figure's evidence: one click from the Overview to the executed notebook of the step that measured it
            visit(page, url, "overview")
            page.locator(".wb-evidence a", has_text="evaluate of run").first.click()
            page.wait_for_url("**/jobs?notebook=*", timeout=60_000)
            page.frame_locator("iframe.wb-notebook").locator(".jp-Cell", has_text="evaluate_candidates").first.wait_for(timeout=60_000)
            shot(page, "dashboard-evidence-link")
            # the report on its own: no script runs, nothing is fetched from anywhere
            fetched = []
            alone = b.new_page()
            alone.on("request", lambda r: r.url.startswith("file:") or fetched.append(r.url))
            alone.goto(report.as_uri())
            alone.locator("td", has_text="net value a month").first.wait_for(timeout=30_000)
            assert not fetched and alone.locator("script").count() == 0 and alone.locator("img").count() >= 1, fetched
            shot(alone, "report")
            assert not errors, errors
    finally:
        proc.terminate(); proc.wait(30); log.close()
