"""`slm finetune` and `slm merge`: thin adapters over slmforge.lm.finetune and slmforge.lm.merge."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

out = Console(width=None if sys.stdout.isatty() else 160)


def finetune(
    model: str = typer.Argument(
        ..., help="Base causal LM: catalog name, local dir or hub id (full precision)."
    ),
    data: str = typer.Option(
        ..., "--data", help='JSONL of {"messages": [...]} or {"prompt", "completion"} rows.'
    ),
    out_dir: str = typer.Option(
        ..., "--out", "-o", help="Run dir (config, metrics.jsonl, ckpt/, model/ or adapter/)."
    ),
    method: str = typer.Option("lora", "--method", help="full, lora or prompt-tuning."),
    val_data: str | None = typer.Option(
        None, "--val-data", help="Held-out JSONL: masked val loss on a schedule."
    ),
    chat_template: str | None = typer.Option(
        None, "--chat-template", help="Jinja chat template file to use."
    ),
    seq_len: int = typer.Option(
        512, "--seq-len", help="Tokens per sequence (capped at the model's context)."
    ),
    pack: bool = typer.Option(True, "--pack/--no-pack", help="Pack whole examples into --seq-len windows."),
    on_bad_line: str = typer.Option("stop", "--on-bad-line", help="stop (error) or skip malformed lines."),
    on_long: str = typer.Option(
        "truncate", "--on-long", help="truncate (counted) or error on long sequences."
    ),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the data (unless --max-steps)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps to train."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop after this much training."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak lr (default 5e-5 full, 2e-4 LoRA, 3e-2 prompt)."
    ),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Warmup steps (default 5%, ≤100)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    lora_alpha: int = typer.Option(32, "--lora-alpha", help="LoRA scale numerator (scale = alpha / r)."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    lora_targets: str = typer.Option(
        "all-linear", "--lora-targets", help="Comma-separated modules (q_proj,v_proj) or all-linear."
    ),
    virtual_tokens: int = typer.Option(20, "--virtual-tokens", help="Prompt tuning: learned tokens."),
    eval_every: int = typer.Option(50, "--eval-every", help="Steps between val losses (with --val-data)."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Steps between checkpoints."),
    log_every: int = typer.Option(1, "--log-every", help="Steps between log lines."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where it pays), bf16 or fp32."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: free cores)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu or cuda."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
) -> None:
    """Fine-tune a causal LM on chat or prompt/completion JSONL: full, LoRA or prompt tuning.

    Loss is taken on assistant tokens only (end-of-turn included, so the model learns to stop). Full
    fine-tuning writes OUT/model (plain transformers); LoRA and prompt tuning write OUT/adapter (PEFT).
    """
    from slmforge.lm.finetune import FinetuneConfig
    from slmforge.lm.finetune import finetune as run

    cfg = FinetuneConfig(
        model=model, data=data, out=out_dir, method=method, val_data=val_data, chat_template=chat_template,
        seq_len=seq_len, pack=pack, on_bad_line=on_bad_line, on_long=on_long, epochs=epochs,
        max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, lora_targets=lora_targets, virtual_tokens=virtual_tokens,
        eval_every=eval_every, checkpoint_every=checkpoint_every, log_every=log_every, precision=precision,
        threads=threads, device=device, seed=seed, resume=resume, overwrite=overwrite,
    )  # fmt: skip
    r = run(cfg)
    rows = {
        "method": r.method,
        "steps": r.steps,
        "loss": f"{r.first_loss:.4f} → {r.train_loss:.4f}",
        "trainable parameters": f"{r.trainable_params:,} of {r.params:,}",
        "examples": r.examples,
        "tokens": f"{r.tokens:,}",
        "time": f"{r.elapsed_s:.0f} s ({r.tokens / max(r.elapsed_s, 1e-9):,.0f} tok/s)",
        "eos ids": r.eos_token_ids,
        "saved": r.model_dir,
    }
    if r.val:
        rows["val loss"] = f"{r.val['loss']:.4f}"
    _table("finetune", rows)


def merge(
    adapter: str = typer.Argument(..., help="LoRA adapter dir (or the finetune run dir holding adapter/)."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Directory for the merged transformers model."),
    base: str | None = typer.Option(None, "--base", help="Full-precision base (default: the one recorded)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Fold a LoRA adapter into its full-precision base: a plain transformers model (quantise it afterwards)."""
    from slmforge.lm.merge import MergeConfig
    from slmforge.lm.merge import merge as run

    r = run(MergeConfig(adapter=adapter, out=out_dir, base=base, overwrite=overwrite))
    _table("merge", {"base": r.base, "parameters": f"{r.params:,}", "saved": r.out})


def _table(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    for k, v in rows.items():
        table.add_row(str(k), str(v))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add `finetune` and `merge` to the `slm` command."""
    app.command("finetune")(finetune)
    app.command("merge")(merge)
