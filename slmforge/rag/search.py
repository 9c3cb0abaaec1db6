"""`slm rag search`: BM25, vector or hybrid retrieval with path/tag filters.

A `Retriever` holds the open store and the query encoder, so eval and ask reuse them across queries.
Hybrid takes the top `candidates` of each ranking and fuses them, by default as a convex mix of the two
scores, each min-max normalised over its candidate list: `alpha` x BM25 + (1 - `alpha`) x cosine, a chunk
missing from one list scoring 0 there. `alpha` = 0.6 was tuned on the even-numbered questions of
benchmarks/data/pydocs_questions.jsonl and checked on the odd ones (BENCHMARKS.md). `--fusion rrf` gives
reciprocal-rank fusion instead, score = sum over rankings of 1 / (60 + rank) (Cormack et al., 2009): no
scores needed, but a weak ranking pulls a strong one's hits down as much as it lifts its own.
An index calibrated by `slm rag calibrate` (slmforge.rag.calibrate) records its own fusion and `alpha`
in its meta (`CALIBRATION_KEY`); a `Retriever` given neither uses them, else `convex` and `ALPHA`.
Chunks the injection guard quarantined at index time are left out unless `include_flagged` (Filters)
asks for them: `slm rag search` does, and marks them; answers never do (slmforge.rag.guarding).
BM25 queries OR together at most `MAX_TERMS` distinct non-stopword terms of the query (FTS5 with many
OR terms slows down sharply; the longest terms are kept, as they tend to be the rarest).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from slmforge.core.errors import SlmError
from slmforge.rag.store import Filters, Store, StoredChunk
from slmforge.rag.stores import open_store

MODES = ("hybrid", "bm25", "vector")
FUSIONS = ("convex", "rrf")
MAX_TERMS = 12
RRF_K = 60
ALPHA = 0.6
CALIBRATION_KEY = "calibration"  # the store meta key holding `slm rag calibrate`'s JSON

_STOP = frozenset(
    """a about above after again all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers him his how i if in into is it its itself just me more most my no nor not
    now of off on once only or other our out over own same she should so some such than that the their
    them then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours use used using get""".split()  # noqa: SIM905
)


@dataclass
class SearchConfig:
    """What `slm rag search` needs."""

    index: str
    """An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store."""
    query: str
    """What to look for."""
    mode: str = "hybrid"
    """hybrid (BM25 + vectors, fused), bm25 or vector."""
    k: int = 10
    """Results to show."""
    path_filter: str | None = None
    """Only files whose path contains this (or matches it, if a glob).

    A glob holds * ? or [."""
    tags: list[str] = field(default_factory=list)
    """Only files with this tag (repeatable)."""
    store: str | None = None
    """postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."""
    embed_model: str | None = None
    """Must be the index's model [default: the one it records]."""
    runtime: str | None = None
    """The query encoder's runtime [default: the one the index was embedded with]."""
    fusion: str | None = None
    """hybrid: convex (alpha x BM25 + (1-alpha) x cosine, normalised) or rrf [default: the index's
    calibration, else convex].

    Each score is min-max normalised over its candidate list."""
    alpha: float | None = None
    """hybrid, convex: weight of BM25, 0..1 [default: the index's calibration, else 0.6]."""
    include_flagged: bool = False
    """Also show the chunks the injection guard quarantined (marked; answers never use them).

    Each says so in `chunk.flag`. `slm rag search` shows them by default; from Python they are left out unless
    asked for."""


@dataclass
class Hit:
    chunk: StoredChunk
    score: float  # the mode's own score: BM25, cosine, or the fused score
    bm25_rank: int | None = None  # 1-based ranks in each list, where the chunk appeared
    vector_rank: int | None = None
    cosine: float | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    best_cosine: float | None  # the best cosine similarity seen (None in bm25 mode): ask's relevance gate
    seconds: float = 0.0


def read_calibration(meta: dict[str, str]) -> dict | None:
    """The index's calibration from its meta (None when it has none): what `slm rag calibrate` stored,
    with only the settings that are valid kept among fusion, alpha, min_cosine and k."""
    raw = meta.get(CALIBRATION_KEY)
    try:
        cal = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(cal, dict):
        return None

    def number(key, lo, hi, kind=(int, float)):
        v = cal.get(key)
        if not isinstance(v, kind) or isinstance(v, bool) or not lo <= v <= hi:
            cal.pop(key, None)

    if cal.get("fusion") not in FUSIONS:
        cal.pop("fusion", None)
    number("alpha", 0, 1)
    number("min_cosine", -1, 1)
    number("k", 1, 1000, int)
    return cal


def search(cfg: SearchConfig) -> SearchResult:
    """One search: open the index, retrieve, close."""
    with Retriever(
        cfg.index, cfg.store, cfg.embed_model, cfg.runtime, fusion=cfg.fusion, alpha=cfg.alpha
    ) as r:
        return r.search(
            cfg.query, cfg.mode, cfg.k, Filters(cfg.path_filter, list(cfg.tags), cfg.include_flagged)
        )


class Retriever:
    """An open index plus its query encoder (loaded on the first query that needs it)."""

    def __init__(
        self, index: str, store: str | None = None, embed_model: str | None = None, runtime: str | None = None,
        candidates: int = 50, parallel: bool = True, fusion: str | None = None, alpha: float | None = None,
    ):  # fmt: skip
        """`fusion` and `alpha` left None: the index's calibration, else convex and ALPHA."""
        if fusion is not None:
            _check_fusion(fusion)
        _check_alpha(alpha)
        self.store: Store = open_store(index, store)
        meta = self.store.meta()
        self.calibration = read_calibration(meta)
        cal = self.calibration or {}
        # an alpha given alone asks for convex fusion, whatever the index's calibration chose
        self.fusion: str = fusion or ("convex" if alpha is not None else cal.get("fusion", "convex"))
        self.alpha = float(cal.get("alpha", ALPHA) if alpha is None else alpha)
        self._exclude: tuple[str, ...] = ()
        self.model = embed_model or meta.get("embed_model")
        if embed_model and meta.get("embed_model") and embed_model != meta["embed_model"]:
            self.store.close()
            raise SlmError(
                f"{self.store.location} was built with embedding model {meta['embed_model']}, "
                f"not {embed_model}: query it with --embed-model {meta['embed_model']} (or leave it out)"
            )
        self.runtime = runtime or meta.get("embed_runtime", "onnx")
        self.candidates = candidates
        self.parallel = parallel and self.store.parallel_text_search
        self._embedder = None
        self._executor = None

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.store.close()

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bm25")
        return self._executor

    @property
    def embedder(self):
        if self._embedder is None:
            from slmforge.rag.embed import Embedder

            if not self.model:
                raise SlmError(f"{self.store.location} records no embedding model: is the index empty?")
            self._embedder = Embedder(self.model, self.runtime)
            self.store.check_model(self._embedder.name, self._embedder.dim)
        return self._embedder

    @contextmanager
    def excluding(self, *docs: str) -> Iterator[None]:
        """Searches inside leave out the chunks of these documents (a file path as the index stores it,
        or its end): how an evaluation builds an unanswerable question's context from distractors only."""
        saved, self._exclude = self._exclude, tuple(d for d in docs if d)
        try:
            yield
        finally:
            self._exclude = saved

    def search(
        self, query: str, mode: str = "hybrid", k: int = 10, filters: Filters | None = None,
        fusion: str | None = None, alpha: float | None = None,
    ) -> SearchResult:  # fmt: skip
        """`fusion` and `alpha` override the retriever's own for this query (hybrid mode)."""
        fusion = _check_fusion(fusion or self.fusion)
        _check_alpha(alpha)
        if mode not in MODES:
            raise SlmError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
        if k < 1:
            raise SlmError(f"--k must be at least 1 (got {k})")
        started = time.perf_counter()
        depth = max(k, self.candidates) if mode == "hybrid" else k
        text, vec, chunks = self.rankings(query, mode, depth, filters)
        if mode == "hybrid":
            ranked = fuse(text, vec, k, fusion, self.alpha if alpha is None else alpha)
        else:
            ranked = (text or vec)[:k]
        missing = [cid for cid, _ in ranked if cid not in chunks]
        chunks.update(self.store.chunks(missing))
        bm25_rank = {cid: i + 1 for i, (cid, _) in enumerate(text)}
        vec_rank = {cid: i + 1 for i, (cid, _) in enumerate(vec)}
        cosine = dict(vec)
        hits = [
            Hit(chunks[cid], score, bm25_rank.get(cid), vec_rank.get(cid), cosine.get(cid))
            for cid, score in ranked
            if cid in chunks
        ]
        best = max(cosine.values()) if cosine else None
        return SearchResult(hits, best, time.perf_counter() - started)

    def rankings(
        self, query: str, mode: str, depth: int, filters: Filters | None = None
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]], dict[int, StoredChunk]]:
        """The BM25 and vector candidate lists ([(chunk id, score)], best first, `depth` each; the list a
        mode does not use is empty), without the chunks of excluded documents; and the chunks already read
        (those of the candidates when documents are excluded, else none)."""
        if not query.strip():
            raise SlmError("the query is empty")
        filters = Filters() if filters is None else filters  # (an empty one is falsy)
        exclude = self._exclude
        deep = depth + 50 if exclude else depth  # room for the excluded document's own chunks
        terms = query_terms(query)
        text: list[tuple[int, float]] = []
        vec: list[tuple[int, float]] = []
        if mode == "hybrid" and self.parallel:
            # BM25 in a thread while the query is embedded and scored (both release the GIL)
            pending = self._pool().submit(self.store.search_text, terms, deep, filters)
            vec = self.store.search_vector(self.embedder.encode_query(query), deep, filters)
            text = pending.result()
        else:
            if mode != "vector":
                text = self.store.search_text(terms, deep, filters)
            if mode != "bm25":
                vec = self.store.search_vector(self.embedder.encode_query(query), deep, filters)
        chunks: dict[int, StoredChunk] = {}
        if exclude:
            chunks = self.store.chunks(list({cid for cid, _ in text + vec}))
            keep = {cid for cid, c in chunks.items() if not any(same_doc(c, d) for d in exclude)}
            text = [p for p in text if p[0] in keep][:depth]
            vec = [p for p in vec if p[0] in keep][:depth]
        return text, vec, chunks


