"""`slm rag index`: read, chunk, embed and store documents; incremental by content hash.

Order of work: list the files under the given paths and hash them (sha256 of the bytes); forget files
that were deleted (or are no longer under the given paths); then read, chunk and embed only the new and
changed files, in batches. A batch's files (their chunks, vectors and hashes) are written in one
transaction and committed together, so a killed indexer leaves the last committed state and the next
run picks up exactly the files that were not committed.

Every chunk is checked by the injection guard before it is stored (`slmforge.rag.guarding`): a flagged
chunk is stored but quarantined (left out of retrieval for answers, shown marked by `slm rag search`).
Chunks stored before the guard, or under another guard setting, are checked at the start of the run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmforge.core import runtime, workspace
from slmforge.core.errors import SlmError
from slmforge.core.progress import bar
from slmforge.data.readers import ReadStats, file_format, iter_documents, iter_files
from slmforge.rag.chunking import ChunkConfig, chunk_document
from slmforge.rag.embed import Embedder
from slmforge.rag.guarding import ChunkGuard, check_setting, guarded_text, open_guard
from slmforge.rag.store import NewChunk, Store, embed_text, is_postgres
from slmforge.rag.stores import open_store

RECHECK_BATCH = 2000  # stored chunks re-checked (and committed) per step


@dataclass
class RagIndexConfig:
    """What `slm rag index` needs."""

    paths: list[str]
    """Files or folders (recursive): .txt .md .rst .html .jsonl .csv .pdf .docx

    Read by the ingest readers; a PDF chunk's section names its page, a DOCX chunk's its headings."""
    index: str
    """An index name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path, or its name in --store."""
    store: str | None = None
    """postgresql://… to use PostgreSQL + pgvector [default: one SQLite file]."""
    embed_model: str = "minilm-l6"
    """Any sentence-transformers model.

    A catalog name, directory or hub id; fixed per index."""
    runtime: str = "onnx"
    """Embedding runtime: onnx, onnx-int8 or torch.

    onnx is exported once."""
    max_chars: int = 800
    """Largest chunk, in characters."""
    overlap: int = 100
    """Characters shared by consecutive chunks of a section."""
    tags: list[str] = field(default_factory=list)
    """Tag every file of this run (repeatable).

    Search can filter on them."""
    text_field: str = "text"
    """JSON field with the text in .jsonl files."""
    text_column: str = "text"
    """Column holding the text in .csv files."""
    batch_files: int = 16
    """A batch is committed once it holds this many files."""
    batch_chunks: int = 512
    """A batch is committed once it holds this many chunks."""
    embed_batch_size: int = 32
    """Chunks embedded per forward pass."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    guard: str = "rules"
    """Injection check on every chunk (flagged ones are quarantined): rules, auto (also the built detector; it
    flags most documentation), none, or a detector directory.

    slmforge.rag.guarding says why rules is the default."""


@dataclass
class IndexResult:
    location: str
    files_seen: int = 0
    files_indexed: int = 0  # new or changed, (re)embedded
    files_unchanged: int = 0
    files_deleted: int = 0
    chunks_added: int = 0
    chunks_total: int = 0
    size_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # empty, unreadable, binary, non_utf8, unsupported,
    # corrupt_or_encrypted (pdf/docx), pdf_pages_without_text (pages, not files)
    notes: list[str] = field(default_factory=list)  # one line per pdf/docx skipped or partly read
    seconds: float = 0.0
    hidden_html: int = 0  # HTML elements dropped as not shown by a browser
    guard: str = "none"  # what checked the chunks, in words
    chunks_flagged: int = 0  # of the chunks added or re-checked by this run, how many the guard flagged
    chunks_rechecked: int = 0  # stored chunks checked again (never checked, or another guard)
    flagged_total: int = 0  # quarantined chunks in the index after the run
    unchecked_total: int = 0  # chunks never checked (guard: none)
    guard_seconds: float = 0.0  # time spent in the guard


def build_index(cfg: RagIndexConfig, progress: bool = True) -> IndexResult:
    """Bring the index up to date with `cfg.paths` and return what changed."""
    started = time.perf_counter()
    chunk_cfg = ChunkConfig(max_chars=cfg.max_chars, overlap=cfg.overlap)
    chunk_cfg_check(chunk_cfg)
    setting = check_setting(cfg.guard)
    files, skipped = _list_files(cfg.paths)
    guard = open_guard(setting, threads=cfg.threads or 1)
    store = open_store(cfg.index, cfg.store, create=True)
    try:
        result = IndexResult(location=store.location, files_seen=len(files), skipped=skipped)
        embedder = _prepare(store, cfg, chunk_cfg)
        result.guard = guard.name if guard else "none"
        _recheck(store, guard, setting, result, progress)
        indexed = store.file_hashes()
        gone = _deleted(indexed, files, cfg.paths)
        for path in gone:
            store.delete_file(path)
        store.commit()
        result.files_deleted = len(gone)
        todo = [(p, h) for p, h in files.items() if indexed.get(p) != h]
        result.files_unchanged = len(files) - len(todo)
        _index_files(store, embedder, guard, todo, cfg, chunk_cfg, result, progress)
        store.finish()
        counts = store.counts()
        result.chunks_total, result.size_bytes = counts["chunks"], counts.get("size_bytes", 0)
        result.flagged_total, result.unchecked_total = counts.get("flagged", 0), counts.get("unchecked", 0)
    finally:
        store.close()
    result.guard_seconds = guard.seconds if guard else 0.0
    result.seconds = time.perf_counter() - started
    if not is_postgres(cfg.store):
        workspace.register(
            "index", result.location, name=Path(result.location).stem, source=",".join(cfg.paths),
            metrics={"files": len(files), "chunks": result.chunks_total, "embed_model": cfg.embed_model,
                     "flagged": result.flagged_total},
        )  # fmt: skip
    return result


def chunk_cfg_check(c: ChunkConfig) -> None:
    chunk_document("", "txt", c)  # validates the sizes before any work


# ---------------------------------------------------------------- steps


def _list_files(paths: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """{absolute path: sha256} of every readable supported file; counts of what was skipped."""
    files: dict[str, str] = {}
    skipped = {"unsupported": 0, "unreadable": 0}
    for path in iter_files(paths):
        if file_format(path) is None:
            skipped["unsupported"] += 1
            continue
        try:
            files[str(path.resolve())] = _sha256(path)
        except OSError:
            skipped["unreadable"] += 1
    return files, skipped


def _prepare(store: Store, cfg: RagIndexConfig, chunk_cfg: ChunkConfig) -> Embedder:
    """Check that this run matches how the index was built; record it on a new index."""
    meta = store.meta()
    if meta.get("embed_model") and meta["embed_model"] != cfg.embed_model:
        raise SlmError(
            f"{store.location} was built with embedding model {meta['embed_model']}, not {cfg.embed_model}: "
            f"index with --embed-model {meta['embed_model']}, or into a new --index"
        )
    embedder = Embedder(cfg.embed_model, cfg.runtime, threads=cfg.threads or runtime.free_cores())
    store.check_model(embedder.name, embedder.dim)
    signature = f"{chunk_cfg.max_chars}/{chunk_cfg.overlap}/{chunk_cfg.min_chars}"
    if meta.get("chunking") and meta["chunking"] != signature:
        raise SlmError(
            f"{store.location} was chunked with max/overlap/min chars {meta['chunking']}, not {signature}: "
            "use the same --chunk-chars/--overlap, or a new --index"
        )
    if meta.get("embed_runtime") and meta["embed_runtime"] != cfg.runtime:
        raise SlmError(
            f"{store.location} was embedded with runtime {meta['embed_runtime']}, not {cfg.runtime}: "
            f"use --runtime {meta['embed_runtime']}, or a new --index"
        )
    store.set_meta(
        {"embed_model": embedder.name, "embed_dim": str(embedder.dim), "embed_runtime": cfg.runtime,
         "chunking": signature}
    )  # fmt: skip
    store.commit()
    return embedder


def _recheck(
    store: Store, guard: ChunkGuard | None, setting: str, result: IndexResult, progress: bool
) -> None:
    """Bring the stored chunks' findings up to this guard: every chunk when the guard changed since the
    last run, else only those never checked (an index built before the guard). `none` clears them."""
    meta = store.meta()
    signature = guard.signature() if guard else "none"
    changed = meta.get("guard_signature") != signature
    if guard is None and not changed:
        return
    # A guard that changed checks every chunk again; the first guarded run over an index built before
    # the guard (no signature) finds them all unchecked anyway.
    every = guard is None or (changed and "guard_signature" in meta)
    counts = store.counts()
    todo = counts["chunks"] if every else counts.get("unchecked", 0)
    after = 0
    with bar("guarding", total=todo, unit="chunks", enabled=progress and todo > 0) as b:
        while chunks := store.chunks_to_check(after, RECHECK_BATCH, every):
            if guard is None:
                flags = [(c.id, None) for c in chunks]
            else:
                flags = [(c.id, guard.check(guarded_text(c.section, c.doc, c.text)) or "") for c in chunks]
                result.chunks_flagged += sum(1 for _, f in flags if f)
                result.chunks_rechecked += len(chunks)
            store.set_flags(flags)
            store.commit()
            after = chunks[-1].id
            b.advance(len(chunks))
    store.set_meta({"guard": setting, "guard_signature": signature})
    store.commit()


def _deleted(indexed: dict[str, str], files: dict[str, str], roots: list[str]) -> list[str]:
    """Indexed files that no longer exist, or that sit under a given root but were not listed now."""
    resolved = [Path(r).expanduser().resolve() for r in roots]
    gone = []
    for path in indexed:
        if path in files:
            continue
        p = Path(path)
        if not p.exists() or any(p == r or r in p.parents for r in resolved):
            gone.append(path)
    return gone


def _index_files(
    store: Store,
    embedder: Embedder,
    guard: ChunkGuard | None,
    todo: list[tuple[str, str]],
    cfg: RagIndexConfig,
    chunk_cfg: ChunkConfig,
    result: IndexResult,
    progress: bool,
) -> None:
    total_bytes = sum(Path(p).stat().st_size for p, _ in todo)
    pending: list[tuple[str, str, list[NewChunk]]] = []
    stats = ReadStats()

    def flush() -> None:
        texts = [embed_text(c.section, c.text) for _, _, chunks in pending for c in chunks]
        vectors = (
            embedder.encode(texts, batch_size=cfg.embed_batch_size) if texts else np.zeros((0, embedder.dim))
        )
        row = 0
        for path, sha, chunks in pending:
            store.put_file(path, sha, cfg.tags, chunks, vectors[row : row + len(chunks)])
            row += len(chunks)
            result.files_indexed += 1
            result.chunks_added += len(chunks)
        store.commit()
        pending.clear()

    with bar("indexing", total=total_bytes, unit="B", enabled=progress) as b:
        for path, sha in todo:
            size = Path(path).stat().st_size
            noted = len(stats.notes)
            chunks = _chunk_file(path, cfg, chunk_cfg, stats, result)
            for note in stats.notes[noted:]:
                if progress:
                    b.print(note, markup=False, highlight=False, soft_wrap=True)
            if chunks and guard is not None:
                for c in chunks:
                    c.flag = guard.check(guarded_text(c.section, c.doc, c.text))
                    result.chunks_flagged += bool(c.flag)
            if chunks is not None:
                pending.append((path, sha, chunks))
            else:  # it became unreadable: what the index said about it no longer holds
                store.delete_file(path)
            if len(pending) >= cfg.batch_files or sum(len(c) for _, _, c in pending) >= cfg.batch_chunks:
                flush()
            b.advance(size)
        if pending:
            flush()
    for reason in ("binary", "non_utf8"):
        if getattr(stats, reason):
            result.skipped[reason] = result.skipped.get(reason, 0) + getattr(stats, reason)
    if stats.malformed:
        result.skipped["malformed_records"] = stats.malformed
    if stats.corrupt:
        result.skipped["corrupt_or_encrypted"] = stats.corrupt
    if stats.pdf_pages_without_text:
        result.skipped["pdf_pages_without_text"] = stats.pdf_pages_without_text
    result.hidden_html += stats.hidden_html
    result.notes += stats.notes


def _chunk_file(
    path: str, cfg: RagIndexConfig, chunk_cfg: ChunkConfig, stats: ReadStats, result: IndexResult
) -> list[NewChunk] | None:
    """The file's chunks ([] for an empty file, which is still recorded); None when it cannot be read."""
    before = stats.binary + stats.non_utf8 + stats.corrupt
    chunks: list[NewChunk] = []
    try:
        for doc in iter_documents(
            [path], text_field=cfg.text_field, text_column=cfg.text_column, stats=stats
        ):
            for c in chunk_document(doc.text, doc.fmt, chunk_cfg, doc.marks):
                chunks.append(NewChunk(doc.source, c.section, c.start, c.end, c.text))
    except OSError:
        result.skipped["unreadable"] = result.skipped.get("unreadable", 0) + 1
        return None
    if stats.binary + stats.non_utf8 + stats.corrupt > before:
        return None
    if not chunks:
        result.skipped["empty"] = result.skipped.get("empty", 0) + 1
    return chunks


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
