"""`slm quickstart`: the main job on built-in defaults, and its summary (options from QuickstartConfig)."""

from __future__ import annotations

from pathlib import Path

import typer

from slmforge.cli.options import Opts, options
from slmforge.cli.render import out

NOT_ON_THE_CLI = ("vocab_size", "eval_tokens", "prompt", "rag_question", "finetune_eval_items", "finetune_shots",
                  "bank", "bank_quick")  # fmt: skip


@options(Opts("slmforge.quickstart:QuickstartConfig", exclude=("corpus", "rag_docs", *NOT_ON_THE_CLI)))
def quickstart(
    cfg,
    corpus: list[str] | None = typer.Option(
        None, "--corpus", help="Documents (default: Python's reST docs)."
    ),
    rag_docs: list[str] | None = typer.Option(
        None, "--rag-docs", help="Docs to index and answer from (default: 3 Python doc pages; 'none' skips)."
    ),
    serve: bool = typer.Option(
        True, "--serve/--no-serve", help="End by serving the bank pipeline (Ctrl-C stops it)."
    ),
) -> None:
    """The main job on built-in defaults: ingest, tokenizer, pretrain, continue-pretrain, evaluate, generate,
    index a few docs and answer a question from them with citations, LoRA-tune the base on the bank intents
    and compare it with the base zero- and few-shot, then serve the bank pipeline example behind an API key
    and print a ready curl line."""
    from rich.table import Table

    from slmforge.quickstart import quickstart as run

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
        if r.get("tune"):
            t = r["tune"]
            out.print(
                f"[bold]rag tune[/bold]: {t['steps']} LoRA steps on {t['examples']} examples from {t['rows']} "
                f"`slm synth` rows, loss {t['first_loss']:.2f} -> {t['train_loss']:.2f} ({t['out']})",
                highlight=False,
            )
        out.print(f"[bold]Q:[/bold] {r['question']}", highlight=False)
        if r["answer"] is not None:
            who = "the RAG-tuned model" if r.get("tune") else Path(r["model"]).name
            cited = "cited its sources itself" if r["model_cited"] else "did not cite by itself"
            out.print(f"[bold]A:[/bold] [cyan]{r['answer']}[/cyan]", highlight=False)
            out.print(f"   ({who}, {r['seconds']:.1f} s; {cited})", highlight=False)
        for src in r["sources"]:
            out.print(f"   {src}", highlight=False)
    if s.get("finetune"):
        print_finetune(s["finetune"])
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


def print_finetune(ft: dict) -> None:
    """The quickstart's fine-tuning table: the base zero- and few-shot and the LoRA model, exact match."""
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
