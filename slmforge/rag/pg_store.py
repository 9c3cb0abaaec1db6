"""The scale-out store: PostgreSQL + pgvector, one schema per index (`rag_<name>`).

Vectors live in a `vector(dim)` column with an HNSW index (cosine, m=16, ef_construction=64) searched
with `hnsw.ef_search` = 100 and iterative scans (so filters still return k rows); full text is
PostgreSQL's own `tsvector` ranking (`ts_rank_cd`, English stemming): "bm25" mode on this backend means
that ranking, which is close to but not exactly BM25. The guard's finding per chunk is the `flag` column
(store.py); quarantined chunks are left out by the searches' WHERE clause.
"""

from __future__ import annotations

import re

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.rag.store import SCHEMA_VERSION, Filters, NewChunk, Store, StoredChunk

EF_SEARCH = 100


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class PgStore(Store):
    def __init__(self, url: str, name: str, create: bool = False):
        import psycopg

        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise SlmError(f"a PostgreSQL index name uses letters, digits and _ only (got {name!r})")
        self.url, self.name = url, name
        self.schema = f"rag_{name.lower()}"
        self.location = f"{_redact(url)} index {name}"
        self._dim: int | None = None
        self._has_flag = True  # False: an older index this role may not alter (read as all unchecked)
        try:
            self.con = psycopg.connect(url, connect_timeout=5, autocommit=False)
        except psycopg.Error as e:
            cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SlmError(f"cannot reach PostgreSQL at {_redact(url)}: {cause}") from None
        try:
            self.con.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self.con.commit()
            from pgvector.psycopg import register_vector

            register_vector(self.con)
        except psycopg.Error as e:
            self.con.close()
            raise SlmError(
                f"PostgreSQL at {_redact(url)} has no usable pgvector extension: {_first(e)}"
            ) from None
        exists = self.con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'meta'",
            (self.schema,),
        ).fetchone()
        if not exists and not create:
            self.con.close()
            raise SlmError(
                f"no index {name} in {_redact(url)}: build it with `slm rag index PATH... --index {name} --store URL`"
            )
        if not exists:
            s = self.schema
            self.con.execute(f"""
                CREATE SCHEMA IF NOT EXISTS {s};
                CREATE TABLE {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE {s}.files (id BIGSERIAL PRIMARY KEY, path TEXT NOT NULL UNIQUE,
                                        sha256 TEXT NOT NULL, tags TEXT[] NOT NULL DEFAULT '{{}}');
                CREATE TABLE {s}.chunks (
                    id BIGSERIAL PRIMARY KEY,
                    file_id BIGINT NOT NULL REFERENCES {s}.files(id) ON DELETE CASCADE,
                    doc TEXT NOT NULL, section TEXT NOT NULL, start_ INTEGER NOT NULL, end_ INTEGER NOT NULL,
                    body TEXT NOT NULL, embedding vector, flag TEXT,
                    tsv tsvector GENERATED ALWAYS AS (
                        setweight(to_tsvector('english', section), 'A') || to_tsvector('english', body)) STORED
                );
                CREATE INDEX ON {s}.chunks (file_id);
                CREATE INDEX ON {s}.chunks USING gin (tsv);
            """)  # fmt: skip
            self.con.execute(
                f"INSERT INTO {s}.meta VALUES ('schema_version', %s), ('store', 'postgresql')",
                (SCHEMA_VERSION,),
            )
            self.con.commit()
        else:
            self._has_flag = self._add_flag_column()

    def _add_flag_column(self) -> bool:
        """Give an index built before the guard its `flag` column; False when this role may not."""
        import psycopg

        has = self.con.execute(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'chunks' AND column_name = 'flag'",
            (self.schema,),
        ).fetchone()
        if has:
            self.con.rollback()
            return True
        try:
            self.con.execute(f"ALTER TABLE {self.schema}.chunks ADD COLUMN IF NOT EXISTS flag TEXT")
            self.con.commit()
        except psycopg.errors.InsufficientPrivilege:
            self.con.rollback()
            return False
        return True

    def _flag_col(self) -> str:
        return "c.flag" if self._has_flag else "NULL::text"

    # ------------------------------------------------------------ meta and files

    def meta(self) -> dict[str, str]:
        return dict(self.con.execute(f"SELECT key, value FROM {self.schema}.meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.con.execute(
                f"INSERT INTO {self.schema}.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (k, str(v)),
            )
        if "embed_dim" in values:
            self._ensure_vector_index(int(values["embed_dim"]))

    def _ensure_vector_index(self, dim: int) -> None:
        """Type the column with its dimension (HNSW needs it) and build the index once."""
        s = self.schema
        typed = self.con.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'embedding'",
            (f"{s}.chunks",),
        ).fetchone()[0]
        if typed == "vector":
            self.con.execute(f"ALTER TABLE {s}.chunks ALTER COLUMN embedding TYPE vector({dim})")
            self.con.execute(
                f"CREATE INDEX IF NOT EXISTS chunks_hnsw ON {s}.chunks USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = 16, ef_construction = 64)"
            )

    def file_hashes(self) -> dict[str, str]:
        return dict(self.con.execute(f"SELECT path, sha256 FROM {self.schema}.files").fetchall())

    def put_file(
        self, path: str, sha256: str, tags: list[str], chunks: list[NewChunk], vectors: np.ndarray
    ) -> None:
        s = self.schema
        self.con.execute(f"DELETE FROM {s}.files WHERE path = %s", (path,))
        file_id = self.con.execute(
            f"INSERT INTO {s}.files (path, sha256, tags) VALUES (%s, %s, %s) RETURNING id",
            (path, sha256, sorted(set(tags))),
        ).fetchone()[0]
        with self.con.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {s}.chunks (file_id, doc, section, start_, end_, body, embedding, flag) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        file_id,
                        c.doc,
                        c.section,
                        c.start,
                        c.end,
                        c.text,
                        np.asarray(v, dtype=np.float32),
                        c.flag,
                    )
                    for c, v in zip(chunks, vectors)
                ],
            )

    def delete_file(self, path: str) -> None:
        self.con.execute(f"DELETE FROM {self.schema}.files WHERE path = %s", (path,))

    def set_flags(self, flags: list[tuple[int, str | None]]) -> None:
        if not self._has_flag:
            raise SlmError(f"{self.location}: this role may not store the guard's findings (no flag column)")
        with self.con.cursor() as cur:
            cur.executemany(
                f"UPDATE {self.schema}.chunks SET flag = %s WHERE id = %s", [(f, i) for i, f in flags]
            )

    def commit(self) -> None:
        self.con.commit()

    # ------------------------------------------------------------ search

    def search_text(self, terms: list[str], k: int, filters: Filters) -> list[tuple[int, float]]:
        words = [t for t in terms if re.fullmatch(r"\w+", t)]
        if not words:
            return []
        where, params = self._filter_sql(filters)
        rows = self.con.execute(
            f"""SELECT c.id, ts_rank_cd(c.tsv, q) AS score
                FROM {self.schema}.chunks c JOIN {self.schema}.files f ON f.id = c.file_id,
                     to_tsquery('english', %s) q
                WHERE c.tsv @@ q AND {where} ORDER BY score DESC LIMIT %s""",
            [" | ".join(words), *params, k],
        ).fetchall()
        self.con.rollback()  # end the read transaction: no idle-in-transaction between queries
        return [(int(r[0]), float(r[1])) for r in rows]

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters) -> list[tuple[int, float]]:
        where, params = self._filter_sql(filters)
        self.con.execute(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, k)}")
        self.con.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        q = np.asarray(vector, dtype=np.float32)
        rows = self.con.execute(
            f"""SELECT c.id, c.embedding <=> %s AS distance
                FROM {self.schema}.chunks c JOIN {self.schema}.files f ON f.id = c.file_id
                WHERE {where} ORDER BY distance LIMIT %s""",
            [q, *params, k],
        ).fetchall()
        self.con.rollback()
        return sorted(((int(r[0]), 1.0 - float(r[1])) for r in rows), key=lambda x: -x[1])

    def _filter_sql(self, filters: Filters) -> tuple[str, list]:
        where, params = ["TRUE"], []
        if filters.path:
            where.append("f.path ~ %s")
            params.append(filters.path_regex())
        if filters.tags:
            where.append("f.tags @> %s")
            params.append(list(filters.tags))
        if not filters.include_flagged and self._has_flag:
            where.append("(c.flag IS NULL OR c.flag = '')")
        return " AND ".join(where), params

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        rows = self.con.execute(f"{self._select_chunks()} WHERE c.id = ANY(%s)", (list(ids),)).fetchall()
        self.con.rollback()
        return {r[0]: _stored(r) for r in rows}

    def _select_chunks(self) -> str:
        return (
            f"SELECT c.id, f.path, c.doc, c.section, c.start_, c.end_, c.body, f.tags, {self._flag_col()} "
            f"FROM {self.schema}.chunks c JOIN {self.schema}.files f ON f.id = c.file_id"
        )

    def chunks_to_check(self, after_id: int, limit: int, every: bool) -> list[StoredChunk]:
        which = "" if every else f" AND {self._flag_col()} IS NULL"
        rows = self.con.execute(
            f"{self._select_chunks()} WHERE c.id > %s{which} ORDER BY c.id LIMIT %s", (after_id, limit)
        ).fetchall()
        return [_stored(r) for r in rows]

    def flagged(self, limit: int) -> list[StoredChunk]:
        if not self._has_flag:
            return []
        rows = self.con.execute(
            f"{self._select_chunks()} WHERE c.flag <> '' ORDER BY c.id LIMIT %s", (limit,)
        ).fetchall()
        self.con.rollback()
        return [_stored(r) for r in rows]

    def counts(self) -> dict[str, int]:
        files = self.con.execute(f"SELECT count(*) FROM {self.schema}.files").fetchone()[0]
        chunks, flagged, unchecked = self.con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {self._flag_col()} <> ''), "
            f"count(*) FILTER (WHERE {self._flag_col()} IS NULL) FROM {self.schema}.chunks c"
        ).fetchone()
        size = self.con.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
            (self.schema,),
        ).fetchone()[0]
        self.con.rollback()
        return {"files": files, "chunks": chunks, "flagged": flagged, "unchecked": unchecked,
                "size_bytes": int(size)}  # fmt: skip

    def close(self) -> None:
        try:
            self.con.rollback()
            self.con.close()
        except Exception:
            pass


def _stored(r) -> StoredChunk:
    return StoredChunk(r[0], r[1], r[2], r[3], r[4], r[5], r[6], list(r[7]), r[8])


def _first(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
