"""`slm classify train` and `slm classify predict`: text classifiers (options from ClassifyTrainConfig)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from slmforge.cli.options import Flags, Opts, options
from slmforge.cli.render import out, table
from slmforge.core.errors import SlmError

TASKS = ("text", "tokens")

classify_app = typer.Typer(
    help="Train and use text classifiers (intent, sentiment, topic) and entity taggers.", no_args_is_help=True
)


@classify_app.command("train")
@options(
    Opts("slmforge.clf.configs:ClassifyTrainConfig", family="text classifier", short={"out": "-o"},
         exclude=("weight_decay", "warmup_fraction", "few_shot_lr")),
    Opts("slmforge.clf.configs:TokenTrainConfig", family="token classifier", short={"out": "-o"},
         exclude=("weight_decay", "warmup_fraction"), comma=("labels",)),
)  # fmt: skip
def classify_train(
    flags: Flags,
    task: str = typer.Option(
        "text", "--task", help="text: one label per text; tokens: entity spans (BIO tags per word)."
    ),
) -> None:
    """Fine-tune an encoder into a text classifier (intent, sentiment, topic) or, with --task tokens, an
    entity tagger (PERSON, ORG, ... as character spans), on CPU."""
    if task not in TASKS:
        raise SlmError(f"unknown --task {task!r}; choose {' or '.join(TASKS)}")
    if task == "tokens":
        _train_tokens(flags.config("token classifier"))
        return
    from slmforge.clf.train import train_classifier

    r = train_classifier(flags.config("text classifier"))
    encoder = r.shipped in ("fine-tuned", "frozen-lr") and r.steps_run
    table(
        "classifier",
        {
            "model": r.model_dir,
            "shipped": r.shipped,
            "labels": len(r.labels),
            "params": f"{r.params / 1e6:.2f}M",
            "train / val examples": f"{r.train_examples:,} / {r.val_examples:,}",
            **(
                {"frozen + LR val accuracy": f"{r.frozen_lr_val_accuracy:.4f}"}
                if r.frozen_lr_val_accuracy == r.frozen_lr_val_accuracy
                else {}
            ),
            **(
                {"TF-IDF val accuracy": f"{r.tfidf_val_accuracy:.4f}"}
                if r.tfidf_val_accuracy == r.tfidf_val_accuracy and r.arch != "tfidf"
                else {}
            ),
            "val accuracy": f"{r.val_accuracy:.4f}",
            "val macro-F1": f"{r.val_macro_f1:.4f}",
            **(
                {"best step": f"{r.best_step} of {r.steps_run} (pass {r.best_epoch} of {r.epochs_run})"}
                if encoder
                else {}
            ),
            **({"oos threshold": f"{r.oos_threshold:.4f}"} if r.oos_threshold is not None else {}),
            "time": f"{r.elapsed_s:.0f}s",
        },
    )


def _train_tokens(cfg) -> None:
    from slmforge.clf.tokens import train_token_classifier

    r = train_token_classifier(cfg)
    table(
        "token classifier",
        {
            "model": r.model_dir,
            "entity labels": ", ".join(r.labels),
            "params": f"{r.params / 1e6:.2f}M",
            "train / val sentences": f"{r.train_examples:,} / {r.val_examples:,}",
            "val micro P / R / F1": f"{r.val_precision:.4f} / {r.val_recall:.4f} / {r.val_micro_f1:.4f}",
            **({"spans cut inside a word": f"{r.misaligned_spans}"} if r.misaligned_spans else {}),
            "best epoch": f"{r.best_epoch} of {r.epochs_run}",
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
    """Label texts with a trained classifier (`oos` when below its calibrated threshold), or list the entity
    spans a token classifier finds in them."""
    import json

    from rich.table import Table

    from slmforge.clf.predict import predict
    from slmforge.clf.tokens import is_token_classifier

    items = list(texts or [])
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
            items += [line.strip() for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise SlmError(f"cannot read {file}: {e}") from None
    if not items:
        raise SlmError("give texts to classify, or --file")
    if is_token_classifier(model):
        _predict_tokens(model, items, threads, json_out)
        return
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


def _predict_tokens(model: str, texts: list[str], threads: int | None, json_out: bool) -> None:
    """One JSON line per text ({"text", "entities": [{"start", "end", "label", "text", "score"}]}) or a table."""
    import json

    from rich.table import Table

    from slmforge.clf.tokens import TokenClassifier

    for i, t in enumerate(texts):
        if not t.strip():
            raise SlmError(f"text {i + 1} is empty")
    found = TokenClassifier.load(model, threads).extract(texts)
    if json_out:
        for text, spans in zip(texts, found):
            out.print(json.dumps({"text": text, "entities": spans}, ensure_ascii=False), highlight=False,
                      soft_wrap=True, markup=False)  # fmt: skip
        return
    t = Table(title="entities")
    for col in ("text", "entities"):
        t.add_column(col, overflow="fold")
    for text, spans in zip(texts, found):
        t.add_row(escape(text), escape(", ".join(f"{s['text']} ({s['label']})" for s in spans) or "-"))
    out.print(t)
