"""`slm classify train` and `slm classify predict`: text classifiers (options from ClassifyTrainConfig)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from slmforge.cli.options import Opts, options
from slmforge.cli.render import out, table
from slmforge.core.errors import SlmError

classify_app = typer.Typer(
    help="Train and use text classifiers (intent, sentiment, topic).", no_args_is_help=True
)


@classify_app.command("train")
@options(
    Opts("slmforge.clf.configs:ClassifyTrainConfig", short={"out": "-o"},
         exclude=("weight_decay", "warmup_fraction", "few_shot_lr"))
)  # fmt: skip
def classify_train(cfg) -> None:
    """Fine-tune an encoder into a text classifier (intent, sentiment, topic) on CPU."""
    from slmforge.clf.train import train_classifier

    r = train_classifier(cfg)
    table(
        "classifier",
        {
            "model": r.model_dir,
            "labels": len(r.labels),
            "params": f"{r.params / 1e6:.2f}M",
            "train / val examples": f"{r.train_examples:,} / {r.val_examples:,}",
            "frozen + LR val accuracy": f"{r.frozen_lr_val_accuracy:.4f}",
            "val accuracy": f"{r.val_accuracy:.4f}",
            "val macro-F1": f"{r.val_macro_f1:.4f}",
            "best epoch": f"{r.best_epoch} of {r.epochs_run}",
            **({"oos threshold": f"{r.oos_threshold:.4f}"} if r.oos_threshold is not None else {}),
            "time": f"{r.elapsed_s:.0f}s",
        },
    )


@classify_app.command("predict")
def classify_predict(
    model: str = typer.Argument(..., help="Classifier dir (torch, or ONNX from slm export / quantize)."),
    texts: list[str] | None = typer.Argument(None, help="Texts to classify."),
    file: str | None = typer.Option(None, "--file", help="A .txt file, one text per line."),
    threads: int | None = typer.Option(
        None, "--threads", help=escape("Compute threads [default: the free cores, never more].")
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Label texts with a trained classifier (`oos` when below its calibrated threshold)."""
    import json

    from rich.table import Table

    from slmforge.clf.predict import predict

    items = list(texts or [])
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
            items += [line.strip() for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise SlmError(f"cannot read {file}: {e}") from None
    if not items:
        raise SlmError("give texts to classify, or --file")
    rows = predict(model, items, threads=threads)
    if json_out:
        for r in rows:
            out.print(json.dumps(r, ensure_ascii=False), highlight=False, soft_wrap=True)
        return
    t = Table(title="predictions")
    for col in ("text", "label", "score"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["text"], r["label"], f"{r['score']:.3f}")
    out.print(t)
