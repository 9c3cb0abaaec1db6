"""`slm rag ask`: retrieve, build a grounded prompt within the model's context budget, answer with
numbered citations, or say "I don't know" when retrieval finds nothing relevant.

The relevance gate is the best cosine similarity between the question and any chunk: below
`min_cosine` the model is not even asked (a small model given unrelated sources still invents).
The default threshold, 0.45 for all-MiniLM-L6-v2, is the 1st percentile of the best cosine of the
answerable even-numbered Python-docs questions (it lets 99 % of them through); on the odd-numbered half
it let 99.2 % of answerable questions through and stopped 90 % of unanswerable ones (BENCHMARKS.md).
For another corpus or embedding model, `slm rag eval` prints the same suggestion for your questions, and
`slm rag calibrate` stores a threshold, the number of chunks and the fusion in the index, which ask then
uses wherever `min_cosine` and `k` are left None.
Citations are the model's own `[n]` when it writes them; when it writes none, the answer is attributed
to the source sharing the most content words with it, and `model_cited` says so.

The prompt is `build_prompt`'s, the one function `slm rag ask` and `slm rag tune` (slmforge.rag.tune) both
call, so a tuned model trains on exactly the prompts it is asked with. `RAG_PROMPT_VERSION` fingerprints its
template (system prompt, source blocks, question); a tuned model records the version it was trained on in its
manifest, and `Asker` refuses a model recorded with another (one with no record, e.g. a base model, is used).

Indirect injection: retrieval leaves out the chunks the guard quarantined when they were indexed, and
the retrieved chunks are checked again (rules + detector, `slmforge.rag.guarding`) before they go into
the prompt; the flagged ones are dropped and counted in `Answer.dropped_chunks`, so an index built before
the guard, or with a weaker one, cannot smuggle instructions into the prompt either. The answer-time
guard is the index's own `guard` setting (`rules` for an index that records none), or `AskConfig.guard`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core import runtime
from slmforge.core.errors import SlmError
from slmforge.rag.guarding import ChunkGuard, check_setting, guarded_text, open_guard, source_title
from slmforge.rag.search import Hit, Retriever, query_terms
from slmforge.rag.store import Filters

DEFAULT_MIN_COSINE = 0.45  # all-MiniLM-L6-v2, calibrated on the Python docs (see the module docstring)
IDK = "I don't know"
SYSTEM = (
    "Answer the question using only the numbered sources. Cite the sources you use like [1]. "
    f"If the sources do not contain the answer, reply exactly: {IDK}."
)
BLOCK = "[{n}] ({title})\n{text}"  # one numbered source
QUESTION = "Question: {question}"
USER = "Sources:\n\n{blocks}\n\n{question}"  # blocks joined by a blank line
PROMPT_REVISION = 1  # bump when build_prompt changes what a prompt holds without changing the strings above
RAG_PROMPT_VERSION = hashlib.sha256(
    json.dumps([PROMPT_REVISION, SYSTEM, BLOCK, QUESTION, USER]).encode()
).hexdigest()[:12]
"""The prompt fingerprint a tuned model records (manifest metrics `rag_prompt_version`)."""
PROMPT_RECORD = "rag_prompt_version"
DEFAULT_K = 4  # chunks retrieved for the prompt, where the index has no calibration
DEFAULT_CONTEXT_TOKENS = 1024
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class AskConfig:
    """What `slm rag ask` needs."""

    index: str
    """An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store."""
    question: str
    """The question."""
    model: str = "smollm2-135m-instruct"
    """A catalog name, model dir, or hub id."""
    store: str | None = None
    """postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."""
    mode: str = "hybrid"
    """Retrieval: hybrid, bm25 or vector."""
    k: int | None = None
    """Chunks to retrieve [default: the index's calibration, else 4]."""
    min_cosine: float | None = None
    """Abstain below this best cosine similarity [default: the index's calibration, else 0.45].

    The relevance gate; None: the index's calibrated one (`slm rag calibrate`), else the default for
    all-MiniLM-L6-v2."""
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    """Prompt budget: sources + question.

    The system prompt counts too."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Stop after this many new tokens."""
    path_filter: str | None = None
    """Only files matching this."""
    tags: list[str] = field(default_factory=list)
    """Only files with this tag (repeatable)."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    repetition_penalty: float = 1.3
    """SmolLM2-135M loops ("The answer to your question is:" over and over) without it."""
    guard: str | None = None
    """Answer-time check of the retrieved chunks: auto, rules, none or a detector directory
    (None: the index's own setting, `rules` when it records none)."""


@dataclass
class Answer:
    text: str
    abstained: bool
    sources: list[Hit]  # the sources the prompt held, numbered from 1
    citations: list[int]  # source numbers cited in the answer
    model_cited: bool  # the model wrote the [n] itself
    best_cosine: float | None
    prompt_tokens: int = 0
    seconds: float = 0.0
    dropped_chunks: int = 0  # retrieved chunks the guard kept out of the prompt
    dropped_reasons: list[str] = field(default_factory=list)  # the guard's reasons, one per dropped chunk


def prompt_k(k: int | None, retriever: Retriever) -> int:
    """The chunks a prompt takes on this index: `k` when given, else its calibration's, else DEFAULT_K."""
    return k if k is not None else (retriever.calibration or {}).get("k", DEFAULT_K)


def ask(cfg: AskConfig) -> Answer:
    """Answer one question from the index."""
    with Asker(cfg.index, cfg.model, cfg.store, threads=cfg.threads, guard=cfg.guard) as asker:
        return asker.ask(cfg)


class Asker:
    """An open index and a loaded model, to answer many questions (eval, benchmarks)."""

    def __init__(
        self, index: str, model: str, store: str | None = None, threads: int | None = None,
        guard: str | None = None,
    ):  # fmt: skip
        from slmforge.infer.engines import open_lm

        runtime.set_threads(threads)
        self.retriever = Retriever(index, store)
        try:
            setting = check_setting(guard or self.retriever.store.meta().get("guard"))
            self.guard: ChunkGuard | None = open_guard(setting)
            check_prompt_version(model)  # before loading: a refused model is not converted first
        except SlmError:
            self.retriever.close()
            raise
        self.lm = open_lm(model, threads=threads)
        self.tokenizer = self.lm.tokenizer
        self.model_name = model

    def __enter__(self) -> Asker:
        return self

    def __exit__(self, *exc) -> None:
        self.retriever.close()

    def ask(self, cfg: AskConfig) -> Answer:
        from slmforge.infer.generate import GenerateConfig, complete

        if cfg.repetition_penalty <= 0:
            raise SlmError(f"--repetition-penalty must be above 0; 1 is off (got {cfg.repetition_penalty})")
        started = time.perf_counter()
        cal = self.retriever.calibration or {}
        found = self.retriever.search(
            cfg.question, cfg.mode, prompt_k(cfg.k, self.retriever), Filters(cfg.path_filter, list(cfg.tags))
        )
        if found.best_cosine is None:  # bm25 mode: the gate still needs the question's nearest chunk
            nearest = self.retriever.store.search_vector(
                self.retriever.embedder.encode_query(cfg.question), 1, Filters()
            )
            found.best_cosine = nearest[0][1] if nearest else None
        hits, dropped = self.screen(found.hits)
        if dropped and hits and any(h.cosine is not None for h in hits):
            found.best_cosine = max(h.cosine for h in hits if h.cosine is not None)  # the gate sees kept ones
        gate = cal.get("min_cosine", DEFAULT_MIN_COSINE) if cfg.min_cosine is None else cfg.min_cosine
        if found.hits and not hits:
            text = f"{IDK}: the sources retrieved for this question were withheld by the injection guard."
            return Answer(text, True, [], [], False, found.best_cosine, 0, time.perf_counter() - started,
                          len(dropped), dropped)  # fmt: skip
        if not hits or found.best_cosine is None or found.best_cosine < gate:
            best = "none" if found.best_cosine is None else f"{found.best_cosine:.2f}"
            text = f"{IDK}: nothing in the index is close enough to the question (best similarity {best} < {gate})."
            return Answer(text, True, [], [], False, found.best_cosine, 0, time.perf_counter() - started,
                          len(dropped), dropped)  # fmt: skip
        _, sources, ids = self.prompt(cfg, hits)
        gen = GenerateConfig(
            model=self.model_name,
            max_new_tokens=cfg.max_new_tokens,
            repetition_penalty=cfg.repetition_penalty,
        )
        done = complete(self.lm.step(), self.tokenizer, ids, gen, self.lm.eos)
        text = done.text.strip()
        abstained = IDK.lower() in text.lower().replace("’", "'") or not text
        cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if 1 <= int(n) <= len(sources)})
        model_cited = bool(cited)
        if not cited and not abstained:
            best_source = _most_overlap(text, sources)
            cited = [best_source]
            text = f"{text} [{best_source}]"
        return Answer(text, abstained, sources, cited, model_cited, found.best_cosine, len(ids),
                      time.perf_counter() - started, len(dropped), dropped)  # fmt: skip

    def screen(self, hits: list[Hit]) -> tuple[list[Hit], list[str]]:
        """The hits the guard lets into a prompt, and the reasons for each one it kept out."""
        return screen(self.guard, hits)

    def prompt(self, cfg: AskConfig, hits: list[Hit]) -> tuple[list[dict], list[Hit], list[int]]:
        """`build_prompt` for this model: (messages, the sources that fit, token ids)."""
        return build_prompt(self.tokenizer, cfg.question, hits, cfg.context_tokens, cfg.max_new_tokens,
                            self.lm.max_positions)  # fmt: skip


