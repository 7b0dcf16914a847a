"""Serving throughput and latency: `workbench serve` (micro-batching on and off) against `mlflow models serve`.

    python benchmarks/serving.py                                  # the champion of the main job
    python benchmarks/serving.py --model models:/tickets/3 --clients 32 --requests 3000 --max-seconds 60

One load generator (aiohttp, in this process) on loopback: `--clients` concurrent clients, each sending one
ticket per request and waiting for the answer before the next, until `--requests` requests or `--max-seconds`.
The servers run one after the other on the same registered model version (the alias is pinned first), each
after a warm-up: (a) `workbench serve` with micro-batching, (b) the same with `--no-batching`, (c) `mlflow
models serve --env-manager local` with its default single worker, and (d) the same with one worker per CPU.
Per server: throughput (answered requests per second), p50 / p95 / p99 latency of the answered requests, and
the errors by HTTP status, and the CPU time the server (with its worker processes) spent per answered request.
The client shares the machine's cores with the server, the same for every row; its own CPU per request is
printed too.
"""
import argparse, asyncio, os, random, signal, socket, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


async def wait_ready(url: str, proc, timeout: float = 180):
    import aiohttp
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None: raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with s.get(url) as r:
                    if r.status == 200: return time.monotonic() - t0
            except aiohttp.ClientError: pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"{url} not ready in {timeout} s")


async def load(url: str, body, texts: list[str], clients: int, n: int, max_s: float, headers: dict) -> dict:
    "Closed-loop load: `clients` workers share `n` requests; stop at `max_s`. Latencies (s) of answered requests, statuses."
    import aiohttp
    lat, codes, sent = [], {}, 0
    deadline = time.monotonic() + max_s
    async def client(session, seed):
        nonlocal sent
        rng = random.Random(seed)
        while sent < n and time.monotonic() < deadline:
            sent += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=body(rng.choice(texts)), headers=headers) as r:
                    await r.read(); code = r.status
            except aiohttp.ClientError as e: code = type(e).__name__
            codes[code] = codes.get(code, 0) + 1
            if code == 200: lat.append(time.perf_counter() - t0)
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "lat": lat, "codes": codes}


def pct(xs, q): return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")


async def run_one(name, cmd, ready_path, predict_path, body, texts, args, env):
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(Path(args.logs) / f"{name.split()[0]}-{port}.log", "w"),
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        startup = await wait_ready(base + ready_path, proc)
        h = {"X-API-Key": env.get("WORKBENCH_API_KEY", "")}
        await load(base + predict_path, body, texts, min(8, args.clients), 100, 30, h)  # warm-up
        server_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
        r = await load(base + predict_path, body, texts, args.clients, args.requests, args.max_seconds, h)
        server_cpu, client_cpu = cpu_seconds(proc.pid) - server_cpu, time.process_time() - client_cpu
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # mlflow starts uvicorn workers as children
            proc.wait(60)
        except ProcessLookupError: pass  # it had already exited
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)
    ok = r["codes"].get(200, 0)
    return {"server": name, "startup_s": startup, "requests": sum(r["codes"].values()), "ok": ok, "rps": ok / r["wall"],
            "p50": pct(r["lat"], .5), "p95": pct(r["lat"], .95), "p99": pct(r["lat"], .99),
            "errors": {k: v for k, v in r["codes"].items() if k != 200},
            "server_ms": server_cpu / max(ok, 1) * 1e3, "client_ms": client_cpu / max(sum(r["codes"].values()), 1) * 1e3}


def model_alone(uri: str, texts: list[str], n: int = 640) -> dict[int, float]:
    "Texts per second of the served model's own batch function (cleaning, tokenizing, forward), without a server."
    from workbench.serve import ModelHolder, ServeConfig
    h = ModelHolder(ServeConfig(model=uri)).load()
    sample = random.Random(0).sample(texts, n)
    h.run(sample[:32])  # warm-up
    out = {}
    for bs in (1, 32):
        m = n // 4 if bs == 1 else n
        t0 = time.perf_counter()
        for i in range(0, m, bs): h.run(sample[i:i + bs])
        out[bs] = m / (time.perf_counter() - t0)
    return out


