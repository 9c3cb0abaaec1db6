"""`slm rag index / search / quarantine / ask / eval / tune / calibrate`: retrieval over your documents
(slmforge.rag)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from slmforge.cli.options import Opts, options
from slmforge.cli.render import console, out, table, warnings_to_console

rag_app = typer.Typer(help="Retrieval-augmented generation over your documents.", no_args_is_help=True)
TAGS = {"tags": "--tag"}  # repeatable: one tag per flag


@rag_app.command("index")
@options(
    Opts("slmforge.rag.index:RagIndexConfig", args=("paths",), rename={**TAGS, "max_chars": "--chunk-chars"},
         exclude=("batch_files", "batch_chunks", "embed_batch_size"))
)  # fmt: skip
def rag_index(cfg) -> None:
    """Index documents for retrieval (incremental: only new or changed files are embedded again)."""
    from slmforge.rag.index import build_index

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
            guarded += f"; list them with `slm rag quarantine {cfg.index}`"
        if "detector" in r.guard and r.flagged_total > 0.2 * max(r.chunks_total, 1):
            console.print(
                f"[yellow]warning:[/yellow] the detector quarantined {r.flagged_total:,} of {r.chunks_total:,} "
                "chunks: it is trained on chat messages, not documents; re-index with --guard rules",
                highlight=False,
            )
    table(
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
@options(
    Opts("slmforge.rag.search:SearchConfig", args=("index", "query"), exclude=("runtime",),
         rename={**TAGS, "include_flagged": "--flagged/--hide-flagged"},
         defaults={"include_flagged": True})  # the CLI shows quarantined chunks, marked; Python callers do not
)  # fmt: skip
def rag_search(cfg) -> None:
    """Search an index: the best chunks with their file, section and score."""
    from rich.table import Table
    from rich.text import Text

    from slmforge.rag.search import search

    warnings_to_console()
    res = search(cfg)
    t = Table(title=f"{cfg.mode} search: {len(res.hits)} hits in {res.seconds * 1000:.1f} ms")
    for col in ("#", "score", "file", "section", "text"):
        t.add_column(col, overflow="fold")
    for i, h in enumerate(res.hits, 1):
        # Document text is shown as plain text: a chunk must not restyle (or hide) itself with markup.
        snippet = Text(" ".join(h.chunk.text.split())[:160])
        if h.chunk.flagged:
            snippet = Text.assemble((f"QUARANTINED ({h.chunk.flag}) ", "bold red"), snippet)
        where = f"{Path(h.chunk.path).name}:{h.chunk.start}-{h.chunk.end}"
        t.add_row(str(i), f"{h.score:.4g}", Text(where), Text(h.chunk.section), snippet)
    out.print(t)
    quarantined = sum(h.chunk.flagged for h in res.hits)
    if quarantined:
        out.print(
            f"{quarantined} of these chunks are quarantined by the injection guard: answers never use them.",
            highlight=False,
        )


@rag_app.command("quarantine")
def rag_quarantine(
    index: str = typer.Argument(
        ...,
        help="An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store.",
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help=escape("postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."),
    ),
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
    t = Table(
        title=f"{counts.get('flagged', 0):,} of {counts['chunks']:,} chunks quarantined (guard: {guard})"
    )
    for col in ("file", "section", "reasons", "text"):
        t.add_column(col, overflow="fold")
    for c in chunks:
        where = f"{Path(c.path).name}:{c.start}-{c.end}"
        t.add_row(Text(where), Text(c.section), Text(c.flag or ""), Text(" ".join(c.text.split())[:160]))
    out.print(t)
    if counts.get("unchecked"):
        out.print(
            f"{counts['unchecked']:,} chunks were never checked: run `slm rag index` with --guard rules.",
            highlight=False,
        )


@rag_app.command("ask")
@options(
    Opts("slmforge.rag.ask:AskConfig", args=("index", "question"), rename={**TAGS, "min_cosine": "--min-score"},
         exclude=("repetition_penalty", "guard"))
)  # fmt: skip
def rag_ask(cfg) -> None:
    """Answer a question from the index with numbered citations, or say it does not know."""
    from slmforge.rag.ask import ask

    warnings_to_console()
    a = ask(cfg)
    out.print(a.text, highlight=False, markup=False)
    for n in a.citations:
        h = a.sources[n - 1]
        out.print(
            f"[{n}] {h.chunk.path}:{h.chunk.start}-{h.chunk.end}  {h.chunk.section}",
            highlight=False,
            markup=False,
        )
    if a.abstained:
        how = "abstained"
    elif a.model_cited:
        how = "cited by the model"
    else:
        how = "the model cited nothing: citation attributed by word overlap"
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
@options(
    Opts(
        "slmforge.rag.evaluate:RagEvalConfig",
        args=("index",),
        rename={"modes": "--mode", "models": "--model"},
        exclude=("min_cosine",),
    )
)
def rag_eval(
    cfg,
    json_out: str | None = typer.Option(
        None, "--json", "--out", help="Also write the report to this JSON file."
    ),
) -> None:
    """Retrieval quality (recall@k, MRR, nDCG@10) and latency per mode; answer quality with --answers."""
    from rich.table import Table

    from slmforge.core.fsutil import write_json
    from slmforge.rag.evaluate import evaluate_rag

    warnings_to_console()
    rep = evaluate_rag(cfg)
    if cfg.answers:
        _answers_table(rep)
        if json_out:
            write_json(json_out, rep)
        return
    t = Table(title=f"rag eval: {rep['answerable']} answerable queries")
    cols = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "p50_ms", "p95_ms")
    t.add_column("mode")
    for c in cols:
        t.add_column(c.replace("_ms", " ms"), justify="right")
    for mode, m in rep["retrieval"].items():
        t.add_row(mode, *(f"{m[c]:.1f}" if c.endswith("_ms") else f"{m.get(c, 0):.3f}" for c in cols))
    out.print(t)
    if rep["calibration"] and "hybrid" in rep["retrieval"]:
        f = rep["fusion"]
        how = "rrf" if f["fusion"] == "rrf" else f"convex, BM25 weight {f['alpha']:g}"
        out.print(f"hybrid: the index's calibrated fusion ({how}; slm rag calibrate)", highlight=False)
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
        _answers_table(rep)
    if json_out:
        write_json(json_out, rep)


@rag_app.command("tune")
@options(Opts("slmforge.rag.tune:RagTuneConfig", args=("index",), short={"out": "-o"}))
def rag_tune(cfg) -> None:
    """Tune a model on synth QA rows to answer `rag ask`'s prompts: cite the gold source, or abstain (RAFT)."""
    from slmforge.rag.tune import rag_tune as run

    warnings_to_console()
    r = run(cfg)
    e = r.examples
    table(
        "rag tune",
        {
            "examples": f"{e['examples']} of {e['rows']} rows: {e['answer']} answer, {e['abstain']} abstain, "
            f"{e['unanswerable']} unanswerable ({e['train']} train, {e['val']} val)",
            "prompt tokens": f"{e['prompt_tokens_mean']:.0f} mean, {e['prompt_tokens_max']} max",
            "steps": r.steps,
            "loss": f"{r.first_loss:.4f} → {r.train_loss:.4f}"
            + (f" (val {r.val_loss:.4f})" if r.val_loss is not None else ""),
            "time": f"{r.elapsed_s:.0f} s ({r.tokens / max(r.elapsed_s, 1e-9):,.0f} tok/s)",
            "prompt version": r.prompt_version,
            "saved": f"{r.model_dir} (ask with `slm rag ask {cfg.index} QUESTION --model {r.out}`)",
        },
    )


