"""`slm rag tune`: grounded-answer tuning (RAFT, Zhang et al., 2024) of a small model on `slm synth` QA rows.

`rag_tune(cfg)` reads top to bottom: validate → build one training example per row → write them as chat
JSONL (OUT/train.jsonl, OUT/val.jsonl) → train with `slmforge.lm.finetune` (LoRA or full, its lr schedule,
time budget, checkpoints and resume) → record the prompt fingerprint in the tuned model's manifest.

An example is the exact prompt `slm rag ask` builds (`slmforge.rag.ask.build_prompt`: the same system prompt,
numbered source blocks and context budget) and the answer the model should give:
- with probability `gold_share`, the row's gold chunk (read from the index by its `chunk_id`) sits at a random
  position among `k` sources whose others are the question's top hybrid hits that are not the gold chunk
  (hard negatives); the target is the row's answer citing the gold's number, `[n]` put before the final period
  (or at the end) unless the answer already cites exactly that source;
- otherwise the sources are the top hits outside the gold's document, and the target is `IDK`, the exact
  string `rag ask` detects as abstaining. Unanswerable rows (`"answerable": false`) always get these.
The positions and draws come from a per-row generator seeded by (seed, line), so --seed gives the same data and
--limit keeps the draws of the rows it keeps. A row whose gold chunk the injection guard quarantined is left
out (`rag ask` never shows it), as is an abstain row whose index holds nothing outside the gold's document.

Rows are read as QA_SCHEMA's qa.jsonl: question, answer, answerable, source {doc, chunk_id, ...}. A row without
`source` or `source.chunk_id` stops the run naming its line; so do chunk ids missing from the index, and a
`source.doc` that is not the chunk's (the rows were made from another index).

Run directory `--out`: rag_tune.json (this config), train.jsonl, val.jsonl, examples.json (what the data
builder kept and dropped, token counts), then finetune's config.json, metrics.jsonl, ckpt/ and model/ (full) or
adapter/ (LoRA). `slm rag ask --model OUT` and the server's RAG route take OUT directly (it resolves to model/
or adapter/); the manifest there records `rag_prompt_version`, which `slm merge` and `slm quantize` keep.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_file, write_json
from slmforge.core.progress import bar, say
from slmforge.rag.ask import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    IDK,
    PROMPT_RECORD,
    RAG_PROMPT_VERSION,
    build_prompt,
    prompt_k,
    screen,
)
from slmforge.rag.guarding import ChunkGuard, check_setting, open_guard
from slmforge.rag.search import Hit, Retriever
from slmforge.rag.store import StoredChunk, text_sha256
from slmforge.train.run import MAY_CHANGE, RunConfig, check_run_block, clear_run_dir, open_run

METHODS = ("lora", "full")
CONFIG_FILE = "rag_tune.json"
TRAIN, VAL, REPORT = "train.jsonl", "val.jsonl", "examples.json"
SEARCH_DEPTH = 50  # hits retrieved per question to draw the distractors from
MAX_VAL = 64  # held-out examples at most: each evaluation scores them all


@dataclass
class RagTuneConfig(RunConfig):
    """What `slm rag tune` needs."""

    index: str
    """The index the QA rows were made from (a name, a .sqlite path, or its name in --store)."""
    data: str
    """QA rows from `slm synth --task qa` (JSONL: question, answer, answerable, source.chunk_id)."""
    out: str
    """Run dir: the examples, finetune's run, and model/ (full) or adapter/ (lora)."""
    base: str = "smollm2-135m-instruct"
    """The model to tune: catalog name, local dir or hub id (full precision, with a chat template)."""
    method: str = "lora"
    """lora or full."""
    store: str | None = None
    """postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."""
    k: int | None = None
    """Sources per prompt, gold included (as `slm rag ask --k`) [default: the index's calibration, else 4]."""
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    """Prompt budget: sources + question (as `slm rag ask --context-tokens`)."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Answer room (as `slm rag ask --max-new-tokens`).

    The prompt budget leaves it free on models with a short context; training sequences are context_tokens +
    this long."""
    gold_share: float = 0.8
    """Share of answerable rows whose sources hold the gold chunk (the rest learn to abstain), in [0, 1]."""
    val_share: float = 0.05
    """Share of the examples held out for the val loss (at most 64), in [0, 1)."""
    epochs: float = 1.0
    """Passes over the training examples (unless --max-steps)."""
    lr: float | None = None
    """Peak learning rate [default: 2e-4 lora, 5e-5 full]."""
    batch_size: int = 4
    """Examples per optimizer step."""
    lora_r: int = 16
    """LoRA rank."""
    limit: int | None = None
    """Only the first N rows of --data."""
    variants: int = 1
    """Examples made from each row, each with its own draw of answer or abstain, distractors and the gold's
    position (RAFT's repeats: more examples from few rows)."""
    answer_sentences: int | None = None
    """Cut each answer to its first N sentences before citing it [default: as written].

    Short targets teach short answers, and a small teacher's later sentences are where it drifts."""
    eval_every: int = field(default=50, kw_only=True, metadata=MAY_CHANGE)
    """Steps between val losses (on OUT/val.jsonl)."""
    checkpoint_every: int = field(default=20, kw_only=True, metadata=MAY_CHANGE)
    """Steps between checkpoints."""