def screen(guard: ChunkGuard | None, hits: list[Hit]) -> tuple[list[Hit], list[str]]:
    """The hits `guard` lets into a prompt, and its reasons for each one it kept out."""
    if guard is None:
        return hits, []
    kept, dropped = [], []
    for hit in hits:
        c = hit.chunk
        reasons = guard.check(guarded_text(c.section, c.doc, c.text))
        if reasons:
            dropped.append(reasons)
        else:
            kept.append(hit)
    return kept, dropped


def build_prompt(
    tokenizer, question: str, hits: list[Hit], context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, max_positions: int | None = None,
) -> tuple[list[dict], list[Hit], list[int]]:  # fmt: skip
    """The grounded prompt: (system + user messages, the hits they hold numbered from 1, the chat-templated
    token ids). As many sources as fit, in order, within min(context_tokens, max_positions - max_new_tokens)
    tokens, the last one cut to the room left (never below 48 tokens). `slm rag ask` and `slm rag tune` both
    build their prompts here."""
    from slmforge.infer.generate import prompt_ids

    limit = max_positions or context_tokens
    budget = min(context_tokens, limit - max_new_tokens)
    target = budget
    for _ in range(4):  # the template's own tokens are estimated: shrink until the real prompt fits
        messages, sources = _fit(tokenizer, question, hits, target)
        ids = prompt_ids(tokenizer, messages, chat=True)
        if len(ids) <= budget:
            return messages, sources, ids
        target -= len(ids) - budget + 4
    raise SlmError(f"could not fit the question and a source in {budget} prompt tokens")


