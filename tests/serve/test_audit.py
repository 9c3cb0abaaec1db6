"""The audit writer's durability on a real SQLite database: a full database loses no record (spilled, then
replayed exactly once), a failing or stuck writer never blocks the caller nor dies, retention, the sampling
of unauthenticated refusals, health, and the schema migration of an older table."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict

import pytest
from fastapi.testclient import TestClient

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.serve import audit
from slmforge.serve.config import from_dict
from slmforge.serve.metrics import Metrics

T0 = 1_700_000_040.0  # the start of a clock minute


def rec(i: int, **kw) -> audit.AuditRecord:
    fields = {"time": time.time(), "key_name": "ops", "model": "intents", "tokens_in": i, "latency_ms": 1.5,
              "status": 200, "client": "10.0.0.9", **kw}  # fmt: skip
    return audit.AuditRecord(request_id=f"req-{i}", endpoint="classify", **fields)


def full_db() -> sqlite3.Connection:
    """A real connection that cannot grow the file: every insert fails with 'database or disk is full'."""
    con = audit.connect()
    con.execute("VACUUM")  # no free pages left to reuse
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.execute(f"PRAGMA max_page_count = {pages}")
    return con


def spill_files() -> list:
    """The spill files waiting for a replay (the lock file beside them stays)."""
    return sorted(p.name for p in workspace.home().glob("audit-spill*") if p.suffix != ".lock")


def wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def ids() -> list[str]:
    return sorted(r.request_id for r in audit.query(limit=None))


def test_a_full_database_loses_no_record_spilled_then_replayed_once_on_the_next_start():
    audit.connect().close()
    metrics = Metrics()
    records = [rec(i) for i in range(300)]
    log = audit.AuditLog(connect=full_db, backoff_s=0.001, probe_s=60, metrics=metrics)
    for r in records:
        log.write(r)
    assert log.flush(10)
    h = log.health()
    assert not h["ok"] and h["writer_alive"] and h["pending"] == 0
    assert h["spilled"] == 300 and h["dropped"] == 0 and "database or disk is full" in h["last_error"]
    assert metrics.registry.get_sample_value("slm_audit_spilled_total") == 300
    assert metrics.registry.get_sample_value("slm_audit_dropped_total") == 0
    assert metrics.registry.get_sample_value("slm_audit_healthy") == 0
    log.close()
    assert audit.count() == 0
    spill = workspace.home() / audit.SPILL_NAME
    assert len(spill.read_text().splitlines()) == 300 and (spill.stat().st_mode & 0o777) == 0o600

    again = audit.AuditLog(metrics=(m2 := Metrics()))  # the disk has room again: the next start replays
    assert again.flush(10)
    assert again.health()["ok"] and again.health()["spilled"] == 0
    assert m2.registry.get_sample_value("slm_audit_replayed_total") == 300
    again.close()
    assert spill_files() == []
    stored = list(reversed(audit.query(limit=None)))
    assert [asdict(r) for r in stored] == [asdict(r) for r in records]  # every field survives the round trip

    third = audit.AuditLog()
    assert third.flush(10)
    third.close()
    assert audit.count() == 300  # replayed exactly once


def test_the_writer_replays_the_spill_file_as_soon_as_the_database_works_again():
    audit.connect().close()
    full = [True]
    log = audit.AuditLog(
        connect=lambda: full_db() if full[0] else audit.connect(), backoff_s=0.001, probe_s=0.05
    )
    for i in range(50):
        log.write(rec(i))
    assert log.flush(10) and log.health()["spilled"] == 50 and not log.health()["ok"]
    full[0] = False
    assert wait_until(lambda: log.health()["ok"] and log.health()["spilled"] == 0)
    for i in range(50, 60):
        log.write(rec(i))
    assert log.flush(10)
    log.close()
    assert ids() == sorted(f"req-{i}" for i in range(60)) and spill_files() == []


def test_a_crash_between_the_replay_commit_and_the_file_removal_duplicates_nothing(monkeypatch):
    audit.connect().close()
    log = audit.AuditLog(connect=full_db, backoff_s=0.001, probe_s=60)
    for i in range(40):
        log.write(rec(i))
    log.close()
    real_unlink = os.unlink

    def unlink(path, *a, **kw):  # the process "dies" between the commit and the removal
        if str(path).endswith(".replaying"):
            raise OSError("killed")
        return real_unlink(path, *a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(os, "unlink", unlink)
        crashed = audit.AuditLog(probe_s=60)
        assert crashed.flush(10)
        assert "killed" in crashed.health()["last_error"]
        crashed.close()
    assert audit.count() == 40 and len(spill_files()) == 1  # committed, yet the file is still there

    after = audit.AuditLog()
    assert after.flush(10)
    after.close()
    assert ids() == sorted(f"req-{i}" for i in range(40)) and spill_files() == []
    with audit.connect() as con:
        assert con.execute("SELECT COUNT(*) FROM audit_replayed").fetchone()[0] == 0


def test_server_processes_sharing_the_spill_file_neither_lose_nor_double_records():
    audit.connect().close()
    failing = audit.AuditLog(connect=full_db, backoff_s=0.001, probe_s=60)  # spills every batch

    def produce():
        for i in range(1500):
            failing.write(rec(i))
            if i % 50 == 0:
                time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    while producer.is_alive():  # other servers starting meanwhile replay the file it appends to (the
        # race an appender and a renamer run is narrow: this checks the outcome, not that the flock is needed)
        other = audit.AuditLog()
        assert other.flush(10)
        other.close()
    producer.join()
    failing.close()
    last = audit.AuditLog()
    assert last.flush(10)
    last.close()
    assert ids() == sorted(f"req-{i}" for i in range(1500)) and spill_files() == []


class Flaky(sqlite3.Connection):
    """A real SQLite connection whose inserts raise a non-sqlite exception while `fail` is set."""

    fail = True

    def executemany(self, *args):
        if Flaky.fail:
            raise RuntimeError("boom")
        return super().executemany(*args)


def test_a_writer_that_raises_keeps_running_and_loses_nothing():
    audit.connect().close()
    Flaky.fail = True
    path = workspace.home() / "workspace.db"
    log = audit.AuditLog(connect=lambda: sqlite3.connect(path, factory=Flaky), probe_s=0.05)
    for i in range(20):
        log.write(rec(i))
    assert log.flush(10)
    h = log.health()
    assert (
        h["writer_alive"] and not h["ok"] and h["spilled"] == 20 and "RuntimeError: boom" in h["last_error"]
    )
    Flaky.fail = False
    log.write(rec(20, tokens_in=object()))  # cannot be bound: a sqlite error that used to kill the writer
    assert log.flush(10) and log.health()["writer_alive"]
    for i in range(21, 30):
        log.write(rec(i))
    assert log.flush(10)
    assert wait_until(lambda: log.health()["spilled"] == 0 and log.health()["ok"])
    log.close()
    assert ids() == sorted(f"req-{i}" for i in range(30))
    assert log.health()["dropped"] == 0


def test_write_never_waits_and_flush_returns_within_its_timeout_when_the_writer_is_stuck():
    audit.connect().close()
    gate = threading.Event()

    def stuck():
        gate.wait(60)
        return audit.connect()

    log = audit.AuditLog(max_pending=10, connect=stuck)
    slowest = 0.0
    for i in range(200):
        t = time.perf_counter()
        log.write(rec(i))
        slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.5  # the old writer blocked here until the database answered
    t = time.perf_counter()
    assert log.flush(timeout=0.3) is False
    assert time.perf_counter() - t < 2
    h = log.health()
    assert h["pending"] == 10 and h["spilled"] == 190 and not h["ok"] and h["dropped"] == 0
    gate.set()
    assert log.flush(10)
    log.close()
    assert ids() == sorted(f"req-{i}" for i in range(200)) and spill_files() == []


def test_a_torn_last_line_in_the_spill_file_costs_only_itself():
    audit.connect().close()
    spill = workspace.home() / audit.SPILL_NAME
    good = [json.dumps(asdict(rec(i))) for i in range(2)]
    spill.write_text("\n".join(good) + '\n{"time": 17000', encoding="utf-8")  # a crash mid-append
    log = audit.AuditLog(connect=full_db, backoff_s=0.001, probe_s=60)
    for i in range(2, 5):
        log.write(rec(i))
    log.close()
    again = audit.AuditLog()
    assert again.flush(10)
    again.close()
    assert ids() == [f"req-{i}" for i in range(5)]
    assert again.health()["dropped"] == 1


def test_retention_deletes_old_records_at_start_and_while_running():
    day = 86400
    keep = audit.AuditLog(retention_days=0)  # 0 keeps everything
    for i, age in enumerate((400, 100, 10)):
        keep.write(rec(i, time=time.time() - age * day))
    keep.close()
    assert audit.count() == 3
    log = audit.AuditLog(retention_days=30, retention_every_s=0.05)
    assert log.flush(10)
    assert ids() == ["req-2"]
    log.write(rec(3, time=time.time() - 31 * day))
    log.write(rec(4))
    assert log.flush(10)
    assert wait_until(lambda: ids() == ["req-2", "req-4"])
    log.close()


def test_unauthenticated_refusals_are_sampled_per_client_and_minute():
    log = audit.AuditLog(unauthenticated_per_minute=5, metrics=(m := Metrics()))
    anon = {"key_name": None, "client": "10.0.0.1"}
    for i in range(200):
        log.write(rec(i, time=T0 + i * 0.1, status=401, **anon))
    for i in range(200, 230):
        log.write(rec(i, time=T0 + 25, status=429, **anon))
    for i in range(230, 233):
        log.write(rec(i, time=T0 + 30, status=401, key_name=None, client="10.0.0.2"))
    for i in range(233, 253):  # refusals of a known key are never sampled
        log.write(rec(i, time=T0 + 30, status=429))
    for i in range(253, 255):  # a new minute: in full again
        log.write(rec(i, time=T0 + 61, status=401, **anon))
    log.close()
    rows = audit.query(limit=None)
    full = [r for r in rows if r.count == 1]
    summaries = sorted((r.client, r.status, r.count) for r in rows if r.count > 1)
    assert summaries == [("10.0.0.1", 401, 195), ("10.0.0.1", 429, 30)]
    assert all(r.request_id.startswith("aggregate-") and r.key_name is None for r in rows if r.count > 1)
    assert sorted(r.request_id for r in full) == sorted(
        f"req-{i}" for i in [*range(5), 230, 231, 232, *range(233, 253), 253, 254]
    )
    assert audit.requests() == 255 and audit.count() == 32
    assert m.registry.get_sample_value("slm_audit_aggregated_total") == 225


def test_the_server_caps_the_records_of_keyless_requests(make_app):
    app = make_app(audit={"unauthenticated_per_minute": 3})
    with TestClient(app) as c:
        for _ in range(20):
            assert c.get("/v1/models").status_code == 401
        app.state.door.audit.flush()
        health = app.state.door.audit.health()
    rows = audit.query(limit=None)
    minutes = {int(r.time // 60) for r in rows}  # the loop may straddle a minute: 3 in full per minute
    assert sum(r.count for r in rows) == 20 and len([r for r in rows if r.count == 1]) <= 3 * len(minutes)
    assert {r.client for r in rows} == {"testclient"} and {r.status for r in rows} == {401}
    assert health["ok"] and health["dropped"] == 0


def test_a_server_whose_audit_database_is_full_answers_and_loses_no_record(make_app, new_key):
    from tests.serve.conftest import bearer

    app = make_app()
    secret = new_key("classify")
    with TestClient(app) as c:
        door = app.state.door
        door.audit.close()
        door.audit = audit.AuditLog(connect=full_db, backoff_s=0.001, probe_s=60)  # the disk is full
        for i in range(30):
            r = c.post(
                "/v1/classify", json={"model": "intents", "input": f"card {i}"}, headers=bearer(secret)
            )
            assert r.status_code == 200
        assert door.audit.flush(10)
        health = door.audit.health()
    assert not health["ok"] and health["spilled"] == 30 and health["dropped"] == 0
    assert audit.count() == 0
    restarted = audit.AuditLog()
    assert restarted.flush(10)
    restarted.close()
    rows = audit.query(limit=None)
    assert (
        len(rows) == 30 and {r.status for r in rows} == {200} and {r.endpoint for r in rows} == {"classify"}
    )
    assert len({r.request_id for r in rows}) == 30


def test_an_older_audit_table_gains_the_new_columns():
    con = workspace.connect()
    con.executescript("""CREATE TABLE audit (id INTEGER PRIMARY KEY, time REAL NOT NULL, request_id TEXT NOT NULL,
        key_name TEXT, endpoint TEXT NOT NULL, model TEXT, tokens_in INTEGER NOT NULL DEFAULT 0,
        tokens_out INTEGER NOT NULL DEFAULT 0, latency_ms REAL NOT NULL, status INTEGER NOT NULL, guard TEXT,
        prompt TEXT);""")  # fmt: skip
    with con:
        con.execute("INSERT INTO audit (time, request_id, endpoint, latency_ms, status) VALUES (1.7e9, 'old', 'chat', 3, 200)")  # fmt: skip
    con.close()
    log = audit.AuditLog(retention_days=0)
    log.write(rec(1))
    log.close()
    old, new = sorted(audit.query(limit=None), key=lambda r: r.time)
    assert (old.request_id, old.client, old.count) == ("old", None, 1)
    assert (new.request_id, new.client, new.count) == ("req-1", "10.0.0.9", 1)


@pytest.mark.parametrize("audit_cfg", [{"retention_days": -1}, {"unauthenticated_per_minute": -5},
                                       {"retention_days": "forever"}])  # fmt: skip
def test_bad_audit_settings_fail_in_one_line(audit_cfg):
    with pytest.raises(SlmError, match="audit"):
        from_dict({"audit": audit_cfg, "models": []})
    cfg = from_dict({"audit": {"retention_days": 7, "unauthenticated_per_minute": 0}, "models": []})
    assert cfg.audit.retention_days == 7.0 and cfg.audit.unauthenticated_per_minute == 0


def test_slm_audit_summary_counts_the_requests_a_summary_record_stands_for(slm_cli):
    log = audit.AuditLog(unauthenticated_per_minute=2)
    for i in range(10):
        log.write(rec(i, time=T0 + i, status=401, key_name=None))
    log.close()
    assert audit.count() == 3
    code, out, err = slm_cli("audit", "--summary", "--json")
    assert code == 0, err
    assert [(s["endpoint"], s["status"], s["requests"]) for s in map(json.loads, out.splitlines())] == [
        ("classify", 401, 10)
    ]
