"""Drift report on 1M rows x 20 columns: workbench.monitor.drift_report against Evidently's DataDriftPreset.

    python benchmarks/monitor.py                  # 1M rows per side; installs Evidently into workspace/bench on first use
    python benchmarks/monitor.py --rows 200000    # smaller
    python benchmarks/monitor.py --skip-evidently

Both tools read the same two Parquet files (a reference and a current batch: 10 numeric and 10 categorical
columns, 4 of them drifted) in their own process, so peak RSS is each tool's own. Evidently is installed for
this benchmark only, into `workspace/bench/evidently-<version>` with pandas < 3 (Evidently 0.7 does not import
with pandas 3); it never enters the project's environment. Timings: reading the files, and the report itself.
workbench runs twice: with its default of a thread per core, and on one thread.
Values are compared where the method is the same: the Wasserstein distance divided by the reference's standard
deviation (Evidently's default for numeric columns above 1000 rows) and the Jensen-Shannon distance (its default
for categorical ones; Evidently uses the natural log, workbench base 2, so Evidently's value is divided by
sqrt(ln 2) before comparing).
"""
from __future__ import annotations
import argparse, json, math, os, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY = "0.7.23"
DRIFTED = {"num_0": "mean +0.3 sd", "num_5": "scale x1.5", "cat_0": "mix changed", "cat_7": "new category 10%"}


def make_data(rows: int, folder: Path) -> tuple[Path, Path]:
    import numpy as np, polars as pl
    ref_p, cur_p = folder / f"ref-{rows}.parquet", folder / f"cur-{rows}.parquet"
    if ref_p.exists() and cur_p.exists(): return ref_p, cur_p
    folder.mkdir(parents=True, exist_ok=True)
    def frame(seed: int, drift: bool) -> pl.DataFrame:
        g = np.random.default_rng(seed)
        cols = {}
        for i in range(10):
            kind = i % 3
            x = (g.normal(50, 10, rows) if kind == 0 else g.lognormal(3, 0.5, rows) if kind == 1 else g.poisson(20, rows).astype(float))
            if drift and i == 0: x = x + 3.0
            if drift and i == 5: x = x.mean() + (x - x.mean()) * 1.5
            cols[f"num_{i}"] = x
        for i in range(10):
            k = 3 + 3 * i  # 3 to 30 categories
            p = np.linspace(1, 3, k); p = p / p.sum()
            if drift and i == 0: p = p[::-1]
            v = g.choice(k, rows, p=p).astype(str)
            if drift and i == 7: v = np.where(g.random(rows) < 0.1, "unseen", v)
            cols[f"cat_{i}"] = np.char.add(f"c{i}_", v)
        return pl.DataFrame(cols)
    frame(1, False).write_parquet(ref_p); frame(2, True).write_parquet(cur_p)
    return ref_p, cur_p


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_workbench(ref_p: str, cur_p: str, workers: int | None = None) -> dict:
    import polars as pl
    from workbench.monitor import drift_report
    t0 = time.perf_counter()
    ref, cur = pl.read_parquet(ref_p), pl.read_parquet(cur_p)
    t1 = time.perf_counter()
    rep = drift_report(ref, cur, workers=workers)
    t2 = time.perf_counter()
    values = {r["column"]: {"wasserstein": r["wasserstein"], "js": r["js"], "psi": r["psi"], "drift": r["status"] == "alert"} for r in rep.iter_rows(named=True)}
    return {"load_s": t1 - t0, "report_s": t2 - t1, "peak_rss_mb": peak_rss_mb(), "values": values}


def worker_evidently(ref_p: str, cur_p: str) -> dict:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset
    t0 = time.perf_counter()
    ref, cur = pd.read_parquet(ref_p), pd.read_parquet(cur_p)
    t1 = time.perf_counter()
    snap = Report([DataDriftPreset()]).run(cur, ref)
    d = snap.dict()
    t2 = time.perf_counter()
    values = {}
    for m in d["metrics"]:
        c = m["config"]
        if c.get("type", "").endswith("ValueDrift"):
            values[c["column"]] = {"method": c["method"], "value": m["value"], "drift": bool(m["value"] >= c["threshold"])}
    return {"load_s": t1 - t0, "report_s": t2 - t1, "peak_rss_mb": peak_rss_mb(), "values": values}


