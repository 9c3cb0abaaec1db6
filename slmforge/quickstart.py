"""The main job on built-in defaults: documents in, two domain models out, measured.

1. ingest a real documentation corpus (Debian's python3.11-doc reST sources by default),
2. train a byte-level BPE tokenizer on it,
3. pretrain a small Llama from scratch (depth ladder) for a few minutes,
4. continue pretraining SmolLM2-135M-Instruct on the same text for a few minutes,
5. evaluate domain perplexity before and after, generate a sample from each model,
6. index a few of the docs for retrieval (`slm rag index`) and answer one question from them with
   numbered citations (`slm rag ask`, SmolLM2-135M-Instruct),
7. build the bank example (an intent model routing customer questions to its knowledge base), create
   an API key and write a serve config; the CLI then prints a ready `curl` line and serves it,
8. print a summary table. Everything lands in the workspace (`slm ls`).

Fits in about 15 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.errors import SlmError

PYDOCS = "/usr/share/doc/python3.11/html/_sources"
RAG_DOCS = ("json", "csv", "pathlib")


@dataclass
class QuickstartConfig:
    corpus: list[str] = field(default_factory=lambda: [PYDOCS])
    """Documents to learn from (any `slm data ingest` input)."""
    out: str | None = None
    """Where to put everything (default: $SLMFORGE_HOME/quickstart)."""
    vocab_size: int = 8192
    depth: str = "4"
    pretrain_minutes: float = 3.0
    base: str = "smollm2-135m-instruct"
    """The model to continue pretraining; 'none' skips that step."""
    continue_minutes: float = 3.0
    eval_tokens: int = 8192
    prompt: str = "The list type in Python"
    rag_docs: list[str] = field(default_factory=lambda: [f"{PYDOCS}/library/{n}.rst.txt" for n in RAG_DOCS])
    """Documents the retrieval step indexes; an empty list skips the step."""
    rag_question: str = "How do I serialize a Python object to a JSON formatted string?"
    bank: bool = True
    """Build the bank pipeline example, a key and a serve config for it (step 7)."""
    bank_quick: bool = False
    """Train the bank intent model on 8 examples per intent for 1 epoch (tests)."""
    port: int = 8000
    threads: int | None = None


def quickstart(cfg: QuickstartConfig) -> dict:
    from slmforge import workspace
    from slmforge.data.ingest import IngestConfig, ingest
    from slmforge.evaluate import EvalConfig, evaluate
    from slmforge.generate import GenerateConfig, generate
    from slmforge.pretrain import PretrainConfig, pretrain
    from slmforge.progress import stderr
    from slmforge.tokenizer import TokenizerConfig, train_tokenizer

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

    steps = 5 + bool(cfg.rag_docs) + cfg.bank
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
        t = stage(f"6/{steps} index the docs and answer a question from them")
        summary["rag"] = _rag(cfg, root)
        summary["rag_s"] = time.perf_counter() - t
    if cfg.bank:
        t = stage(f"{steps}/{steps} the bank example behind the API: intents -> knowledge base, one key")
        summary["serve"] = _bank(cfg, root)
        summary["bank_s"] = time.perf_counter() - t
    summary["total_s"] = time.perf_counter() - t_all
    return summary


def _rag(cfg: QuickstartConfig, root: Path) -> dict:
    """Index `rag_docs`, then answer `rag_question` with the base model (or just search, without one)."""
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
    answer = ask(AskConfig(index, cfg.rag_question, cfg.base, threads=cfg.threads))
    out.update(
        answer=answer.text,
        abstained=answer.abstained,
        sources=[
            f"[{n}] {Path(answer.sources[n - 1].chunk.path).name} > {answer.sources[n - 1].chunk.section}"
            for n in answer.citations
        ],
        seconds=answer.seconds,
    )
    return out


def _bank(cfg: QuickstartConfig, root: Path) -> dict:
    """Build the bank example, answer the stolen-card question with it, write serve.yaml, create a key."""
    import yaml

    from slmforge.fsutil import atomic_file
    from slmforge.pipeline import build_bank_example, load_pipelines
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
