"""The input guard's injection detector on its held-out split: TPR / FPR and the added latency per request.

    nice -n 19 python benchmarks/guard.py --detector ~/.slmforge/models/guard-injection \\
        [--threshold 0.5] [--threads 1] [--extra-benign /work/shared/data/banking77/test.csv] [--json out.json]

Rows: rules only, the classifier only (at --threshold), and the guard as deployed (rules OR classifier),
on benchmarks/data/injection/heldout.csv (template families and slot values the detector never saw in
training; see the README there). FPR is also given on the hard negatives alone ("ignore the previous
transaction") and, with --extra-benign, on a file of real benign texts (every row counts as benign).
The threshold is the configured one, fixed before looking at the held-out split; the sweep below the
table shows other operating points for information. Latency: `Guard.check(text, route)` one text at a
time (PII scan + rules + classifier, tokenisation included), after a warm-up; p50 / p95 over the
held-out texts, and the same with the classifier off (what the model adds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
HELDOUT = HERE / "data" / "injection" / "heldout.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--detector", required=True, help="Classifier dir (torch or ONNX) with an 'injection' label."
    )
    ap.add_argument("--data", default=str(HELDOUT))
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra-benign", help="CSV of benign texts (column --extra-text-col) for a second FPR.")
    ap.add_argument("--extra-text-col", default="text")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--json", help="Also write the results here.")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    from slmforge.guard import load_guard, rule_hits
    from slmforge.runtime import set_threads

    set_threads(args.threads)
    with open(args.data, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    y = np.array([r["label"] == "injection" for r in rows])
    hard = np.array(["hard-negative" in r["family"] for r in rows])

    route = {"default": {"pii": "redact", "injection": "block"}}
    guard = load_guard(
        {"detector": args.detector, "threshold": args.threshold, "threads": args.threads, **route}
    )
    rules_only = load_guard({"detector": None, "threads": args.threads, **route})

    started = time.perf_counter()
    p_model = np.array([guard.injection_score(t) for t in texts])
    score_s = time.perf_counter() - started
    rule = np.array([bool(rule_hits(t)) for t in texts])
    model = p_model >= args.threshold
    results = {
        "data": args.data,
        "detector": args.detector,
        "threshold": args.threshold,
        "threads": args.threads,
        "examples": len(texts),
        "injections": int(y.sum()),
        "benign": int((~y).sum()),
        "hard_negatives": int(hard.sum()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "rows": {},
    }
    for name, pred in (("rules", rule), ("classifier", model), ("rules+classifier", rule | model)):
        results["rows"][name] = {
            "tpr": float(pred[y].mean()),
            "fpr": float(pred[~y].mean()),
            "fpr_hard_negatives": float(pred[hard].mean()) if hard.any() else None,
        }

    if args.extra_benign:
        with open(args.extra_benign, newline="", encoding="utf-8") as f:
            extra = [r[args.extra_text_col] for r in csv.DictReader(f)]
        p_extra = np.array([guard.injection_score(t) for t in extra])
        r_extra = np.array([bool(rule_hits(t)) for t in extra])
        results["extra_benign"] = {
            "file": args.extra_benign,
            "texts": len(extra),
            "fpr_rules": float(r_extra.mean()),
            "fpr_classifier": float((p_extra >= args.threshold).mean()),
            "fpr_rules+classifier": float((r_extra | (p_extra >= args.threshold)).mean()),
        }

    sweep = []
    for t in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99):
        pred = rule | (p_model >= t)
        sweep.append({"threshold": t, "tpr": float(pred[y].mean()), "fpr": float(pred[~y].mean())})
    results["sweep_rules+classifier"] = sweep

    # latency, one request at a time
    queries = [texts[i % len(texts)] for i in range(args.latency_queries)]
    lat = {}
    for name, g in (("guard", guard), ("guard_without_classifier", rules_only)):
        for q in queries[:20]:
            g.check(q, "default")
        times = []
        for q in queries:
            t0 = time.perf_counter()
            g.check(q, "default")
            times.append((time.perf_counter() - t0) * 1000)
        lat[name] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}
    results["latency"] = lat
    results["batch_scoring_per_text_ms"] = score_s / len(texts) * 1000

    print(f"held-out: {results['injections']} injections, {results['benign']} benign "
          f"({results['hard_negatives']} hard negatives); threshold {args.threshold}; threads {args.threads}")  # fmt: skip
    print(f"{'detector':<20}{'TPR':>8}{'FPR':>8}{'FPR hard':>10}")
    for name, r in results["rows"].items():
        hard_fpr = "-" if r["fpr_hard_negatives"] is None else f"{r['fpr_hard_negatives']:.1%}"
        print(f"{name:<20}{r['tpr']:>8.1%}{r['fpr']:>8.1%}{hard_fpr:>10}")
    if "extra_benign" in results:
        e = results["extra_benign"]
        print(f"extra benign {e['file']} ({e['texts']} texts): FPR rules {e['fpr_rules']:.2%}, "
              f"classifier {e['fpr_classifier']:.2%}, rules+classifier {e['fpr_rules+classifier']:.2%}")  # fmt: skip
    print("sweep (rules OR classifier >= t): " + ", ".join(
        f"t={s['threshold']}: TPR {s['tpr']:.1%} FPR {s['fpr']:.1%}" for s in sweep))  # fmt: skip
    for name, v in lat.items():
        print(f"latency {name}: p50 {v['p50_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms")
    print(
        f"added p50 by the classifier: {lat['guard']['p50_ms'] - lat['guard_without_classifier']['p50_ms']:.2f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