def cpu_seconds(pid: int) -> float:
    "CPU time (user + system) of a process and its children (mlflow's uvicorn workers)."
    import psutil
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models:/tickets@champion")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--max-seconds", type=float, default=45)
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: batching,logged,nobatching,mlflow,mlflow2")
    ap.add_argument("--serve-args", default="", help="extra options for every workbench serve row, e.g. '--threads 1 --max-batch-size 64'")
    ap.add_argument("--logs", default=None, help="folder for the servers' stderr (default <workspace>/bench/serving)")
    args = ap.parse_args()
    from workbench.config import set_offline, tracking_uri, workspace
    from workbench.registry import resolve_model
    set_offline()
    info = resolve_model(args.model)
    uri = info["uri"]
    args.logs = args.logs or str(workspace("bench", "serving"))
    import polars as pl
    texts = pl.read_csv(ROOT / "sample_data" / "tickets.csv", infer_schema=False).select(t=pl.col("subject") + "\n\n" + pl.col("body"))["t"].drop_nulls().to_list()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "WORKBENCH_API_KEY": "bench-key",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow starts `uvicorn` from PATH
    wb = [str(BIN / "workbench"), "serve", "--model", uri, "--port", "{port}", *args.serve_args.split(), "--no-log"]  # the log is measured separately below
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local", "--host", "127.0.0.1", "-p", "{port}"]
    ours = lambda t: {"text": t}
    theirs = lambda t: {"dataframe_split": {"columns": ["text"], "data": [[t]]}}
    rows_spec = [("batching", "workbench serve (micro-batching)", wb, "/ready", "/predict", ours, env),
                 ("logged", "workbench serve (micro-batching, logged)", wb[:-1] + ["--log-dir", str(workspace("bench", "serving", "log"))], "/ready", "/predict", ours, env),
                 ("nobatching", "workbench serve --no-batching", wb + ["--no-batching"], "/ready", "/predict", ours, env),
                 ("mlflow", "mlflow models serve (1 worker, default)", mlflow, "/ping", "/invocations", theirs, env),
                 ("mlflow2", f"mlflow models serve ({os.cpu_count()} workers)", mlflow + ["--workers", str(os.cpu_count())], "/ping", "/invocations", theirs, env)]
    skip = set(filter(None, args.skip.split(",")))
    print(f"model {uri} ({info['tags'].get('variant', '?')}), {args.clients} clients, up to {args.requests} requests or {args.max_seconds:.0f} s per server, "
          f"one ticket per request, {os.cpu_count()} CPUs", flush=True)
    rows = []
    for key, name, cmd, ready, pred, body, e in rows_spec:
        if key in skip: continue
        rows.append(asyncio.run(run_one(name, cmd, ready, pred, body, texts, args, e)))
        r = rows[-1]
        print(f"  {name:<44} {r['rps']:7.1f} req/s  p50 {r['p50']:7.1f} ms  p95 {r['p95']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
              f"ok {r['ok']}/{r['requests']}  errors {r['errors'] or 0}  server {r['server_ms']:.1f} CPU-ms/req, client {r['client_ms']:.1f}  (ready in {r['startup_s']:.1f} s)", flush=True)
    ceiling = model_alone(uri, texts)
    print(f"  the model alone, in this process, no HTTP: {ceiling[1]:.0f} texts/s one at a time, {ceiling[32]:.0f} texts/s in batches of 32 "
          f"(= {2e3 * os.cpu_count() / 2 / ceiling[32]:.1f} CPU-ms per text at batch 32 on {os.cpu_count()} CPUs)", flush=True)
    base = next((r for r in rows if r["server"].startswith("mlflow models serve (") and "default" in r["server"]), None)
    print("\n| server | req/s | p50 ms | p95 ms | p99 ms | ok / sent | errors | server CPU-ms / request | vs mlflow (default) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        ratio = f"{r['rps'] / base['rps']:.1f}x" if base else "n/a"
        print(f"| {r['server']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['ok']} / {r['requests']} | {r['errors'] or '-'} | {r['server_ms']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
