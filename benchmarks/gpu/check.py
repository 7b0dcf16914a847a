"""GPU smoke check of workbench fine-tuning (train.fit / train.train) and inference (infer.build_variant / Predictor) on CUDA.

Run from the repo root:  PYTHONPATH=. python3 benchmarks/gpu/check.py            (fails unless CUDA is available)
Dry run on a CPU box:    PYTHONPATH=. python benchmarks/gpu/check.py --cpu-ok --small
Writes $OUT/gpucheck.json (default OUT=/tmp/gpucheck_out) and prints it; exit status 1 if any check failed.
Installs nothing; needs polars importable (benchmarks/gpu/run.sh installs the carried wheels).
"""
from __future__ import annotations
import argparse, json, math, os, platform, shutil, sys, time, traceback
from pathlib import Path

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)

HERE = Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("--cpu-ok", action="store_true", help="run on CPU when CUDA is not available (dry run); default: fail")
ap.add_argument("--small", action="store_true", help="MiniLM-shaped model shrunk to hidden 64, 2 layers (fast CPU dry run)")
ap.add_argument("--hidden", type=int, default=384, help="width of the random BERT (384 = MiniLM-L6's)")
ap.add_argument("--layers", type=int, default=6, help="layers of the random BERT (6 = MiniLM-L6's)")
ap.add_argument("--work", default="/tmp/gpucheck_work", help="scratch folder (wiped first)")
a = ap.parse_args()
if a.small: a.hidden, a.layers = 64, 2
OUT = Path(os.environ.get("OUT") or "/tmp/gpucheck_out"); OUT.mkdir(parents=True, exist_ok=True)
WORK = Path(a.work); shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)
os.environ["WORKBENCH_HOME"] = str(WORK / "workspace")

S: dict = {"ok": False, "checks": {}, "errors": {}, "args": vars(a)}
T0 = time.perf_counter()

def save():
    S["total_seconds"] = round(time.perf_counter() - T0, 2)
    (OUT / "gpucheck.json").write_text(json.dumps(S, indent=1, default=str))

def check(name: str, ok: bool, detail=None):
    S["checks"][name] = {"ok": bool(ok), **({"detail": detail} if detail is not None else {})}
    print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail is not None else ""), flush=True)

def stage(name):
    "Decorator-ish runner: run a stage, record its exception (the others still run), return its value or None."
    def run(f):
        print(f"\n=== {name}", flush=True); t = time.perf_counter()
        try: return f()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt): raise
            S["errors"][name] = traceback.format_exc()[-4000:]; check(f"{name}: no exception", False, f"{type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc()
        finally:
            S.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t, 2); save()
    return run

# ---------------------------------------------------------------- environment
import numpy as np
import torch

def _ver(mod):
    try: return __import__(mod).__version__
    except Exception as e: return f"missing ({type(e).__name__})"

cuda = torch.cuda.is_available()
env = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
       "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
       "cudnn": torch.backends.cudnn.version() if cuda else None, "cpu_threads": torch.get_num_threads(),
       **{m: _ver(m) for m in ("transformers", "peft", "tokenizers", "safetensors", "polars", "numpy", "sklearn", "accelerate", "onnxruntime")},
       "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
       "matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None)}
if cuda:
    p = torch.cuda.get_device_properties(0)
    env |= {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "gpu_mem_gib": round(p.total_memory / 2**30, 1), "device_count": torch.cuda.device_count()}
S["env"] = env
print(json.dumps(env, indent=1), flush=True)
if not cuda and not a.cpu_ok:
    check("cuda available", False, "torch.cuda.is_available() is False (pass --cpu-ok for a CPU dry run)")
    save(); print(json.dumps(S, indent=1, default=str)); sys.exit(1)
S["dry_run"] = not cuda
check("cuda available", True, torch.cuda.get_device_name(0) if cuda else "NO: CPU dry run (--cpu-ok); the device checks below ran on the CPU")
DEV = "cuda" if cuda else "cpu"

import polars as pl
import workbench
from workbench import train as wt
from workbench.config import setup_logging
from workbench.infer import Predictor, QuantConfig, build_variant
from workbench.testing import tiny_model, tiny_tickets
from workbench.train import TrainConfig, fit
S["env"]["workbench_file"] = workbench.__file__
setup_logging("INFO")