@dataclass
class RagTuneResult:
    out: str
    model_dir: str
    method: str
    prompt_version: str
    examples: dict
    """What the data builder kept and dropped, and token counts (OUT/examples.json)."""
    steps: int
    tokens: int
    first_loss: float
    train_loss: float
    val_loss: float | None
    elapsed_s: float


def rag_tune(cfg: RagTuneConfig, progress: bool = True) -> RagTuneResult:
    """Tune `cfg.base` to answer from `slm rag ask`'s prompts, citing or abstaining (see the module docstring)."""
    from slmforge.core.hub import resolve_model
    from slmforge.lm.configs import FinetuneConfig
    from slmforge.lm.finetune import finetune
    from slmforge.train.pretrained import load_tokenizer

    out = Path(cfg.out)
    cfg = _validate(cfg, out)
    if cfg.k is None:  # the k `slm rag ask` will use on this index: its calibration's, else the default
        with Retriever(cfg.index, cfg.store) as retriever:
            cfg = dataclasses.replace(cfg, k=prompt_k(cfg.k, retriever))
    fresh = not cfg.resume
    base = resolve_model(cfg.base)
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))
        if not (out / REPORT).exists():  # a resumed run keeps the examples it started with
            tokenizer = load_tokenizer(base)
            if not getattr(tokenizer, "chat_template", None):
                raise SlmError(f"{cfg.base} has no chat template: `slm rag ask` prompts it as a chat")
            examples, report = make_examples(cfg, tokenizer, max_positions(base), progress)
            write_examples(out, examples, report, cfg.val_share, cfg.seed)
        report = json.loads((out / REPORT).read_text())
        say(progress, _summary(report))
        ft = FinetuneConfig(
            model=cfg.base, data=str(out / TRAIN), out=cfg.out, method=cfg.method,
            val_data=str(out / VAL) if report["val"] else None, seq_len=cfg.context_tokens + cfg.max_new_tokens,
            pack=False, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, lora_r=cfg.lora_r,
            eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
            precision=cfg.precision, threads=cfg.threads, device=cfg.device, seed=cfg.seed,
            max_minutes=cfg.max_minutes, max_steps=cfg.max_steps, resume=True,
        )  # fmt: skip
        write_json(out / "config.json", dataclasses.asdict(ft))  # the run dir is ours: finetune continues it
        r = finetune(ft, progress)
    except BaseException:
        if fresh and not any((out / "ckpt").glob("*.pt")):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth resuming: leave no half-made run
        raise
    record = {PROMPT_RECORD: RAG_PROMPT_VERSION, "rag_index": cfg.index, "rag_k": cfg.k,
              "rag_context_tokens": cfg.context_tokens, "rag_gold_share": cfg.gold_share}  # fmt: skip
    for path in (out, Path(r.model_dir)):
        _add_metrics(path, record)
    return RagTuneResult(
        str(out), r.model_dir, cfg.method, RAG_PROMPT_VERSION, report, r.steps, r.tokens, r.first_loss,
        r.train_loss, r.val["loss"] if r.val else None, round(r.elapsed_s, 1),
    )  # fmt: skip


