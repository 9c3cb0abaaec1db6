"""`slm finetune` and `slm merge`: options from FinetuneConfig and MergeConfig, over slmforge.lm.finetune / merge."""

from __future__ import annotations

import typer

from slmforge.cli.options import Opts, options
from slmforge.cli.render import table


@options(
    Opts("slmforge.lm.configs:FinetuneConfig", args=("model",), short={"out": "-o"},
         exclude=("min_lr_ratio", "grad_clip"))
)  # fmt: skip
def finetune(cfg) -> None:
    """Fine-tune a causal LM on chat or prompt/completion JSONL: full, LoRA or prompt tuning.

    Loss is taken on assistant tokens only (end-of-turn included, so the model learns to stop). Full
    fine-tuning writes OUT/model (plain transformers); LoRA and prompt tuning write OUT/adapter (PEFT).
    """
    from slmforge.lm.finetune import finetune as run

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
    table("finetune", rows)


@options(Opts("slmforge.lm.configs:MergeConfig", args=("adapter",), short={"out": "-o"}))
def merge(cfg) -> None:
    """Fold a LoRA adapter into its full-precision base: a plain transformers model (quantise it afterwards)."""
    from slmforge.lm.merge import merge as run

    r = run(cfg)
    table("merge", {"base": r.base, "parameters": f"{r.params:,}", "saved": r.out})


def register(app: typer.Typer) -> None:
    """Add `finetune` and `merge` to the `slm` command."""
    app.command("finetune")(finetune)
    app.command("merge")(merge)