def ensure_evidently() -> Path:
    target = ROOT / "workspace" / "bench" / f"evidently-{EVIDENTLY}"
    if (target / "evidently").is_dir(): return target
    cons = (ROOT / "constraints.txt").read_text().splitlines()
    tmp = target.with_name(target.name + ".constraints.txt")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(l for l in cons if not l.lower().startswith("pandas==")) + "\n")
    print(f"installing evidently=={EVIDENTLY} into {target} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "-c", str(tmp),
                    f"evidently=={EVIDENTLY}", "pandas<3"], check=True)
    return target


def run_worker(tool: str, ref_p: Path, cur_p: Path, env_path: Path | None = None) -> dict:
    env = dict(os.environ)
    if env_path: env["PYTHONPATH"] = str(env_path)
    r = subprocess.run([sys.executable, __file__, "--worker", tool, str(ref_p), str(cur_p)], env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{tool} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--skip-evidently", action="store_true")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        tool, ref_p, cur_p = a.worker
        run = {"workbench": worker_workbench, "workbench-1-thread": lambda r, c: worker_workbench(r, c, 1), "evidently": worker_evidently}[tool]
        print(json.dumps(run(ref_p, cur_p)))
        return
    ref_p, cur_p = make_data(a.rows, ROOT / "workspace" / "bench" / "monitor")
    print(f"{a.rows:,} rows per side x 20 columns (10 numeric, 10 categorical); drifted: {', '.join(f'{k} ({v})' for k, v in DRIFTED.items())}")
    res = {"workbench": run_worker("workbench", ref_p, cur_p), "workbench-1-thread": run_worker("workbench-1-thread", ref_p, cur_p)}
    if not a.skip_evidently: res["evidently"] = run_worker("evidently", ref_p, cur_p, ensure_evidently())
    print(f"\n| tool | read s | report s | total s | peak RSS MB | columns flagged |\n|---|---:|---:|---:|---:|---|")
    for tool, r in res.items():
        flagged = sorted(c for c, v in r["values"].items() if v["drift"])
        print(f"| {tool} | {r['load_s']:.2f} | {r['report_s']:.2f} | {r['load_s'] + r['report_s']:.2f} | {r['peak_rss_mb']:.0f} | {', '.join(flagged)} |")
    if "evidently" in res:
        w, e = res["workbench"], res["evidently"]
        w1 = res["workbench-1-thread"]
        print(f"\nreport time: workbench {e['report_s'] / w['report_s']:.1f}x faster ({e['report_s'] / w1['report_s']:.1f}x on one thread);"
              f" read + report: {(e['load_s'] + e['report_s']) / (w['load_s'] + w['report_s']):.1f}x; peak RSS {w['peak_rss_mb'] / e['peak_rss_mb']:.2f}x of Evidently's")
        print("\n| column | method | workbench | Evidently | abs diff |\n|---|---|---:|---:|---:|")
        worst = 0.0
        for col in sorted(e["values"], key=lambda c: (c[:3], int(c.split("_")[1]))):
            ev, wv = e["values"][col], w["values"][col]
            if ev["method"].startswith("Wasserstein"): mine, theirs, name = wv["wasserstein"], ev["value"], "Wasserstein / sd"
            elif ev["method"].startswith("Jensen"): mine, theirs, name = wv["js"], ev["value"] / math.sqrt(math.log(2)), "Jensen-Shannon (base 2)"
            else: print(f"| {col} | {ev['method']} (not computed by workbench) | | {ev['value']:.4g} | |"); continue
            worst = max(worst, abs(mine - theirs))
            print(f"| {col} | {name} | {mine:.5f} | {theirs:.5f} | {abs(mine - theirs):.1e} |")
        print(f"\nlargest difference where the method is the same: {worst:.1e}")


if __name__ == "__main__":
    main()
