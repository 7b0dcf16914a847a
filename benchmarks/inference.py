"""Inference benchmark: what a user gets by default vs the workbench variants vs ONNX Runtime, on the test split.

    python benchmarks/inference.py --model workspace/training/<run>/model [--dataset workspace/datasets/tickets]

Contenders, all on the same texts (the prepared dataset's test split, its real length distribution), batch 64:
- `hf-fp32-maxpad`: transformers fp32, the tokenizer padding every batch to `max_length` (`padding="max_length"`),
  texts in their original order: what a user gets by default.
- `workbench-fp32|int8|bf16`: `workbench.infer.Predictor` (length-sorted batches padded to their longest text).
- `ort-fp32|int8`: ONNX Runtime on the exported graph (`torch.onnx.export`; int8 by `onnxruntime.quantization`),
  fed the same length-sorted batches as the workbench variants.

Each contender runs `--repeats` times; the fastest run is kept. Throughput includes tokenization; the p95 is over
the forward pass of single batches. One table, printed at the end.
"""
import argparse, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np
import polars as pl
import torch

from workbench.infer import Predictor, QuantConfig, build_variant
from workbench.train import classification_metrics, load_splits


def timed(encode, batches_of, forward, texts, repeats):
    "Fastest of `repeats` end-to-end runs: (seconds, per-batch forward seconds, probabilities in input order)."
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter(); lat = []; probs = {}
        enc = encode(texts)
        for sel, batch in batches_of(enc):
            tb = time.perf_counter(); p = forward(batch); lat.append(time.perf_counter() - tb)
            for j, row in zip(sel, p): probs[j] = row
        total = time.perf_counter() - t0
        if best is None or total < best[0]: best = (total, lat, np.stack([probs[j] for j in range(len(texts))]))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a merged model folder from training (`<out>/model`)")
    ap.add_argument("--dataset", default="workspace/datasets/tickets", help="prepared dataset whose test split is used")
    ap.add_argument("--max-length", type=int, default=None, help="default: the model's training max_length")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep-fp32", type=int, default=0, help="also run int8 with the N most sensitive Linear layers kept in fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import json
    tc = Path(a.model) / "train_config.json"
    a.max_length = a.max_length or (json.loads(tc.read_text())["max_length"] if tc.exists() else 256)
    frames, labels, fp = load_splits(a.dataset)
    test = frames["test"]; texts, y_names = test["text"].to_list(), test["label"].to_list()
    work = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    variants = ["fp32", "int8", "bf16", "onnx-fp32", "onnx-int8"]
    preds = {v: Predictor(build_variant(a.model, work / v, QuantConfig(v, max_length=a.max_length)), batch_size=a.batch_size, threads=a.threads) for v in variants}
    if a.keep_fp32:
        from workbench.infer import layer_sensitivity
        sens = layer_sensitivity(preds["fp32"].model, preds["fp32"].tok, frames["validation"]["text"].to_list()[:256], a.max_length, progress=False)
        keep = sens["layer"][:a.keep_fp32].to_list()
        preds[f"int8-keep{a.keep_fp32}"] = Predictor(build_variant(a.model, work / "int8k", QuantConfig("int8", keep_fp32=keep, max_length=a.max_length)),
                                                       batch_size=a.batch_size, threads=a.threads)
    names = preds["fp32"].labels; y = np.array([names.index(l) for l in y_names])

    # what a user gets by default: transformers, fixed padding to max_length, original order
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(a.model); hf = AutoModelForSequenceClassification.from_pretrained(a.model).eval()
    def hf_encode(ts): return [hf_tok(ts[i:i + a.batch_size], padding="max_length", truncation=True, max_length=a.max_length, return_tensors="pt")
                               for i in range(0, len(ts), a.batch_size)]
    def hf_batches(enc): return [(range(i * a.batch_size, i * a.batch_size + len(b["input_ids"])), b) for i, b in enumerate(enc)]
    def hf_forward(b):
        with torch.inference_mode(): return torch.softmax(hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1).numpy()

    def sorted_batches(p):
        def batches(enc):
            ids, _ = enc; order = np.argsort([len(x) for x in ids], kind="stable")
            return [(order[i:i + a.batch_size], [ids[j] for j in order[i:i + a.batch_size]]) for i in range(0, len(ids), a.batch_size)]
        return batches

    rows = []
    contenders = {"hf-fp32-maxpad": (hf_encode, hf_batches, hf_forward)}
    for v, p in preds.items():
        name = v.replace("onnx-", "ort-") if v.startswith("onnx") else f"workbench-{v}"
        contenders[name] = (p.encode, sorted_batches(p), p.forward_ids)
    for name, (enc, bat, fwd) in contenders.items():
        fwd(enc(texts[:4])[0])  # warm-up: the first batch (HF) or the token ids (workbench, ORT)
        total, lat, probs = timed(enc, bat, fwd, texts, a.repeats)
        m = classification_metrics(y, probs.argmax(1), names)
        rows.append({"contender": name, "samples_per_s": len(texts) / total, "p95_batch_ms": float(np.percentile(lat, 95) * 1e3),
                     "macro_f1": m["macro_f1"]})
        print(f"  {name}: {rows[-1]['samples_per_s']:.0f} samples/s", file=sys.stderr, flush=True)
    df = pl.DataFrame(rows)
    base = df.filter(pl.col("contender") == "hf-fp32-maxpad")["samples_per_s"][0]
    ort8 = df.filter(pl.col("contender") == "ort-int8")["samples_per_s"][0]
    f1_fp32 = df.filter(pl.col("contender") == "workbench-fp32")["macro_f1"][0]
    df = df.with_columns(vs_hf=pl.col("samples_per_s") / base, vs_ort_int8=pl.col("samples_per_s") / ort8,
                         f1_delta_pts=(pl.col("macro_f1") - f1_fp32) * 100)
    lens = [len(x) for x in preds["fp32"].encode(texts)[0]]
    print(f"\ninference on {len(texts)} test texts of {a.dataset} ({fp[:19]}), tokens p50/p95/max {np.percentile(lens, 50):.0f}/{np.percentile(lens, 95):.0f}/{max(lens)}, "
          f"max_length {a.max_length}, batch {a.batch_size}, {a.threads} threads, best of {a.repeats}, torch {torch.__version__}")
    with pl.Config(tbl_rows=20, tbl_cols=20, float_precision=3, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(df)
    wb = df.filter(pl.col("contender").str.starts_with("workbench") & (pl.col("f1_delta_pts").abs() <= 0.5)).sort("samples_per_s", descending=True)
    if wb.height:
        b = wb.row(0, named=True)
        print(f"best workbench variant within 0.5 macro-F1 points of fp32: {b['contender']}: {b['vs_hf']:.2f}x the HF baseline (target 3x), "
              f"{b['vs_ort_int8']:.2f}x ONNX Runtime int8 (target 1.2x)")
    else: print("no workbench variant is within 0.5 macro-F1 points of fp32")


if __name__ == "__main__":
    main()
