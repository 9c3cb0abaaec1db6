"""The report of `slm eval`: one table (terminal and eval.md), eval.json, eval.png and predictions.jsonl.

The columns per task are `COLUMNS`: quality, then speed, memory, size and cost (`slmforge.lm.evaluate`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

QUALITY = {"generation": "exact_match", "classification": "accuracy", "multiple-choice": "accuracy"}
"""The quality metric on the plot's y axis, per task."""

# (header, row key, format) per task; the same columns in the terminal and in eval.md
_SPEED = [
    ("p50 s", "p50_s", "{:.3f}"),
    ("p95 s", "p95_s", "{:.3f}"),
    ("items/s", "items_per_s", "{:.2f}"),
    ("peak MB", "peak_rss_mb", "{:.0f}"),
    ("params", "params", "M"),
    ("disk MB", "disk_mb", "{:.1f}"),
    ("$/1k req", "cost_per_1k", "{:.4f}"),
]
COLUMNS = {
    "generation": [("EM", "exact_match", "{:.3f}"), ("F1", "token_f1", "{:.3f}"),
                   ("ROUGE-L", "rouge_l", "{:.3f}"), ("chrF", "chrf", "{:.3f}"),
                   ("chrF corpus", "chrf_corpus", "{:.3f}"), ("gen tok/s", "tokens_per_s", "{:.1f}")] + _SPEED,
    "classification": [("accuracy", "accuracy", "{:.3f}")] + _SPEED,
    "perplexity": [("tokens", "tokens", "{:,}"), ("loss", "loss", "{:.4f}"), ("perplexity", "perplexity", "{:.3f}"),
                   ("bits/byte", "bpb", "{:.4f}"), ("change", "perplexity_change", "{:+.1%}"),
                   ("time s", "seconds", "{:.0f}")],
}  # fmt: skip
COLUMNS["multiple-choice"] = COLUMNS["classification"]


def table_rows(rows: list[dict], task: str) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the one table: model, backend, data, items, quality, speed, cost."""
    cols = COLUMNS[task]
    lead = ["model", "data"] if task == "perplexity" else ["model", "backend", "data", "shots", "items"]
    body = []
    for r in rows:
        cells = [short_name(r["model"]), Path(r["data"]).name]
        if task != "perplexity":
            cells = [short_name(r["model"]), f"{r['backend']} {r['precision']}", Path(r["data"]).name,
                     str(r["shots"]), str(r["items"])]  # fmt: skip
        for _, key, fmt in cols:
            v = r.get(key)
            cells.append("" if v is None else f"{v / 1e6:.1f}M" if fmt == "M" else fmt.format(v))
        body.append(cells)
    return lead + [h for h, _, _ in cols], body


def markdown(rows: list[dict], task: str) -> str:
    head, body = table_rows(rows, task)
    lines = [f"# slm eval: {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    if task != "perplexity" and rows:
        lines += [
            "",
            f"Latency: seconds per item, one request at a time (p50/p95 over {rows[0]['latency_items']} "
            "items). items/s and tokens/s: the batched run over all items. Cost per 1,000 requests: batched "
            f"seconds per item at {rows[0]['price_per_hour']} USD/hour. Peak MB: ru_maxrss of the process "
            "that ran the model. EM, F1, ROUGE-L and chrF are means over items; chrF is sacrebleu's sentence chrF, "
            "chrF corpus its corpus chrF (n-gram counts pooled over items); see `slmforge/lm/text_metrics.py`.",
        ]
    return "\n".join(lines) + "\n"


def plot_png(rows: list[dict], task: str) -> bytes:
    """Quality vs p50 latency, one labelled point per row (perplexity: bits per byte per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    labels = [short_name(r["model"]) + (f" ({r['shots']}-shot)" if r.get("shots") else "") for r in rows]
    if task == "perplexity":
        ax.bar(range(len(rows)), [r["bpb"] for r in rows])
        ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right")
        ax.set_ylabel("bits per byte (lower is better)")
    else:
        key = QUALITY[task]
        xs, ys = [r["p50_s"] for r in rows], [r[key] for r in rows]
        ax.scatter(xs, ys)
        for x, y, name in zip(xs, ys, labels):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("p50 latency per item (s)")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    ax.set_title(f"slm eval: {task}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(rows: list[dict], task: str, out_dir: str) -> list[Path]:
    """eval.json, eval.md, eval.png (and predictions.jsonl) in `out_dir`; all rendered before any is written."""
    from slmforge.core.fsutil import atomic_file

    out = Path(out_dir)
    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in rows]
    files = {
        "eval.json": json.dumps({"task": task, "rows": summary}, indent=2, default=str) + "\n",
        "eval.md": markdown(summary, task),
        "eval.png": plot_png(summary, task),
    }
    if any("predictions" in r for r in rows):
        files["predictions.jsonl"] = "".join(
            json.dumps({"model": r["model"], "data": r["data"], **p}, ensure_ascii=False) + "\n"
            for r in rows
            for p in r.get("predictions", [])
        )
    for name, body in files.items():
        with atomic_file(out / name, "wb" if isinstance(body, bytes) else "w") as f:
            f.write(body)
    return [out / n for n in files]


def short_name(model: str) -> str:
    """A model's name for tables: the last part of its path."""
    return Path(model).name or model
