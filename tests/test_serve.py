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


def test_non_json_bodies_get_422_not_500(server):
    "NaN, Infinity, numbers beyond a float, unpaired surrogates, bytes that are not UTF-8: Python's json takes them, JSON does not."
    bodies = {"nan in texts": b'{"texts": [NaN]}', "nan as text": b'{"text": NaN}',
              "infinity in metadata": b'{"text": "hi", "metadata": {"a": Infinity}}',
              "-infinity in ids": b'{"text": "hi", "ids": [-Infinity]}', "nan in metadata": b'{"text": "hi", "metadata": {"a": NaN}}',
              "overflow": b'{"text": "hi", "metadata": {"a": 1e999}}', "surrogate in ids": rb'{"text": "hi", "ids": ["\udfff"]}',
              "surrogate in a metadata key": rb'{"text": "hi", "metadata": {"\ud800": "x"}}', "not utf-8": b'{"text": "\xff\xfe"}'}
    json_h = {**H, "Content-Type": "application/json"}
    answers = {k: requests.post(f"{server.url}/predict", data=b, headers=json_h, timeout=10) for k, b in bodies.items()}
    assert {k: a.status_code for k, a in answers.items()} == {k: 422 for k in bodies}, {k: a.text[:200] for k, a in answers.items()}
    for k, a in answers.items():
        d = a.json()["detail"][0]
        assert d["type"] == "json_invalid" and d["msg"] == "JSON decode error", (k, d)
    assert "NaN is not JSON" in answers["nan in texts"].json()["detail"][0]["ctx"]["error"]
    assert "-Infinity is not JSON" in answers["-infinity in ids"].json()["detail"][0]["ctx"]["error"]
    assert "1e999" in answers["overflow"].json()["detail"][0]["ctx"]["error"]
    assert "surrogate" in answers["surrogate in ids"].json()["detail"][0]["ctx"]["error"]
    assert "UTF-8" in answers["not utf-8"].json()["detail"][0]["ctx"]["error"]
    for ctype, raw in (("text/plain", b"\xff\xfe"), ("application/x-www-form-urlencoded", b"a=\xff")):  # input that is not text
        r = requests.post(f"{server.url}/predict", data=raw, headers={**H, "Content-Type": ctype}, timeout=10)
        assert r.status_code == 422 and "input" not in r.json()["detail"][0], (ctype, r.text[:200])
    assert post(server, {"text": "fine", "metadata": {"score": 1.5e300}}).status_code == 200  # large finite numbers are JSON


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


SENT = {"email": "jane.doe@example.com", "phone": "4155552671", "card": "4111.1111.1111.1111"}


def pii_in_log(log: pl.DataFrame) -> list[tuple[str, str, str]]:
    "(column, kind, value) of the PII `find_pii` sees in the log's string columns (digits inside a hex digest do not count)."
    import re
    from workbench.pii import find_pii
    found = []
    for col in [c for c, t in log.schema.items() if t == pl.String]:
        for cell in log[col].drop_nulls().to_list():
            hexes = [m.group() for m in re.finditer(r"[0-9a-f]{32,}", cell)]
            found += [(col, kind, v) for kind, v in find_pii(cell) if not any(v in h for h in hexes)]
    return found


