"""`slm rag eval`: retrieval quality and latency for each mode side by side, and answer-level evaluation.

Queries file (JSONL), one object per line:
  {"query": "...", "relevant": [{"doc": "library/json.rst.txt", "section": "json --- … > Basic Usage"}],
   "answer": "optional reference answer", "terms": ["optional", "key terms"], "answerable": true}
Rows written by `slm synth --task qa` ({"question", "answer", "answerable", "source": {"doc", "section",
...}}) are read too: their source's document and section is the relevant target, and an unanswerable
row's question is searched with its source's document left out (distractors only), as QA_SCHEMA says.
`doc` matches a chunk whose file path ends with it; `section`, when given, must equal the chunk's section
path or be a prefix of it; `"relevant_chunks": [ids]` names chunks directly. Each relevant entry is one
target: recall@k is the share of targets found in the top k; MRR uses the first hit matching any target;
nDCG@10 counts the first hit of each target (gain 1) against the ideal order. Queries with
`"answerable": false` are left out of retrieval metrics and used for abstention.
Latency is the wall time of `Retriever.search` (query embedding included) after one warm-up query.
The "hybrid" mode and the gate use the index's calibration (`slm rag calibrate`) where it has one.

`--answers` (answer level, per `--model`, side by side; refused on a set without reference answers):
- correct: the answer contains one of the question's key `terms` (case-insensitive) when the set gives
  terms, else its token F1 against the reference is ≥ `CORRECT_F1`; an abstention is never correct.
- f1: SQuAD-style token F1 against the reference (lower case, no punctuation, articles or [n]); 0 when
  the model abstained. term_rate: the share of answers holding a key term (questions with terms only).
- citation_precision: per answer, the share of its cited sources ([n], the model's or the attributed one)
  that match one of the question's relevant documents/sections; model_cited: the model wrote [n] itself.
  Both over the answerable questions it answered.
- abstained_unanswerable / abstained_answerable (false abstention): shares of each kind of question.
- p50 / p95 seconds per answer (retrieval, gate and generation, one question at a time, after one
  warm-up answer) and $/1k answers: mean seconds per answer / 3600 x `price_per_hour` x 1000, the cost
  per 1,000 requests of `slm eval` (slmforge.lm.evaluate).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.core.progress import bar
from slmforge.rag.search import Hit, Retriever

EVAL_MODES = ("bm25", "vector", "hybrid", "hybrid-rrf")  # hybrid = the index's fusion (calibrated or convex)
CORRECT_F1 = 0.5  # "correct" without key terms: token F1 against the reference at least this
DEFAULT_ANSWER_MODEL = "smollm2-135m-instruct"


@dataclass
class RagEvalConfig:
    """What `slm rag eval` needs."""

    index: str
    """An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store."""
    queries: str
    """JSONL: query, relevant docs/sections/chunks, answer."""
    store: str | None = None
    """postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."""
    modes: list[str] = field(default_factory=lambda: list(EVAL_MODES))
    """Modes to compare: bm25, vector, hybrid (convex fusion), hybrid-rrf."""
    k: int = 10
    """Results retrieved per query."""
    answers: bool = False
    """Evaluate answers instead of retrieval: correctness, citations, abstention, latency, $/1k.

    Needs reference answers ("answer" on the answerable rows); see the module docstring."""
    models: list[str] = field(default_factory=list)
    """Answer with this model (repeatable: side by side) [default with --answers: smollm2-135m-instruct].

    Without --answers, the answer checks are added to the retrieval report."""
    min_cosine: float | None = None
    """The relevance gate of the answers and the gate report [default: the index's calibration, else the one
    `slm rag ask` uses]."""
    limit: int | None = None
    """Only the first N queries."""
    max_new_tokens: int = 128
    """Answers stop after this many new tokens."""
    price_per_hour: float = 0.10
    """Machine USD/hour for $/1k answers."""
    threads: int | None = None
    """Compute threads for the answering model [default: the free cores, never more]."""


def evaluate_rag(cfg: RagEvalConfig, progress: bool = True) -> dict:
    """{"retrieval": {mode: metrics}, "gate": {...}, "answers": {model: metrics} or None, "queries": n};
    with `answers`: {"answers": {model: metrics}, "queries": n, ...} and no retrieval part."""
    for m in cfg.modes:
        if m not in EVAL_MODES:
            raise SlmError(f"unknown mode {m!r}: use {', '.join(EVAL_MODES)}")
    if cfg.limit is not None and cfg.limit < 1:
        raise SlmError(f"--limit must be at least 1 (got {cfg.limit})")
    if cfg.price_per_hour < 0:
        raise SlmError(f"--price-per-hour must be ≥ 0 (got {cfg.price_per_hour})")
    queries = load_queries(cfg.queries)[: cfg.limit]
    answerable = [q for q in queries if q.get("answerable", True)]
    if cfg.answers:
        check_references(cfg.queries, queries)
        models = cfg.models or [DEFAULT_ANSWER_MODEL]
        with Retriever(cfg.index, cfg.store) as r:  # the index exists, before any model loads
            calibration = r.calibration
        return {"queries": len(queries), "answerable": len(answerable),
                "unanswerable": len(queries) - len(answerable), "calibration": calibration,
                "price_per_hour": cfg.price_per_hour, "answers": answer_models(cfg, models, queries, progress)}  # fmt: skip
    report: dict = {"queries": len(queries), "answerable": len(answerable), "retrieval": {}}
    cosines: dict[str, float | None] = {}
    with Retriever(cfg.index, cfg.store) as r:
        report["calibration"] = r.calibration
        report["fusion"] = {"fusion": r.fusion, "alpha": r.alpha}
        for name in cfg.modes:
            mode, _, fusion = name.partition("-")
            r.search(answerable[0]["query"] if answerable else "warm up", mode, cfg.k)  # load the encoder
            rows, times = [], []
            with bar(f"eval {name}", total=len(answerable), enabled=progress) as b:
                for q in answerable:
                    res = r.search(q["query"], mode, cfg.k, fusion=fusion or None)
                    times.append(res.seconds * 1000)
                    rows.append(score_ranking(res.hits, q, cfg.k))
                    if res.best_cosine is not None:
                        cosines[q["query"]] = res.best_cosine
                    b.advance()
            report["retrieval"][name] = _summarise(rows, times)
        unanswerable = [q for q in queries if not q.get("answerable", True)]
        for q in unanswerable:
            with r.excluding(*q.get("exclude", ())):
                res = r.search(q["query"], "vector", 1)
            cosines[q["query"]] = res.best_cosine
    gate = cfg.min_cosine if cfg.min_cosine is not None else (report["calibration"] or {}).get("min_cosine")
    report["gate"] = _gate_report(answerable, unanswerable, cosines, gate)
    report["answers"] = answer_models(cfg, cfg.models, queries, progress) if cfg.models else None
    return report


def load_queries(path: str) -> list[dict]:
    """The rows of an eval queries file or of an `slm synth --task qa` file, as eval rows: "query",
    "relevant", "answerable", and "answer", "terms", "exclude" (documents to leave out of the search),
    "group" (the document the question is about) where known."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"no queries file {path}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except ValueError:
            raise SlmError(f"{path}:{n} is not JSON") from None
        if isinstance(q, dict) and "query" not in q and "question" in q:
            q = _from_synth(q, f"{path}:{n}")
        if not isinstance(q, dict) or not isinstance(q.get("query"), str):
            raise SlmError(
                f'{path}:{n} needs a string field "query" (or "question" and "source", as slm synth writes)'
            )
        if q.get("answerable", True) and not (q.get("relevant") or q.get("relevant_chunks")):
            raise SlmError(f'{path}:{n} names no relevant doc/chunk (or mark it "answerable": false)')
        terms = q.get("terms")
        if terms is not None and not (
            isinstance(terms, list) and all(isinstance(t, str) and t for t in terms)
        ):
            raise SlmError(f'{path}:{n}: "terms" must be a list of strings')
        q["line"] = n
        out.append(q)
    if not out:
        raise SlmError(f"{path} holds no queries")
    return out


