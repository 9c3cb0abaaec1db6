"""The main job on built-in defaults: documents in, two domain models out, measured.

1. ingest a real documentation corpus (Debian's python3.11-doc reST sources by default),
2. train a byte-level BPE tokenizer on it,
3. pretrain a small Llama from scratch (depth ladder) for a few minutes,
4. continue pretraining SmolLM2-135M-Instruct on the same text for a few minutes,
5. evaluate domain perplexity before and after, generate a sample from each model,
6. index a few of the docs for retrieval (`slm rag index`), LoRA-tune SmolLM2-135M-Instruct for a few
   minutes to answer from retrieved chunks, citing them or abstaining (`slm rag tune`, on `slm synth` rows
   over the same pages shipped in examples/quickstart/), and answer one question with it (`slm rag ask`),
7. LoRA-fine-tune the base on a generative intent task from the bank example (prompt: a customer
   message, completion: its intent name; train on examples/bank/intents.csv, test on the held-out
   examples/bank/questions.csv) for a few minutes, then score the base zero-shot, the base few-shot
   and the LoRA model on the held-out questions in one `slm eval --task generation` table (exact match,
   latency, tokens/s, cost; OUT/finetune/eval.md, .json, .png),
8. build the bank example (an intent model routing customer questions to its knowledge base), create
   an API key and write a serve config; the CLI then prints a ready `curl` line and serves it,
9. print a summary table. Everything lands in the workspace (`slm ls`).

Fits in about 15 minutes on 2 CPU cores with the defaults (step 7: about 4 of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError

PYDOCS = "/usr/share/doc/python3.11/html/_sources"
RAG_DOCS = ("json", "csv", "pathlib")
# `slm synth` rows over RAG_DOCS (examples/quickstart/README.md says how they were made), each with the sha256 of
# its chunk's text so they find their chunks in an index built from another release of the docs
RAG_QA = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "pydocs_qa.jsonl"


@dataclass
class QuickstartConfig:
    corpus: list[str] = field(default_factory=lambda: [PYDOCS])
    """Documents to learn from (default: Python's reST docs).

    Any `slm data ingest` input."""
    out: str | None = None
    """Where everything goes (default: $SLMFORGE_HOME/quickstart)."""
    vocab_size: int = 8192
    """Tokens in the vocabulary of the tokenizer trained on the corpus."""
    depth: str = "4"
    """Ladder depth of the from-scratch model."""
    pretrain_minutes: float = 3.0
    """Minutes of pretraining from scratch."""
    base: str = "smollm2-135m-instruct"
    """Model to continue pretraining, or none."""
    continue_minutes: float = 3.0
    """Minutes of continued pretraining of the base."""
    eval_tokens: int = 8192
    """Held-out tokens each model's perplexity is measured on."""
    prompt: str = "The list type in Python"
    """The prompt each model continues in the samples."""
    rag_docs: list[str] = field(default_factory=lambda: [f"{PYDOCS}/library/{n}.rst.txt" for n in RAG_DOCS])
    """Docs to index and answer from (default: 3 Python doc pages; 'none' skips).

    From Python, an empty list skips the step."""
    rag_question: str = "How do I serialize a Python object to a JSON formatted string?"
    """The question answered from the indexed docs."""
    rag_qa: str | None = None
    """QA rows over rag_docs (from `slm synth`) that the base is RAG-tuned on before it answers [default: the
    rows shipped in examples/quickstart/ for the default rag_docs]."""
    rag_tune_minutes: float = 3.0
    """Minutes of grounded-answer LoRA tuning (`slm rag tune`) before answering; 0 answers with the base."""
    finetune_minutes: float = 3.0
    """LoRA-tune the base on the bank intents this long, then eval; 0 skips."""
    finetune_eval_items: int = 60
    """Score at most this many held-out questions (a seeded sample) per model in step 7."""
    finetune_shots: int = 3
    """Examples from the training part shown to the base in the few-shot row of step 7."""
    bank: bool = True
    """Build the bank pipeline example, a key and a serve config for it (the last step)."""
    bank_quick: bool = False
    """Train the bank intent model on 8 examples per intent for 1 epoch (tests)."""
    port: int = 8000
    """Port for the bank pipeline's server."""
    threads: int | None = None
    """Torch threads (default: free cores)."""


def quickstart(cfg: QuickstartConfig) -> dict:
    from slmforge.core import workspace
    from slmforge.core.progress import stderr
    from slmforge.data.ingest import IngestConfig, ingest
    from slmforge.data.tokenizer import TokenizerConfig, train_tokenizer
    from slmforge.infer.generate import GenerateConfig, generate
    from slmforge.lm.pretrain import PretrainConfig, pretrain
    from slmforge.ship.evaluate import EvalConfig, evaluate

    if cfg.finetune_minutes < 0:
        raise SlmError(f"--finetune-minutes must be ≥ 0 (0 skips the step), not {cfg.finetune_minutes:g}")
    if cfg.rag_tune_minutes < 0:
        raise SlmError(
            f"--rag-tune-minutes must be ≥ 0 (0 answers with the base), not {cfg.rag_tune_minutes:g}"
        )
    if cfg.rag_docs and cfg.rag_tune_minutes > 0 and not Path(cfg.rag_qa or RAG_QA).is_file():
        raise SlmError(f"--rag-qa: {cfg.rag_qa or RAG_QA} does not exist (or pass --rag-tune-minutes 0)")
    if cfg.finetune_eval_items < 1 or cfg.finetune_shots < 0:
        raise SlmError("finetune_eval_items must be ≥ 1 and finetune_shots ≥ 0")
    for path in cfg.corpus:
        if not Path(path).exists():
            hint = " (install it with `apt-get install python3.11-doc`)" if path == PYDOCS else ""
            raise SlmError(f"corpus {path} does not exist{hint}")
    root = Path(cfg.out) if cfg.out else workspace.home() / "quickstart"
    t_all = time.perf_counter()
    summary: dict = {}

    def stage(title: str) -> float:
        stderr.rule(f"[bold]{title}")
        return time.perf_counter()

    tune = cfg.finetune_minutes > 0 and cfg.base.lower() != "none"
    steps = 5 + bool(cfg.rag_docs) + tune + cfg.bank
    n = 5
    t = stage(f"1/{steps} ingest documents")
    stats = ingest(IngestConfig(paths=cfg.corpus, out=str(root / "data"), overwrite=True))
    summary["data"] = f"{stats['train_docs']} train / {stats['val_docs']} val documents"
    summary["ingest_s"] = time.perf_counter() - t

    t = stage(f"2/{steps} train a tokenizer")
    tok = train_tokenizer(
        TokenizerConfig(
            data=str(root / "data"), out=str(root / "tokenizer"), vocab_size=cfg.vocab_size, overwrite=True
        )
    )
    summary["bytes_per_token"] = tok["bytes_per_token"]
    summary["tokenizer_s"] = time.perf_counter() - t

    t = stage(f"3/{steps} pretrain depth {cfg.depth} from scratch ({cfg.pretrain_minutes:g} min)")
    scratch = pretrain(
        PretrainConfig(
            data=str(root / "data"),
            tokenizer=str(root / "tokenizer"),
            out=str(root / "scratch"),
            depth=cfg.depth,
            max_minutes=cfg.pretrain_minutes,
            eval_every=50,
            checkpoint_every=50,
            threads=cfg.threads,
            overwrite=True,
            log_every=10,
        )
    )
    summary["scratch"] = scratch
    summary["pretrain_s"] = time.perf_counter() - t

    cpt = None
    if cfg.base.lower() != "none":
        t = stage(f"4/{steps} continue pretraining {cfg.base} ({cfg.continue_minutes:g} min)")
        cpt = pretrain(
            PretrainConfig(
                data=str(root / "data"),
                init=cfg.base,
                out=str(root / "continued"),
                seq_len=256,
                batch_size=4,
                lr=1e-4,
                max_minutes=cfg.continue_minutes,
                eval_every=10**9,
                checkpoint_every=20,
                threads=cfg.threads,
                overwrite=True,
                log_every=5,
            )
        )
        summary["continue_s"] = time.perf_counter() - t

    t = stage(f"5/{steps} evaluate and generate")
    # the base comes first, so the change column reads "continued vs base"; bits per byte compares all three
    models = ([cfg.base, cpt.model_dir] if cpt else []) + [scratch.model_dir]
    rows = evaluate(
        EvalConfig(
            models=models,
            data=[str(root / "data")],
            seq_len=256,
            max_tokens=cfg.eval_tokens,
            threads=cfg.threads,
        )
    )
    samples = {}
    for name in [scratch.model_dir] + ([cpt.model_dir] if cpt else []):
        samples[name] = generate(
            GenerateConfig(model=name, prompt=cfg.prompt, chat=False, max_new_tokens=40, threads=cfg.threads)
        )
    summary["params"] = {scratch.model_dir: scratch.params}
    if cpt:
        summary["params"].update({cfg.base: cpt.params, cpt.model_dir: cpt.params})
    summary.update(eval=rows, samples=samples, eval_s=time.perf_counter() - t)
    if cfg.rag_docs:
        n += 1
        tuned = f", RAG-tune {cfg.base} ({cfg.rag_tune_minutes:g} min)" if cfg.rag_tune_minutes > 0 else ""
        t = stage(f"{n}/{steps} index the docs{tuned} and answer a question from them")
        summary["rag"] = _rag(cfg, root)
        summary["rag_s"] = time.perf_counter() - t
    if tune:
        n += 1
        t = stage(
            f"{n}/{steps} LoRA-tune {cfg.base} on the bank intents ({cfg.finetune_minutes:g} min), eval"
        )
        summary["finetune"] = intent_finetune(cfg, root)
        summary["finetune_s"] = time.perf_counter() - t
    if cfg.bank:
        t = stage(f"{steps}/{steps} the bank example behind the API: intents -> knowledge base, one key")
        summary["serve"] = _bank(cfg, root)
        summary["bank_s"] = time.perf_counter() - t
    summary["total_s"] = time.perf_counter() - t_all
    return summary


def _rag(cfg: QuickstartConfig, root: Path) -> dict:
    """Index `rag_docs`, RAG-tune the base on `rag_qa` for `rag_tune_minutes`, then answer `rag_question` with
    the tuned model (the base when the minutes are 0; just search, without a base)."""
    from slmforge.rag.ask import AskConfig, ask
    from slmforge.rag.index import RagIndexConfig, build_index
    from slmforge.rag.search import SearchConfig, search

    for path in cfg.rag_docs:
        if not Path(path).exists():
            raise SlmError(f"--rag-docs: {path} does not exist")
    index = str(root / "docs.sqlite")
    built = build_index(RagIndexConfig(paths=list(cfg.rag_docs), index=index, threads=cfg.threads))
    out = {
        "index": index,
        "files": built.files_seen,
        "chunks": built.chunks_total,
        "question": cfg.rag_question,
    }
    if cfg.base.lower() == "none":
        hits = search(SearchConfig(index, cfg.rag_question, k=3)).hits
        out.update(answer=None, sources=[f"{Path(h.chunk.path).name} > {h.chunk.section}" for h in hits])
        return out
    model = cfg.base
    if cfg.rag_tune_minutes > 0:
        out["tune"] = _rag_tune(cfg, root, index)
        model = out["tune"]["out"]
    answer = ask(AskConfig(index, cfg.rag_question, model, threads=cfg.threads))
    out.update(
        model=model,
        answer=answer.text,
        abstained=answer.abstained,
        model_cited=answer.model_cited,
        sources=[
            f"[{n}] {Path(answer.sources[n - 1].chunk.path).name} > {answer.sources[n - 1].chunk.section}"
            for n in answer.citations
        ],
        seconds=answer.seconds,
    )
    return out


def _rag_tune(cfg: QuickstartConfig, root: Path, index: str) -> dict:
    """`slm rag tune` (LoRA) of the base on the rows of `rag_qa` that find their chunk in `index`."""
    from slmforge.rag.tune import RagTuneConfig, rag_tune

    data = root / "rag_qa.jsonl"
    qa = Path(cfg.rag_qa or RAG_QA)
    kept, lost = anchor_rows(qa, index, data)
    if not kept:
        raise SlmError(f"none of the {lost} rows of {qa} matches a chunk of {index}: "
                       "were they made from other docs? (--rag-tune-minutes 0 answers with the base)")  # fmt: skip
    r = rag_tune(
        RagTuneConfig(
            index=index, data=str(data), out=str(root / "rag-tuned"), base=cfg.base, method="lora", lr=1e-3,
            variants=2, answer_sentences=1, max_minutes=cfg.rag_tune_minutes, threads=cfg.threads,
            overwrite=True,  # precision auto: bf16 autocast where the CPU has fast bf16
        )
    )  # fmt: skip
    return {"out": r.out, "rows": kept, "rows_not_found": lost, "examples": r.examples["examples"],
            "steps": r.steps, "first_loss": r.first_loss, "train_loss": r.train_loss}  # fmt: skip


def anchor_rows(qa: Path, index: str, out: Path) -> tuple[int, int]:
    """Write the rows of `qa` to `out` with `source.chunk_id` set to the chunk of `index` whose text has the
    row's `source.text_sha256` (the docs of another Python release chunk differently); rows whose chunk text is
    not in the index are left out. (kept, left out)."""
    import json

    from slmforge.core.fsutil import atomic_file
    from slmforge.rag.store import text_sha256
    from slmforge.rag.stores import open_store

    store = open_store(index)
    try:
        by_sha, after = {}, 0
        while batch := store.chunks_to_check(after, 1000, True):
            for c in batch:
                by_sha[text_sha256(c.text)] = c
            after = batch[-1].id
    finally:
        store.close()
    kept = lost = 0
    with atomic_file(out) as f:
        for line in qa.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            chunk = by_sha.get(row.get("source", {}).get("text_sha256"))
            if chunk is None:
                lost += 1
                continue
            row["source"].update(chunk_id=chunk.id, doc=chunk.doc)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            kept += 1
    return kept, lost


INTENT_INSTRUCTION = "Name the intent of the bank customer's message. Reply with the label only."


def intent_data(bank_dir: Path, out: Path) -> dict:
    """The generative intent task: train.jsonl from intents.csv, test.jsonl from questions.csv (written
    apart from it: the fixed held-out split), labels.txt; rows {"prompt": message, "completion": intent}.
    Rows keep their file order, so the split and the files are the same on every run."""
    import csv
    import json

    from slmforge.core.fsutil import atomic_file

    parts = {}
    for split, name in (("train", "intents.csv"), ("test", "questions.csv")):
        try:
            with open(bank_dir / name, newline="", encoding="utf-8") as f:
                rows = [
                    ((r.get("text") or "").strip(), (r.get("label") or "").strip()) for r in csv.DictReader(f)
                ]
        except (OSError, UnicodeDecodeError) as e:
            raise SlmError(f"cannot read {bank_dir / name} ({e})") from None
        parts[split] = [(text, label) for text, label in rows if text and label]
        if not parts[split]:
            raise SlmError(f"{bank_dir / name} has no rows with a text and a label")
        with atomic_file(out / f"{split}.jsonl") as f:
            for text, label in parts[split]:
                f.write(json.dumps({"prompt": text, "completion": label}, ensure_ascii=False) + "\n")
    labels = list(dict.fromkeys(label for _, label in parts["train"]))
    unseen = sorted({label for _, label in parts["test"]} - set(labels))
    if unseen:
        raise SlmError(
            f"{bank_dir / 'questions.csv'} has intents that intents.csv lacks: {', '.join(unseen)}"
        )
    with atomic_file(out / "labels.txt") as f:
        f.write("\n".join(labels) + "\n")
    return {
        "train": str(out / "train.jsonl"),
        "test": str(out / "test.jsonl"),
        "labels": str(out / "labels.txt"),
        "train_examples": len(parts["train"]),
        "test_items": len(parts["test"]),
        "intents": len(labels),
    }


def intent_finetune(cfg: QuickstartConfig, root: Path, bank_dir: Path | None = None) -> dict:
    """Step 7: LoRA-tune `cfg.base` on the bank intents, then one generation table on the held-out
    questions: the base zero-shot and `finetune_shots`-shot (told the labels in a system prompt) and the
    LoRA model (zero-shot, just the message: it learned the labels). All three run on torch fp32, so
    latency and cost compare like with like (an adapter runs on torch; `slm merge` it for ONNX Runtime).

    Returns the table rows, the files and the run; without the bank data, {"skipped": why} instead."""
    from dataclasses import replace

    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_file
    from slmforge.core.progress import stderr
    from slmforge.lm.eval_report import write_report
    from slmforge.lm.finetune import FinetuneConfig, finetune
    from slmforge.route.pipeline import BANK_DIR
    from slmforge.ship.evaluate import EvalConfig, evaluate

    bank_dir = Path(bank_dir or BANK_DIR)
    if not (bank_dir / "intents.csv").is_file() or not (bank_dir / "questions.csv").is_file():
        why = f"{bank_dir} lacks intents.csv and questions.csv (the bank example ships with the source checkout)"
        stderr.print(f"skipping the fine-tuning step: {why}", highlight=False)
        return {"skipped": why}
    out = root / "finetune"
    data = intent_data(bank_dir, out / "data")
    workspace.register(
        "dataset",
        out / "data",
        name="bank-intents-gen",
        source=str(bank_dir),
        metrics={k: data[k] for k in ("train_examples", "test_items", "intents")},
    )
    tuned = finetune(
        FinetuneConfig(
            model=cfg.base,
            data=data["train"],
            out=str(out / "intents-lora"),
            method="lora",
            seq_len=256,  # ~6 packed examples per sequence
            batch_size=4,  # small steps, a high LoRA lr: many updates within a few minutes
            lr=1e-3,
            epochs=100.0,  # the time budget ends the run; the lr schedule follows it
            max_minutes=cfg.finetune_minutes,
            warmup_steps=2,
            eval_every=10**9,
            checkpoint_every=10**9,
            log_every=5,
            threads=cfg.threads,
            overwrite=True,
        )
    )
    common = EvalConfig(
        models=[],
        data=[data["test"]],
        task="generation",
        backend="torch",
        max_new_tokens=12,  # the longest intent name is 8 SmolLM2 tokens
        limit=cfg.finetune_eval_items,
        latency_items=cfg.finetune_eval_items,
        threads=cfg.threads,
        isolate=False,
    )
    base_models = [cfg.base] + ([f"{cfg.base}@{cfg.finetune_shots}shot"] if cfg.finetune_shots else [])
    rows = evaluate(
        replace(
            common,
            models=base_models,
            instruction=INTENT_INSTRUCTION,
            labels_from=data["labels"],
            shots_from=data["train"],
        )
    )
    rows += evaluate(replace(common, models=[tuned.out]))
    for r in rows:
        # one process ran all three after training: its high-water mark is no one model's memory
        r["peak_rss_mb"] = None
        r["prompt"] = (
            "message only" if r["model"] == tuned.out else "instruction + labels in the system prompt"
        )
    files = write_report(rows, "generation", str(out))
    note = (
        f"\nData: {rows[0]['items']} of the {data['test_items']} held-out questions "
        f"({bank_dir.name}/questions.csv); the LoRA model was trained on the {data['train_examples']} "
        f"messages of {bank_dir.name}/intents.csv for {tuned.elapsed_s / 60:.1f} min ({tuned.steps} steps). "
        f"The base rows get a system prompt with the instruction and the {data['intents']} allowed labels "
        "(shots drawn from the training part); the LoRA row gets the message alone. All ran on torch fp32 "
        "in one process, so no peak MB.\n"
    )
    report = (out / "eval.md").read_text(encoding="utf-8") + note
    with atomic_file(out / "eval.md") as f:
        f.write(report)
    summary_rows = [{k: v for k, v in r.items() if k != "predictions"} for r in rows]
    return {
        **data,
        "run": tuned.out,
        "adapter": tuned.model_dir,
        "steps": tuned.steps,
        "first_loss": tuned.first_loss,
        "train_loss": tuned.train_loss,
        "train_s": tuned.elapsed_s,
        "rows": summary_rows,
        "report": str(out / "eval.md"),
        "files": [str(f) for f in files],
    }


def _bank(cfg: QuickstartConfig, root: Path) -> dict:
    """Build the bank example, answer the stolen-card question with it, write serve.yaml, create a key."""
    import yaml

    from slmforge.core.fsutil import atomic_file
    from slmforge.route.pipeline import build_bank_example, load_pipelines
    from slmforge.serve.auth import create_key

    pipelines = build_bank_example(
        str(root / "bank"), quick=cfg.bank_quick, threads=cfg.threads, overwrite=True
    )
    question = "my credit card was stolen"
    result = load_pipelines(pipelines)["bank"].run(question)
    config = root / "serve.yaml"
    with atomic_file(config) as f:
        f.write(
            yaml.safe_dump({"host": "127.0.0.1", "port": cfg.port, "threads": 1, "pipelines": str(pipelines)})
        )
    secret, key = create_key(f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}", ["pipelines:bank"], expires="7d")
    curl = (
        f"curl -s http://127.0.0.1:{cfg.port}/v1/pipelines/bank -H 'Authorization: Bearer {secret}' "
        "-H 'Content-Type: application/json' -d '{\"input\": \"" + question + "\"}'"
    )
    return {"config": str(config), "key_name": key.name, "curl": curl, "question": question, "result": result}
