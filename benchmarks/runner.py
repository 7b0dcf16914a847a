"""The pipeline runner's own cost per step (kernel start, papermill, MLflow logging) against the step's compute.

    python benchmarks/runner.py                      # run the main pipeline (train + score, CPU-sized) and measure it
    python benchmarks/runner.py --run main-2026...   # measure a run that already happened (its run.json)

Per step: the wall time the runner saw, the time spent inside the notebook's cells (papermill's per-cell
durations: the step's compute, imports included), the difference (kernel start and shutdown, reading,
parameterizing and writing the notebook), and the MLflow calls the runner made for the step. The fixed cost of
an empty job (one `pass` cell) is measured alongside, and papermill's bare `execute_notebook` on the same empty
notebook, the tool a user would call by hand.
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def empty_job_costs(repeats: int = 3) -> tuple[float, float]:
    "Median wall time of an empty job through `execute_job`, and through bare `papermill.execute_notebook`."
    import nbformat, papermill as pm
    from workbench import jobs
    with tempfile.TemporaryDirectory() as d:
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        p = nbformat.v4.new_code_cell('run_dir: str = ""  # set by the runner'); p.metadata["tags"] = ["parameters"]
        nb.cells = [p, nbformat.v4.new_code_cell("pass")]
        Path(d, "jobs").mkdir(); nbformat.write(nb, Path(d, "jobs", "empty.ipynb"))
        old = os.environ.get("WORKBENCH_JOBS"); os.environ["WORKBENCH_JOBS"] = str(Path(d, "jobs"))
        try:
            ours, bare = [], []
            for i in range(repeats):
                t0 = time.perf_counter(); jobs.execute_job("empty", run_dir=Path(d, f"r{i}")); ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                pm.execute_notebook(str(Path(d, "jobs", "empty.ipynb")), str(Path(d, f"bare{i}.ipynb")), parameters={"run_dir": d}, progress_bar=False, kernel_name="python3")
                bare.append(time.perf_counter() - t0)
        finally:
            if old is None: del os.environ["WORKBENCH_JOBS"]
            else: os.environ["WORKBENCH_JOBS"] = old
    return statistics.median(ours), statistics.median(bare)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing run id to measure (default: run the pipeline now)")
    ap.add_argument("--pipeline", default="main")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    from workbench.jobs import parse_pairs, read_run, run_pipeline
    if a.run: rec, total = read_run(a.run), None
    else:
        t0 = time.perf_counter()
        rec = run_pipeline(a.pipeline, text_params=parse_pairs(a.param), echo=lambda s: print(s, file=sys.stderr, flush=True))
        total = time.perf_counter() - t0
    rows = []
    for s in rec["steps"]:
        at = s["attempts"][-1]
        rows.append((s["id"], at["wall_s"], at.get("cells_s", 0.0), at["wall_s"] - at.get("cells_s", 0.0), at.get("mlflow_s", 0.0)))
    empty_ours, empty_bare = empty_job_costs()
    print(f"run {rec['run_id']} ({rec['status']}), {os.cpu_count()} CPUs")
    print(f"| step | wall s | compute s (cells) | kernel + papermill s | MLflow s | runner overhead / compute |")
    print("|---|---|---|---|---|---|")
    for sid, wall, cells, kern, ml in rows:
        print(f"| {sid} | {wall:.1f} | {cells:.1f} | {kern:.1f} | {ml:.2f} | {(kern + ml) / cells:.1%} |")
    wall, cells, kern, ml = (sum(r[i] for r in rows) for i in (1, 2, 3, 4))
    print(f"| all steps | {wall:.1f} | {cells:.1f} | {kern:.1f} | {ml:.2f} | {(kern + ml) / cells:.1%} |")
    if total is not None:
        print(f"\nwhole run {total:.1f} s: steps {wall:.1f} s + MLflow parent run and records {total - wall:.1f} s")
    print(f"empty job (one `pass` cell): {empty_ours:.2f} s through workbench.jobs.execute_job, {empty_bare:.2f} s through bare "
          f"papermill.execute_notebook (x{empty_ours / empty_bare:.2f})")


if __name__ == "__main__":
    main()
