"""The embedded store: one SQLite file with files, chunks, an FTS5 index (BM25) and float32 embeddings.

Vector search: the embeddings are read once into a numpy matrix (reloaded when the file changes) and
scored by matrix-vector products, not by sqlite-vec (an exact scan measured 3x slower than numpy, and it
needs a SQLite that loads extensions, which this Python's does not). Up to `EXACT_UP_TO` chunks one exact
GEMV scores them all. Above that, a full fp32 scan is bound by memory bandwidth (100k x 384 floats =
154 MB read per query, ~24 ms here), so the search is two-stage: every vector is also kept projected onto
its `PROJECTED_DIM` principal components (a 6x smaller matrix), the projected query picks the
`candidates` best chunks, and those are re-scored exactly; scores returned are exact cosines. On the
Python docs the exact top 10 was recovered at 0.999 (BENCHMARKS.md).

BM25: FTS5's own `bm25()` ranking costs ~25 ms per OR query at 100k chunks (the ranking function runs
per matching row; enumerating the matches alone takes a third of that). So each index run ends by
writing the postings FTS5 already holds (term -> chunk positions and column-weighted term counts, read
from its `fts5vocab` instance table) into `bm25_terms`, and queries score them with numpy: the same
Okapi BM25 formula as FTS5 (k1 = 1.2, b = 0.75, a section hit counting twice a body hit), about 1-3 ms.
Query words are stemmed by FTS5's own porter tokenizer (a temporary table). When the postings are
missing or stale (an older index, or a run killed between batches), FTS5's `bm25()` answers instead.

Quarantine: the ids of the chunks the guard flagged are read once per change of the file (they are few)
and masked out of both rankings, so a quarantined chunk costs a search nothing.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.rag.store import SCHEMA_VERSION, Filters, NewChunk, Store, StoredChunk

K1, B = 1.2, 0.75
SECTION_WEIGHT = 2.0  # a hit in the section path (titles) counts twice a hit in the body
EXACT_UP_TO = 30_000
PROJECTED_DIM = 64
MIN_CANDIDATES = 1_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT ''  -- ",a,b," so a tag filter is one LIKE
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id),
    doc TEXT NOT NULL,
    section TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    body TEXT NOT NULL,
    flag TEXT  -- the injection guard's finding: NULL unchecked, '' clean, else its reasons (store.py)
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE TABLE IF NOT EXISTS vectors (chunk_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    section, body, content='', tokenize='porter unicode61'
);
"""
_HEADER = b"SQLite format 3\x00"