def same_doc(chunk: StoredChunk, doc: str) -> bool:
    """Is `doc` (a file path as the index stores it, or the end of one) the chunk's document?"""
    path = chunk.path.replace("\\", "/")
    doc = doc.replace("\\", "/")
    return path == doc or chunk.doc == doc or path.endswith("/" + doc.lstrip("/"))


def fuse(
    text: list[tuple[int, float]], vec: list[tuple[int, float]], k: int, fusion: str, alpha: float = ALPHA
) -> list[tuple[int, float]]:
    """Hybrid fusion of the two candidate lists: convex with weight `alpha` on BM25, or rrf; the top k."""
    return rrf(text, vec, k) if fusion == "rrf" else convex(text, vec, k, alpha)


def _check_alpha(alpha: float | None) -> None:
    if alpha is not None and not 0 <= alpha <= 1:
        raise SlmError(f"--alpha must be between 0 and 1 (got {alpha})")


def _check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise SlmError(f"--fusion must be one of {', '.join(FUSIONS)} (got {fusion!r})")
    return fusion


def query_terms(query: str, limit: int = MAX_TERMS) -> list[str]:
    """Distinct lower-case word terms of the query without stopwords; the `limit` longest if more."""
    seen: dict[str, None] = {}
    for w in re.findall(r"\w+", query.lower()):
        if len(w) > 1 and w not in _STOP:
            seen.setdefault(w, None)
    terms = list(seen)
    if len(terms) > limit:
        keep = set(sorted(terms, key=len, reverse=True)[:limit])
        terms = [t for t in terms if t in keep][:limit]
    return terms


def convex(
    text: list[tuple[int, float]], vec: list[tuple[int, float]], k: int, alpha: float = ALPHA
) -> list[tuple[int, float]]:
    """alpha x min-max-normalised BM25 + (1 - alpha) x min-max-normalised cosine; the top k."""
    scores: dict[int, float] = {}
    for weight, ranking in ((alpha, text), (1 - alpha, vec)):
        if not ranking:
            continue
        lo, hi = min(s for _, s in ranking), max(s for _, s in ranking)
        span = hi - lo
        for cid, s in ranking:
            scores[cid] = scores.get(cid, 0.0) + weight * ((s - lo) / span if span > 0 else 1.0)
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


def rrf(text: list[tuple[int, float]], vec: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: sum over rankings of 1 / (RRF_K + rank); the top k."""
    scores: dict[int, float] = {}
    for ranking in (text, vec):
        for rank, (cid, _) in enumerate(ranking, 1):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]