# Record where the model's parameters and inputs are while it trains: wrap build_model (fit calls it by module global)
# with a forward pre-hook. Only training-mode forwards count.
SEEN: list[dict] = []
_orig_build = wt.build_model
def _spy_build(cfg, labels):
    m = _orig_build(cfg, labels)
    def hook(mod, args, kwargs):
        if mod.training and len(SEEN) < 10_000:
            x = kwargs.get("input_ids", args[0] if args else None)
            devs = {p.device.type for p in mod.parameters()}
            SEEN.append({"param_devices": sorted(devs), "input_device": getattr(getattr(x, "device", None), "type", None)})
    m.register_forward_pre_hook(hook, with_kwargs=True)
    return m
wt.build_model = _spy_build

def seen_summary(since: int) -> dict:
    rows = SEEN[since:]
    return {"forwards": len(rows), "param_devices": sorted({d for r in rows for d in r["param_devices"]}),
            "input_devices": sorted({r["input_device"] for r in rows if r["input_device"]})}

def finite_metrics(res) -> bool:
    v = res["validation"]
    nums = [v["accuracy"], v["macro_f1"]] + [h[k] for h in res["history"] for k in ("train_loss", "val_accuracy", "val_macro_f1", "lr")]
    return all(math.isfinite(x) for x in nums) and 0 <= v["macro_f1"] <= 1

# ---------------------------------------------------------------- base models and data
# A random BERT cannot be taught much through LoRA alone (its frozen random encoder gives the head little to use), so:
# LEARN = small random BERT, fully fine-tuned for 12 epochs: the loss must fall (CPU trials here: 1.39 -> 0.04..0.08);
# BASE  = MiniLM-L6-shaped random BERT (hidden 384, 6 layers, MiniLM tokenizer): LoRA fp32/bf16 on the device, inference, timing.
LEARN, BASE = WORK / "base_small", WORK / "base"
@stage("tiny base models")
def bases():
    from transformers import AutoModel
    out = {}
    for name, p, h, l in (("learn", LEARN, 64, 2), ("base", BASE, a.hidden, a.layers)):
        t = time.perf_counter()
        tiny_model(p, hidden=h, layers=l, tokenizer=HERE / "tokenizer")
        out[name] = {"hidden": h, "layers": l, "params": sum(x.numel() for x in AutoModel.from_pretrained(p).parameters()),
                     "seconds": round(time.perf_counter() - t, 2)}
    S["base_models"] = out
    check("tiny_model built", (LEARN / "config.json").exists() and (BASE / "config.json").exists(), out)
    return out

tk = tiny_tickets(n=480)
TR, VA, TE = (tk.filter(pl.col("split") == s) for s in ("train", "validation", "test"))
S["data"] = {"train": TR.height, "validation": VA.height, "test": TE.height, "labels": sorted(tk["label"].unique().to_list())}
ML = 128
if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()

def summary(res, t, n0):
    return {"seconds": round(time.perf_counter() - t, 2), "losses": [round(h["train_loss"], 5) for h in res["history"]],
            "val_macro_f1": [round(h["val_macro_f1"], 4) for h in res["history"]], "best_epoch": res["best_epoch"],
            "validation": {k: res["validation"][k] for k in ("accuracy", "macro_f1")}, "during_training": seen_summary(n0),
            "epoch_seconds": [round(h["seconds"], 3) for h in res["history"]]}

def on_dev(n0) -> bool:
    s = seen_summary(n0); return s["forwards"] > 0 and s["param_devices"] == [DEV] and s["input_devices"] == [DEV]

