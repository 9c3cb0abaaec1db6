"""Classifiers side by side on one train/test split: accuracy, macro-F1, train time, p50 latency.

    nice -n 19 python benchmarks/classify.py --data /work/shared/data/banking77 \
        --models runs/b77 runs/b77-onnx runs/b77-int8 [--threads 1] [--json out.json]

Rows: TF-IDF word+char n-grams + logistic regression; frozen sentence embeddings (minilm-l6, mean
pooled, L2-normalised) + logistic regression; and each slmforge classifier given with --models
(torch, ONNX fp32 or int8), evaluated by `slmforge.clf.evaluate.evaluate_classifier` on the same test file.
Baselines train on all of train.csv; an slmforge model's train time is the one in its manifest (it
held out a validation split of train.csv). Latency: one query at a time, featurisation included,
after a warm-up; `--threads` caps torch / ONNX Runtime / BLAS threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="Directory with train.csv and test.csv.")
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--label-col", default="category")
    ap.add_argument("--models", nargs="*", default=[], help="slmforge classifier dirs to compare.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--json", help="Also write the rows here.")
    ap.add_argument(
        "--oos-model",
        help="A classifier trained without some of the labels: print its out-of-scope trade-off and exit.",
    )
    args = ap.parse_args()
    if args.oos_model:
        return oos_tradeoff(args)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    from slmforge.clf.evaluate import evaluate_classifier, macro_f1
    from slmforge.clf.examples import read_examples
    from slmforge.core.runtime import set_threads

    set_threads(args.threads)
    data = Path(args.data)
    train_x, train_y = read_examples(str(data / "train.csv"), args.text_col, args.label_col)
    test_x, test_y = read_examples(str(data / "test.csv"), args.text_col, args.label_col)
    labels = sorted(set(train_y))
    index = {n: i for i, n in enumerate(labels)}
    y_tr, y_te = np.array([index[y] for y in train_y]), np.array([index[y] for y in test_y])
    queries = [test_x[i % len(test_x)] for i in range(args.latency_queries)]
    rows = []

    def score(name, pred, train_s, predict_one, params=None):
        times = []
        for q in queries[:10]:
            predict_one(q)
        for q in queries:
            t = time.perf_counter()
            predict_one(q)
            times.append((time.perf_counter() - t) * 1000)
        rows.append(
            {
                "model": name,
                "accuracy": float((pred == y_te).mean()),
                "macro_f1": macro_f1(y_te, pred, len(labels)),
                "train_s": train_s,
                "p50_ms": float(np.percentile(times, 50)),
                "params": params,
            }
        )
        print(f"  {name}: accuracy {rows[-1]['accuracy']:.4f}", file=sys.stderr)

    if not args.skip_baselines:
        print("TF-IDF + logistic regression", file=sys.stderr)
        t0 = time.perf_counter()
        tfidf, clf = _tfidf_lr(train_x, y_tr)
        train_s = time.perf_counter() - t0
        pred = clf.predict(tfidf.transform(test_x))
        n_params = clf.coef_.size + clf.intercept_.size
        score("tfidf-word+char + LR", pred, train_s, lambda q: clf.predict(tfidf.transform([q])), n_params)

        print("frozen minilm-l6 embeddings + logistic regression", file=sys.stderr)
        encoder = _encoder()
        t0 = time.perf_counter()
        lr = _fit_lr(encoder.encode(train_x, batch_size=64, normalize_embeddings=True), y_tr, c=10.0)
        train_s = time.perf_counter() - t0
        pred = lr.predict(encoder.encode(test_x, batch_size=64, normalize_embeddings=True))
        n_params = sum(p.numel() for p in encoder.parameters()) + lr.coef_.size + lr.intercept_.size
        score(
            "frozen minilm-l6 + LR",
            pred,
            train_s,
            lambda q: lr.predict(encoder.encode([q], normalize_embeddings=True)),
            n_params,
        )

    for model in args.models:
        print(f"slmforge {model}", file=sys.stderr)
        r = evaluate_classifier(
            model,
            str(data / "test.csv"),
            text_col=args.text_col,
            label_col=args.label_col,
            latency_queries=args.latency_queries,
            threads=args.threads,
        )
        manifest = _manifest(model)
        train_s = manifest.get("train_seconds")
        rows.append(
            {
                "model": f"slmforge {Path(model).name} ({r['runtime']}"
                + (f" {manifest.get('precision')})" if manifest.get("precision") else ")"),
                "accuracy": r["accuracy"],
                "macro_f1": r["macro_f1"],
                "train_s": train_s,
                "p50_ms": r["p50_ms"],
                "params": r["params"],
                "disk_mb": r["disk_mb"],
            }
        )
        print(f"  accuracy {r['accuracy']:.4f}", file=sys.stderr)

    print(
        f"\n{len(train_x):,} train / {len(test_x):,} test texts, {len(labels)} labels; "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s)\n"
    )
    print("| model | accuracy | macro-F1 | train time | p50 latency | params |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        train = f"{r['train_s']:.0f} s" if r.get("train_s") is not None else "n/a"
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else ""
        print(
            f"| {r['model']} | {r['accuracy'] * 100:.2f} % | {r['macro_f1'] * 100:.2f} % | {train} | "
            f"{r['p50_ms']:.1f} ms | {params} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def oos_tradeoff(args) -> None:
    """For a model that never saw some test labels: at thresholds calibrated on its own validation split
    (flagging 1-10 % of in-scope val texts), the share of unseen-label test texts flagged `oos` and the
    in-scope test accuracy lost, for both confidence scores."""
    from slmforge.clf.examples import read_examples, stratified_split
    from slmforge.clf.predict import load_classifier, oos_score

    clf = load_classifier(args.oos_model, args.threads)
    tcfg = clf.meta["config"]
    texts, labels = read_examples(tcfg["data"], tcfg["text_col"], tcfg["label_col"])
    _, val_idx = stratified_split(labels, tcfg["val_fraction"], tcfg["seed"])
    val_logits = clf.logits([texts[i] for i in val_idx])
    test_x, test_y = read_examples(str(Path(args.data) / "test.csv"), args.text_col, args.label_col)
    known = {n: i for i, n in enumerate(clf.labels)}
    test_logits = clf.logits(test_x)
    unseen = np.array([y not in known for y in test_y])
    gold = np.array([known.get(y, -1) for y in test_y])
    pred = test_logits.argmax(1)
    base_acc = float((pred[~unseen] == gold[~unseen]).mean())
    print(f"\n{unseen.sum()} test texts of {len(set(np.array(test_y)[unseen]))} unseen labels; "
          f"{(~unseen).sum()} in scope, accuracy without a threshold {base_acc * 100:.2f} %\n")  # fmt: skip
    print(
        "| score | val in-scope flag rate | unseen flagged (oos recall) | in-scope accuracy | drop (points) |"
    )
    print("|---|---|---|---|---|")
    for kind in ("maxprob", "energy"):
        for rate in (0.01, 0.02, 0.03, 0.05, 0.1):
            threshold = np.quantile(oos_score(val_logits, kind), rate)
            flagged = oos_score(test_logits, kind) < threshold
            recall = float(flagged[unseen].mean())
            acc = float(((pred == gold) & ~flagged)[~unseen].mean())
            print(f"| {kind} | {rate * 100:.0f} % | {recall * 100:.1f} % | {acc * 100:.2f} % | "
                  f"{(base_acc - acc) * 100:.2f} |")  # fmt: skip


def _tfidf_lr(texts, y):
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    class Both:
        def __init__(self):
            self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
            self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)

        def fit_transform(self, x):
            return hstack([self.word.fit_transform(x), self.char.fit_transform(x)]).tocsr()

        def transform(self, x):
            return hstack([self.word.transform(x), self.char.transform(x)]).tocsr()

    vec = Both()
    return vec, _fit_lr(vec.fit_transform(texts), y, c=10.0)


def _fit_lr(x, y, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=1000).fit(x, y)


def _encoder():
    from sentence_transformers import SentenceTransformer

    from slmforge.core.hub import resolve_model

    return SentenceTransformer(str(resolve_model("minilm-l6")), device="cpu")


def _manifest(model: str) -> dict:
    from slmforge.core import workspace

    m = workspace.read_manifest(model).get("metrics", {})
    if "train_seconds" not in m:  # an export / quantization: the trained source's time
        src = m.get("verify_vs")
        if src and Path(src).exists():
            m = {**workspace.read_manifest(src).get("metrics", {}), **m}
    return m


if __name__ == "__main__":
    main()
