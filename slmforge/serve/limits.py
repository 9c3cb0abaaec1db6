"""Per-key rate limits (token buckets) and the bounded admission queue.

A key may spend `burst` requests at once, refilled at `rate_per_minute`; an empty bucket answers 429 with
the seconds until the next token in Retry-After. The admission queue counts requests that hold model
work (running or waiting for a worker): past `queue_size` the server answers 503 at once instead of
queueing without bound.

`check_caps` bounds the work one JSON body may ask for (messages, content parts, characters, stop strings,
inputs) on the parsed JSON, before it is validated into request models and before any guard work, so a
25,000-message body costs one `len()` instead of 25,000 guard calls.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

MAX_STOP = 4  # OpenAI's own limit on stop sequences


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


class CapExceeded(Exception):
    """A request body asks for more than a cap allows (answered 400 with `code` and `param`)."""

    def __init__(self, message: str, param: str, code: str):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def check_caps(endpoint: str, body: Any, limits) -> None:
    """Raise CapExceeded if the parsed body of a request to `endpoint` is over one of `limits`' caps.

    Only shapes the request models accept are counted; anything else is left for validation to refuse.
    Characters are those the guard and the model will see: message contents (their text parts joined with
    newlines) joined with newlines, the prompt, the question, each classify / embeddings input."""
    if not isinstance(body, dict):
        return
    chars = limits.max_prompt_chars

    def too_long(what: str, param: str) -> CapExceeded:
        return CapExceeded(
            f"{what} over {chars} characters (limits.max_prompt_chars)", param, "prompt_too_long"
        )

    if endpoint == "chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            if len(messages) > limits.max_messages:
                raise CapExceeded(
                    f"{len(messages)} messages; this server takes at most {limits.max_messages} "
                    "(limits.max_messages)",
                    "messages",
                    "too_many_messages",
                )
            total = max(0, len(messages) - 1)  # the newlines joining them
            for i, m in enumerate(messages):
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, list):
                    if len(content) > limits.max_content_parts:
                        raise CapExceeded(
                            f"message {i} has {len(content)} content parts; this server takes at most "
                            f"{limits.max_content_parts} (limits.max_content_parts)",
                            "messages",
                            "too_many_content_parts",
                        )
                    texts = [p.get("text") for p in content if isinstance(p, dict)]
                    total += sum(len(t) for t in texts if isinstance(t, str)) + max(0, len(content) - 1)
                elif isinstance(content, str):
                    total += len(content)
                if total > chars:
                    raise too_long("the messages are", "messages")
    elif endpoint == "completions":
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
        if len(prompts) > limits.max_inputs:
            raise CapExceeded(f"{len(prompts)} prompts; send one per request", "prompt", "too_many_inputs")
        if sum(len(p) for p in prompts if isinstance(p, str)) > chars:
            raise too_long("the prompt is", "prompt")
    elif endpoint in ("embeddings", "classify"):
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        if len(texts) > limits.max_inputs:
            raise CapExceeded(
                f"{len(texts)} inputs; this server takes at most {limits.max_inputs} (limits.max_inputs)",
                "input",
                "too_many_inputs",
            )
        for i, t in enumerate(texts):
            if isinstance(t, list):  # token ids: refused later anyway, never worth validating by the thousand
                raise CapExceeded("input must be text (token ids are not accepted)", "input", "token_ids")
            if isinstance(t, str) and len(t) > chars:
                raise too_long(f"input {i} is", "input")
    elif endpoint in ("rag", "pipelines"):
        name = "question" if endpoint == "rag" else "input"
        text = body.get(name)
        if isinstance(text, str) and len(text) > chars:
            raise too_long(f"the {name} is", name)
    if endpoint in ("chat", "completions"):
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        if len(stops) > MAX_STOP:
            raise CapExceeded(f"stop takes up to {MAX_STOP} strings", "stop", "too_many_stop")
        if any(isinstance(s, str) and len(s) > limits.max_stop_chars for s in stops):
            raise CapExceeded(
                f"each stop string is at most {limits.max_stop_chars} characters (limits.max_stop_chars)",
                "stop",
                "stop_too_long",
            )
