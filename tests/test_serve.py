"`workbench serve` as a real uvicorn process on 127.0.0.1: answers under concurrency, auth, bad input, overload, reload, graceful shutdown, and the inference log."
import json, os, signal, socket, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import requests

KEY = "test-key-123"
H = {"X-API-Key": KEY}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "A `workbench serve` process; `url` once it answers /ready."
    def __init__(self, ws: Path, *args, env=None, wait=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = ws.parent / f"serve-{self.port}.log"
        exe = Path(sys.executable).parent / "workbench"
        self.proc = subprocess.Popen([str(exe), "serve", "--port", str(self.port), *map(str, args)],
                                     env={**os.environ, "WORKBENCH_HOME": str(ws), "WORKBENCH_API_KEY": KEY, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=open(self.err, "w"))
        if wait: self.wait_ready()

    def wait_ready(self, timeout=90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise AssertionError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(f"{self.url}/ready", timeout=1).status_code == 200: return
            except requests.ConnectionError: pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout} s: {self.log()}")

    def log(self): return self.err.read_text()[-3000:]

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    "A workspace with a tiny model registered as tickets@champion (fp32, version 1); also its int8 variant's folder."
    from workbench.config import set_offline
    from workbench.infer import QuantConfig, build_variant, parity_report, Predictor
    from workbench.testing import tiny_model, tiny_tickets
    from workbench.train import TrainConfig, fit
    set_offline()
    root = tmp_path_factory.mktemp("serve")
    ws = root / "workspace"
    old = os.environ.get("WORKBENCH_HOME")
    os.environ["WORKBENCH_HOME"] = str(ws)
    try:
        from workbench.registry import register
        tk = tiny_tickets()
        tr, va, te = (tk.filter(pl.col("split") == s) for s in ("train", "validation", "test"))
        res = fit(TrainConfig(base_model=str(tiny_model(root / "tiny")), epochs=2, lr=5e-3, batch_size=16, max_length=64,
                              target_modules=("query", "value"), patience=0), tr, va, root / "run", progress=False)
        dirs = {v: build_variant(res["model"], root / v, QuantConfig(v, max_length=64)) for v in ("fp32", "int8")}
        report = parity_report({v: Predictor(d) for v, d in dirs.items()}, te["text"].to_list(), te["label"].to_list(), latency_samples=3, progress=False)
        rows = {r["variant"]: r for r in report.iter_rows(named=True)}
        register(dirs["fp32"], "tickets", rows["fp32"], alias="champion")
        yield {"ws": ws, "dirs": dirs, "rows": rows, "texts": tk["text"].to_list()}
    finally:
        if old is None: os.environ.pop("WORKBENCH_HOME", None)
        else: os.environ["WORKBENCH_HOME"] = old


@pytest.fixture(scope="module")
def server(registry):
    "The main server: champion alias polled every 0.5 s, log flushed every 0.2 s. Records every text it answered."
    s = Server(registry["ws"], "--reload-poll-s", "0.5", "--log-flush-s", "0.2", "--max-wait-ms", "5", "--max-body-bytes", "200000")
    s.answered = []  # (request_id, id) of every text answered 200
    yield s
    s.stop()


def post(s, body, headers=H, **kw):
    r = requests.post(f"{s.url}/predict", json=body, headers=headers, timeout=60, **kw)
    if r.status_code == 200 and hasattr(s, "answered"):
        s.answered += [(r.json()["request_id"], p["id"]) for p in r.json()["predictions"]]
    return r


def metric(s, name, **labels):
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(f"{s.url}/metrics", timeout=10).text
    return sum(x.value for f in text_string_to_metric_families(text) for x in f.samples
               if x.name == name and all(x.labels.get(k) == v for k, v in labels.items()))


def test_answers_match_offline_predictions_under_concurrency(registry, server):
    from workbench.infer import Predictor
    from workbench.serve import prepare_texts
    texts = registry["texts"][:120]
    requests_ = [{"texts": texts[i:i + k], "ids": [f"c{j}" for j in range(i, i + k)]} if k > 1 else {"text": texts[i], "ids": [f"c{i}"]}
                 for i, k in zip(range(0, 120, 3), [1, 2, 3] * 14)]
    with ThreadPoolExecutor(16) as pool: answers = list(pool.map(lambda b: post(server, b), requests_))
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers if a.status_code != 200][:3]
    ref = Predictor(registry["dirs"]["fp32"])
    for body, a in zip(requests_, answers):
        sent = body["texts"] if "texts" in body else [body["text"]]
        got = a.json()["predictions"]
        assert [p["id"] for p in got] == body["ids"]  # each answer is its own request's, in order
        probs, _ = ref.predict_proba(prepare_texts(sent))
        assert np.allclose([[p["probs"][l] for l in ref.labels] for p in got], probs, atol=1e-4)
        assert [p["label"] for p in got] == [ref.labels[i] for i in probs.argmax(1)]
        assert a.json()["model"] == {"name": "tickets", "version": "1", "variant": "fp32"}
        assert a.headers["X-Request-ID"] == a.json()["request_id"]
    # concurrent requests were batched together: on average more than one text per forward batch
    assert metric(server, "workbench_batch_size_sum") > metric(server, "workbench_batch_size_count") > 0


def test_auth(server):
    assert post(server, {"text": "hello"}, headers={}).status_code == 401
    r = post(server, {"text": "hello"}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert post(server, {"text": "hello"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert requests.get(f"{server.url}/model", timeout=10).status_code == 401
    m = requests.get(f"{server.url}/model", headers=H, timeout=10).json()
    assert (m["name"], m["version"], m["alias"], m["variant"]) == ("tickets", "1", "champion", "fp32")
    for open_ in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
        assert requests.get(f"{server.url}{open_}", timeout=10).status_code == 200, open_
    assert "/predict" in requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert metric(server, "workbench_errors_total", kind="auth") == 3


def test_bad_input_gets_clear_errors(server):
    def detail(r): return json.dumps(r.json()["detail"])
    r = requests.post(f"{server.url}/predict", data=b'{"text": "unterminated', headers={**H, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 422 and "JSON decode error" in detail(r)
    r = post(server, {"texts": ["fine", 42]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "texts", 1]
    r = post(server, {"texts": ["fine", "  \u200b\t "]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "texts", 1] and "empty text" in detail(r)
    r = post(server, {"text": "a", "texts": ["b"]})
    assert r.status_code == 422 and "exactly one of 'text'" in detail(r)
    r = post(server, {"text": "x" * 20_001})
    assert r.status_code == 422 and "at most 20000 (max_chars)" in detail(r)
    r = post(server, {"texts": ["x"] * 65})
    assert r.status_code == 413 and "at most 64 (max_texts)" in detail(r)
    r = post(server, {"text": "a", "metadata": {"channel": ["nested"]}})
    assert r.status_code == 422 and "metadata" in detail(r)
    assert post(server, {"texts": []}).status_code == 422
    r = post(server, {"texts": ["fine", "\x00\x01\x02"]})  # nothing left after cleaning: found in the batch, still a 422
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "texts", 1] and "empty text" in detail(r)
    big = json.dumps({"text": "y" * 250_000}).encode()  # over this server's --max-body-bytes 200000
    r = requests.post(f"{server.url}/predict", data=big, headers={**H, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413  # refused on its Content-Length (FastAPI's own limit answers in plain text)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: chunked, counted as it arrives
    r = requests.post(f"{server.url}/predict", data=chunks, headers={**H, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "max_body_bytes" in detail(r)
    assert post(server, {"text": "still serving after all that"}).status_code == 200


def test_reload_when_the_alias_moves_drops_no_request(registry, server):
    from workbench.registry import register
    versions, codes, stop = [], [], threading.Event()
    def hammer():
        while not stop.is_set():
            r = post(server, {"texts": ["I was charged twice", "the app crashes on login"]})
            codes.append(r.status_code)
            if r.status_code == 200: versions.append((r.json()["model"]["version"], r.json()["model"]["variant"]))
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads: t.start()
    try:
        time.sleep(1)
        mv = register(registry["dirs"]["int8"], "tickets", registry["rows"]["int8"], alias="champion")  # the alias moves to version 2
        assert str(mv.version) == "2"
        t0 = time.time()
        while requests.get(f"{server.url}/model", headers=H, timeout=10).json()["version"] != "2":
            assert time.time() - t0 < 30, "the server did not pick up the new champion"
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads: t.join()
    assert set(codes) == {200}, codes
    assert versions[0] == ("1", "fp32") and versions[-1] == ("2", "int8") and set(versions) == {("1", "fp32"), ("2", "int8")}
    assert metric(server, "workbench_model_info", version="2", variant="int8") == 1
    assert metric(server, "workbench_reloads_total", result="reloaded") == 1


def test_log_is_readable_by_monitoring(registry, server):
    from workbench.serve import read_inference_log
    r = post(server, {"texts": ["Refund to jane.doe@example.com please", "card 4111 1111 1111 1111 declined"], "ids": ["e1", "e2"],
                      "metadata": {"channel": "email", "tier": 2}})
    assert r.status_code == 200
    assert server.stop() == -signal.SIGTERM  # uvicorn shuts down gracefully, then re-raises the signal it caught
    log_dir = registry["ws"] / "inference_log"
    assert not list(log_dir.glob(".active-*")), "the open log file was not closed as Parquet at shutdown"
    log = read_inference_log(log_dir).collect()
    assert sorted(zip(log["request_id"], log["id"]), key=str) == sorted(server.answered, key=str)  # every answered text, once
    row = log.filter(pl.col("id") == "e1").row(0, named=True)
    assert row["text"] == "Refund to [EMAIL] please" and json.loads(row["metadata"]) == {"channel": "email", "tier": 2}
    assert "[CARD]" in log.filter(pl.col("id") == "e2")["text"][0]
    assert {"1"} <= set(log["model_version"]) <= {"1", "2"} and log["latency_ms"].min() > 0 and log["batch_size"].min() >= 1
    p = log.select(pl.sum_horizontal(pl.col("^p_.*$").fill_null(0))).to_series()
    assert np.allclose(p.to_numpy(), 1.0, atol=1e-4)


def test_overload_answers_429_and_the_rest_correctly(registry):
    long = " ".join(registry["texts"][:8])
    # a batch never fills (16 > 8 admitted at most), so each admitted request holds the queue for max_wait_ms
    s = Server(registry["ws"], "--model", "models:/tickets/1", "--max-queue", "8", "--max-texts", "8", "--max-batch-size", "16",
               "--max-wait-ms", "200", "--log-text", "hash", "--log-dir", registry["ws"] / "log-overload", "--log-flush-s", "0.2")
    try:
        bodies = [{"texts": [f"{i} {long}"] * 8, "ids": [f"o{i}-{j}" for j in range(8)]} for i in range(32)]
        with ThreadPoolExecutor(16) as pool: answers = list(pool.map(lambda b: post(s, b), bodies))
        codes = [a.status_code for a in answers]
        assert set(codes) == {200, 429} and codes.count(429) >= 1, codes
        for b, a in zip(bodies, answers):
            if a.status_code == 429: assert a.headers["Retry-After"] == "1" and "max_queue=8" in a.json()["detail"]
            else: assert [p["id"] for p in a.json()["predictions"]] == b["ids"]
        assert metric(s, "workbench_errors_total", kind="overload") == codes.count(429)
        time.sleep(0.5)  # the gauges are refreshed every log_flush_s
        assert metric(s, "workbench_inflight_texts") == 0 and metric(s, "workbench_queue_depth") == 0
        assert post(s, {"text": "calm again"}).status_code == 200
    finally: assert s.stop() == -signal.SIGTERM
    from workbench.serve import read_inference_log
    log = read_inference_log(registry["ws"] / "log-overload").collect()
    assert log.height == 8 * codes.count(200) + 1
    assert log["text"].null_count() == log.height and log["text_sha256"].str.len_chars().to_list() == [64] * log.height


def test_graceful_shutdown_finishes_requests_in_flight(registry):
    s = Server(registry["ws"], "--max-wait-ms", "3000", "--no-log", "--log-flush-s", "0.05")  # a lone text waits 3 s for company
    got = {}
    t = threading.Thread(target=lambda: got.update(r=post(s, {"text": "the app crashes on login"})))
    t.start()
    t0 = time.time()
    while metric(s, "workbench_inflight_texts") < 1:  # the request is in the server's queue
        assert time.time() - t0 < 10; time.sleep(0.02)
    s.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert got["r"].status_code == 200 and got["r"].json()["predictions"][0]["label"]
    assert s.proc.wait(30) == -signal.SIGTERM


def test_bad_start_up_stops_with_a_clear_error(registry, tmp_path):
    r = subprocess.run([str(Path(sys.executable).parent / "workbench"), "serve", "--model", "models:/nope@champion"],
                       env={**os.environ, "WORKBENCH_HOME": str(registry["ws"])}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no model 'models:/nope@champion'" in r.stderr, r.stderr
    r = subprocess.run([str(Path(sys.executable).parent / "workbench"), "serve", "--api-key-file", str(tmp_path / "missing")],
                       env={**os.environ, "WORKBENCH_HOME": str(registry["ws"])}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "api_key_file" in r.stderr and "does not exist" in r.stderr, r.stderr