# ----------------------------------------------------------------------------- the examples


def read_qa(path: str | Path, limit: int | None = None) -> list[tuple[int, dict]]:
    """(line, row) of the QA rows (1-based lines, blank lines skipped); SlmError naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"data file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise SlmError(f"{path} line {line}: not valid JSON ({e.msg})") from None
            problem = _row_problem(row)
            if problem:
                raise SlmError(f"{path} line {line}: {problem}")
            rows.append((line, row))
    if not rows:
        raise SlmError(f"{path} holds no QA rows")
    return rows


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f'needs a non-empty "{key}"'
    source = row.get("source")
    if not isinstance(source, dict):
        return 'has no "source" (the chunk it was written from): rows without provenance cannot be tuned on'
    chunk_id = source.get("chunk_id")
    if not isinstance(chunk_id, int) or isinstance(chunk_id, bool):
        return 'has no "source.chunk_id" (the index chunk it was written from)'
    return None


def make_examples(cfg: RagTuneConfig, tokenizer, positions: int | None, progress: bool = False):
    """(examples, report) for the rows of `cfg.data`: chat rows {"messages": [system, user, assistant],
    "meta": {...}} and the builder's counts."""
    rows = read_qa(cfg.data, cfg.limit)
    with Retriever(cfg.index, cfg.store) as retriever:
        cfg = dataclasses.replace(cfg, k=prompt_k(cfg.k, retriever))
        gold = gold_chunks(retriever, rows, cfg.data)
        guard = open_guard(check_setting(retriever.store.meta().get("guard")))
        examples, counts = [], {"rows": len(rows), "answer": 0, "abstain": 0, "unanswerable": 0,
                                "skipped_quarantined": 0, "skipped_no_sources": 0, "gold_truncated": 0}  # fmt: skip
        with bar("rag tune examples", total=len(rows), enabled=progress) as b:
            for line, row in rows:
                for variant in range(cfg.variants):
                    ex = make_example(
                        cfg, tokenizer, positions, retriever, guard, line, row, gold[line], variant
                    )
                    if isinstance(ex, str):
                        counts[ex] += 1
                    else:
                        examples.append(ex)
                        counts[ex["meta"]["kind"]] += 1
                        counts["gold_truncated"] += ex["meta"].get("gold_truncated", False)
                b.advance()
    if not examples:
        raise SlmError(
            f"{cfg.data}: none of its {len(rows)} rows made a training example ({_dropped(counts)})"
        )
    prompt = [ex["meta"]["prompt_tokens"] for ex in examples]
    counts.update(
        examples=len(examples),
        prompt_tokens_mean=round(statistics.fmean(prompt), 1),
        prompt_tokens_median=statistics.median(prompt),
        prompt_tokens_max=max(prompt),
        target_tokens_mean=round(statistics.fmean(ex["meta"]["target_tokens"] for ex in examples), 1),
        sources_mean=round(statistics.fmean(ex["meta"]["sources"] for ex in examples), 2),
        prompt_version=RAG_PROMPT_VERSION,
    )
    return examples, counts


def gold_chunks(retriever: Retriever, rows: list[tuple[int, dict]], data: str) -> dict[int, StoredChunk]:
    """{line: the row's source chunk}; SlmError naming a chunk id the index lacks, or a row whose source.doc
    is not its chunk's."""
    ids = sorted({row["source"]["chunk_id"] for _, row in rows})
    found: dict[int, StoredChunk] = {}
    for i in range(0, len(ids), 500):
        found.update(retriever.store.chunks(ids[i : i + 500]))
    missing = [
        (line, row["source"]["chunk_id"]) for line, row in rows if row["source"]["chunk_id"] not in found
    ]
    if missing:
        line, cid = missing[0]
        more = f" ({len(missing)} rows in all)" if len(missing) > 1 else ""
        raise SlmError(f"{data} line {line}: chunk_id {cid} is not in {retriever.store.location}{more}; "
                       "were the rows made from another index?")  # fmt: skip
    for line, row in rows:
        c, doc = found[row["source"]["chunk_id"]], row["source"].get("doc")
        if doc and doc not in (c.doc, c.path):
            raise SlmError(f"{data} line {line}: chunk_id {c.id} is from {c.doc}, not {doc}; "
                           "were the rows made from another index?")  # fmt: skip
        sha = row["source"].get("text_sha256")
        if sha and sha != text_sha256(c.text):
            raise SlmError(f"{data} line {line}: chunk_id {c.id}'s text is not the one the row was written "
                           "from; was the index rebuilt since?")  # fmt: skip
    return {line: found[row["source"]["chunk_id"]] for line, row in rows}