def _from_synth(row: dict, where: str) -> dict:
    """An `slm synth --task qa` row as an eval row (QA_SCHEMA.md)."""
    source = row.get("source")
    if not isinstance(row.get("question"), str):
        raise SlmError(f'{where} needs a string field "question"')
    if not isinstance(source, dict) or not isinstance(source.get("doc"), str) or not source["doc"]:
        raise SlmError(
            f'{where} has no "source" with a "doc" (every slm synth row names the chunk it came from)'
        )
    answerable = bool(row.get("answerable", True))
    q = {"query": row["question"], "answerable": answerable, "group": source["doc"]}
    if answerable:
        target = {"doc": source["doc"]}
        if source.get("section"):
            target["section"] = source["section"]
        q["relevant"] = [target]
        if isinstance(row.get("answer"), str):
            q["answer"] = row["answer"]
    else:
        q["exclude"] = [source["doc"]]
    if "terms" in row:
        q["terms"] = row["terms"]
    return q


def check_references(path: str, queries: list[dict]) -> None:
    """--answers needs a reference answer on every answerable row."""
    answerable = [q for q in queries if q.get("answerable", True)]
    missing = [q for q in answerable if not (isinstance(q.get("answer"), str) and q["answer"].strip())]
    if answerable and len(missing) == len(answerable):
        raise SlmError(
            f'{path} has no reference answers ("answer" on the answerable rows): --answers needs them'
        )
    if missing:
        raise SlmError(
            f'{path}:{missing[0]["line"]} has no reference "answer" ({len(missing)} answerable rows lack one)'
        )


