"""`slm ls`: the workspace registry (datasets, tokenizers, runs, models) with key metrics."""

from __future__ import annotations

import typer

from slmforge.cli.render import out

SHOWN = (
    "params",
    "val_bpb",
    "val_loss",
    "val_perplexity",
    "steps",
    "train_docs",
    "val_docs",
    "vocab_size",
    "bytes_per_token",
    "accuracy",
)


def ls(
    kind: str | None = typer.Argument(None, help="Only this kind: dataset, tokenizer, run, model."),
    prune: bool = typer.Option(
        False, "--prune", help="Drop the registry rows whose path no longer exists (files are never deleted)."
    ),
) -> None:
    """List the workspace: datasets, tokenizers, runs and models with their key metrics."""
    import datetime
    from pathlib import Path

    from rich.table import Table

    from slmforge.core import workspace

    if prune:
        n = workspace.prune_missing(kind)
        out.print(f"pruned {n} registry row{'s' if n != 1 else ''} whose path no longer exists")
    arts = workspace.list_artifacts(kind)
    if not arts:
        out.print(f"nothing registered yet in {workspace.home()}" + (f" of kind {kind!r}" if kind else ""))
        return
    table = Table(title=f"workspace {workspace.home()}")
    for col in ("kind", "name", "created", "status", "key metrics", "path"):
        table.add_column(col, overflow="fold")
    for a in arts:
        status = "ok" if Path(a.path).exists() else "missing"
        shown = ", ".join(f"{k}={metric(k, v)}" for k, v in a.metrics.items() if k in SHOWN)
        created = datetime.datetime.fromtimestamp(a.created).strftime("%Y-%m-%d %H:%M")
        table.add_row(a.kind, a.name, created, status, shown, a.path)
    out.print(table)


def metric(key: str, v) -> str:
    """A registry metric as `slm ls` shows it."""
    if key == "params" and isinstance(v, (int, float)):
        return f"{v / 1e6:.1f}M"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