def _fit(tokenizer, question: str, hits: list[Hit], budget: int) -> tuple[list[dict], list[Hit]]:
    """System + user messages holding as many sources (in order) as fit the token budget."""
    asked = QUESTION.format(question=question)
    used = _tokens(tokenizer, SYSTEM) + _tokens(tokenizer, asked) + 32  # chat template markup
    if used >= budget:
        raise SlmError(f"the question alone needs about {used} tokens; the context budget is {budget}")
    blocks, sources = [], []
    for hit in hits:
        n = len(sources) + 1
        title = source_title(hit.chunk.section, hit.chunk.doc)
        block = BLOCK.format(n=n, title=title, text=hit.chunk.text.strip())
        size = _tokens(tokenizer, block) + 2
        if used + size > budget:
            room = budget - used - 2
            if room < 48:
                break
            ids = tokenizer(block, add_special_tokens=False)["input_ids"][:room]
            block, size = tokenizer.decode(ids), room + 2
        blocks.append(block)
        sources.append(hit)
        used += size
    user = USER.format(blocks="\n\n".join(blocks), question=asked)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], sources


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def recorded_prompt_version(model: str) -> str | None:
    """The RAG prompt version the model's manifest records (a tuned model), or None (no record)."""
    from slmforge.infer.model_dirs import read_manifest, resolve_causal_lm

    path = resolve_causal_lm(model)
    if path.is_file():  # a .gguf file: the manifest of its directory
        path = path.parent
    if not path.is_dir():  # a hub id
        return None
    return read_manifest(Path(path)).get("metrics", {}).get(PROMPT_RECORD)


def check_prompt_version(model: str) -> None:
    """SlmError when `model` was tuned on another RAG prompt than the one this version builds."""
    recorded = recorded_prompt_version(model)
    if recorded is not None and recorded != RAG_PROMPT_VERSION:
        raise SlmError(
            f"{model} was tuned on RAG prompt {recorded}, but this slmforge builds prompt {RAG_PROMPT_VERSION}: "
            "its answers would not match its training; tune it again with `slm rag tune`"
        )


def _most_overlap(text: str, sources: list[Hit]) -> int:
    words = set(query_terms(text, limit=10_000))
    overlap = [len(words & set(query_terms(h.chunk.text, limit=10_000))) for h in sources]
    return 1 + max(range(len(sources)), key=lambda i: (overlap[i], -i))
