"""Prometheus series for the server, in a registry of the app's own (several apps can live in one
process, as in the tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slm_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("slm_request_errors", "Requests answered 4xx or 5xx", ["endpoint", "code"], registry=r)  # fmt: skip
        self.latency = Histogram(
            "slm_request_latency_seconds", "Time to the last byte", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )  # fmt: skip
        self.tokens = Counter(
            "slm_tokens", "Tokens read and generated", ["endpoint", "direction"], registry=r
        )
        self.tokens_per_s = Histogram(
            "slm_generation_tokens_per_second", "Decode speed per generation", ["model"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("slm_queue_depth", "Requests admitted (running or waiting)", registry=r)
        self.guard_blocks = Counter("slm_guard_blocks", "Requests blocked by the input guard", ["route"], registry=r)  # fmt: skip
        self.guard_actions = Counter("slm_guard_actions", "Guard verdicts", ["route", "action"], registry=r)
        self.batch_size = Histogram(
            "slm_batch_size", "Texts per micro-batch", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )  # fmt: skip
        # the audit writer (slmforge.serve.audit): counters end in _total when rendered
        self.audit_dropped = Counter(
            "slm_audit_dropped", "Audit records lost: taken by neither the database nor the spill file", registry=r
        )  # fmt: skip
        self.audit_spilled = Counter(
            "slm_audit_spilled", "Audit records written to the spill file (the database refused them)", registry=r
        )  # fmt: skip
        self.audit_replayed = Counter(
            "slm_audit_replayed", "Spilled audit records replayed into the database", registry=r
        )
        self.audit_aggregated = Counter(
            "slm_audit_aggregated", "Unauthenticated refusals folded into a per-minute summary record", registry=r
        )  # fmt: skip
        self.audit_pending = Gauge("slm_audit_pending", "Audit records queued, not yet written", registry=r)
        self.audit_healthy = Gauge(
            "slm_audit_healthy", "1 while the audit writer's database writes succeed", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
