"""The audit log: one record per request in the workspace database, written by a background thread.

A record holds when, which key (by name: secrets are never stored), the client's address, endpoint,
model, tokens in and out, latency, HTTP status and the guard's verdict. Prompts are stored only when the
config asks for it, and then PII-redacted.

Durability. `write()` only appends to an in-memory queue (it is called from the event loop and never
waits on the disk or the database); one daemon thread inserts the queue in batches. When the database
refuses a batch (locked, "database or disk is full", I/O error) the writer retries with exponential
backoff; after the last try, or at once on any other exception, the batch is appended to a spill file
next to the database (`audit-spill.jsonl`, one JSON record per line, fsync'd, mode 0600). While the
database is failing, batches go straight to the spill file and the writer probes the database every
`probe_s`; once a write succeeds the spill file is replayed. A replay first renames the spill file to
`audit-spill-<ns>.replaying` (new spills start a fresh file), inserts all its records and a marker row
naming the file in one transaction, then removes the file and the marker: a crash after the commit
leaves the file and its marker, and the next replay only removes it, so each record lands exactly once.
Spill files left by an earlier process are replayed when the writer starts. Appends and the rename
hold an flock on `audit-spill.lock`, so server processes sharing a workspace never lose each other's
records (an append racing a rename would land in a file already read). A record is counted as
dropped (`dropped`, `slm_audit_dropped_total`, a warning in the log) only when neither the database nor
the spill file took it, or when the queue is full and the spill file is busy for more than 50 ms.
Nothing the writer does can end its thread: an unexpected exception spills the batch and is logged.
`flush(timeout)` returns within its timeout (False if records are still pending), even when the writer is
stuck, and `health()` says whether the last database write worked (`ok`: also the writer is alive and
its queue not full), how many records are queued (`pending`), in spill files waiting for a replay
(`spilled`), lost (`dropped`), and the last error seen (kept after a recovery, with its time). When
the queue is full each further record costs the caller one fsync'd append until the writer catches up.

Unauthenticated refusals (no key, status 401 or 429) are sampled: per client address, the first
`unauthenticated_per_minute` of each clock minute are stored in full; the rest are folded into one
summary record per (client, endpoint, status) and minute whose `count` says how many requests it stands
for (every other record has count 1), so SUM(count) is still the number of requests.

Retention: with `retention_days` above 0, the writer deletes records older than that at start and
every hour.

Metrics (with the server's `Metrics`): slm_audit_dropped_total, slm_audit_spilled_total,
slm_audit_replayed_total, slm_audit_aggregated_total, slm_audit_pending, slm_audit_healthy.

This module is the writer (`AuditLog`) and the one to import: it re-exports the table, `AuditRecord` and
the queries (audit_store.py); the spill files live in audit_spill.py, the sampling in audit_sampling.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from slmforge.core import workspace
from slmforge.serve.audit_sampling import Sampler
from slmforge.serve.audit_spill import SPILL_NAME, SpillFiles, read_records
from slmforge.serve.audit_store import (
    INSERT,
    AuditRecord,
    connect,
    count,
    query,
    redact_prompt,
    requests,
    row_of,
)

__all__ = ["SPILL_NAME", "AuditLog", "AuditRecord", "connect", "count", "query", "redact_prompt", "requests"]

_log = logging.getLogger("slmforge.audit")

BATCH = 500


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class AuditLog:
    """Queue records with `write`; a daemon thread inserts them in batches (see the module's docstring)."""

    def __init__(
        self,
        max_pending: int = 100_000,
        log_json: bool = False,
        *,
        retention_days: float = 90,
        unauthenticated_per_minute: int | None = 60,
        metrics=None,
        spill_path: str | Path | None = None,
        connect: Callable[[], sqlite3.Connection] = connect,
        retries: int = 5,
        backoff_s: float = 0.05,
        probe_s: float = 5.0,
        retention_every_s: float = 3600.0,
    ):
        # also one JSON line per record on the `slmforge.audit` logger (stdout in a pod)
        self.log_json = log_json
        self.max_pending = max_pending
        self.retention_days = retention_days
        self.metrics = metrics
        self.spill_path = Path(spill_path) if spill_path else workspace.home() / SPILL_NAME
        self._files = SpillFiles(self.spill_path)
        self._connect = connect
        self._retries = max(1, retries)
        self._backoff_s = backoff_s
        self._probe_s = probe_s
        self._retention_every_s = retention_every_s
        self._sampler = (
            Sampler(unauthenticated_per_minute) if unauthenticated_per_minute is not None else None
        )

        self._cv = threading.Condition()
        self._buf: deque[AuditRecord] = deque()
        self._inflight = 0
        self._starting = True
        self._closing = False
        self._closed = False
        self._stats = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._db_ok = True
        self._next_probe = 0.0
        self._next_retention = 0.0
        self.written = 0
        self.spilled = 0  # records now in spill files, waiting for a replay
        self.spilled_total = 0
        self.replayed_total = 0
        self.dropped = 0
        self.aggregated = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self._logged: tuple[str, float] = ("", 0.0)

        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        self.spilled = self._files.count()  # before any write can add to the files
        if metrics is not None:
            metrics.audit_pending.set_function(lambda: self.pending)
            metrics.audit_healthy.set_function(lambda: 1.0 if self.health()["ok"] else 0.0)
        self._thread = threading.Thread(target=self._run, name="slm-audit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the caller's side (the event loop)

    def write(self, record: AuditRecord) -> None:
        """Queue a record; never waits (a full queue or a dead writer: the record is spilled directly)."""
        try:
            ended: list[AuditRecord] = []
            kept: AuditRecord | None = record
            if self._sampler is not None:
                kept, ended = self._sampler.admit(record)
                if kept is None:
                    self._count("aggregated", 1)
            for r in ended:
                self._enqueue(r)
            if kept is not None:
                self._enqueue(kept)
        except Exception as e:  # the request's answer must never fail on its audit record
            self._error(e, "queueing an audit record")
            self._spill([record], lock_timeout=0.05)

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._buf) + self._inflight

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record written so far is in the database or the spill file, at most `timeout`
        seconds; True when it is."""
        if self._sampler is not None:
            for r in self._sampler.drain():
                self._enqueue(r)
        if not self._thread.is_alive():
            self._spill_queue()
        with self._cv:
            return self._cv.wait_for(
                lambda: not self._buf and not self._inflight and not self._starting, timeout
            )

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer; whatever it has not taken after `timeout` is spilled."""
        if self._closed:
            return
        if self._sampler is not None:
            for r in self._sampler.drain():
                self._enqueue(r)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        self._closed = True
        self._spill_queue()

    def health(self) -> dict:
        alive = self._thread.is_alive() or self._closed
        pending = self.pending
        with self._stats:
            return {
                "ok": alive and self._db_ok and pending < self.max_pending,
                "writer_alive": self._thread.is_alive(),
                "database_ok": self._db_ok,
                "pending": pending,
                "spilled": self.spilled,
                "dropped": self.dropped,
                "written": self.written,
                "spilled_total": self.spilled_total,
                "replayed_total": self.replayed_total,
                "aggregated": self.aggregated,
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
            }

    def _enqueue(self, record: AuditRecord) -> None:
        with self._cv:
            if (
                len(self._buf) + self._inflight < self.max_pending
                and not self._closed
                and self._thread.is_alive()
            ):
                self._buf.append(record)
                self._cv.notify_all()
                return
        # full queue, stopped or dead writer: to the spill file, waiting at most 50 ms for the file's lock
        if self.log_json:
            _log.info(json.dumps(asdict(record), default=str))
        self._spill([record], lock_timeout=0.05)

    def _spill_queue(self) -> None:
        with self._cv:
            rest = list(self._buf)
            self._buf.clear()
            self._cv.notify_all()
        if rest:
            self._spill(rest)

    # ------------------------------------------------------------ accounting

    def _count(self, name: str, n: int) -> None:
        with self._stats:
            setattr(self, name, getattr(self, name) + n)
        m = self.metrics
        metric = {"dropped": "audit_dropped", "spilled_total": "audit_spilled", "replayed_total": "audit_replayed",
                  "aggregated": "audit_aggregated"}.get(name)  # fmt: skip
        if m is not None and metric is not None and n > 0:
            getattr(m, metric).inc(n)

    def _error(self, e: BaseException, doing: str) -> None:
        text = _error_text(e)
        with self._stats:
            self.last_error, self.last_error_time = f"{doing}: {text}", time.time()
        # the same error again within a minute is not logged again (a failing disk would flood the log)
        now = time.monotonic()
        if self._logged[0] != text or now - self._logged[1] > 60:
            self._logged = (text, now)
            _log.warning("audit: %s failed: %s", doing, text)

    # ------------------------------------------------------------ the spill file

    def _spill(self, records: list[AuditRecord], lock_timeout: float = -1) -> bool:
        if not records:
            return True
        try:
            data = "".join(json.dumps(asdict(r), default=str) + "\n" for r in records).encode()
        except Exception as e:  # cannot happen with default=str, but a record must never kill the caller
            self._error(e, "encoding records for the spill file")
            return self._drop(records)
        try:
            with self._files.locked(lock_timeout):
                self._files.append(data)
        except Exception as e:
            self._error(e, f"spilling to {self.spill_path}")
            return self._drop(records)
        self._count("spilled", len(records))
        self._count("spilled_total", len(records))
        return True

    def _drop(self, records: list[AuditRecord]) -> bool:
        self._count("dropped", len(records))
        _log.warning(
            "audit: %d record(s) dropped (neither the database nor the spill file took them)", len(records)
        )
        return False

    def _replay(self) -> None:
        """Move the live spill file aside and replay every spill file into the database (raises on failure)."""
        try:
            with self._files.locked():
                self._files.move_aside()
            for path in self._files.replay_files():
                self._replay_file(path)
        finally:
            with self._files.locked():
                n = self._files.count()
            with self._stats:
                self.spilled = n

    def _replay_file(self, path: Path) -> None:
        read = read_records(path)
        if read is None:  # another server process on this workspace replayed it
            return
        records, bad = read
        con = self._conn()
        inserted = 0
        # the records and the file's marker in one transaction: replayed once, whatever happens next
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("SELECT 1 FROM audit_replayed WHERE file = ?", (path.name,)).fetchone() is None:
                con.executemany(INSERT, [row_of(r) for r in records])
                con.execute(
                    "INSERT INTO audit_replayed VALUES (?, ?, ?)", (path.name, time.time(), len(records))
                )
                inserted = len(records)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        self._files.remove(path)
        with con:
            con.execute("DELETE FROM audit_replayed WHERE file = ?", (path.name,))
        self._count("replayed_total", inserted)
        with self._stats:
            self.written += inserted
        if bad and inserted:
            self._count("dropped", bad)
            _log.warning("audit: %d unreadable line(s) in %s skipped", bad, path.name)
        if inserted:
            _log.info("audit: %d spilled record(s) replayed into the database", inserted)

    # ------------------------------------------------------------ the writer thread

    def _conn(self) -> sqlite3.Connection:
        if self._con is None:
            con = self._connect()
            con.execute("PRAGMA busy_timeout = 5000")  # a locked database is retried here, with backoff
            self._con = con
        return self._con

    def _drop_conn(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except Exception:
                pass

    def _failed(self, e: BaseException, doing: str) -> None:
        self._error(e, doing)
        self._drop_conn()  # the next try opens a fresh connection
        self._db_ok = False
        self._next_probe = time.monotonic() + self._probe_s

    def _run(self) -> None:
        try:
            self._maintain(startup=True)
        except Exception as e:
            self._error(e, "starting the audit writer")
        finally:
            with self._cv:
                self._starting = False
                self._cv.notify_all()
        while True:
            batch: list[AuditRecord] = []
            stop = False
            try:
                with self._cv:
                    self._cv.wait_for(
                        lambda: self._buf or self._closing,
                        timeout=min(1.0, self._probe_s, self._retention_every_s),
                    )
                    while self._buf and len(batch) < BATCH:
                        batch.append(self._buf.popleft())
                    self._inflight = len(batch)
                    stop = self._closing and not self._buf
                if batch:
                    self._handle(batch)
                    batch = []
                if not stop:
                    self._maintain()
            except Exception as e:  # a bug, not the disk: the thread must live on and the records survive
                self._error(e, "the audit writer")
                self._spill(batch)
            finally:
                with self._cv:
                    self._inflight = 0
                    self._cv.notify_all()
            if stop:
                break
        self._drop_conn()

    def _handle(self, batch: list[AuditRecord]) -> None:
        if self.log_json:
            for r in batch:
                try:
                    _log.info(json.dumps(asdict(r), default=str))
                except Exception:
                    pass
        if self._insert(batch):
            with self._stats:
                self.written += len(batch)
            if self.spilled and time.monotonic() >= self._next_probe:  # a failed replay waits for a probe
                self._try_replay()
        else:
            self._spill(batch)

    def _insert(self, batch: list[AuditRecord]) -> bool:
        if not self._db_ok and time.monotonic() < self._next_probe:
            return False  # failing: straight to the spill file until the next probe
        tries = self._retries if self._db_ok else 1
        rows = [row_of(r) for r in batch]
        error: Exception | None = None
        for attempt in range(tries):
            try:
                con = self._conn()
                with con:
                    con.executemany(INSERT, rows)
                self._db_ok = True
                return True
            except sqlite3.OperationalError as e:  # locked, full, I/O: may pass on a later try
                error = e
                self._drop_conn()
                if attempt + 1 < tries:
                    time.sleep(self._backoff_s * 2**attempt)
            except Exception as e:  # anything else will not pass on a retry
                error = e
                break
        self._failed(error, f"writing to the audit table ({tries} tries)")
        return False

    def _try_replay(self) -> None:
        try:
            self._replay()
        except sqlite3.Error as e:
            self._failed(e, "replaying the spill file")
        except Exception as e:
            self._error(e, "replaying the spill file")
            self._next_probe = time.monotonic() + self._probe_s

    def _probe(self) -> None:
        """A real write (a few pages, then gone) tells a full disk from a healthy one."""
        try:
            con = self._conn()
            with con:
                con.execute("INSERT INTO audit_probe (pad) VALUES (zeroblob(8192))")
                con.execute("DELETE FROM audit_probe")
            self._db_ok = True
        except Exception as e:
            self._failed(e, "probing the audit database")

    def _maintain(self, startup: bool = False) -> None:
        """Between batches: sampled summaries of ended minutes, probing, replay, retention."""
        if self._sampler is not None:
            for r in self._sampler.stale(time.time()):
                with self._cv:
                    self._buf.append(r)
        now = time.monotonic()
        if startup or (not self._db_ok and now >= self._next_probe):
            self._probe()
        if not self._db_ok:
            return
        if (startup and self._files.replay_files()) or (self.spilled and now >= self._next_probe):
            self._try_replay()
        if self._db_ok and self.retention_days and now >= self._next_retention:
            self._next_retention = now + self._retention_every_s
            try:
                self._apply_retention()
            except Exception as e:
                self._error(e, "deleting records past retention")

    def _apply_retention(self) -> None:
        cutoff = time.time() - self.retention_days * 86400
        con = self._conn()
        deleted = 0
        while True:  # in chunks, so the database is never locked for long
            with con:
                n = con.execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE time < ? LIMIT 5000)",
                    (cutoff,),
                ).rowcount
            deleted += n
            if n < 5000:
                break
        if deleted:
            _log.info("audit: %d record(s) older than %g days deleted", deleted, self.retention_days)
