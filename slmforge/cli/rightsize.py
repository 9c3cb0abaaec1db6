"""`slm rightsize`: the smallest model that meets a target, for classifiers or causal LMs (--task).

The options are those of both families' configs, RightsizeConfig (--task classification) and
RightsizeGenConfig (--task generation); a flag that only the other task's config has is refused.
"""

from __future__ import annotations

import typer

from slmforge.cli.options import Flags, Opts, options
from slmforge.cli.render import ladder_mark, out
from slmforge.core.errors import SlmError

TASKS = ("classification", "generation")
CLASSIFICATION = Opts(
    "slmforge.ship.rightsize.configs:RightsizeConfig",
    family="classification",
    short={"out": "-o"},
    exclude=("task",),
    comma=("layers",),
    defaults={"eval_data": None},  # checked below, with the task's own message
)
GENERATION = Opts(
    "slmforge.ship.rightsize.configs:RightsizeGenConfig",
    family="generation",
    short={"out": "-o"},
    exclude=("device", "tune_epochs", "tune_options"),
    comma=("models",),
    defaults={"eval_data": None},
)


@options(CLASSIFICATION, GENERATION)
def rightsize_cmd(
    flags: Flags,
    task: str = typer.Option(
        "classification",
        "--task",
        help="classification (prune/int8 ladder of a trained classifier) or generation (a ladder of causal "
        "LMs, prompted and fine-tuned).",
    ),
) -> None:
    """Evaluate a ladder of models and pick the smallest that meets the target: classification (pruned,
    distilled, int8 versions of a classifier) or generation (causal LMs, k-shot, as is and fine-tuned);
    writes report.md + pareto.png + ladder.json and registers the pick."""
    if task not in TASKS:
        raise SlmError(f"--task must be classification or generation, not {task!r}")
    if not flags["eval_data"]:
        what = "labelled file" if task == "classification" else "prompt/completion JSONL"
        raise SlmError(f"--task {task} needs --eval-data (the {what} the target is checked on)")
    other = TASKS[1 - TASKS.index(task)]
    stray = flags.stray(task)
    if stray:
        hint = " (fine-tuning data is --tune-data)" if "--data" in stray else ""
        raise SlmError(f"{', '.join(stray)}: for --task {other}, not --task {task}{hint}")
    if task == "generation":
        if not [m for m in (flags["models"] or "").split(",") if m.strip()]:
            raise SlmError(
                "--task generation needs --models A,B,C (catalog names, model dirs or finetune runs)"
            )
        rightsize_generation(flags.config("generation"))
        return
    if not flags["data"]:
        raise SlmError("--task classification needs --data (the labelled file the base trained on)")
    rightsize_classification(flags.config("classification"))


def rightsize_classification(cfg) -> None:
    """Build and score the classifier ladder; print it and the pick."""
    from rich.table import Table

    from slmforge.ship.rightsize.classification import rightsize

    r = rightsize(cfg)
    table = Table(
        title="right-sizing ladder: " + ", ".join(f"{k} (= {v:.4g})" for k, v in r["thresholds"].items())
    )
    for col in ("rung", "runtime", "params", "disk MB", "accuracy", "macro-F1", "p50 ms", "meets"):
        table.add_column(col, overflow="fold")
    for t in r["table"]:
        picked = r["pick"] and t["rung"] == r["pick"]["rung"]
        table.add_row(t["rung"], t["runtime"], f"{t['params'] / 1e6:.2f}M", f"{t['disk_mb']:.1f}",
                      f"{t['accuracy']:.4f}", f"{t['macro_f1']:.4f}", f"{t['p50_ms']:.3g}",
                      ladder_mark(picked, t["meets"]))  # fmt: skip
    out.print(table)
    if r["pick"]:
        out.print(f"pick: {r['pick']['path']}", highlight=False)
    else:
        out.print("no rung meets the target", highlight=False)
    out.print(f"report: {r['report']} and {r['plot']}", highlight=False)


def rightsize_generation(cfg) -> None:
    """Evaluate the causal-LM ladder; print it and the pick."""
    from rich.table import Table

    from slmforge.ship.rightsize.generation import format_value, no_pick_message
    from slmforge.ship.rightsize.generation import rightsize_generation as run

    r = run(cfg)
    title = ", ".join(f"{k}" + (f" (= {v:.4g})" if v is not None and "base" in k else "")
                      for k, v in r["thresholds"].items())  # fmt: skip
    table = Table(title=f"right-sizing ladder: {title}")
    for col in ("rung", "variant", "backend", "EM", "F1", "ROUGE-L", "chrF", "p50 ms", "p95 ms", "tok/s",
                "params", "disk MB", "meets"):  # fmt: skip
        table.add_column(col, overflow="fold")

    def f(v, spec):
        return "" if v is None else format_value(v, spec)

    for t in r["table"]:
        variant = f"{t['shots']}-shot" if t["variant"] == "prompted" else t["variant"]
        if "error" in t:
            table.add_row(t["rung"], variant, *[""] * 10, f"[red]failed[/red]: {t['error']}")
            continue
        picked = r["pick"] and t["rung"] == r["pick"]["rung"]
        table.add_row(t["rung"], variant, f"{t['backend']} {t['precision']}", f(t["exact_match"], ".3f"),
                      f(t["token_f1"], ".3f"), f(t["rouge_l"], ".3f"), f(t["chrf"], ".3f"), f(t["p50_ms"], ".1f"),
                      f(t["p95_ms"], ".1f"), f(t["tokens_per_s"], ".1f"), f(t["params"], "M"),
                      f(t["disk_mb"], ".1f"), ladder_mark(picked, t["meets"]))  # fmt: skip
    out.print(table)
    if r["pick"]:
        p = r["pick"]
        out.print(f"pick: {p['rung']} ({p['model']}" + (f", {p['shots']}-shot" if p["shots"] else "") + ")",
                  highlight=False)  # fmt: skip
    else:
        out.print(no_pick_message(r["table"]), highlight=False)
    out.print(f"report: {r['report']} and {r['plot']}", highlight=False)
