"""`slm rag calibrate`: fit one index's retrieval settings on questions about it, check them on others.

Fixed settings fit one corpus and not the next: on general text hybrid fusion adds nothing over BM25,
on paraphrased questions vector search ranks the right page first more often than hybrid. So for one
index and a question set (an `slm synth --task qa` file or an `slm rag eval` queries file, read by
`slmforge.rag.evaluate.load_queries`):

1. Split the questions by the document they are about (a synth row's source document; an eval row's
   first relevant document; an eval row with no document is its own group), deterministically under
   `seed`: the groups are shuffled and held apart until `held` of the questions are, so every held
   question is about a document the fit never saw.
2. On the fit part, with each question's BM25 and vector candidate lists retrieved once (the 50 of each
   that hybrid search fuses), choose
   - the fusion: convex with BM25 weight alpha on `GRID` (0 = vectors only, 1 = BM25 only) or rrf, the
     one with the best recall@5, then MRR (ties go to the weight nearest the default `ALPHA`);
   - the relevance gate: the highest min_cosine (rounded down to 3 decimals) that lets at least `PASS`
     of the answerable questions through (best cosine ≥ it), with how many unanswerable ones it stops
     (an unanswerable synth row is searched without its source document: distractors only);
   - k, the chunks for the prompt: the smallest k in 2..8 whose recall@k, under the chosen fusion,
     reaches the plateau: recall@8 - `PLATEAU`.
3. On the held-apart part, report recall@5 and MRR for BM25, vector, hybrid with the default fusion and
   hybrid with the chosen one, and the gate's pass and stop rates at the default and chosen thresholds.

The choice is stored in the index's meta (`slmforge.rag.search.CALIBRATION_KEY`, JSON); `slm rag search`,
`ask`, `eval` and the server then use it wherever the user gives no value. `reset` forgets it.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import write_json
from slmforge.core.progress import bar
from slmforge.rag.evaluate import load_queries, matches
from slmforge.rag.search import ALPHA, CALIBRATION_KEY, Hit, Retriever, convex, rrf

GRID = tuple(i / 10 for i in range(11))  # convex weights of BM25 tried, both pure endpoints included
PASS = 0.98  # the gate lets at least this share of the answerable fit questions through
PLATEAU = 0.01  # k: recall@k within this of recall@8
K_RANGE = range(2, 9)
MIN_FIT = 20  # answerable questions the fit part needs at least
TOP = 10  # ranks read for recall@k and MRR


@dataclass
class CalibrateConfig:
    """What `slm rag calibrate` needs."""

    index: str
    """An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store."""
    data: str | None = None
    """Questions about the index: slm synth's qa.jsonl, or slm rag eval's queries JSONL."""
    store: str | None = None
    """postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."""
    held: float = 0.3
    """Share of the questions held apart to check the fit (split by document)."""
    seed: int = 0
    """Seed of the fit / held-apart split."""
    report: str | None = None
    """Also write the report to this JSON file."""
    save: bool = True
    """Store the calibration in the index (--no-save: only report)."""
    reset: bool = False
    """Forget the index's calibration (back to the built-in defaults) and stop."""
    threads: int | None = None
    """Compute threads for the query encoder [default: the free cores, never more]."""


@dataclass
class _Row:
    """One question's retrieval, kept for scoring every candidate fusion."""

    answerable: bool
    text: list[tuple[int, float]]
    vec: list[tuple[int, float]]
    match: dict[int, frozenset[int]]  # candidate chunk id -> the targets it matches
    targets: int
    best: float | None  # the best cosine: what the gate compares