_ANSWER_COLS = (  # (header, key, format): one row per model in `slm rag eval --answers`
    ("correct", "correct", "{:.3f}"), ("F1", "f1", "{:.3f}"), ("key term", "term_rate", "{:.3f}"),
    ("cite prec", "citation_precision", "{:.3f}"), ("model cited", "model_cited", "{:.3f}"),
    ("abstain unans", "abstained_unanswerable", "{:.3f}"), ("false abstain", "abstained_answerable", "{:.3f}"),
    ("p50 s", "p50_s", "{:.2f}"), ("p95 s", "p95_s", "{:.2f}"), ("$/1k", "cost_per_1k", "{:.4f}"),
)  # fmt: skip


def _answers_table(rep: dict) -> None:
    from rich.table import Table

    first = next(iter(rep["answers"].values()))
    t = Table(
        title=f"rag answers: {first['answerable']} answerable, {first['unanswerable']} unanswerable questions"
    )
    t.add_column("model")
    for header, _, _ in _ANSWER_COLS:
        t.add_column(header, justify="right")
    for model, m in rep["answers"].items():
        t.add_row(
            model, *("n/a" if m.get(key) is None else fmt.format(m[key]) for _, key, fmt in _ANSWER_COLS)
        )
    out.print(t)
    out.print(
        "correct: holds a key term where the question gives terms, else token F1 ≥ 0.5 (abstaining is never "
        f"correct); $/1k: mean seconds per answer at {rep.get('price_per_hour', 0.10)} USD/hour",
        highlight=False,
    )