def matches(hit: Hit, target: dict | int) -> bool:
    if isinstance(target, int):
        return hit.chunk.id == target
    doc = target.get("doc", "")
    path = hit.chunk.path.replace("\\", "/")
    if doc and not (path == doc or path.endswith("/" + doc.lstrip("/"))):
        return False
    section = target.get("section")
    return not section or hit.chunk.section == section or hit.chunk.section.startswith(section + " > ")


def score_ranking(hits: list[Hit], query: dict, k: int) -> dict:
    targets: list = list(query.get("relevant") or []) + list(query.get("relevant_chunks") or [])
    found_at: dict[int, int] = {}  # target index -> first rank that matches it
    first = None
    for rank, hit in enumerate(hits, 1):
        hit_targets = [t for t, target in enumerate(targets) if matches(hit, target)]
        if hit_targets and first is None:
            first = rank
        for t in hit_targets:
            found_at.setdefault(t, rank)
    n = len(targets)
    recall = {c: sum(1 for r in found_at.values() if r <= c) / n for c in (1, 5, 10) if c <= max(k, 10)}
    dcg = sum(1 / math.log2(r + 1) for r in found_at.values() if r <= 10)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, min(n, 10) + 1))
    return {**{f"recall@{c}": v for c, v in recall.items()}, "mrr": 1 / first if first else 0.0,
            "ndcg@10": dcg / idcg if idcg else 0.0}  # fmt: skip


def _summarise(rows: list[dict], times: list[float]) -> dict:
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} if rows else {}
    if times:
        out["p50_ms"] = float(np.percentile(times, 50))
        out["p95_ms"] = float(np.percentile(times, 95))
    return out


def _gate_report(answerable, unanswerable, cosines, min_cosine) -> dict:
    from slmforge.rag.ask import DEFAULT_MIN_COSINE

    gate = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
    a = [cosines[q["query"]] for q in answerable if cosines.get(q["query"]) is not None]
    u = [cosines[q["query"]] for q in unanswerable if cosines.get(q["query"]) is not None]
    return {
        "min_cosine": gate,
        "answerable_passed": float(np.mean([c >= gate for c in a])) if a else None,
        "unanswerable_abstained": float(np.mean([c < gate for c in u])) if u else None,
        # the threshold that lets 99 % of these answerable questions through (how the default was set)
        "suggested_min_cosine": round(float(np.percentile(a, 1)), 3) if a else None,
    }


