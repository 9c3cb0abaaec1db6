"""RAG: chunking, incremental index, kill safety, search modes, bad input. Real MiniLM on a few chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from slmforge.core.errors import SlmError
from slmforge.rag.chunking import ChunkConfig, chunk_document
from slmforge.rag.index import RagIndexConfig, build_index
from slmforge.rag.search import Retriever, SearchConfig, convex, query_terms, rrf, search
from slmforge.rag.store import Filters

DOCS = {
    "garden.md": """\
        # Gardening

        ## Tomatoes

        Tomatoes need full sun, at least six hours a day, and deep watering twice a week.
        Stake the plants early so the stems do not bend under the weight of the fruit.

        ## Roses

        Prune roses in late winter, just before the buds swell. Cut above an outward facing bud.

        ```
        shears --angle 45 --above bud
        ```
        """,
    "kitchen.rst": """\
        Cooking
        =======

        Pasta
        -----

        Bring a large pot of salted water to a rolling boil before adding the pasta.
        Taste it a minute before the time on the packet.

        Bread
        -----

        Knead the dough for ten minutes until it is smooth and elastic, then let it rise.
        """,
    "errors.txt": """\
        Error code ZX-4711 means the flux capacitor overheated. Restart the unit after it cools down.

        Error code QP-0815 means the battery is missing.
        """,
    "space.txt": """\
        The Moon orbits the Earth roughly every twenty-seven days.
        Jupiter is the largest planet of the solar system and has dozens of moons.
        """,
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def index_cfg(docs: Path, index: Path, **kw) -> RagIndexConfig:
    return RagIndexConfig(paths=[str(docs)], index=str(index), runtime="torch", threads=1, **kw)


@pytest.fixture
def built(tmp_path):
    docs = write_docs(tmp_path / "docs")
    index = tmp_path / "kb.sqlite"
    result = build_index(index_cfg(docs, index), progress=False)
    return docs, index, result


# ---------------------------------------------------------------- chunking


def test_chunks_keep_sections_offsets_and_code_blocks():
    text = textwrap.dedent(DOCS["garden.md"])
    chunks = chunk_document(text, "md", ChunkConfig(max_chars=200, overlap=0))
    assert [c.section for c in chunks] == ["Gardening > Tomatoes", "Gardening > Roses"]
    for c in chunks:
        assert text[c.start : c.end] == c.text
    assert "```\nshears --angle 45 --above bud\n```" in chunks[1].text  # the code block is whole


def test_rst_headings_entries_and_literal_blocks_stay_together():
    text = textwrap.dedent("""\
        json --- JSON
        =============

        Basic Usage
        -----------

        .. function:: dumps(obj)

           Serialize *obj* to a JSON formatted string. Example::

              >>> dumps([1, 2])

              '[1, 2]'

        Other
        -----

        Plain text here, long enough to be kept as a chunk.
        """)
    chunks = chunk_document(text, "rst", ChunkConfig(max_chars=400, overlap=0))
    assert [c.section for c in chunks] == ["json --- JSON > Basic Usage > dumps", "json --- JSON > Other"]
    assert ">>> dumps([1, 2])" in chunks[0].text and "'[1, 2]'" in chunks[0].text


def test_long_sections_split_with_overlap_within_the_limit():
    text = "Title\n=====\n\n" + "\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(20))
    chunks = chunk_document(text, "rst", ChunkConfig(max_chars=300, overlap=60))
    assert len(chunks) > 5
    assert all(c.end - c.start <= 300 for c in chunks)
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # consecutive chunks overlap
    with pytest.raises(SlmError, match="overlap"):
        chunk_document(text, "rst", ChunkConfig(max_chars=100, overlap=80))


# ---------------------------------------------------------------- index: incremental, kill-safe


def test_incremental_reindex_touch_change_delete(built):
    docs, index, first = built
    assert first.files_indexed == 4 and first.chunks_total >= 6
    again = build_index(index_cfg(docs, index), progress=False)
    assert (again.files_indexed, again.files_unchanged, again.chunks_added) == (0, 4, 0)

    os.utime(docs / "space.txt")  # touched, same content: nothing to do
    (docs / "errors.txt").write_text("Error code ZX-4711 now means the coolant pump failed.\n" * 2)
    (docs / "kitchen.rst").unlink()
    r = build_index(index_cfg(docs, index), progress=False)
    assert (r.files_indexed, r.files_unchanged, r.files_deleted) == (1, 2, 1)
    with Retriever(str(index)) as ret:
        assert ret.store.counts()["files"] == 3
        hits = ret.search("coolant pump", "bm25", 5).hits
        assert hits and hits[0].chunk.path.endswith("errors.txt")
        assert not ret.search("knead the dough", "bm25", 5).hits  # the deleted file's chunks are gone
        assert not any(
            "flux capacitor" in h.chunk.text for h in ret.search("flux capacitor", "hybrid", 10).hits
        )


def test_killed_indexer_leaves_last_commit_and_next_run_completes(tmp_path):
    docs = write_docs(tmp_path / "docs")
    index = tmp_path / "kb.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        torch.set_num_threads(1)
        from slmforge.rag import index as ix
        calls = 0
        encode = ix.Embedder.encode
        def dying(self, texts, batch_size=32):
            global calls
            calls += 1
            if calls == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-run, inside the third batch's transaction
            return encode(self, texts, batch_size)
        ix.Embedder.encode = dying
        ix.build_index(ix.RagIndexConfig(paths=[{str(docs)!r}], index={str(index)!r}, runtime="torch",
                                          threads=1, batch_files=1), progress=False)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=os.environ.copy(), capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    with Retriever(str(index)) as ret:  # usable: the two committed files are there, searchable
        assert ret.store.counts()["files"] == 2
        assert ret.search("error code", "hybrid", 3).hits
    r = build_index(index_cfg(docs, index, batch_files=1), progress=False)
    assert (r.files_indexed, r.files_unchanged) == (2, 2)
    with Retriever(str(index)) as ret:
        assert ret.store.counts()["files"] == 4


# ---------------------------------------------------------------- search


def test_search_modes_filters_and_hybrid_not_worse(built):
    docs, index, _ = built
    crafted = [  # (query, file that answers it): paraphrases favour vectors, rare codes favour BM25
        ("when should I cut back my rose bushes", "garden.md"),
        ("what does ZX-4711 mean", "errors.txt"),
        ("QP-0815", "errors.txt"),
        ("biggest planet orbiting the sun", "space.txt"),
        ("how long to work the dough", "kitchen.rst"),
        ("how much sunlight do tomato plants want", "garden.md"),
    ]
    recall = {}
    with Retriever(str(index)) as ret:
        for mode in ("bm25", "vector", "hybrid"):
            found = 0
            for q, name in crafted:
                hits = ret.search(q, mode, 2).hits
                found += any(h.chunk.path.endswith(name) for h in hits)
            recall[mode] = found / len(crafted)
        res = ret.search("water", "hybrid", 10, Filters(path="*.md"))
        assert res.hits and all(h.chunk.path.endswith(".md") for h in res.hits)
        res = ret.search("water", "vector", 10, Filters(path="kitchen"))
        assert res.hits and all("kitchen" in h.chunk.path for h in res.hits)
    assert recall["hybrid"] >= max(recall["bm25"], recall["vector"]), recall
    assert recall["hybrid"] >= 5 / 6, recall


def test_tags_filter(tmp_path):
    a = write_docs(tmp_path / "a", {"one.txt": DOCS["space.txt"]})
    b = write_docs(tmp_path / "b", {"two.txt": DOCS["errors.txt"]})
    index = tmp_path / "kb.sqlite"
    build_index(index_cfg(a, index, tags=["astro"]), progress=False)
    build_index(index_cfg(b, index, tags=["support"]), progress=False)
    hits = search(SearchConfig(str(index), "moon error code", "hybrid", 10, tags=["support"])).hits
    assert hits and all(h.chunk.tags == ["support"] for h in hits)


def test_query_terms_are_bounded_and_skip_stopwords():
    terms = query_terms("How do I sort the list? " + " ".join(f"term{i}" for i in range(40)))
    assert "how" not in terms and "the" not in terms
    assert len(terms) == 12


def test_overlong_query_is_truncated_with_a_warning(built):
    _, index, _ = built
    with Retriever(str(index)) as ret, pytest.warns(UserWarning, match="reads at most 256"):
        hits = ret.search("tomatoes " * 400, "hybrid", 3).hits
    assert hits


def test_onnx_encoder_matches_torch(built, tmp_path):
    from slmforge.rag.embed import Embedder

    texts = ["Prune roses in late winter.", "Error code ZX-4711 means the flux capacitor overheated."]
    onnx = Embedder("minilm-l6", "onnx").encode(texts)
    torch_vecs = Embedder("minilm-l6", "torch").encode(texts)
    assert np.allclose((onnx * torch_vecs).sum(1), 1.0, atol=1e-4)
    _, index, _ = built  # an index embedded by torch answers queries encoded by ONNX Runtime alike
    with Retriever(str(index), runtime="onnx") as ret:
        assert ret.search("when to prune roses", "vector", 1).hits[0].chunk.path.endswith("garden.md")


# ---------------------------------------------------------------- bad input


def test_empty_binary_and_unreadable_files_are_skipped_and_counted(tmp_path, monkeypatch):
    from slmforge.rag import index as ix

    docs = write_docs(tmp_path / "docs", {"space.txt": DOCS["space.txt"], "locked.txt": "secret words"})
    (docs / "empty.md").write_text("")
    (docs / "blank.txt").write_text("\n\n   \n")
    (docs / "blob.txt").write_bytes(b"abc\x00def")
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (docs / "image.png").write_bytes(b"\x89PNG")
    sha256 = ix._sha256

    def locked(path):  # root reads any file whatever its mode bits, so simulate the permission error
        if Path(path).name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return sha256(path)

    monkeypatch.setattr(ix, "_sha256", locked)
    r = build_index(index_cfg(docs, tmp_path / "kb.sqlite"), progress=False)
    assert r.files_indexed == 3  # space.txt plus the two empty ones, recorded so they are not re-read
    assert r.skipped == {"unsupported": 1, "unreadable": 1, "empty": 2, "binary": 1, "non_utf8": 1}


def test_index_built_with_another_embedding_model_is_refused(built):
    docs, index, _ = built
    with pytest.raises(SlmError, match="built with embedding model minilm-l6, not other-model"):
        Retriever(str(index), embed_model="other-model")
    with pytest.raises(SlmError, match="built with embedding model minilm-l6"):
        build_index(
            RagIndexConfig([str(docs)], str(index), embed_model="org/other-model", runtime="torch", threads=1)
        )


def test_corrupted_index_is_detected_with_the_fix(built):
    _, index, _ = built
    data = bytearray(index.read_bytes())
    data[100:] = os.urandom(len(data) - 100)  # header intact, every page garbage
    index.write_bytes(bytes(data))
    with (
        pytest.raises(SlmError, match=r"corrupted.*delete .*kb.sqlite and build it again"),
        Retriever(str(index)) as ret,
    ):
        ret.search("tomatoes", "hybrid", 3)
    index.write_bytes(b"this is not a database at all" * 10)
    with pytest.raises(SlmError, match="not a SQLite index"):
        Retriever(str(index))


def test_missing_index_and_bad_mode(tmp_path, built):
    with pytest.raises(SlmError, match="no index at"):
        Retriever(str(tmp_path / "nope.sqlite"))
    _, index, _ = built
    with Retriever(str(index)) as ret, pytest.raises(SlmError, match="--mode"):
        ret.search("x", "fuzzy")


def test_unreachable_postgres_is_one_clear_line(slm_cli):
    code, out, err = slm_cli(
        "rag", "search", "docs", "anything", "--store", "postgresql://nobody@127.0.0.1:1/none"
    )
    assert code == 2
    assert "cannot reach PostgreSQL at postgresql://nobody@127.0.0.1:1/none" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- CLI


def test_cli_index_search_eval(tmp_path, slm_cli):
    docs = write_docs(tmp_path / "docs")
    code, out, err = slm_cli("rag", "index", str(docs), "--index", "kb", "--runtime", "torch")
    assert code == 0, err
    assert "4 indexed" in out
    code, out, err = slm_cli("rag", "search", "kb", "what does error ZX-4711 mean", "--k", "2")
    assert code == 0, err
    assert "errors.txt" in out
    queries = tmp_path / "q.jsonl"
    rows = [
        {"query": "when to prune roses", "relevant": [{"doc": "garden.md", "section": "Gardening > Roses"}]},
        {"query": "pasta water", "relevant": [{"doc": "kitchen.rst"}]},
        {"query": "Who won the 1998 World Cup?", "answerable": False},
    ]
    queries.write_text("\n".join(json.dumps(r) for r in rows))
    report = tmp_path / "report.json"
    code, out, err = slm_cli("rag", "eval", "kb", "--queries", str(queries), "--json", str(report))
    assert code == 0, err
    rep = json.loads(report.read_text())
    assert set(rep["retrieval"]) == {"bm25", "vector", "hybrid", "hybrid-rrf"}
    assert rep["retrieval"]["hybrid"]["recall@10"] == 1.0
    assert rep["retrieval"]["hybrid-rrf"]["recall@10"] == 1.0
    assert rep["gate"]["unanswerable_abstained"] == 1.0
    assert 0 < rep["gate"]["suggested_min_cosine"] < 1 and "suggested --min-cosine" in out
    assert "p50 ms" in out


def test_convex_fusion_keeps_a_strong_lexical_hit_that_rrf_lets_the_vectors_push_down():
    # chunk 1 is BM25's clear winner but absent from the vector list; 2..6 are middling in both
    text = [(1, 30.0), (2, 9.0), (3, 8.5), (4, 8.0), (5, 7.5), (6, 7.0)]
    vec = [(2, 0.52), (3, 0.51), (4, 0.50), (5, 0.49), (6, 0.48), (7, 0.30)]
    assert [c for c, _ in convex(text, vec, 3, alpha=0.6)][0] == 1
    assert 1 not in [c for c, _ in rrf(text, vec, 3)]  # rrf: in one list only, it loses to 2, 3, 4
    fused = dict(convex(text, vec, 10, alpha=0.6))
    assert fused[1] == pytest.approx(0.6) and fused[7] == 0.0  # normalised: top of one list = its weight
    assert [c for c, _ in convex(text, vec, 2, alpha=0.0)] == [2, 3]  # alpha 0 = vectors only
    assert convex([], vec, 2) == [(2, pytest.approx(0.4)), (3, pytest.approx(0.4 * 0.21 / 0.22))]


def test_bad_fusion_settings_are_refused(built):
    _, index, _ = built
    with pytest.raises(SlmError, match="--fusion must be one of convex, rrf"):
        Retriever(str(index), fusion="mean")
    with pytest.raises(SlmError, match="--alpha must be between 0 and 1"):
        Retriever(str(index), alpha=1.5)


def test_two_stage_vector_search_matches_the_exact_scan(tmp_path, monkeypatch):
    import slmforge.rag.sqlite_store as sq
    from slmforge.rag.store import NewChunk

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((3000, 24)).astype("float32")  # vectors of rank 24: 64 components keep them
    vecs = latent @ rng.standard_normal((24, 384)).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = sq.SqliteStore(tmp_path / "v.sqlite", create=True)
    store.set_meta({"embed_model": "synthetic", "embed_dim": "384"})
    for f in range(2):
        rows = range(f * 1500, (f + 1) * 1500)
        chunks = [NewChunk(f"doc{f}", "s", i, i + 1, f"text {i}") for i in rows]
        store.put_file(f"/d/file{f}.txt", f"sha{f}", [], chunks, vecs[list(rows)])
    store.commit()
    queries = vecs[rng.choice(3000, 20)] + 0.05 * rng.standard_normal((20, 384)).astype("float32")
    exact = [store.search_vector(q, 10, Filters()) for q in queries]
    monkeypatch.setattr(sq, "EXACT_UP_TO", 100)
    monkeypatch.setattr(sq, "MIN_CANDIDATES", 200)
    store._matrix = None  # reload, now above the exact limit
    two_stage = [store.search_vector(q, 10, Filters()) for q in queries]
    assert store._projection is not None and store._projection[1].shape == (3000, sq.PROJECTED_DIM)
    for e, t in zip(exact, two_stage, strict=True):
        assert [c for c, _ in t] == [c for c, _ in e]
        assert np.allclose([s for _, s in t], [s for _, s in e], atol=1e-5)  # exact cosines, not projected
    only = store.search_vector(queries[0], 10, Filters(path="*file1*"))
    ids1 = {r[0] for r in store.con.execute("SELECT c.id FROM chunks c JOIN files f ON f.id=c.file_id "
                                            "WHERE f.path LIKE '%file1%'")}  # fmt: skip
    assert len(only) == 10 and {c for c, _ in only} <= ids1
    store.close()


def test_bm25_postings_rank_like_fts5_and_stale_postings_fall_back(built, tmp_path):
    from slmforge.rag.sqlite_store import SqliteStore
    from slmforge.rag.store import NewChunk

    _, index, _ = built
    store = SqliteStore(index)
    assert store._bm25_fresh()  # build_index ended with finish(): postings stored and current
    queries = [["prune", "roses"], ["pasta", "water", "salt"], ["error", "code"], ["flux", "capacitor"]]
    fast = [store.search_text(q, 5, Filters()) for q in queries]
    for q, got in zip(queries, fast, strict=True):
        stamp = store.meta()["bm25_stamp"]
        store.con.execute("UPDATE meta SET value = 'stale' WHERE key = 'bm25_stamp'")  # what FTS5 says
        store._bm25_version = None
        ref = store.search_text(q, 5, Filters())
        store.con.execute("UPDATE meta SET value = ? WHERE key = 'bm25_stamp'", (stamp,))
        store._bm25_version = None
        assert [c for c, _ in got] == [c for c, _ in ref], q
        assert all(s > 0 for _, s in got)
    # a file added without finish() (an index run killed between batches): postings are stale, FTS5 answers
    store.put_file("/x/new.md", "sha", [], [NewChunk("new.md", "New", 0, 9, "zebra crossing rules")],
                   np.ones((1, 384), dtype="float32") / np.sqrt(384))  # fmt: skip
    store.commit()
    assert not store._bm25_fresh()
    hit = store.search_text(["zebra"], 5, Filters())
    assert len(hit) == 1
    store.finish()
    assert store._bm25_fresh() and store.search_text(["zebra"], 5, Filters())[0][0] == hit[0][0]
    assert store.search_text(["zebra"], 5, Filters(path="*garden*")) == []  # filters apply to postings too
    store.close()
