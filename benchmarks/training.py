"""Training benchmark: workbench LoRA vs full fine-tuning vs the transformers `Trainer` with peft, same data and configuration.

    python benchmarks/training.py [--dataset workspace/datasets/tickets] [--epochs 3] [--train-rows 0]

Each contender runs in its own process (so its peak RSS is its own), on the prepared dataset's train split,
evaluated on its validation split:
- `workbench-lora`: `workbench.train.fit` with the default TrainConfig (LoRA).
- `workbench-full`: the same loop, all weights trained (`method="full"`, lr 5e-5: the usual full fine-tuning rate).
- `hf-trainer-peft`: `transformers.Trainer` + `peft.get_peft_model` with the same LoRA configuration, learning
  rate, schedule, batch size, epochs and max_length, `DataCollatorWithPadding`, evaluation each epoch.
- `tfidf-logreg`: the classic baseline, scikit-learn TF-IDF (word 1-2 grams) + logistic regression, its C chosen
  on the validation split.
Reported: training samples/s (examples x epochs / wall time of the whole fit, evaluation included), peak RSS,
validation and test macro-F1 of the kept model. One table at the end.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_one(kind, dataset, epochs, rows, out):
    import dataclasses
    import numpy as np, polars as pl, torch
    from workbench.train import TrainConfig, classification_metrics, fit, load_splits
    frames, labels, _ = load_splits(dataset)
    tr, va = frames["train"], frames["validation"]
    if rows: tr = tr.sample(n=min(rows, tr.height), seed=0)
    cfg = TrainConfig(epochs=epochs, patience=0, **json.loads(os.environ.get("BENCH_TRAIN_CONFIG", "{}")))
    te = frames["test"]; y_te = [labels.index(l) for l in te["label"]]
    t0 = time.perf_counter()
    if kind.startswith("workbench"):
        from workbench.infer import Predictor
        if kind == "workbench-full": cfg = dataclasses.replace(cfg, method="full", lr=5e-5)
        res = fit(cfg, tr, va, out, labels=labels, progress=False)
        f1 = res["validation"]["macro_f1"]
        secs = time.perf_counter() - t0
        p = Predictor(res["model"], max_length=cfg.max_length).predict_proba(te["text"].to_list())[0]
        f1_test = classification_metrics(y_te, p.argmax(1), labels)["macro_f1"]
    elif kind == "tfidf-logreg":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True); X = vec.fit_transform(tr["text"].to_list())
        y_tr = [labels.index(l) for l in tr["label"]]; y_va = [labels.index(l) for l in va["label"]]
        fits = {C: LogisticRegression(max_iter=3000, C=C).fit(X, y_tr) for C in (1, 3, 10, 30)}
        scores = {C: classification_metrics(y_va, m.predict(vec.transform(va["text"].to_list())), labels)["macro_f1"] for C, m in fits.items()}
        C = max(scores, key=scores.get); f1 = scores[C]
        secs = time.perf_counter() - t0
        f1_test = classification_metrics(y_te, fits[C].predict(vec.transform(te["text"].to_list())), labels)["macro_f1"]
        epochs = 1  # one pass per C
    else:
        if cfg.class_weights != "none": sys.exit("the Trainer contender has no class weights: run with BENCH_TRAIN_CONFIG='{\"class_weights\": \"none\"}'")
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
        torch.manual_seed(cfg.seed)
        tok = AutoTokenizer.from_pretrained(cfg.base)
        model = AutoModelForSequenceClassification.from_pretrained(cfg.base, num_labels=len(labels))
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules=list(cfg.target_modules)))
        def ds(df):
            enc = tok(df["text"].to_list(), truncation=True, max_length=cfg.max_length)
            return [{"input_ids": i, "attention_mask": m, "labels": labels.index(l)} for i, m, l in zip(enc["input_ids"], enc["attention_mask"], df["label"])]
        def metrics(p):
            return {"macro_f1": classification_metrics(p.label_ids, p.predictions.argmax(-1), labels)["macro_f1"]}
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64,
                                 num_train_epochs=epochs, learning_rate=cfg.lr, warmup_steps=int(cfg.warmup_ratio * epochs * -(-tr.height // cfg.batch_size)), weight_decay=cfg.weight_decay,
                                 lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                                 metric_for_best_model="macro_f1", save_total_limit=1, seed=cfg.seed, report_to=[], disable_tqdm=True,
                                 logging_strategy="no", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=ds(tr), eval_dataset=ds(va), data_collator=DataCollatorWithPadding(tok),
                          compute_metrics=metrics)
        trainer.train()
        f1 = trainer.evaluate()["eval_macro_f1"]
        secs = time.perf_counter() - t0
        f1_test = trainer.evaluate(ds(te), metric_key_prefix="test")["test_macro_f1"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"contender": kind, "train_rows": tr.height, "epochs": epochs, "seconds": secs,
                      "samples_per_s": tr.height * epochs / secs, "peak_rss_mb": rss, "val_macro_f1": f1, "test_macro_f1": f1_test}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="workspace/datasets/tickets")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-rows", type=int, default=0, help="sample this many training rows (0 = all)")
    ap.add_argument("--only", nargs="*", default=["workbench-lora", "workbench-full", "hf-trainer-peft", "tfidf-logreg"])
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._one: return run_one(a._one, a.dataset, a.epochs, a.train_rows, Path(a._out))
    import polars as pl
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for kind in a.only:
            r = subprocess.run([sys.executable, __file__, "--dataset", a.dataset, "--epochs", str(a.epochs), "--train-rows", str(a.train_rows),
                                "--_one", kind, "--_out", str(Path(tmp) / kind)], capture_output=True, text=True)
            if r.returncode: sys.exit(f"{kind} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"  {kind}: {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    df = pl.DataFrame(rows)
    lora = df.filter(pl.col("contender") == "workbench-lora").row(0, named=True) if "workbench-lora" in a.only else None
    if lora: df = df.with_columns(speed_vs_lora=pl.col("samples_per_s") / lora["samples_per_s"], f1_vs_lora_pts=(pl.col("val_macro_f1") - lora["val_macro_f1"]) * 100)
    import torch
    if os.environ.get("BENCH_TRAIN_CONFIG"): print(f"TrainConfig overrides: {os.environ['BENCH_TRAIN_CONFIG']}")
    print(f"\ntraining on {a.dataset}, {df['train_rows'][0]} training rows x {a.epochs} epochs, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with pl.Config(tbl_rows=20, tbl_cols=20, float_precision=3, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(df.drop("epochs"))


if __name__ == "__main__":
    main()
