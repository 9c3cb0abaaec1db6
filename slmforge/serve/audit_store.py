"""The audit table in the workspace database: its schema (columns added since the first release are added
on connect), `AuditRecord` (one request), and the queries `slm audit` runs over it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields

from slmforge.core import workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_name TEXT,
    endpoint TEXT NOT NULL,
    model TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    guard TEXT,
    prompt TEXT
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TABLE IF NOT EXISTS audit_replayed (file TEXT PRIMARY KEY, time REAL NOT NULL, records INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_probe (pad BLOB);
"""
# columns added after the first release: added to an existing table on connect
ADDED_COLUMNS = (("client", "TEXT"), ("count", "INTEGER NOT NULL DEFAULT 1"))


@dataclass
class AuditRecord:
    time: float
    request_id: str
    endpoint: str
    key_name: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    status: int = 0
    guard: str | None = None  # e.g. "allow", "redact: email", "block: injection"
    prompt: str | None = None  # only with audit.store_prompts, and redacted
    client: str | None = None  # the client's address
    count: int = 1  # requests this record stands for (above 1: a summary of sampled-out refusals)


COLUMNS = [f.name for f in fields(AuditRecord)]
INSERT = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def connect() -> sqlite3.Connection:
    con = workspace.connect()
    con.executescript(SCHEMA)
    have = {row[1] for row in con.execute("PRAGMA table_info(audit)")}
    for name, decl in ADDED_COLUMNS:
        if name not in have:
            try:
                con.execute(f"ALTER TABLE audit ADD COLUMN {name} {decl}")
            except sqlite3.OperationalError as e:  # another process added it first
                if "duplicate column" not in str(e):
                    raise
    return con


def redact_prompt(text: str, limit: int = 4000) -> str:
    from slmforge.data.pii import redact

    return redact(text[:limit])[0]


def row_of(r: AuditRecord) -> tuple:
    """The record as a row in COLUMNS order (for INSERT)."""
    return tuple(getattr(r, c) for c in COLUMNS)


def record_of(d: dict) -> AuditRecord:
    """A record from a JSON object (a spill file's line); keys that are not columns are ignored."""
    return AuditRecord(**{k: d[k] for k in COLUMNS if k in d})


def query(
    since: float | None = None,
    key_name: str | None = None,
    endpoint: str | None = None,
    status: int | None = None,
    limit: int | None = 50,
) -> list[AuditRecord]:
    """Records, newest first, filtered."""
    where, args = [], []
    for column, value in (("key_name", key_name), ("endpoint", endpoint), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    sql = f"SELECT {', '.join(COLUMNS)} FROM audit"
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time DESC, id DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    with connect() as con:
        return [AuditRecord(*row) for row in con.execute(sql, args)]


def count() -> int:
    """Records in the table (a summary of sampled-out refusals is one record: see `requests`)."""
    with connect() as con:
        return con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]


def requests() -> int:
    """Requests the table stands for: SUM(count)."""
    with connect() as con:
        return con.execute("SELECT COALESCE(SUM(count), 0) FROM audit").fetchone()[0]