def answer_models(cfg: RagEvalConfig, models: list[str], queries: list[dict], progress: bool) -> dict:
    """{model: answer metrics}, one model loaded at a time."""
    from slmforge.rag.ask import Asker

    out = {}
    for model in models:
        with Asker(cfg.index, model, cfg.store, threads=cfg.threads) as asker:
            out[model] = answer_metrics(asker, cfg, model, queries, progress)
    return out


def answer_metrics(asker, cfg: RagEvalConfig, model: str, queries: list[dict], progress: bool) -> dict:
    """Ask every question with `asker` (an `Asker`, or anything with its `ask` and `retriever`); score."""
    from slmforge.rag.ask import AskConfig

    def ask(q: dict):
        exclude = q.get("exclude", ())
        with asker.retriever.excluding(*exclude) if exclude else contextlib.nullcontext():
            return asker.ask(
                AskConfig(cfg.index, q["query"], model, cfg.store, min_cosine=cfg.min_cosine,
                          max_new_tokens=cfg.max_new_tokens, threads=cfg.threads)
            )  # fmt: skip

    warm = next((q for q in queries if q.get("answerable", True)), queries[0])
    ask(warm)  # the first answer loads the query encoder (and may convert the model): not timed
    rows = []
    with bar(f"answers {model}", total=len(queries), enabled=progress) as b:
        for q in queries:
            rows.append(score_answer(ask(q), q))
            b.advance()
    return summarise_answers(rows, cfg.price_per_hour)


def score_answer(a, q: dict) -> dict:
    """One answer (`slmforge.rag.ask.Answer`) against its question row."""
    row = {"answerable": q.get("answerable", True), "abstained": bool(a.abstained), "seconds": a.seconds}
    if not row["answerable"]:
        return row
    ref, terms = q.get("answer"), q.get("terms")
    if isinstance(ref, str) and ref.strip():
        row["f1"] = 0.0 if a.abstained else _f1(a.text, ref)
    if terms:
        text = a.text.lower()
        row["term"] = float(not a.abstained and any(t.lower() in text for t in terms))
    if "term" in row or "f1" in row:
        row["correct"] = row["term"] if "term" in row else float(row["f1"] >= CORRECT_F1)
    if not a.abstained:
        row["model_cited"] = float(a.model_cited)
        targets = list(q.get("relevant") or []) + list(q.get("relevant_chunks") or [])
        if a.citations and targets:
            good = [any(matches(a.sources[n - 1], t) for t in targets) for n in a.citations]
            row["citation_precision"] = sum(good) / len(good)
    return row


def summarise_answers(rows: list[dict], price_per_hour: float) -> dict:
    def mean(key, subset):
        vals = [r[key] for r in subset if key in r]
        return float(np.mean(vals)) if vals else None

    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    seconds = [r["seconds"] for r in rows]
    return {
        "answerable": len(ans),
        "unanswerable": len(una),
        "correct": mean("correct", ans),
        "f1": mean("f1", ans),
        "term_rate": mean("term", ans),
        "citation_precision": mean("citation_precision", ans),
        "model_cited": mean("model_cited", ans),
        "abstained_unanswerable": mean("abstained", una),
        "abstained_answerable": mean("abstained", ans),
        "p50_s": float(np.percentile(seconds, 50)),
        "p95_s": float(np.percentile(seconds, 95)),
        "cost_per_1k": float(np.mean(seconds)) / 3600 * price_per_hour * 1000,
    }


def _normalise(text: str) -> str:
    text = re.sub(r"\[\d+\]", " ", text.lower())
    text = "".join(c for c in text if c not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, reference: str) -> float:
    p, r = _normalise(prediction).split(), _normalise(reference).split()
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)
