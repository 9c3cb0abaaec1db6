"""The audit log: one record per request in the workspace database, written by a background thread.

A record holds when, which key (by name: secrets are never stored), endpoint, model, tokens in and out,
latency, HTTP status and the guard's verdict. Prompts are stored only when the config asks for it, and
then PII-redacted. Writes are batched by one thread; `flush()` waits until every record is on disk, and
the queue is bounded (a full queue slows requests down rather than dropping records or growing memory).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields

from slmforge import workspace

_log = logging.getLogger("slmforge.audit")

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
"""


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


COLUMNS = [f.name for f in fields(AuditRecord)]


def connect() -> sqlite3.Connection:
    con = workspace.connect()
    con.executescript(SCHEMA)
    return con


def redact_prompt(text: str, limit: int = 4000) -> str:
    from slmforge.pii import redact

    return redact(text[:limit])[0]


class AuditLog:
    """Queue records with `write`; a daemon thread inserts them in batches."""

    def __init__(self, max_pending: int = 100_000, log_json: bool = False):
        connect().close()
        self.log_json = (
            log_json  # also one JSON line per record on the `slmforge.audit` logger (stdout in a pod)
        )
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="slm-audit", daemon=True)
        self._thread.start()
        self.written = 0

    def write(self, record: AuditRecord) -> None:
        self._queue.put(record)

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        con = connect()
        q = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [tuple(asdict(r).values()) for r in batch if r is not None]
            if self.log_json:
                for r in batch:
                    if r is not None:
                        _log.info(json.dumps(asdict(r)))
            stop = any(r is None for r in batch)
            try:
                for attempt in range(5):
                    try:
                        with con:
                            con.executemany(q, rows)
                        self.written += len(rows)
                        break
                    except sqlite3.OperationalError:  # locked by another writer: wait and retry
                        time.sleep(0.2 * (attempt + 1))
            finally:
                for _ in batch:
                    self._queue.task_done()
        con.close()


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
    with connect() as con:
        return con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
