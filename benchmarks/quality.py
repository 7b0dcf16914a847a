#!/usr/bin/env python3
"""Does the fine-tuned transformer beat what a 5-second baseline does? Every candidate on the same splits, over seeds.

Takes any CSV with a text and a label column and, for each seed, draws a random 70/10/20 split, fits on train,
chooses hyper-parameters (C, blend weight, best epoch) on validation and reports test macro-F1 of:

- `tfidf`: TF-IDF word 1-2 grams + character 2-5 grams, logistic regression (`workbench.baselines`, C on validation);
- `frozen`: the base model's mean-pooled, normalised embeddings, logistic regression (C on validation);
- `lora`: `workbench.train.fit` with LoRA (r 16, lr 2e-3, 2 epochs, the old default);
- `full`: `workbench.train.fit` with the CPU default (`--full` settings below);
- `full+tfidf`: the `full` model's probabilities blended with TF-IDF's, the weight chosen on validation
  (`workbench.select.blend_weight`): what the evaluate job registers when it wins on validation.

It prints val/test macro-F1 as mean ± sd over the seeds, training seconds (wall and CPU), inference CPU-seconds per
1,000 texts and USD per million (at --price per core-hour), and each candidate's lift over the best baseline (the
baseline with the higher mean test macro-F1, the harder bar).

    python benchmarks/quality.py sample_data/tickets.csv --text subject body --seeds 0 1 2
    python benchmarks/corpora.py wordnet /tmp/wordnet.csv && python benchmarks/quality.py /tmp/wordnet.csv
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np
import polars as pl

from workbench.baselines import baseline_proba, fit_baseline, macro_f1
from workbench.select import blend_weight

CANDIDATES = ("tfidf", "frozen", "lora", "full", "full+tfidf")
FIT = {"lora": dict(method="lora", epochs=2, max_length=128, lr=2e-3, batch_size=32, patience=0),
       "full": dict(method="full", epochs=3, max_length=128, lr=1e-4, batch_size=32, bf16=True, class_weights="none", patience=0)}


def splits(df: pl.DataFrame, seed: int) -> dict[str, pl.DataFrame]:
    "A random 70/10/20 split."
    idx = np.random.default_rng(seed).permutation(df.height)
    a, b = int(.7 * df.height), int(.8 * df.height)
    return {"train": df[idx[:a]], "validation": df[idx[a:b]], "test": df[idx[b:]]}


def timed(f):
    "f() with its wall and CPU seconds."
    t0, c0 = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - t0, time.process_time() - c0


def baseline(kind):
    def run(sp, labels, seed, fits):
        res, wall, cpu = timed(lambda: fit_baseline(kind, sp["train"], sp["validation"], labels))
        return lambda texts: baseline_proba(res["pipeline"], texts, len(labels)), wall, cpu
    return run


def transformer(name):
    def run(sp, labels, seed, fits):
        from workbench.infer import Predictor
        from workbench.train import TrainConfig, fit
        out = Path(tempfile.mkdtemp(prefix=f"quality-{name}-"))
        cfg = TrainConfig(seed=seed, **{**FIT[name], **fits.get(name, {})})
        res, wall, cpu = timed(lambda: fit(cfg, sp["train"], sp["validation"], out, labels=labels, progress=False))
        pred = Predictor(res["model"])
        return lambda texts: pred.predict_proba(list(texts))[0], wall, cpu
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv"); ap.add_argument("--text", nargs="+", default=["text"], help="text column(s), joined by a blank line")
    ap.add_argument("--label", default="label")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    ap.add_argument("--rows", type=int, default=0, help="a seeded sample of this many rows (0: all)")
    ap.add_argument("--price", type=float, default=0.05, help="USD per CPU core-hour")
    ap.add_argument("--set", nargs="*", default=[], metavar="MODEL.KEY=VALUE", help="override FIT settings, e.g. full.epochs=2")
    ap.add_argument("--json", help="also write the per-seed results here")
    a = ap.parse_args(argv)
    fits = {}
    for kv in a.set:
        k, _, v = kv.partition("="); m, _, key = k.partition(".")
        fits.setdefault(m, {})[key] = json.loads(v)
    df = pl.read_csv(a.csv, infer_schema=False)
    text = pl.concat_str([pl.col(c).fill_null("") for c in a.text], separator="\n\n").str.strip_chars()
    df = df.select(text=text, label=pl.col(a.label).str.strip_chars().str.to_lowercase())
    df = df.filter((pl.col("text") != "") & pl.col("label").is_not_null())
    key = pl.col("text").str.to_lowercase().str.replace_all(r"\s+", " ")
    df = df.filter(key.is_first_distinct())  # a re-sent text in train and test would flatter every candidate
    if a.rows: df = df.sample(min(a.rows, df.height), seed=0)
    labels = sorted(df["label"].unique().to_list())
    print(f"{a.csv}: {df.height} rows, {len(labels)} classes, seeds {a.seeds}, settings {json.dumps({k: {**v, **fits.get(k, {})} for k, v in FIT.items()})}", flush=True)
    run = {"tfidf": baseline("tfidf"), "frozen": baseline("frozen"), "lora": transformer("lora"), "full": transformer("full")}
    need = list(dict.fromkeys([c for k in a.candidates for c in (k.split("+") if "+" in k else [k])]))
    res = {k: [] for k in a.candidates}
    for seed in a.seeds:
        sp = splits(df, seed)
        idx = {l: i for i, l in enumerate(labels)}
        yv, yt = (np.array([idx[l] for l in sp[s]["label"]]) for s in ("validation", "test"))
        probs, info = {}, {}
        for k in need:
            predict, wall, cpu = run[k](sp, labels, seed, fits)
            pv = predict(sp["validation"]["text"].to_list())
            (pt, _, icpu) = timed(lambda: predict(sp["test"]["text"].to_list()))
            probs[k], info[k] = (pv, pt), {"train_s": wall, "train_cpu_s": cpu, "cpu_s_per_1000": icpu / len(yt) * 1000}
        for k in a.candidates:
            if "+" in k:
                m, b = k.split("+")
                w, _ = blend_weight(probs[m][0], probs[b][0], yv)
                pv, pt = (w * probs[m][i] + (1 - w) * probs[b][i] for i in (0, 1))
                extra = {"weight": w, **{f: info[m][f] + info[b][f] for f in ("train_s", "train_cpu_s", "cpu_s_per_1000")}}
            else: (pv, pt), extra = probs[k], info[k]
            r = {"seed": seed, "val": macro_f1(yv, pv.argmax(1), len(labels)), "test": macro_f1(yt, pt.argmax(1), len(labels)), **extra}
            res[k].append(r)
            print(f"seed {seed} {k:10} val {r['val']:.4f} test {r['test']:.4f} train {r['train_s']:6.1f} s (CPU {r['train_cpu_s']:6.1f} s)  "
                  f"inference {r['cpu_s_per_1000']:.2f} CPU-s/1000" + (f"  weight {r['weight']:.2f}" if "weight" in r else ""), flush=True)
    ms = lambda k, f: (statistics.mean(r[f] for r in res[k]), statistics.stdev(r[f] for r in res[k]) if len(res[k]) > 1 else 0.0)
    base = max((k for k in ("tfidf", "frozen") if k in res), key=lambda k: ms(k, "test")[0], default=None)
    print(f"\n{'candidate':10} {'val macro-F1':>15} {'test macro-F1':>15} {'train s':>8} {'CPU s/1000':>10} {'USD/M':>7} {'lift':>6}")
    for k in res:
        (v, vs), (t, ts) = ms(k, "val"), ms(k, "test")
        cpu = ms(k, "cpu_s_per_1000")[0]
        lift = f"{(t - ms(base, 'test')[0]) * 100:+.1f}" if base and k != base else ""
        print(f"{k:10} {v:.4f} ± {vs:.4f} {t:.4f} ± {ts:.4f} {ms(k, 'train_s')[0]:8.1f} {cpu:10.2f} {cpu * 1000 / 3600 * a.price:7.3f} {lift:>6}")
    if base: print(f"lift: test macro-F1 points over the best baseline ({base}), mean of {len(a.seeds)} seed(s)")
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