@rag_app.command("calibrate")
@options(Opts("slmforge.rag.calibrate:CalibrateConfig", args=("index",)))
def rag_calibrate(cfg) -> None:
    """Fit the index's fusion, relevance gate and prompt chunks on questions; check on held-apart ones."""
    from rich.table import Table

    from slmforge.rag.calibrate import calibrate

    warnings_to_console()
    rep = calibrate(cfg)
    if rep.get("reset"):
        was = "forgot its calibration" if rep["had_calibration"] else "had no calibration"
        out.print(f"{rep['index']}: {was}; it uses the built-in defaults", highlight=False, markup=False)
        return
    qs, ch, d = rep["questions"], rep["chosen"], rep["default"]
    fit, held = qs["fit"], qs["held"]

    def fusion(f: dict) -> str:
        return "rrf" if f["fusion"] == "rrf" else f"convex {f['alpha']:g}"

    t = Table(
        title=f"held apart: {held['answerable']} answerable questions on {held['documents']} documents "
        f"(fitted on {fit['answerable']} on {fit['documents']} others)"
    )
    for col in ("retrieval", "recall@5", "MRR"):
        t.add_column(col, justify="left" if col == "retrieval" else "right")
    labels = {"bm25": "bm25", "vector": "vector", "hybrid-default": f"hybrid before ({fusion(d)})",
              "hybrid-calibrated": f"hybrid after ({fusion(ch)})"}  # fmt: skip
    for name, m in rep["held"]["retrieval"].items():
        t.add_row(labels[name], f"{m['recall@5']:.3f}", f"{m['mrr']:.3f}")
    out.print(t)
    gf, gh = rep["fit"]["gate"], rep["held"]["gate"]

    def stops(g: dict) -> str:
        passed = "n/a" if g["answerable_passed"] is None else f"{g['answerable_passed']:.1%}"
        u = (
            f", stops {g['unanswerable_stopped']} of {g['unanswerable']} unanswerable"
            if g["unanswerable"]
            else ""
        )
        return f"passes {passed} of answerable{u}"

    rk = rep["held"]["recall@k"]
    table(
        "calibration" + ("" if rep["saved"] else " (not stored: --no-save)"),
        {
            "fusion": f"{fusion(ch)} (fit recall@5 / MRR best of {len(rep['fit']['grid'])} candidates)",
            "min cosine": f"{ch['min_cosine']} (fit: {stops(gf)}; held: {stops(gh['calibrated'])}; "
            f"default {d['min_cosine']} on held: {stops(gh['default'])})",
            "k (chunks)": f"{ch['k']} (held recall@k: "
            + ", ".join(f"@{c} {v:.3f}" for c, v in rk.items())
            + ")",
            "index": rep["index"],
            "seconds": rep["seconds"],
        },
    )
    if rep["saved"]:
        out.print(
            "stored in the index: slm rag search / ask / eval use these unless given "
            "--fusion / --alpha / --k / --min-score",
            highlight=False,
        )
    if cfg.report:
        out.print(f"report: {cfg.report}", highlight=False, markup=False)