def calibrate(cfg: CalibrateConfig, progress: bool = True) -> dict:
    """Fit, check on the held-apart questions, store (unless `save` is off); the report."""
    if cfg.reset:
        with Retriever(cfg.index, cfg.store) as r:
            had = r.calibration is not None
            r.store.set_meta({CALIBRATION_KEY: ""})
            r.store.commit()
            return {"index": r.store.location, "reset": True, "had_calibration": had}
    if not cfg.data:
        raise SlmError(
            "--data is required: the questions to calibrate on (slm synth qa.jsonl or eval queries)"
        )
    if not 0 < cfg.held < 1:
        raise SlmError(f"--held must be between 0 and 1 (got {cfg.held})")
    from slmforge.rag.ask import DEFAULT_K, DEFAULT_MIN_COSINE

    if cfg.threads is not None:
        from slmforge.core import runtime

        runtime.set_threads(cfg.threads)
    started = time.perf_counter()
    queries = load_queries(cfg.data)
    fit_q, held_q = split(queries, cfg.held, cfg.seed)
    fit_n = sum(q.get("answerable", True) for q in fit_q)
    held_n = sum(q.get("answerable", True) for q in held_q)
    if fit_n < MIN_FIT:
        raise SlmError(
            f"{cfg.data}: the fit part holds {fit_n} answerable questions ({fit_n + held_n} in all, "
            f"{cfg.held:.0%} held apart); calibration needs at least {MIN_FIT}"
        )
    if held_n == 0:
        raise SlmError(f"{cfg.data}: no answerable question is held apart: raise --held or add questions")
    with Retriever(cfg.index, cfg.store) as r:
        with bar("calibrate", total=len(queries), enabled=progress) as b:
            rows = {}
            for q in queries:
                rows[id(q)] = _measure(r, q)
                b.advance()
        location, meta = r.store.location, r.store.meta()
        fit = [rows[id(q)] for q in fit_q]
        held = [rows[id(q)] for q in held_q]
        fit_a = [x for x in fit if x.answerable]
        held_a = [x for x in held if x.answerable]

        grid = [{"fusion": "convex", "alpha": a, **_short(_metrics(fit_a, "convex", a))} for a in GRID]
        grid.append({"fusion": "rrf", "alpha": None, **_short(_metrics(fit_a, "rrf"))})
        best = max(grid, key=_preference)
        fusion, alpha = best["fusion"], best["alpha"]
        fit_recall = _metrics(fit_a, fusion, alpha)["recall"]
        plateau = fit_recall[max(K_RANGE) - 1] - PLATEAU
        k = next(c for c in K_RANGE if fit_recall[c - 1] >= plateau - 1e-12)
        min_cosine = gate_threshold([x.best for x in fit_a if x.best is not None])

        chosen = _metrics(held_a, fusion, alpha)
        report = {
            "index": location,
            "data": cfg.data,
            "seed": cfg.seed,
            "held_fraction": cfg.held,
            "questions": {"fit": _count(fit_q), "held": _count(held_q)},
            "chosen": {"fusion": fusion, "alpha": alpha, "min_cosine": min_cosine, "k": k},
            "fit": {
                "grid": grid,
                "recall@k": {c: fit_recall[c - 1] for c in K_RANGE},
                "gate": _gate(fit, min_cosine),
            },
            "held": {
                "retrieval": {
                    "bm25": _short(_metrics(held_a, "bm25")),
                    "vector": _short(_metrics(held_a, "vector")),
                    "hybrid-default": _short(_metrics(held_a, "convex", ALPHA)),
                    "hybrid-calibrated": _short(chosen),
                },
                "recall@k": {c: chosen["recall"][c - 1] for c in sorted({k, DEFAULT_K})},
                "gate": {"default": _gate(held, DEFAULT_MIN_COSINE), "calibrated": _gate(held, min_cosine)},
            },
            "default": {"fusion": "convex", "alpha": ALPHA, "min_cosine": DEFAULT_MIN_COSINE, "k": DEFAULT_K},
            "saved": cfg.save,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if cfg.save:
            stored = {**report["chosen"], "data": cfg.data, "seed": cfg.seed, "held_fraction": cfg.held,
                      "questions": report["questions"], "embed_model": meta.get("embed_model"),
                      "held_recall@5": chosen["recall@5"], "held_mrr": chosen["mrr"],
                      "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            r.store.set_meta({CALIBRATION_KEY: json.dumps(stored)})
            r.store.commit()
    if cfg.report:
        write_json(cfg.report, report)
    return report


def split(queries: list[dict], held: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(fit, held apart): whole documents held apart, shuffled under `seed`, until `held` of the questions are."""
    groups: dict[str, list[dict]] = {}
    for q in queries:
        groups.setdefault(group_key(q), []).append(q)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    apart: set[str] = set()
    count = 0
    for key in keys:
        if count >= held * len(queries):
            break
        apart.add(key)
        count += len(groups[key])
    return [q for q in queries if group_key(q) not in apart], [q for q in queries if group_key(q) in apart]


def group_key(q: dict) -> str:
    """The document a question is about: its source (synth), else its first relevant document or chunk."""
    if q.get("group"):
        return "doc:" + str(q["group"]).replace("\\", "/")
    for target in q.get("relevant") or []:
        if isinstance(target, dict) and target.get("doc"):
            return "doc:" + target["doc"].replace("\\", "/")
    if q.get("relevant_chunks"):
        return f"chunk:{q['relevant_chunks'][0]}"
    return "query:" + q["query"]


def gate_threshold(best: list[float], share: float = PASS) -> float:
    """The highest threshold (3 decimals, rounded down) that at least `share` of these cosines reach."""
    ordered = sorted(best)
    may_fail = int((1 - share) * len(ordered) + 1e-9)
    return math.floor(ordered[may_fail] * 1000) / 1000


def _measure(r: Retriever, q: dict) -> _Row:
    exclude = q.get("exclude", ())
    if not q.get("answerable", True):
        with r.excluding(*exclude):
            _, vec, _ = r.rankings(q["query"], "vector", 1)
        return _Row(False, [], vec, {}, 0, vec[0][1] if vec else None)
    text, vec, _ = r.rankings(q["query"], "hybrid", r.candidates)
    targets = list(q.get("relevant") or []) + list(q.get("relevant_chunks") or [])
    chunks = r.store.chunks(list({cid for cid, _ in text + vec}))
    match = {}
    for cid, chunk in chunks.items():
        hit = Hit(chunk, 0.0)
        found = frozenset(t for t, target in enumerate(targets) if matches(hit, target))
        if found:
            match[cid] = found
    return _Row(True, text, vec, match, len(targets), vec[0][1] if vec else None)


def _ranking(row: _Row, fusion: str, alpha: float | None) -> list[tuple[int, float]]:
    if fusion == "bm25":
        return row.text[:TOP]
    if fusion == "vector":
        return row.vec[:TOP]
    if fusion == "rrf":
        return rrf(row.text, row.vec, TOP)
    return convex(row.text, row.vec, TOP, ALPHA if alpha is None else alpha)


def _metrics(rows: list[_Row], fusion: str, alpha: float | None = None) -> dict:
    """recall@1..TOP (a list) and MRR of one ranking over the answerable rows; the same arithmetic as
    `slmforge.rag.evaluate.score_ranking`."""
    recall = np.zeros(TOP)
    mrr = 0.0
    for row in rows:
        found: dict[int, int] = {}
        first = None
        for rank, (cid, _) in enumerate(_ranking(row, fusion, alpha), 1):
            hit = row.match.get(cid, ())
            if hit and first is None:
                first = rank
            for t in hit:
                found.setdefault(t, rank)
        ranks = np.array(list(found.values()) or [TOP + 1])
        recall += np.array([(ranks <= c).sum() for c in range(1, TOP + 1)]) / max(row.targets, 1)
        mrr += 1 / first if first else 0.0
    n = max(len(rows), 1)
    recall = [float(v) / n for v in recall]
    return {"recall": recall, "recall@5": recall[4], "mrr": mrr / n}


def _short(m: dict) -> dict:
    return {"recall@5": m["recall@5"], "mrr": m["mrr"]}


def _preference(c: dict) -> tuple:
    """Best recall@5, then MRR, then the weight nearest the default (rrf last among equals)."""
    nearness = -abs(c["alpha"] - ALPHA) if c["fusion"] == "convex" else -2.0
    return (round(c["recall@5"], 9), round(c["mrr"], 9), nearness)


def _gate(rows: list[_Row], min_cosine: float) -> dict:
    a = [x.best for x in rows if x.answerable and x.best is not None]
    u = [x.best for x in rows if not x.answerable and x.best is not None]
    return {
        "min_cosine": min_cosine,
        "answerable_passed": float(np.mean([c >= min_cosine for c in a])) if a else None,
        "unanswerable_stopped": sum(c < min_cosine for c in u),
        "unanswerable": len(u),
    }


def _count(queries: list[dict]) -> dict:
    answerable = sum(q.get("answerable", True) for q in queries)
    return {"answerable": answerable, "unanswerable": len(queries) - answerable,
            "documents": len({group_key(q) for q in queries})}  # fmt: skip
