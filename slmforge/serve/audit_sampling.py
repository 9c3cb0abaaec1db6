"""Sampling of unauthenticated refusals (no key, status 401 or 429) for the audit log: per client address
the first `per_minute` of each clock minute are kept in full, the rest folded into one summary record per
(client, endpoint, status) and minute whose `count` says how many requests it stands for."""

from __future__ import annotations

import threading
import uuid

from slmforge.serve.audit_store import AuditRecord

UNAUTHENTICATED_STATUSES = (401, 429)


class Sampler:
    """Caps full records of unauthenticated refusals per client address and clock minute."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.minute: int | None = None
        self.seen: dict[str, int] = {}
        self.summaries: dict[tuple[str, str, int], AuditRecord] = {}
        self.lock = threading.Lock()

    def admit(self, rec: AuditRecord) -> tuple[AuditRecord | None, list[AuditRecord]]:
        """(the record to store or None when it was folded into a summary, summaries of ended minutes)."""
        if rec.key_name is not None or rec.status not in UNAUTHENTICATED_STATUSES:
            return rec, []
        minute = int(rec.time // 60)
        with self.lock:
            ended = self._roll(minute) if self.minute is None or minute > self.minute else []
            client = rec.client or ""
            n = self.seen[client] = self.seen.get(client, 0) + 1
            if n <= self.per_minute:
                return rec, ended
            key = (client, rec.endpoint, rec.status)
            s = self.summaries.get(key)
            if s is None:
                s = self.summaries[key] = AuditRecord(
                    rec.time, f"aggregate-{uuid.uuid4().hex[:16]}", rec.endpoint, None, status=rec.status,
                    client=rec.client, count=0,
                )  # fmt: skip
            # the summary's latency is the mean of the requests it stands for
            s.latency_ms = (s.latency_ms * s.count + rec.latency_ms) / (s.count + 1)
            s.count += 1
            s.time = rec.time
            return None, ended

    def _roll(self, minute: int) -> list[AuditRecord]:
        out = list(self.summaries.values())
        self.minute, self.seen, self.summaries = minute, {}, {}
        return out

    def stale(self, now: float) -> list[AuditRecord]:
        with self.lock:
            if self.minute is not None and int(now // 60) > self.minute and (self.summaries or self.seen):
                return self._roll(int(now // 60))
            return []

    def drain(self) -> list[AuditRecord]:
        """The summaries so far (the minute's caps stay: later refusals start new summaries)."""
        with self.lock:
            out = list(self.summaries.values())
            self.summaries = {}
            return out
