"""Per-key rate limits (token buckets) and the bounded admission queue.

A key may spend `burst` requests at once, refilled at `rate_per_minute`; an empty bucket answers 429 with
the seconds until the next token in Retry-After. The admission queue counts requests that hold model
work (running or waiting for a worker): past `queue_size` the server answers 503 at once instead of
queueing without bound.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_minute: int, burst: int):
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.max_buckets = 50_000  # many client addresses never grow memory past this

    def _prune(self, now: float) -> None:
        """Forget buckets idle long enough to be full again (forgetting them changes nothing); if all are
        busy, the oldest half."""
        full_after = self.burst / (self.rate_per_minute / 60.0)
        idle = [k for k, b in self._buckets.items() if now - b.updated >= full_after]
        if not idle:
            idle = sorted(self._buckets, key=lambda k: self._buckets[k].updated)[: len(self._buckets) // 2]
        for k in idle:
            del self._buckets[k]

    def take(self, key: str, rate_per_minute: int | None = None, now: float | None = None) -> float:
        """Spend one request for `key`: 0 when allowed, else the seconds to wait (for Retry-After)."""
        rate = (rate_per_minute or self.rate_per_minute) / 60.0
        burst = max(1, min(self.burst, rate_per_minute) if rate_per_minute else self.burst)
        now = time.monotonic() if now is None else now
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self.max_buckets:
                    self._prune(now)
                b = self._buckets[key] = _Bucket(float(burst), now)
            b.tokens = min(float(burst), b.tokens + (now - b.updated) * rate)
            b.updated = now
            if b.tokens >= 1:
                b.tokens -= 1
                return 0.0
            return (1 - b.tokens) / rate


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class Admission:
    """At most `size` requests admitted at once; `enter` says False when full."""

    def __init__(self, size: int):
        self.size = size
        self.depth = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.depth >= self.size:
                return False
            self.depth += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.depth -= 1
