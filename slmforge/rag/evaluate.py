"""`slm rag eval`: retrieval quality and latency for each mode side by side, and answer-level checks.

Queries file (JSONL), one object per line:
  {"query": "...", "relevant": [{"doc": "library/json.rst.txt", "section": "json --- … > Basic Usage"}],
   "answer": "optional reference answer", "answerable": true}
`doc` matches a chunk whose file path ends with it; `section`, when given, must equal the chunk's section
path or be a prefix of it; `"relevant_chunks": [ids]` names chunks directly. Each relevant entry is one
target: recall@k is the share of targets found in the top k; MRR uses the first hit matching any target;
nDCG@10 counts the first hit of each target (gain 1) against the ideal order. Queries with
`"answerable": false` are left out of retrieval metrics and used for abstention.
Latency is the wall time of `Retriever.search` (query embedding included) after one warm-up query.
"""

from __future__ import annotations

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

EVAL_MODES = ("bm25", "vector", "hybrid", "hybrid-rrf")  # hybrid = the default convex fusion


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
    model: str | None = None
    """Also answer with this model: citations, F1.

    Scored on citations, exact match and F1 where a query has `answer`, and on abstention where it is
    unanswerable."""
    min_cosine: float | None = None
    """The relevance gate of the answers and the gate report [default: the one `slm rag ask` uses]."""
    limit: int | None = None
    """Only the first N queries."""


def evaluate_rag(cfg: RagEvalConfig, progress: bool = True) -> dict:
    """{"retrieval": {mode: metrics}, "gate": {...}, "answers": {...} or None, "queries": n}."""
    for m in cfg.modes:
        if m not in EVAL_MODES:
            raise SlmError(f"unknown mode {m!r}: use {', '.join(EVAL_MODES)}")
    queries = load_queries(cfg.queries)[: cfg.limit]
    answerable = [q for q in queries if q.get("answerable", True)]
    report: dict = {"queries": len(queries), "answerable": len(answerable), "retrieval": {}}
    cosines: dict[str, float | None] = {}
    with Retriever(cfg.index, cfg.store) as r:
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
            res = r.search(q["query"], "vector", 1)
            cosines[q["query"]] = res.best_cosine
    report["gate"] = _gate_report(answerable, unanswerable, cosines, cfg.min_cosine)
    report["answers"] = _answers(cfg, queries, progress) if cfg.model else None
    return report


def load_queries(path: str) -> list[dict]:
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
        if not isinstance(q, dict) or not isinstance(q.get("query"), str):
            raise SlmError(f'{path}:{n} needs a string field "query"')
        if q.get("answerable", True) and not (q.get("relevant") or q.get("relevant_chunks")):
            raise SlmError(f'{path}:{n} names no relevant doc/chunk (or mark it "answerable": false)')
        out.append(q)
    if not out:
        raise SlmError(f"{path} holds no queries")
    return out


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


def _answers(cfg: RagEvalConfig, queries: list[dict], progress: bool) -> dict:
    from slmforge.rag.ask import AskConfig, Asker

    rows = []
    with (
        Asker(cfg.index, cfg.model, cfg.store) as asker,
        bar("answers", total=len(queries), enabled=progress) as b,
    ):
        for q in queries:
            a = asker.ask(AskConfig(cfg.index, q["query"], cfg.model, cfg.store, min_cosine=cfg.min_cosine))
            row = {"answerable": q.get("answerable", True), "abstained": a.abstained,
                   "cited": bool(a.citations), "model_cited": a.model_cited}  # fmt: skip
            targets = list(q.get("relevant") or []) + list(q.get("relevant_chunks") or [])
            if a.citations and targets:
                good = [any(matches(a.sources[n - 1], t) for t in targets) for n in a.citations]
                row["citation_precision"] = sum(good) / len(good)
            if q.get("answer") and not a.abstained:
                row["exact"] = float(_normalise(a.text) == _normalise(q["answer"]))
                row["f1"] = _f1(a.text, q["answer"])
            rows.append(row)
            b.advance()

    def mean(key, subset):
        vals = [r[key] for r in subset if key in r]
        return float(np.mean(vals)) if vals else None

    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    answered = [r for r in ans if not r["abstained"]]
    return {
        "answerable": len(ans),
        "unanswerable": len(una),
        "abstained_on_unanswerable": mean("abstained", una),
        "abstained_on_answerable": mean("abstained", ans),
        "answers_with_citation": mean("cited", answered),
        "answers_cited_by_model": mean("model_cited", answered),
        "citation_precision": mean("citation_precision", answered),
        "exact": mean("exact", answered),
        "f1": mean("f1", answered),
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