def make_example(
    cfg: RagTuneConfig, tokenizer, positions: int | None, retriever: Retriever, guard: ChunkGuard | None,
    line: int, row: dict, gold: StoredChunk, variant: int = 0,
) -> dict | str:  # fmt: skip
    """One chat example for the row (its `variant`-th: variant 0 takes the top hits as distractors, later
    ones a seeded draw from the top 3k), or the counter naming why there is none."""
    if gold.flagged:
        return "skipped_quarantined"
    rng = random.Random(f"{cfg.seed}:{line}" + (f":{variant}" if variant else ""))
    hits, _ = screen(guard, retriever.search(row["question"], "hybrid", SEARCH_DEPTH).hits)
    if variant:
        pool = hits[: 3 * cfg.k]
        hits = [pool[i] for i in sorted(rng.sample(range(len(pool)), min(len(pool), 2 * cfg.k)))]
    answerable = row.get("answerable", True) is not False
    if not answerable:
        kind = "unanswerable"
    else:
        kind = "answer" if rng.random() < cfg.gold_share else "abstain"
    meta: dict = {"line": line, "variant": variant, "kind": kind, "chunk_id": gold.id}
    if kind == "answer":
        mine = next((h for h in hits if h.chunk.id == gold.id), Hit(gold, 0.0))
        others = [h for h in hits if h.chunk.id != gold.id]
        messages, sources, ids = place_gold(cfg, tokenizer, positions, row["question"], mine, others, rng)
        n = sources.index(mine) + 1
        target = cite(first_sentences(row["answer"], cfg.answer_sentences), n)
        meta.update(gold=n, gold_truncated=gold.text.strip() not in messages[1]["content"])
    else:
        others = [h for h in hits if h.chunk.doc != gold.doc][: cfg.k]
        if not others:
            return "skipped_no_sources"
        messages, sources, ids = build_prompt(tokenizer, row["question"], others, cfg.context_tokens,
                                              cfg.max_new_tokens, positions)  # fmt: skip
        target = IDK
    meta.update(sources=len(sources), source_ids=[h.chunk.id for h in sources], prompt_tokens=len(ids),
                target_tokens=len(tokenizer(target, add_special_tokens=False)["input_ids"]))  # fmt: skip
    return {"messages": [*messages, {"role": "assistant", "content": target}], "meta": meta}


def place_gold(cfg: RagTuneConfig, tokenizer, positions, question: str, gold: Hit, others: list[Hit], rng):
    """build_prompt with `gold` at a random position among k sources (the rest from `others`, in order). When
    the budget cuts the sources before the gold, it is drawn again among the ones that fit, then put first."""
    others = others[: cfg.k - 1]
    pos = rng.randrange(len(others) + 1)
    for attempt in range(3):
        sources = others[:pos] + [gold] + others[pos:]
        built = build_prompt(tokenizer, question, sources, cfg.context_tokens, cfg.max_new_tokens, positions)
        if gold in built[1]:
            return built
        fit = max(len(built[1]), 1)
        others = others[: fit - 1]
        pos = rng.randrange(fit) if attempt == 0 else 0
    raise SlmError(f"the gold source of {question!r} does not fit in {cfg.context_tokens} prompt tokens")


_CITATION = re.compile(r"(?:^|\s)\[(\d+)\](?=[\s.,;:!?)]|$)")