def _guarded(method):
    """sqlite3 errors become one line; a damaged file says how to fix it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        try:
            return method(self, *args, **kw)
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

    return wrapper


class SqliteStore(Store):
    parallel_text_search = True  # full-text queries use their own connection

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        self.location = str(self.path)
        self._matrix: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._projection: tuple[np.ndarray, np.ndarray] | None = None  # (basis, projected matrix)
        self._version: int | None = None
        self._in_tx = False
        self._text: sqlite3.Connection | None = None
        self._bm25: dict | None = None  # term -> (positions, weighted tf); "" -> (chunk ids, lengths)
        self._bm25_version: int | None = None
        self._flag_cache: dict[int, tuple[int, np.ndarray]] = {}  # id(connection) -> (data_version, ids)
        self._has_flag = True  # False: an older index opened read-only (every chunk reads as unchecked)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise SlmError(f"no index at {self.path}: build it with `slm rag index PATH... --index NAME`")
        if exists:
            with open(self.path, "rb") as f:
                if f.read(16) != _HEADER:
                    raise SlmError(f"{self.path} is not a SQLite index (corrupted?): {self._fix()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
            self.con.create_function("regexp", 2, _regexp, deterministic=True)
            if exists:
                version = self.meta().get("schema_version")
                if version is None:
                    raise SlmError(f"{self.path} is a SQLite file but not a slmforge index: {self._fix()}")
                if version != SCHEMA_VERSION:
                    raise SlmError(
                        f"{self.path} has index schema {version}, this slmforge reads {SCHEMA_VERSION}"
                    )
                self._has_flag = self._add_flag_column()
            else:
                self.con.executescript(_SCHEMA)
                self.con.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?), ('store', 'sqlite')",
                    (SCHEMA_VERSION,),
                )
        except sqlite3.DatabaseError as e:
            raise self._error(e) from None

    def _add_flag_column(self) -> bool:
        """Give an index built before the guard its `flag` column; False when the file is read-only."""
        columns = {r[1] for r in self.con.execute("PRAGMA table_info(chunks)")}
        if "flag" in columns:
            return True
        try:
            self.con.execute("ALTER TABLE chunks ADD COLUMN flag TEXT")
        except sqlite3.OperationalError as e:
            if "readonly" in str(e) or "read-only" in str(e):
                return False
            raise
        return True

    def _flag_col(self, alias: str = "c") -> str:
        return f"{alias}.flag" if self._has_flag else "NULL"

    # ------------------------------------------------------------ meta and files

    @_guarded
    def meta(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT key, value FROM meta"))

    @_guarded
    def set_meta(self, values: dict[str, str]) -> None:
        self._begin()
        self.con.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
        )

    @_guarded
    def file_hashes(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT path, sha256 FROM files"))

    @_guarded
    def put_file(
        self, path: str, sha256: str, tags: list[str], chunks: list[NewChunk], vectors: np.ndarray
    ) -> None:
        self._begin()
        self._delete(path)
        cur = self.con.execute(
            "INSERT INTO files (path, sha256, tags) VALUES (?, ?, ?)", (path, sha256, _tags(tags))
        )
        file_id = cur.lastrowid
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        for c, v in zip(chunks, vectors):
            cid = self.con.execute(
                "INSERT INTO chunks (file_id, doc, section, start, end, body, flag) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (file_id, c.doc, c.section, c.start, c.end, c.text, c.flag),
            ).lastrowid
            self.con.execute("INSERT INTO vectors VALUES (?, ?)", (cid, v.tobytes()))
            self.con.execute(
                "INSERT INTO chunks_fts (rowid, section, body) VALUES (?, ?, ?)", (cid, c.section, c.text)
            )
        self._matrix = None
        self._flag_cache.clear()

    @_guarded
    def delete_file(self, path: str) -> None:
        self._begin()
        self._delete(path)
        self._matrix = None
        self._flag_cache.clear()

    @_guarded
    def set_flags(self, flags: list[tuple[int, str | None]]) -> None:
        if not self._has_flag:
            raise SlmError(f"{self.path} is read-only: the guard's findings cannot be stored")
        self._begin()
        self.con.executemany("UPDATE chunks SET flag = ? WHERE id = ?", [(f, i) for i, f in flags])
        self._flag_cache.clear()

    def _flagged_ids(self, con: sqlite3.Connection) -> np.ndarray:
        """Sorted ids of the quarantined chunks, as `con` sees them (re-read when the file changed)."""
        if not self._has_flag:
            return np.zeros(0, dtype=np.int64)
        version = con.execute("PRAGMA data_version").fetchone()[0]
        cached = self._flag_cache.get(id(con))
        if cached is None or cached[0] != version or self._in_tx:
            rows = con.execute("SELECT id FROM chunks WHERE flag <> '' ORDER BY id")
            cached = (version, np.fromiter((r[0] for r in rows), dtype=np.int64))
            self._flag_cache[id(con)] = cached
        return cached[1]

    def _delete(self, path: str) -> None:
        row = self.con.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return
        ids = [r[0] for r in self.con.execute("SELECT id FROM chunks WHERE file_id = ?", (row[0],))]
        # A contentless FTS5 table (content='') forgets rows by 'delete' with their old values; this
        # SQLite (3.40) predates contentless_delete, so the values come from the chunks table.
        self.con.execute(
            "INSERT INTO chunks_fts (chunks_fts, rowid, section, body) "
            "SELECT 'delete', id, section, body FROM chunks WHERE file_id = ?",
            (row[0],),
        )
        self.con.executemany("DELETE FROM vectors WHERE chunk_id = ?", [(i,) for i in ids])
        self.con.execute("DELETE FROM chunks WHERE file_id = ?", (row[0],))
        self.con.execute("DELETE FROM files WHERE id = ?", (row[0],))

    @_guarded
    def commit(self) -> None:
        if self._in_tx:
            self.con.execute("COMMIT")
            self._in_tx = False

    def _begin(self) -> None:
        if not self._in_tx:
            self.con.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    # ------------------------------------------------------------ search

    @_guarded
    def search_text(self, terms: list[str], k: int, filters: Filters) -> list[tuple[int, float]]:
        if not terms:
            return []
        if not self._in_tx and self._bm25_fresh():
            return self._search_postings(terms, k, filters)
        con = self._text_con()
        match = " OR ".join(f'"{t}"' for t in terms)
        # bm25 weights: a hit in the section path (titles) counts twice a hit in the body
        sql = f"SELECT rowid, bm25(chunks_fts, {SECTION_WEIGHT}, 1.0) AS s FROM chunks_fts WHERE chunks_fts MATCH ?"
        params: list = [match]
        if filters:
            where, fparams = self._filter_sql(filters)
            sql += f" AND rowid IN (SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE {where})"
            params += fparams
        if not filters.include_flagged and self._has_flag:
            sql += " AND rowid NOT IN (SELECT id FROM chunks WHERE flag <> '')"
        sql += " ORDER BY s LIMIT ?"
        rows = con.execute(sql, [*params, k]).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]

    # ------------------------------------------------------------ BM25 over stored postings

    @_guarded
    def finish(self) -> None:
        """Rewrite the BM25 postings when they do not describe the current chunks (one transaction)."""
        if self._postings_stamp(self.con) == self.meta().get("bm25_stamp"):
            return
        self._begin()
        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS bm25_terms (term TEXT PRIMARY KEY, docs BLOB, tfs BLOB)")
        con.execute("DELETE FROM bm25_terms")
        con.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_instances USING fts5vocab(main, chunks_fts, instance)"
        )
        ids = np.fromiter((r[0] for r in con.execute("SELECT id FROM chunks ORDER BY id")), dtype=np.int64)
        lengths = np.zeros(len(ids), dtype=np.float32)
        rows = con.execute(
            "SELECT term, doc, sum(CASE col WHEN 'section' THEN ? ELSE 1.0 END), count(*) "
            "FROM temp.fts_instances GROUP BY term, doc ORDER BY term, doc",
            (SECTION_WEIGHT,),
        )
        batch: list[tuple] = []
        term, docs, tfs = None, [], []
        every_doc, every_count = [], []

        def flush_term():
            if term is not None:
                batch.append((term, np.searchsorted(ids, docs).astype(np.int32).tobytes(),
                              np.asarray(tfs, dtype=np.float32).tobytes()))  # fmt: skip

        for t, doc, weighted, count in rows:
            if t != term:
                flush_term()
                term, docs, tfs = t, [], []
            docs.append(doc)
            tfs.append(weighted)
            every_doc.append(doc)
            every_count.append(count)
            if len(batch) >= 5000:
                con.executemany("INSERT INTO bm25_terms VALUES (?, ?, ?)", batch)
                batch.clear()
        flush_term()
        np.add.at(lengths, np.searchsorted(ids, np.asarray(every_doc, dtype=np.int64)), every_count)
        batch.append(("", ids.tobytes(), lengths.tobytes()))
        con.executemany("INSERT INTO bm25_terms VALUES (?, ?, ?)", batch)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('bm25_stamp', ?)", (self._postings_stamp(con),))
        self.commit()

    @staticmethod
    def _postings_stamp(con: sqlite3.Connection) -> str:
        n, top = con.execute("SELECT count(*), coalesce(max(id), 0) FROM chunks").fetchone()
        return f"{n}:{top}"

    def _bm25_fresh(self) -> bool:
        """Are the stored postings those of the current chunks? (Checked once per change of the file.)"""
        con = self._text_con()
        version = con.execute("PRAGMA data_version").fetchone()[0]
        if self._bm25_version != version:
            self._bm25_version = version
            has = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'bm25_terms'").fetchone()
            stamp = con.execute("SELECT value FROM meta WHERE key = 'bm25_stamp'").fetchone()
            fresh = bool(has) and stamp is not None and stamp[0] == self._postings_stamp(con)
            self._bm25 = {} if fresh else None
        return self._bm25 is not None

    def _postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        assert self._bm25 is not None
        if term not in self._bm25:
            row = (
                self._text_con()
                .execute("SELECT docs, tfs FROM bm25_terms WHERE term = ?", (term,))
                .fetchone()
            )
            kind = np.int64 if term == "" else np.int32
            self._bm25[term] = (
                (np.frombuffer(row[0], dtype=kind), np.frombuffer(row[1], dtype=np.float32)) if row else None
            )
        return self._bm25[term]

    def _stems(self, terms: list[str]) -> list[str]:
        """The query words as FTS5's porter tokenizer indexes them."""
        con = self._text_con()
        con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.stem USING fts5(x, tokenize='porter unicode61')")
        con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.stem_vocab USING fts5vocab(temp, stem, row)")
        con.execute("INSERT INTO temp.stem (rowid, x) VALUES (1, ?)", (" ".join(terms),))
        stems = [r[0] for r in con.execute("SELECT term FROM temp.stem_vocab")]
        con.execute("DELETE FROM temp.stem")
        return stems

    def _search_postings(self, terms: list[str], k: int, filters: Filters) -> list[tuple[int, float]]:
        ids, lengths = self._postings("") or (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if len(ids) == 0:
            return []
        n = len(ids)
        norm = K1 * (1 - B + B * lengths / max(float(lengths.mean()), 1e-9))
        scores = np.zeros(n, dtype=np.float32)
        for stem in self._stems(terms):
            hit = self._postings(stem)
            if hit is None:
                continue
            pos, tf = hit
            idf = max(float(np.log((n - len(pos) + 0.5) / (len(pos) + 0.5))), 1e-6)
            scores[pos] += idf * tf * (K1 + 1) / (tf + norm[pos])
        if filters:
            scores[~self._allowed(ids, filters, self._text_con())] = 0
        if not filters.include_flagged:
            flagged = self._flagged_ids(self._text_con())
            if len(flagged):
                scores[np.isin(ids, flagged)] = 0
        found = np.flatnonzero(scores)
        if len(found) > k:
            found = found[np.argpartition(-scores[found], k - 1)[:k]]
        found = found[np.argsort(-scores[found], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in found]

    def _text_con(self) -> sqlite3.Connection:
        """Full-text queries get their own connection, so hybrid search can run them in a thread while
        the query is embedded and scored against the vectors (WAL lets readers work side by side).
        Inside a write transaction the main connection is used, to see its uncommitted rows."""
        if self._in_tx:
            return self.con
        if self._text is None:
            self._text = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._text.create_function("regexp", 2, _regexp, deterministic=True)
        return self._text

    @_guarded
    def search_vector(self, vector: np.ndarray, k: int, filters: Filters) -> list[tuple[int, float]]:
        ids, matrix = self._load_matrix()
        if len(ids) == 0:
            return []
        q = np.asarray(vector, dtype=np.float32)
        allowed = self._allowed(ids, filters, self.con) if filters else None
        if not filters.include_flagged:
            flagged = self._flagged_ids(self.con)
            if len(flagged):
                clean = ~np.isin(ids, flagged)
                allowed = clean if allowed is None else allowed & clean
        candidates = max(MIN_CANDIDATES, 20 * k)
        if len(ids) <= EXACT_UP_TO or len(ids) <= 2 * candidates:
            rows = np.arange(len(ids))
            scores = matrix @ q
        else:  # two-stage: projected scan, exact re-score of the candidates
            basis, projected = self._projected(matrix)
            rough = projected @ (q @ basis)
            if allowed is not None:
                rough[~allowed] = -np.inf
            rows = np.argpartition(-rough, candidates - 1)[:candidates]
            scores = matrix[rows] @ q
        if allowed is not None:
            scores = np.where(allowed[rows], scores, -np.inf)
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(int(ids[rows[i]]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def _projected(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The top principal directions of the stored vectors and the vectors projected onto them."""
        if self._projection is None:
            sample = matrix[:: max(1, len(matrix) // 50_000)]
            centred = sample - sample.mean(0)
            _, vectors = np.linalg.eigh(centred.T @ centred)
            basis = np.ascontiguousarray(vectors[:, ::-1][:, :PROJECTED_DIM], dtype=np.float32)
            self._projection = (basis, np.ascontiguousarray(matrix @ basis))
        return self._projection

    def _load_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        version = self.con.execute("PRAGMA data_version").fetchone()[0]
        if self._matrix is None or version != self._version or self._in_tx:
            rows = self.con.execute("SELECT chunk_id, embedding FROM vectors ORDER BY chunk_id").fetchall()
            dim = int(self.meta().get("embed_dim", 0) or 0)
            self._ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            flat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
            self._matrix = flat.reshape(len(rows), dim if rows else 0).astype(np.float32, copy=False)
            self._projection = None
            self._version = version
        return self._ids, self._matrix

    def _allowed(self, ids: np.ndarray, filters: Filters, con: sqlite3.Connection) -> np.ndarray:
        """A mask over `ids`: which chunks pass the path / tag filters."""
        where, params = self._filter_sql(filters)
        sql = f"SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE {where}"
        return np.isin(ids, np.fromiter((r[0] for r in con.execute(sql, params)), dtype=np.int64))

    def _filter_sql(self, filters: Filters) -> tuple[str, list]:
        where, params = ["1"], []
        if filters.path:
            where.append("regexp(?, f.path)")
            params.append(filters.path_regex())
        for t in filters.tags:
            where.append("f.tags LIKE ?")
            params.append(f"%,{t},%")
        return " AND ".join(where), params

    @_guarded
    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.con.execute(
            f"{self._select_chunks()} WHERE c.id IN ({marks})",
            list(ids),
        )
        return {r[0]: _stored(r) for r in rows}

    def _select_chunks(self) -> str:
        return (
            f"SELECT c.id, f.path, c.doc, c.section, c.start, c.end, c.body, f.tags, {self._flag_col()} "
            "FROM chunks c JOIN files f ON f.id = c.file_id"
        )

    @_guarded
    def chunks_to_check(self, after_id: int, limit: int, every: bool) -> list[StoredChunk]:
        which = "" if every else f" AND {self._flag_col()} IS NULL"
        rows = self.con.execute(
            f"{self._select_chunks()} WHERE c.id > ?{which} ORDER BY c.id LIMIT ?", (after_id, limit)
        )
        return [_stored(r) for r in rows]

    @_guarded
    def flagged(self, limit: int) -> list[StoredChunk]:
        if not self._has_flag:
            return []
        rows = self.con.execute(f"{self._select_chunks()} WHERE c.flag <> '' ORDER BY c.id LIMIT ?", (limit,))
        return [_stored(r) for r in rows]

    @_guarded
    def counts(self) -> dict[str, int]:
        files = self.con.execute("SELECT count(*) FROM files").fetchone()[0]
        chunks, flagged, unchecked = self.con.execute(
            f"SELECT count(*), coalesce(sum({self._flag_col('chunks')} <> ''), 0), "
            f"coalesce(sum({self._flag_col('chunks')} IS NULL), 0) FROM chunks"
        ).fetchone()
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {
            "files": files,
            "chunks": chunks,
            "flagged": flagged,
            "unchecked": unchecked,
            "size_bytes": size,
        }

    def close(self) -> None:
        try:
            if self._in_tx:
                self.con.execute("ROLLBACK")
            self.con.close()
            if self._text is not None:
                self._text.close()
        except sqlite3.Error:
            pass

    # ------------------------------------------------------------ errors

    def _fix(self) -> str:
        return f"delete {self.path} and build it again with `slm rag index PATH... --index {self.path}`"

    def _error(self, e: sqlite3.DatabaseError) -> SlmError:
        msg = str(e)
        if any(w in msg for w in ("malformed", "not a database", "corrupt", "no such table")):
            return SlmError(f"{self.path} is corrupted ({msg}): {self._fix()}")
        return SlmError(f"{self.path}: {msg}")


def _stored(r) -> StoredChunk:
    return StoredChunk(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _untags(r[7]), r[8])


def _tags(tags: list[str]) -> str:
    return "," + ",".join(sorted(set(tags))) + "," if tags else ""


def _untags(s: str) -> list[str]:
    return [t for t in s.split(",") if t]


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _regexp(pattern: str, value: str) -> bool:
    return value is not None and _compile(pattern).search(value) is not None
