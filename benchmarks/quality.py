#!/usr/bin/env python3
"""Does the fine-tuned transformer beat what a 5-second baseline does? Every candidate on the same splits, over seeds.

Takes any CSV with a text and a label column (an id column is optional) and, for each seed, draws a random
70/10/20 split, then fits on train, chooses hyper-parameters on validation and reports test macro-F1 of:

- `tfidf`: TF-IDF word 1-2 grams + character 2-5 grams, logistic regression (C chosen on validation);
- `frozen`: the base model's mean-pooled, normalised sentence embeddings, logistic regression (C on validation);
- `lora`: `workbench.train.fit` with the main job's LoRA settings;
- `full`: `workbench.train.fit`, full fine-tuning at lr 1e-4 with bf16 autocast.

It prints val/test macro-F1 as mean ± sd over the seeds, training seconds, inference CPU-seconds per 1,000 texts
(and USD per million at --price per core-hour), and each candidate's lift over the best baseline.

    python benchmarks/quality.py sample_data/tickets.csv --text body --seeds 0 1 2
    python benchmarks/corpora.py wordnet /tmp/wordnet.csv && python benchmarks/quality.py /tmp/wordnet.csv
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np
import polars as pl
from sklearn.metrics import f1_score

CANDIDATES = ("tfidf", "frozen", "lora", "full")
FIT = {"lora": dict(method="lora", epochs=2, max_length=128, lr=2e-3, batch_size=32, patience=0),
       "full": dict(method="full", epochs=3, max_length=128, lr=1e-4, batch_size=32, bf16=True, class_weights="none", patience=0)}


def splits(df: pl.DataFrame, seed: int) -> dict[str, pl.DataFrame]:
    "A random 70/10/20 split."
    idx = np.random.default_rng(seed).permutation(df.height)
    a, b = int(.7 * df.height), int(.8 * df.height)
    return {"train": df[idx[:a]], "validation": df[idx[a:b]], "test": df[idx[b:]]}


def cpu_per_1000(predict, texts) -> float:
    "CPU seconds to predict 1,000 texts (process time, all threads)."
    c0 = time.process_time(); predict(texts)
    return (time.process_time() - c0) / len(texts) * 1000


def pick_c(fit_predict, Cs=(0.3, 1, 3, 10, 30, 100)):
    "The C with the best validation macro-F1, and that F1."
    return max((fit_predict(c), c) for c in Cs)


def tfidf(sp, seed):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_union
    t0 = time.perf_counter()
    vec = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                     TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, max_features=200_000))
    A = vec.fit_transform(sp["train"]["text"]); B = vec.transform(sp["validation"]["text"])
    y, yv = sp["train"]["label"].to_list(), sp["validation"]["label"].to_list()
    val, c = pick_c(lambda c: f1_score(yv, LogisticRegression(C=c, max_iter=3000).fit(A, y).predict(B), average="macro"))
    lr = LogisticRegression(C=c, max_iter=3000).fit(A, y)
    secs = time.perf_counter() - t0
    predict = lambda texts: lr.predict(vec.transform(texts))
    return val, predict, secs


def frozen(sp, seed):
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer
    from workbench.train import default_base_model
    tok, enc = AutoTokenizer.from_pretrained(default_base_model()), AutoModel.from_pretrained(default_base_model()).eval()
    def embed(texts):
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                b = tok(list(texts[i:i + 64]), padding=True, truncation=True, max_length=128, return_tensors="pt")
                h, m = enc(**b).last_hidden_state, b["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy())
        return np.concatenate(out)
    t0 = time.perf_counter()
    E, Ev = embed(sp["train"]["text"].to_list()), embed(sp["validation"]["text"].to_list())
    y, yv = sp["train"]["label"].to_list(), sp["validation"]["label"].to_list()
    val, c = pick_c(lambda c: f1_score(yv, LogisticRegression(C=c, max_iter=5000).fit(E, y).predict(Ev), average="macro"))
    lr = LogisticRegression(C=c, max_iter=5000).fit(E, y)
    return val, lambda texts: lr.predict(embed(list(texts))), time.perf_counter() - t0


def transformer(name):
    def run(sp, seed):
        from workbench.infer import Predictor
        from workbench.train import TrainConfig, fit
        labels = sorted(sp["train"]["label"].unique().to_list())
        out = Path(tempfile.mkdtemp(prefix=f"quality-{name}-"))
        t0 = time.perf_counter()
        res = fit(TrainConfig(seed=seed, **FIT[name]), sp["train"], sp["validation"], out, labels=labels, progress=False)
        secs = time.perf_counter() - t0
        pred = Predictor(res["model"])
        return res["validation"]["macro_f1"], lambda texts: pred.predict(list(texts))["label"].to_list(), secs
    return run


RUN = {"tfidf": tfidf, "frozen": frozen, "lora": transformer("lora"), "full": transformer("full")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv"); ap.add_argument("--text", default="text"); ap.add_argument("--label", default="label")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    ap.add_argument("--rows", type=int, default=0, help="a seeded sample of this many rows (0: all)")
    ap.add_argument("--price", type=float, default=0.05, help="USD per CPU core-hour")
    ap.add_argument("--json", help="also write the per-seed results here")
    a = ap.parse_args(argv)
    df = pl.read_csv(a.csv, infer_schema=False).select(text=pl.col(a.text), label=pl.col(a.label).str.strip_chars().str.to_lowercase())
    df = df.filter(pl.col("text").is_not_null() & pl.col("label").is_not_null())
    if a.rows: df = df.sample(min(a.rows, df.height), seed=0)
    print(f"{a.csv}: {df.height} rows, {df['label'].n_unique()} classes, seeds {a.seeds}", flush=True)
    res = {k: [] for k in a.candidates}
    for seed in a.seeds:
        sp = splits(df, seed)
        for k in a.candidates:
            val, predict, secs = RUN[k](sp, seed)
            te = sp["test"]
            test = f1_score(te["label"].to_list(), predict(te["text"].to_list()), average="macro")
            cpu = cpu_per_1000(predict, te["text"].to_list())
            res[k].append({"seed": seed, "val": val, "test": test, "train_s": secs, "cpu_s_per_1000": cpu})
            print(f"seed {seed} {k:7} val {val:.4f} test {test:.4f} train {secs:6.1f} s  CPU {cpu:.2f} s/1000", flush=True)
    ms = lambda k, f: (statistics.mean(r[f] for r in res[k]), statistics.stdev(r[f] for r in res[k]) if len(res[k]) > 1 else 0.0)
    base = max((k for k in ("tfidf", "frozen") if k in res), key=lambda k: ms(k, "test")[0], default=None)
    print(f"\n{'candidate':9} {'val macro-F1':>15} {'test macro-F1':>15} {'train s':>8} {'CPU s/1000':>10} {'USD/M':>7} {'lift':>7}")
    for k in res:
        (v, vs), (t, ts) = ms(k, "val"), ms(k, "test")
        cpu = ms(k, "cpu_s_per_1000")[0]
        lift = f"{(t - ms(base, 'test')[0]) * 100:+.1f}" if base and k != base else ""
        print(f"{k:9} {v:.4f} ± {vs:.4f} {t:.4f} ± {ts:.4f} {ms(k, 'train_s')[0]:8.1f} {cpu:10.2f} {cpu * 1000 / 3600 * a.price:7.2f} {lift:>7}")
    if base: print(f"lift: test macro-F1 points over the best baseline ({base}), mean of {len(a.seeds)} seed(s)")
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