def cite(answer: str, n: int) -> str:
    """`answer` citing source n: kept as it is when it cites [n] and nothing else; otherwise its citations
    are dropped and [n] put before the final period, or at the end."""
    text = answer.strip()
    if set(_CITATION.findall(text)) == {str(n)}:
        return text
    text = _CITATION.sub("", text).strip()
    if text.endswith(".") and not text.endswith(".."):
        return f"{text[:-1]} [{n}]."
    return f"{text} [{n}]"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")


def first_sentences(text: str, n: int | None) -> str:
    """The first `n` sentences of `text` (all of it when n is None): a sentence ends at . ! or ? before
    whitespace and a capital, a backquote, a quote or a parenthesis, so "json.dumps() returns" stays whole."""
    if n is None:
        return text
    return " ".join(_SENTENCE_END.split(text.strip())[:n])


def write_examples(out: Path, examples: list[dict], report: dict, val_share: float, seed: int) -> None:
    """OUT/train.jsonl and OUT/val.jsonl (a seeded `val_share` of the examples, at most MAX_VAL, none when
    fewer than 10), then OUT/examples.json: the report, which marks the examples complete."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(MAX_VAL, round(val_share * len(examples))) if len(examples) >= 10 else 0
    held = set(order[:n_val])
    for name, keep in ((TRAIN, lambda i: i not in held), (VAL, lambda i: i in held)):
        with atomic_file(out / name) as f:
            for i, ex in enumerate(examples):
                if keep(i):
                    f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    write_json(out / REPORT, {**report, "train": len(examples) - n_val, "val": n_val})


def max_positions(base: str) -> int | None:
    """The base's context length (config.json), which `rag ask` budgets the prompt against."""
    path = Path(base) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("max_position_embeddings")


# ----------------------------------------------------------------------------- helpers


def _validate(cfg: RagTuneConfig, out: Path) -> RagTuneConfig:
    cfg = open_run(cfg, out, CONFIG_FILE, "rag tuning run")
    if cfg.method not in METHODS:
        raise SlmError(f"--method must be lora or full, not {cfg.method!r}")
    if not 0 <= cfg.gold_share <= 1:
        raise SlmError(f"--gold-share must be between 0 and 1, not {cfg.gold_share}")
    if not 0 <= cfg.val_share < 1:
        raise SlmError(f"--val-share must be in [0, 1), not {cfg.val_share}")
    for name in ("context_tokens", "max_new_tokens", "batch_size", "lora_r"):
        if getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.k is not None and cfg.k < 1:
        raise SlmError("--k must be at least 1")
    for name in ("limit", "answer_sentences"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.variants < 1:
        raise SlmError("--variants must be at least 1")
    if cfg.epochs <= 0:
        raise SlmError("--epochs must be positive")
    if cfg.lr is not None and not 0 < cfg.lr < 1:
        raise SlmError(f"--lr {cfg.lr} is out of range (0, 1)")
    check_run_block(cfg)
    if not Path(cfg.data).is_file():
        raise SlmError(f"data file {cfg.data} does not exist")
    if not cfg.resume and cfg.overwrite and out.exists():
        clear_run_dir(out)  # --overwrite removes only a run slmforge made
    return cfg


def _add_metrics(path: Path, extra: dict) -> None:
    """Register the artifact at `path` again with `extra` added to its manifest's metrics."""
    m = workspace.read_manifest(path)
    kind = m.get("kind") or "model"
    workspace.register(kind, path, name=m.get("name"), source=m.get("source"), data_hash=m.get("data_hash"),
                       metrics={**m.get("metrics", {}), **extra})  # fmt: skip


def _dropped(counts: dict) -> str:
    return (f"{counts['skipped_quarantined']} with a quarantined gold chunk, {counts['skipped_no_sources']} "
            "abstain rows with nothing retrieved outside the gold's document")  # fmt: skip


def _summary(report: dict) -> str:
    return (
        f"rag tune: {report['examples']} examples from {report['rows']} rows ({report['answer']} answer, "
        f"{report['abstain']} abstain, {report['unanswerable']} unanswerable; {report['train']} train, "
        f"{report['val']} val); prompts {report['prompt_tokens_mean']:.0f} tokens on average "
        f"(max {report['prompt_tokens_max']}), prompt version {report['prompt_version']}"
    )
