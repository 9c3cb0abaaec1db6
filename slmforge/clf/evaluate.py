"""Evaluate a trained classifier on a labelled file: `slm eval --task classification` on classifiers.

Accuracy, macro-F1, a per-class report and a row-normalised confusion matrix, out-of-scope precision
and recall, single-query latency (p50 / p95, tokenisation included), batched throughput, parameters,
disk size and resident memory. `macro_f1` is also the trainers' per-epoch validation score.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from slmforge.clf.examples import OOS, preview, read_examples
from slmforge.clf.io import dir_size
from slmforge.clf.predict import load_classifier
from slmforge.core.errors import SlmError


def evaluate_classifier(
    model: str,
    data: str,
    text_col: str | None = None,
    label_col: str | None = None,
    report_dir: str | None = None,
    unseen_as_oos: bool = False,
    latency_queries: int = 200,
    batch_size: int = 64,
    threads: int | None = None,
    encoding: str = "utf-8",
    progress: bool = False,
) -> dict:
    """Accuracy, macro-F1, per-class report, confusion matrix PNG, OOS precision/recall, latency, size.

    Labels the model never saw raise an error, unless `unseen_as_oos` (they then count as `oos`, the
    way an out-of-scope test set is scored). Latency is one query at a time, tokenisation included.
    """
    from slmforge.core.fsutil import write_json
    from slmforge.core.progress import bar

    rss_before = _rss_mb()
    clf = load_classifier(model, threads)
    text_col = text_col or clf.meta.get("text_col", "text")
    label_col = label_col or clf.meta.get("label_col", "label")
    texts, gold = read_examples(data, text_col, label_col, encoding)
    known = set(clf.labels)
    unseen = sorted({g for g in gold if g not in known and g != OOS})
    if unseen and not unseen_as_oos:
        raise SlmError(
            f"{data} has {len(unseen)} labels the model was not trained on: {preview(unseen)} "
            "(pass --unseen-as-oos to score them as out-of-scope)"
        )
    gold = [OOS if g not in known else g for g in gold]

    t0 = time.perf_counter()
    logits = []
    with bar("classify", total=len(texts), enabled=progress) as b:
        for start in range(0, len(texts), batch_size):
            logits.append(clf.logits(texts[start : start + batch_size], batch_size))
            b.advance(min(batch_size, len(texts) - start))
    logits = np.concatenate(logits)
    batch_seconds = time.perf_counter() - t0
    pred = clf.decide(logits)
    names = clf.labels + ([OOS] if OOS in gold or OOS in pred else [])
    index = {n: i for i, n in enumerate(names)}
    g = np.array([index[x] for x in gold])
    p = np.array([index[x] for x in pred])
    per_class = per_class_report(g, p, names)
    in_scope = g != index.get(OOS, -1)
    result = {
        "model": str(model),
        "data": str(data),
        "runtime": clf.runtime,
        "examples": len(texts),
        "accuracy": float((g == p).mean()),
        "macro_f1": float(np.mean([r["f1"] for r in per_class if r["support"] > 0])),
        "in_scope_accuracy": float((g[in_scope] == p[in_scope]).mean()) if in_scope.any() else None,
    }
    if OOS in index:
        o = index[OOS]
        tp = int(((p == o) & (g == o)).sum())
        result["oos_precision"] = tp / max(int((p == o).sum()), 1)
        result["oos_recall"] = tp / max(int((g == o).sum()), 1)
        result["oos_examples"] = int((g == o).sum())
    queries = [texts[i % len(texts)] for i in range(min(latency_queries, max(len(texts), 1)))]
    for q in queries[:10]:  # warm-up
        clf.logits([q])
    times = []
    for q in queries:
        t = time.perf_counter()
        clf.logits([q])
        times.append((time.perf_counter() - t) * 1000)
    result |= {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "throughput_per_s": len(texts) / batch_seconds,
        "params": clf.params(),
        "disk_mb": dir_size(clf.path) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # the whole process
        "model_rss_mb": _rss_mb() - rss_before,  # resident memory this model added (load + inference)
    }
    if report_dir:
        rd = Path(report_dir)
        rd.mkdir(parents=True, exist_ok=True)
        write_json(rd / "metrics.json", result)
        write_json(rd / "per_class.json", per_class)
        plot_confusion(g, p, names, rd / "confusion.png")
        result["report_dir"] = str(rd)
    result["per_class"] = per_class
    return result


def per_class_report(gold: np.ndarray, pred: np.ndarray, names: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(names):
        tp = int(((pred == i) & (gold == i)).sum())
        n_pred, n_gold = int((pred == i).sum()), int((gold == i).sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": name, "precision": precision, "recall": recall, "f1": f1, "support": n_gold})
    return rows


def macro_f1(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    rows = per_class_report(np.asarray(gold), np.asarray(pred), [str(i) for i in range(n_labels)])
    return float(np.mean([r["f1"] for r in rows if r["support"] > 0]))


def plot_confusion(gold: np.ndarray, pred: np.ndarray, names: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slmforge.core.fsutil import atomic_file

    n = len(names)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (gold, pred), 1)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(6.0, min(24.0, n * 0.22))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=6 if n > 30 else 9)
    ax.set_yticks(range(n), names, fontsize=6 if n > 30 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (row-normalised), accuracy {np.trace(cm) / max(cm.sum(), 1):.4f}")
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e6
    except OSError:
        return float("nan")
