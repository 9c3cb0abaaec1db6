"""`slm data ingest`, `slm data entities-to-sft` and `slm tokenizer train`: options from their configs."""

from __future__ import annotations

from pathlib import Path

import typer

from slmforge.cli.options import Flags, Opts, options
from slmforge.cli.render import out

data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train and inspect tokenizers.", no_args_is_help=True)


@data_app.command("ingest")
@options(Opts("slmforge.data.ingest:IngestConfig", args=("paths",), short={"out": "-o"}))
def data_ingest(cfg) -> None:
    """Clean, deduplicate and split documents into a JSONL dataset (streams; memory stays flat)."""
    from rich.table import Table

    from slmforge.data.ingest import ingest

    s = ingest(cfg, progress=True)
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in s["skipped"].items() if v) or "none"
    table = Table(title="dataset", show_header=False)
    table.add_row("out", s["out"])
    table.add_row("files read", f"{s['files']:,} ({s['input_bytes'] / 1e6:.1f} MB)")
    table.add_row("documents read", f"{s['documents_read']:,}")
    table.add_row("skipped", skipped)
    table.add_row("duplicates", f"{s['exact_duplicates']:,} exact, {s['near_duplicates']:,} near")
    if s["pii_redacted"]:
        table.add_row("pii redacted", ", ".join(f"{v} {k}" for k, v in s["pii"].items()))
    table.add_row("train", f"{s['train_docs']:,} docs, {s['train_chars']:,} chars")
    table.add_row("val", f"{s['val_docs']:,} docs, {s['val_chars']:,} chars")
    table.add_row("data hash", s["data_hash"][:16])
    table.add_row("seconds", f"{s['elapsed_s']:.1f}")
    out.print(table)


@data_app.command("entities-to-sft")
@options(Opts("slmforge.data.entities:EntitiesToSftConfig", args=("data",), short={"out": "-o"},
              comma=("labels",)))  # fmt: skip
def data_entities_to_sft(cfg) -> None:
    """Turn span-labelled entity JSONL into chat SFT rows for `slm finetune` (a generative extractor)."""
    from rich.table import Table

    from slmforge.data.entities import entities_to_sft_cfg

    s = entities_to_sft_cfg(cfg)
    table = Table(title="entities -> sft", show_header=False)
    table.add_row("out", s["out"])
    table.add_row("schema", s["schema"])
    table.add_row("rows", f"{s['rows']:,} ({s['spans']:,} spans)")
    table.add_row("labels", ", ".join(s["labels"]))
    out.print(table)


@tokenizer_app.command("train")
@options(Opts("slmforge.data.tokenizer:TokenizerConfig", args=("data",), defaults={"out": None}))
def tokenizer_train(flags: Flags) -> None:
    """Train a byte-level BPE tokenizer (ChatML special tokens and chat template) on your data."""
    from rich.table import Table

    from slmforge.core import workspace
    from slmforge.data.tokenizer import train_tokenizer

    data, vocab_size = flags["data"], flags["vocab_size"]
    default_out = workspace.home() / "tokenizers" / f"{Path(data).stem}-{vocab_size}"
    result = train_tokenizer(flags.config(out=flags["out"] or str(default_out)))
    table = Table(title="tokenizer", show_header=False)
    table.add_row("path", result["path"])
    table.add_row("vocab size", str(result["vocab_size"]))
    table.add_row(f"bytes/token ({result['bytes_per_token_split']})", f"{result['bytes_per_token']:.3f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    out.print(table)
