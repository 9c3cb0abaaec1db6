"""`slm rag search`: BM25, vector or hybrid retrieval with path/tag filters.

A `Retriever` holds the open store and the query encoder, so eval and ask reuse them across queries.
Hybrid takes the top `candidates` of each ranking and fuses them, by default as a convex mix of the two
scores, each min-max normalised over its candidate list: `alpha` x BM25 + (1 - `alpha`) x cosine, a chunk
missing from one list scoring 0 there. `alpha` = 0.6 was tuned on the even-numbered questions of
benchmarks/data/pydocs_questions.jsonl and checked on the odd ones (BENCHMARKS.md). `--fusion rrf` gives
reciprocal-rank fusion instead, score = sum over rankings of 1 / (60 + rank) (Cormack et al., 2009): no
scores needed, but a weak ranking pulls a strong one's hits down as much as it lifts its own.
Chunks the injection guard quarantined at index time are left out unless `include_flagged` (Filters)
asks for them: `slm rag search` does, and marks them; answers never do (slmforge.rag.guarding).
BM25 queries OR together at most `MAX_TERMS` distinct non-stopword terms of the query (FTS5 with many
OR terms slows down sharply; the longest terms are kept, as they tend to be the rarest).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from slmforge.core.errors import SlmError
from slmforge.rag.store import Filters, Store, StoredChunk
from slmforge.rag.stores import open_store

MODES = ("hybrid", "bm25", "vector")
FUSIONS = ("convex", "rrf")
MAX_TERMS = 12
RRF_K = 60
ALPHA = 0.6

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
    fusion: str = "convex"
    """hybrid: convex (alpha x BM25 + (1-alpha) x cosine, normalised) or rrf.

    Each score is min-max normalised over its candidate list."""
    alpha: float = ALPHA
    """hybrid, convex: weight of BM25 (0..1)."""
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
        candidates: int = 50, parallel: bool = True, fusion: str = "convex", alpha: float = ALPHA,
    ):  # fmt: skip
        _check_fusion(fusion)
        if not 0 <= alpha <= 1:
            raise SlmError(f"--alpha must be between 0 and 1 (got {alpha})")
        self.fusion, self.alpha = fusion, alpha
        self.store: Store = open_store(index, store)
        meta = self.store.meta()
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

    def search(
        self, query: str, mode: str = "hybrid", k: int = 10, filters: Filters | None = None,
        fusion: str | None = None,
    ) -> SearchResult:  # fmt: skip
        """`fusion` overrides the retriever's own for this query (hybrid mode)."""
        fusion = _check_fusion(fusion or self.fusion)
        if mode not in MODES:
            raise SlmError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
        if k < 1:
            raise SlmError(f"--k must be at least 1 (got {k})")
        if not query.strip():
            raise SlmError("the query is empty")
        filters = Filters() if filters is None else filters  # (an empty one is falsy)
        started = time.perf_counter()
        depth = max(k, self.candidates) if mode == "hybrid" else k
        terms = query_terms(query)
        text: list[tuple[int, float]] = []
        vec: list[tuple[int, float]] = []
        if mode == "hybrid" and self.parallel:
            # BM25 in a thread while the query is embedded and scored (both release the GIL)
            pending = self._pool().submit(self.store.search_text, terms, depth, filters)
            vec = self.store.search_vector(self.embedder.encode_query(query), depth, filters)
            text = pending.result()
        else:
            if mode != "vector":
                text = self.store.search_text(terms, depth, filters)
            if mode != "bm25":
                vec = self.store.search_vector(self.embedder.encode_query(query), depth, filters)
        if mode == "hybrid":
            ranked = rrf(text, vec, k) if fusion == "rrf" else convex(text, vec, k, self.alpha)
        else:
            ranked = (text or vec)[:k]
        chunks = self.store.chunks([cid for cid, _ in ranked])
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
