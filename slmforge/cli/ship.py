"""`slm export`, `slm quantize` and `slm eval`: shipping a model and measuring it.

`slm eval` takes EvalConfig's options; the models pick the family (trained classifiers, with --task
classification, or causal LMs), and a flag whose field belongs to the other family is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slmforge.cli.options import Flags, Opts, options
from slmforge.cli.render import derived_rows, out, table
from slmforge.core.errors import SlmError


@options(
    Opts("slmforge.ship.export:ExportConfig", args=("model",), short={"out": "-o"},
         exclude=("verify_texts", "tolerance"))
)  # fmt: skip
def export_cmd(cfg) -> None:
    """Export a model to another runtime, verified against the source (agreement in the manifest)."""
    from slmforge.ship.export import export

    table("export", derived_rows(export(cfg)))


@options(
    Opts("slmforge.ship.quantize:QuantizeConfig", args=("model",), short={"out": "-o"},
         rename={"per_channel": "--per-channel/--per-tensor"}, exclude=("verify_texts", "min_cosine"))
)  # fmt: skip
def quantize_cmd(cfg) -> None:
    """Quantize a model (int8 / int4 weights) and verify it against fp32 (agreement, perplexity in the manifest)."""
    from slmforge.ship.quantize import quantize

    table("quantize", derived_rows(quantize(cfg)))


@options(Opts("slmforge.ship.evaluate:EvalConfig", args=("models",), exclude=("device", "gen_batch_size")))
def eval_cmd(
    flags: Flags,
    json_out: str | None = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
    out_dir: str | None = typer.Option(
        None, "--out", help="Write eval.json, eval.md, eval.png (and predictions.jsonl) here."
    ),
) -> None:
    """Evaluate models side by side, offline: perplexity, or for causal LMs generation (EM, F1, ROUGE-L,
    chrF) and classification / multiple choice by label log-likelihood (classification --constrain: generated
    under a choice constraint over the labels), next to latency, memory and cost."""
    from slmforge.core.fsutil import write_json
    from slmforge.lm.evaluate import is_causal_lm
    from slmforge.ship.evaluate import evaluate

    models, task = flags["models"], flags["task"]
    family = "classifier" if task == "classification" and not all(map(is_causal_lm, models)) else "causal LM"
    if task == "extraction":
        family = "classifier"  # token classifiers and spaCy; a causal LM is refused with its reason
    stray = flags.stray(family)
    if stray:
        other = "classifiers" if family == "causal LM" else "causal LMs"
        are = f"is a {family}" if len(models) == 1 else f"are {family}s"
        raise SlmError(f"{', '.join(stray)} apply to {other}; {', '.join(models)} {are}")
    rows = evaluate(flags.config(family))
    if task == "extraction":
        extraction_table(rows)
    elif rows and "runtime" in rows[0]:  # trained classifiers
        classification_table(rows)
    else:
        eval_table(rows, task)
    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in rows]
    if out_dir:
        from slmforge.lm.eval_report import write_report

        if task == "extraction":
            write_extraction_report(rows, summary, Path(out_dir))
        elif rows and "runtime" in rows[0]:
            write_json(Path(out_dir) / "eval.json", {"task": task, "rows": summary})
        else:
            written = write_report(rows, task, out_dir)
            out.print(f"report: {', '.join(str(p) for p in written)}", highlight=False)
    if json_out:
        write_json(json_out, summary)


def eval_table(rows: list[dict], task: str) -> None:
    """The `slm eval` table of causal LMs."""
    from rich.table import Table

    from slmforge.lm.eval_report import table_rows

    head, body = table_rows(rows, task)
    t = Table(title=f"eval: {task}")
    for i, col in enumerate(head):  # model names whole, the rest may fold on a narrow terminal
        t.add_column(col, overflow="fold", min_width=max([len(c[i]) for c in body]) if i == 0 else None)
    for cells in body:
        t.add_row(*cells)
    print_wide(t)


def print_wide(t) -> None:
    """A wide table whole: on a terminal as it fits, in logs and pipes at 200 columns."""
    if out.is_terminal:
        out.print(t)
        return
    width = out.width  # logs and pipes: 200 columns, so 18 columns do not fold (print(width=) cannot
    out.width = max(width, 200)  # exceed the console's own width)
    try:
        out.print(t, crop=False)
    finally:
        out.width = width


def extraction_table(rows: list[dict]) -> None:
    """The `slm eval --task extraction` tables: one row per (model, data), then F1 per label and model."""
    from rich.table import Table

    t = Table(title="eval: extraction (exact span + label)")
    cols = ["model", "runtime", "data", "records", "labels scored", "precision", "recall", "micro-F1",
            "overlap F1", "record EM", "JSON valid", "p50 ms", "p95 ms", "texts /s", "params", "disk MB"]  # fmt: skip
    for col in cols:
        t.add_column(col, overflow="fold")
    for r in rows:
        labels = f"{len(r['scored_labels'])}/{len(r['file_labels'])}"
        t.add_row(r["model"], r["runtime"], Path(r["data"]).name, f"{r['records']:,}", labels, f"{r['precision']:.4f}",
                  f"{r['recall']:.4f}", f"{r['micro_f1']:.4f}", f"{r['overlap_f1']:.4f}", f"{r['exact_match']:.4f}",
                  "n/a" if r["json_validity"] is None else f"{r['json_validity']:.3f}",
                  f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['throughput_per_s']:.3g}",
                  f"{r['params'] / 1e6:.1f}M" if r["params"] else "n/a",
                  f"{r['disk_mb']:.1f}" if r["disk_mb"] is not None else "n/a")  # fmt: skip
    print_wide(t)
    labels = sorted({x["label"] for r in rows for x in r["per_label"]})
    per = Table(title="F1 per label (support = gold spans)")
    per.add_column("label")
    per.add_column("support")
    for r in rows:
        per.add_column(f"{r['model']} · {Path(r['data']).stem}", overflow="fold")
    for label in labels:
        cells = {r["model"] + r["data"]: next((x for x in r["per_label"] if x["label"] == label), None)
                 for r in rows}  # fmt: skip
        support = max((c["support"] for c in cells.values() if c), default=0)
        per.add_row(label, str(support), *(f"{c['f1']:.3f}" if c else "-" for c in cells.values()))
    print_wide(per)
    restricted = [r for r in rows if len(r["scored_labels"]) < len(r["file_labels"])]
    for r in restricted:
        out.print(f"{r['model']} on {r['data']}: scored on {', '.join(r['scored_labels'])} only (the labels "
                  "it can produce), on both sides", highlight=False)  # fmt: skip


def write_extraction_report(rows: list[dict], summary: list[dict], out_dir: Path) -> None:
    """eval.json (every row, without predictions) and one predictions JSONL per row."""
    from slmforge.core.fsutil import atomic_file, write_json

    write_json(out_dir / "eval.json", {"task": "extraction", "rows": summary})
    for i, r in enumerate(rows):
        name = f"predictions-{i}-{Path(r['model'].removeprefix('spacy:')).name}-{Path(r['data']).stem}.jsonl"
        with atomic_file(out_dir / name) as f:
            for p in r["predictions"]:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
    out.print(f"report: {out_dir / 'eval.json'} and {len(rows)} predictions file(s)", highlight=False)


def classification_table(rows: list[dict]) -> None:
    """The `slm eval` table of trained classifiers."""
    from rich.table import Table

    t = Table(title="eval: classification")
    cols = ["model", "runtime", "data", "examples", "accuracy", "macro-F1"]
    has_oos = any("oos_recall" in r for r in rows)
    if has_oos:
        cols += ["in-scope acc", "oos precision", "oos recall"]
    cols += ["p50 ms", "p95 ms", "batch /s", "params", "disk MB", "model RSS MB"]
    for col in cols:
        t.add_column(col, overflow="fold")
    for r in rows:
        cells = [r["model"], r["runtime"], r["data"], f"{r['examples']:,}", f"{r['accuracy']:.4f}",
                 f"{r['macro_f1']:.4f}"]  # fmt: skip
        if has_oos:
            cells += [f"{r['in_scope_accuracy']:.4f}" if r.get("in_scope_accuracy") is not None else "",
                      f"{r['oos_precision']:.3f}" if "oos_precision" in r else "",
                      f"{r['oos_recall']:.3f}" if "oos_recall" in r else ""]  # fmt: skip
        cells += [f"{r['p50_ms']:.3g}", f"{r['p95_ms']:.3g}", f"{r['throughput_per_s']:.0f}",
                  f"{r['params'] / 1e6:.1f}M", f"{r['disk_mb']:.1f}", f"{r['model_rss_mb']:.0f}"]  # fmt: skip
        t.add_row(*cells)
    out.print(t)
    for r in rows:
        if r.get("report_dir"):
            out.print(
                f"report: {r['report_dir']} (metrics.json, per_class.json, confusion.png)", highlight=False
            )