@pytest.mark.parametrize("mode", ["redacted", "hash", "none"])
def test_client_fields_reach_the_log_only_as_log_text_says(registry, mode):
    "PII in metadata (keys, values, numbers), ids and X-Request-ID never reaches the inference log, in any log_text mode."
    import hashlib
    from workbench.pii import find_pii
    from workbench.serve import read_inference_log
    assert all(find_pii(v) for v in SENT.values())  # the rules do see what is sent
    log_dir = registry["ws"] / f"log-pii-{mode}"
    s = Server(registry["ws"], "--model", "models:/tickets/1", "--log-text", mode, "--log-dir", log_dir,
               "--log-flush-s", "0.2")
    sent = []
    try:
        for k, v in SENT.items():
            body = {"texts": [f"call me at {SENT['phone']}", "the app crashes on login"], "ids": [v, f"ticket-{k}"],
                    "metadata": {"channel": "email", "contact": v, v: "pii in a key", "callback": 4155552671, "tier": 2}}
            r = post(s, body, headers={**H, "X-Request-ID": f"req {v}"})
            assert r.status_code == 200, r.text
            assert [p["id"] for p in r.json()["predictions"]] == body["ids"]  # the client gets its own ids back, as sent
            assert r.headers["X-Request-ID"] == r.json()["request_id"] == f"req {v}"
            sent.append(body)
    finally: assert s.stop() == -signal.SIGTERM
    log = read_inference_log(log_dir).collect()
    assert log.height == 2 * len(SENT)
    assert pii_in_log(log) == []
    cells = "\n".join(str(x) for col in log.columns for x in log[col].to_list())
    for v in SENT.values(): assert "".join(c for c in v if c.isalnum()) not in "".join(c for c in cells if c.isalnum())
    sha = lambda x: hashlib.sha256(x.encode()).hexdigest()
    if mode == "redacted":
        assert set(log["id"]) == {"[EMAIL]", "[PHONE]", "[CARD]", "ticket-email", "ticket-phone", "ticket-card"}
        assert set(log["request_id"]) == {"req [EMAIL]", "req [PHONE]", "req [CARD]"}
        meta = json.loads(log.filter(pl.col("id") == "[EMAIL]")["metadata"][0])
        assert meta == {"channel": "email", "contact": "[EMAIL]", "[EMAIL]": "pii in a key", "callback": "[PHONE]", "tier": 2}
    if mode == "hash":  # whoever has the original can still join
        assert set(log["id"]) == {sha(x) for b in sent for x in b["ids"]}
        assert set(log["request_id"]) == {sha(f"req {v}") for v in SENT.values()}
        meta = json.loads(log.filter(pl.col("id") == sha(SENT["email"]))["metadata"][0])
        assert meta[sha("channel")] == sha("email") and meta[sha("tier")] == sha("2") and len(meta) == 5
    if mode == "none":
        assert log["id"].null_count() == log["metadata"].null_count() == log["text"].null_count() == log.height
        assert log["request_id"].n_unique() == len(SENT) and log["request_id"].str.contains(r"^[0-9a-f]{32}$").all()


@pytest.fixture(scope="module")
def guarded(registry):
    "A server with short deadlines for bodies (1 s) and headers (3 s), and a cap of 6 connections."
    s = Server(registry["ws"], "--model", "models:/tickets/1", "--no-log", "--body-timeout-s", "1", "--header-timeout-s", "3",
               "--max-connections", "6")
    yield s
    s.stop()


def read_all(sock: socket.socket, limit_s: float) -> tuple[bytes, float, bool]:
    "Everything the server sends until it closes the connection (or `limit_s` passes): (bytes, seconds, closed)."
    sock.settimeout(limit_s)
    t0, got = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536): got += chunk
    except socket.timeout: return got, time.monotonic() - t0, False
    except ConnectionResetError: pass
    return got, time.monotonic() - t0, True


def test_a_slow_body_gets_408_and_its_connection_closed(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000000\r\n\r\n".encode() + b'{"text": "')  # 10 of 1,000,000 bytes
        got, seconds, closed = read_all(sock, 30)
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    assert b"body_timeout_s" in got and closed and seconds < 1 + 10
    assert post(guarded, {"text": "still serving"}).status_code == 200


def test_slow_headers_get_408_and_their_connection_closed(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:  # slowloris: a header byte every 0.2 s, never done
        t0, got, closed = time.monotonic(), b"", False
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        while time.monotonic() - t0 < 20 and not closed:
            chunk, _, closed = read_all(sock, 0.2)
            got += chunk
            if closed or got: continue
            try: sock.sendall(b"X")
            except OSError: break
    assert closed and time.monotonic() - t0 < 3 + 10, "the connection was held"
    assert got.startswith(b"HTTP/1.1 408 ") and b"header_timeout_s" in got, got[:200]
    with requests.Session() as session:  # a well-behaved client keeps its connection across requests
        codes = [session.post(f"{guarded.url}/predict", json={"text": "hi"}, headers=H, timeout=10).status_code for _ in range(3)]
    assert codes == [200] * 3


def test_connections_beyond_the_cap_get_503_at_once(guarded):
    idle = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(6)]  # the cap: 6 connections
    try:
        time.sleep(0.2)
        r = requests.post(f"{guarded.url}/predict", json={"text": "hi"}, headers=H, timeout=10)
        assert r.status_code == 503 and r.headers.get("connection") == "close"
    finally:
        for s in idle: s.close()
    t0 = time.monotonic()
    while post(guarded, {"text": "room again"}).status_code != 200: assert time.monotonic() - t0 < 10; time.sleep(0.1)
