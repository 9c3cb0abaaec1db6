"""The input guard's injection detector on its held-apart sets: recall at <= 1 % FPR, FPR per language, latency.

    nice -n 10 python benchmarks/guard.py --detector ~/.slmforge/models/guard-injection \\
        [--data benchmarks/data/injection/heldout.csv benchmarks/data/injection/hard.csv] [--threads 1] \\
        [--extra-benign /work/shared/data/banking77/test.csv] [--json out.json] [--markdown out.md]

For each data file (default: heldout.csv, new wordings of the training techniques, and hard.csv, the
obfuscated / multilingual / role-placed attacks and the hard negatives in 12 languages; both made of
template families and slot pools the detector never trained on, see benchmarks/data/injection/README.md)
and each detector part (rules only, the MiniLM encoder only, the n-gram model only, their average, and
the guard as deployed: rules OR average, on normalised text):

- recall and FPR at the configured threshold (the detector's own, chosen on val.csv at build time);
- recall at <= 1 % FPR: the best recall over all thresholds whose FPR is at most 1 % on that file. The
  threshold is picked on the file itself (as Llama Prompt Guard 2 reports itself), so it is an oracle
  figure; the configured-threshold row is the one a deployment gets;
- FPR per language (a file with a `language` column) and on the hard negatives.

Latency: `Guard.check(text, route)` one text at a time (PII scan + rules + classifier, normalisation and
tokenisation included) after a warm-up, over the texts of all files cycled; p50 / p95, and the same with
the classifier off: the difference is what the detector adds.
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
DATA = [HERE / "data" / "injection" / "heldout.csv", HERE / "data" / "injection" / "hard.csv"]
MAX_FPR = 0.01


def recall_at_fpr(
    scores: np.ndarray, rule: np.ndarray, y: np.ndarray, max_fpr: float
) -> tuple[float, float, float]:
    """(recall, fpr, threshold) of `rule OR scores >= t` at the t with the best recall and FPR <= max_fpr."""
    best = (0.0, 0.0, 1.0)
    for t in np.unique(np.concatenate([scores, [1.0 + 1e-9]])):
        pred = rule | (scores >= t)
        fpr = float(pred[~y].mean())
        if fpr <= max_fpr and float(pred[y].mean()) > best[0]:
            best = (float(pred[y].mean()), fpr, float(t))
    return best


def evaluate(path: Path, guard, threshold: float) -> dict:
    from slmforge.guard import rule_hits

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    y = np.array([r["label"] == "injection" for r in rows])
    hard = np.array([r.get("family", "").startswith(("hard-negative", "hardneg")) for r in rows])
    lang = np.array([r.get("language") or "" for r in rows])
    started = time.perf_counter()
    parts = guard.component_scores(texts)
    batch_ms = (time.perf_counter() - started) / len(texts) * 1000
    rule = np.array([bool(rule_hits(t)) for t in texts])
    never = np.zeros(len(texts), bool)
    variants = {
        "rules": (np.zeros(len(texts)), rule, None),
        "encoder": (parts["encoder"], never, threshold),
        "combined": (parts["combined"], never, threshold),
        "rules OR combined (deployed)": (parts["combined"], rule, threshold),
    }
    if "ngram" in parts:
        variants = {**dict(list(variants.items())[:2]), "ngram": (parts["ngram"], never, threshold),
                    **dict(list(variants.items())[2:])}  # fmt: skip
    out = {"file": str(path), "texts": len(texts), "injections": int(y.sum()), "benign": int((~y).sum()),
           "hard_negatives": int(hard.sum()), "batch_scoring_ms_per_text": batch_ms, "rows": {}}  # fmt: skip
    for name, (s, r, t) in variants.items():
        pred = r | (s >= t) if t is not None else r
        at = (
            recall_at_fpr(s, r, y, MAX_FPR)
            if t is not None
            else (float(pred[y].mean()), float(pred[~y].mean()), None)
        )
        out["rows"][name] = {
            "recall": float(pred[y].mean()), "fpr": float(pred[~y].mean()),
            "fpr_hard_negatives": float(pred[hard].mean()) if hard.any() else None,
            "recall_at_1pct_fpr": at[0], "fpr_at_that_point": at[1], "oracle_threshold": at[2],
        }  # fmt: skip
    s, r, t = variants["rules OR combined (deployed)"]
    pred = r | (s >= t)
    if any(lang):
        out["fpr_by_language"] = {
            code: {"benign": int((~y & (lang == code)).sum()), "fpr": float(pred[~y & (lang == code)].mean())}
            for code in sorted(set(lang[~y]))
        }
        out["recall_by_language"] = {
            code: {
                "attacks": int((y & (lang == code)).sum()),
                "recall": float(pred[y & (lang == code)].mean()),
            }
            for code in sorted(set(lang[y]))
        }
    families = sorted({r["family"] for r in rows})
    fam = np.array([r["family"] for r in rows])
    out["missed_by_family"] = {
        f: int((y & ~pred & (fam == f)).sum()) for f in families if (y & ~pred & (fam == f)).any()
    }
    out["false_positives"] = [texts[i] for i in np.flatnonzero(~y & pred)]
    return out


def latency(guard, rules_only, texts: list[str], n: int) -> dict:
    queries = [texts[i % len(texts)] for i in range(n)]
    lat = {}
    for name, g in (("guard", guard), ("guard_without_classifier", rules_only)):
        for q in queries[:20]:
            g.check(q, "default")
        times, cpu = [], []
        for q in queries:
            t0, c0 = time.perf_counter(), time.thread_time()
            g.check(q, "default")
            cpu.append((time.thread_time() - c0) * 1000)
            times.append((time.perf_counter() - t0) * 1000)
        lat[name] = {
            "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p95_ms": float(np.percentile(cpu, 95)),
        }  # fmt: skip
    for key in ("p50_ms", "p95_ms", "cpu_p50_ms", "cpu_p95_ms"):
        lat[f"added_{key}"] = lat["guard"][key] - lat["guard_without_classifier"][key]
    return lat


def markdown(results: dict) -> str:
    lines = []
    for ev in results["files"]:
        lines += [
            f"**{Path(ev['file']).name}**: {ev['injections']} attacks, {ev['benign']} benign "
            f"({ev['hard_negatives']} hard negatives); configured threshold {results['threshold']:.4f}",
            "",
            "| detector | recall | FPR | FPR hard negatives | recall at <= 1 % FPR (oracle threshold) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in ev["rows"].items():
            hard = "" if r["fpr_hard_negatives"] is None else f"{r['fpr_hard_negatives']:.1%}"
            at = f"{r['recall_at_1pct_fpr']:.1%} (FPR {r['fpr_at_that_point']:.1%})"
            lines.append(f"| {name} | {r['recall']:.1%} | {r['fpr']:.1%} | {hard} | {at} |")
        if "fpr_by_language" in ev:
            codes = list(ev["fpr_by_language"])
            lines += ["", "FPR per language (the deployed guard):", "",
                      "| " + " | ".join(codes) + " |", "|" + "---:|" * len(codes),
                      "| " + " | ".join(f"{v['fpr']:.1%} ({v['benign']})" for v in ev["fpr_by_language"].values()) + " |"]  # fmt: skip
            codes = list(ev["recall_by_language"])
            lines += ["", "Recall per attack language (the deployed guard):", "",
                      "| " + " | ".join(codes) + " |", "|" + "---:|" * len(codes),
                      "| " + " | ".join(f"{v['recall']:.1%} ({v['attacks']})" for v in ev["recall_by_language"].values()) + " |"]  # fmt: skip
        lines.append("")
    lat = results["latency"]
    lines.append(
        f"Latency, one thread, `Guard.check` one text at a time: p50 {lat['guard']['p50_ms']:.2f} ms, p95 "
        f"{lat['guard']['p95_ms']:.2f} ms; without the classifier p50 {lat['guard_without_classifier']['p50_ms']:.2f} "
        f"ms; **added p50 {lat['added_p50_ms']:.2f} ms**, p95 {lat['added_p95_ms']:.2f} ms (wall clock, on a shared "
        f"machine: an upper bound). CPU time of the checking thread (what one idle core would take): added p50 "
        f"{lat['added_cpu_p50_ms']:.2f} ms, p95 {lat['added_cpu_p95_ms']:.2f} ms (guard p50 {lat['guard']['cpu_p50_ms']:.2f} ms)."
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", required=True, help="A built detector dir (python -m slmforge.guard).")
    ap.add_argument("--data", nargs="+", default=[str(p) for p in DATA])
    ap.add_argument("--threshold", type=float, help="Default: the detector's own (guard.json).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra-benign", help="CSV of benign texts (column --extra-text-col) for another FPR.")
    ap.add_argument("--extra-text-col", default="text")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--json", help="Also write the results here.")
    ap.add_argument("--markdown", help="Also write the tables here.")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    from slmforge.core.runtime import set_threads
    from slmforge.guard import load_guard, rule_hits

    set_threads(args.threads)
    route = {"default": {"pii": "redact", "injection": "block"}}
    cfg = {"detector": args.detector, "threads": args.threads, **route}
    if args.threshold is not None:
        cfg["threshold"] = args.threshold
    guard = load_guard(cfg)
    rules_only = load_guard({"detector": None, "threads": args.threads, **route})
    threshold = guard.threshold()
    results = {
        "detector": args.detector,
        "threshold": threshold,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "load_average": os.getloadavg(),
        "files": [evaluate(Path(p), guard, threshold) for p in args.data],
    }
    if args.extra_benign:
        with open(args.extra_benign, newline="", encoding="utf-8") as f:
            extra = [r[args.extra_text_col] for r in csv.DictReader(f)]
        s = guard.injection_scores(extra)
        r = np.array([bool(rule_hits(t)) for t in extra])
        results["extra_benign"] = {"file": args.extra_benign, "texts": len(extra),
                                   "fpr_rules": float(r.mean()), "fpr_deployed": float((r | (s >= threshold)).mean())}  # fmt: skip
    texts = []
    for p in args.data:
        with open(p, newline="", encoding="utf-8") as f:
            texts += [r["text"] for r in csv.DictReader(f)]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    results["latency"] = latency(guard, rules_only, texts, args.latency_queries)
    results["load_average_after"] = os.getloadavg()

    md = markdown(results)
    print(md)
    if "extra_benign" in results:
        e = results["extra_benign"]
        print(f"extra benign {e['file']} ({e['texts']} texts): FPR rules {e['fpr_rules']:.2%}, "
              f"deployed {e['fpr_deployed']:.2%}")  # fmt: skip
    for ev in results["files"]:
        print(f"{Path(ev['file']).name}: missed by family {ev['missed_by_family']}")
        for t in ev["false_positives"]:
            print(f"  false positive: {t[:120]!r}")
    print(f"load average before {results['load_average']}, after {results['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