# ---------------------------------------------------------------- 1. learning: full fine-tuning of the small model on the device
@stage("fit full fp32 (learning)")
def learn():
    cfg = TrainConfig(base_model=str(LEARN), method="full", epochs=12, lr=3e-3, batch_size=16, max_length=ML, patience=0)
    recs, n0, t = [], len(SEEN), time.perf_counter()
    res = fit(cfg, TR, VA, WORK / "run_learn", progress=False, on_epoch=recs.append, device=DEV)
    S["fit_full_learn"] = r = summary(res, t, n0)
    check("full fp32: params and inputs on device during training", on_dev(n0), r["during_training"])
    check("full fp32: losses and metrics finite", finite_metrics(res), r["losses"])
    check("full fp32: train loss fell (last < 0.5 * first)", r["losses"][-1] < 0.5 * r["losses"][0], f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")
    check("full fp32: best validation macro-F1 > 0.5", res["validation"]["macro_f1"] > 0.5, round(res["validation"]["macro_f1"], 4))
    check("full fp32: on_epoch called each epoch", len(recs) == 12, len(recs))
    return res

# ---------------------------------------------------------------- 2. LoRA fp32 fit of the MiniLM-shaped model on the device
@stage("fit lora fp32")
def lora():
    cfg = TrainConfig(base_model=str(BASE), epochs=3, lr=5e-3, batch_size=16, max_length=ML, patience=0)
    n0, t = len(SEEN), time.perf_counter()
    res = fit(cfg, TR, VA, WORK / "run_lora", progress=False, device=DEV)
    S["fit_lora_fp32"] = r = summary(res, t, n0)
    if cuda: r["cuda_peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    check("lora fp32: params and inputs on device during training", on_dev(n0), r["during_training"])
    check("lora fp32: losses and metrics finite", finite_metrics(res), r["losses"])
    check("lora fp32: merged model + adapter written", (Path(res["model"]) / "model.safetensors").exists() and (Path(res["adapter"]) / "adapter_config.json").exists())
    return res

# ---------------------------------------------------------------- 2. LoRA bf16 autocast fit on the device
@stage("fit lora bf16")
def lora_bf16():
    cfg = TrainConfig(base_model=str(BASE), epochs=2, lr=5e-3, batch_size=16, max_length=ML, patience=0, bf16=True)
    n0, t = len(SEEN), time.perf_counter()
    res = fit(cfg, TR, VA, WORK / "run_bf16", progress=False, device=DEV)
    S["fit_lora_bf16"] = r = summary(res, t, n0)
    check("lora bf16 autocast: on device, losses and metrics finite", finite_metrics(res) and on_dev(n0), r["losses"])
    return res

# ---------------------------------------------------------------- 4. the `train` entry point (prepare -> load_splits -> fit), no MLflow
@stage("train entry point")
def entry():
    from workbench.data import prepare
    from workbench.sample import generate_tickets
    generate_tickets(600, seed=5).write_csv(WORK / "tickets.csv")
    m = prepare(WORK / "tickets.csv", WORK / "dataset")
    cfg = TrainConfig(base_model=str(LEARN), epochs=2, lr=5e-3, batch_size=16, max_length=ML, patience=0)
    n0, t = len(SEEN), time.perf_counter()
    res = wt.train(cfg, WORK / "dataset", WORK / "run_train", progress=False, tracking=False)  # device: CUDA when available
    seen = seen_summary(n0)
    S["train_entry"] = {"seconds": round(time.perf_counter() - t, 2), "losses": [h["train_loss"] for h in res["history"]],
                        "fingerprint": res["fingerprint"], "run_id": res["run_id"], "during_training": seen,
                        "dataset_rows": {k: m.get(k) for k in ("rows", "curated_rows") if k in m}}
    check("train(tracking=False): default device is the GPU, metrics finite, no MLflow run", finite_metrics(res) and on_dev(n0) and res["run_id"] is None, seen)

# ---------------------------------------------------------------- 5. inference: fp32 on device vs CPU, bf16 on device, timing
@stage("inference")
def infer():
    texts = TE["text"].to_list()
    bench = tiny_tickets(n=256, seed=7)["text"].to_list()
    allt = texts + bench
    S["inference"] = {"n_texts": len(allt), "device": DEV}
    # parity of the fp32 variant, device vs CPU, for the learned small model (confident outputs) and the MiniLM-shaped LoRA model
    for name, res in (("learned_small_full", learn), ("minilm_shaped_lora", lora)):
        if not res: check(f"{name}: fp32 device vs CPU", False, "no model: its fit failed"); continue
        fp32 = build_variant(res["model"], WORK / f"fp32_{name}", QuantConfig("fp32", max_length=ML))
        p_cpu, p_dev = Predictor(fp32, device="cpu", batch_size=64), Predictor(fp32, device=DEV, batch_size=64)
        dp = next(p_dev.model.parameters()).device.type
        c, g = p_cpu.predict_proba(allt)[0], p_dev.predict_proba(allt)[0]
        d, agree = float(np.abs(c - g).max()), float(np.mean(c.argmax(1) == g.argmax(1)))
        S["inference"][name] = {"fp32_dev_vs_cpu_max_abs_diff": d, "argmax_agreement": agree, "predictor_param_device": dp,
                                "mean_max_prob": float(c.max(1).mean())}
        check(f"{name}: Predictor(device=DEV) model on device; fp32 probs device vs CPU max abs diff < 1e-3",
              dp == DEV and d < 1e-3 and np.isfinite(g).all(), f"max_abs_diff={d:.3e}, argmax agreement={agree:.4f}, param device={dp}")
    if not lora: raise RuntimeError("no MiniLM-shaped model (LoRA fit failed): no bf16 check or timing")
    df = p_dev.predict(texts[:5] + ["", 3])
    check("Predictor.predict on device (polars frame, bad rows flagged)", df.height == 7 and df["error"].null_count() == 5 and df["label"].null_count() == 2)
    bf16 = build_variant(lora["model"], WORK / "bf16", QuantConfig("bf16", max_length=ML))
    p_b = Predictor(bf16, device=DEV, batch_size=64)
    b = p_b.predict_proba(allt)[0]
    db, agree_b = float(np.abs(c - b).max()), float(np.mean(c.argmax(1) == b.argmax(1)))
    S["inference"]["minilm_shaped_lora_bf16"] = {"bf16_dev_vs_fp32_cpu_max_abs_diff": db, "argmax_agreement": agree_b,
                                                 "param_dtype": str(next(p_b.model.parameters()).dtype)}
    check("bf16 variant on device: finite, max abs diff vs fp32 CPU < 0.2", np.isfinite(b).all() and db < 0.2, f"max_abs_diff={db:.3e}, argmax agreement={agree_b:.4f}")

    # timing: 256 texts, one batch of 256; end to end (tokenize + forward + softmax) and forward only (pre-tokenized)
    def timeit(pred, reps):
        pred.batch_size = 256
        ids, _ = pred.encode(bench)
        pred.predict_proba(bench)  # warm-up
        e2e, fwd = [], []
        for _ in range(reps):
            if cuda: torch.cuda.synchronize()
            t = time.perf_counter(); pred.predict_proba(bench); e2e.append(time.perf_counter() - t)
            t = time.perf_counter(); pred.forward_ids(ids); fwd.append(time.perf_counter() - t)  # .cpu() in forward_ids syncs
        return {"e2e_ms_best": round(min(e2e) * 1e3, 2), "forward_ms_best": round(min(fwd) * 1e3, 2),
                "texts_per_s_e2e": round(len(bench) / min(e2e), 1), "reps": reps}
    S["timing_256"] = {"model": "minilm_shaped_lora (merged)", "cpu_fp32": timeit(p_cpu, 3), f"{DEV}_fp32": timeit(p_dev, 5), f"{DEV}_bf16": timeit(p_b, 5),
                       "cpu_threads": torch.get_num_threads(), "max_length": ML, "hidden": a.hidden, "layers": a.layers}
    t = S["timing_256"]
    S["timing_256"]["speedup_forward_fp32"] = round(t["cpu_fp32"]["forward_ms_best"] / t[f"{DEV}_fp32"]["forward_ms_best"], 2)
    print(json.dumps(S["timing_256"], indent=1), flush=True)

S["ok"] = all(c["ok"] for c in S["checks"].values()) and not S["errors"] and bool(S["checks"])
save()
print("\n=== SUMMARY (also in $OUT/gpucheck.json)")
print(json.dumps({k: v for k, v in S.items() if k != "errors"}, indent=1, default=str))
if S["errors"]: print("errors in stages:", list(S["errors"]))
print("GPUCHECK", "OK" if S["ok"] else "FAILED", f"({'cuda' if cuda else 'CPU dry run'}, {S['total_seconds']} s)")
sys.exit(0 if S["ok"] else 1)
