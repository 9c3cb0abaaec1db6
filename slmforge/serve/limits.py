"""Per-key rate limits (token buckets) and the bounded admission queue.

A key may spend `burst` requests at once, refilled at `rate_per_minute`; an empty bucket answers 429 with
the seconds until the next token in Retry-After. The admission queue counts requests that hold model
work (running or waiting for a worker): past `queue_size` the server answers 503 at once instead of
queueing without bound.

`parse_json` parses a request body on a worker thread without holding the interpreter for long: `json.loads`
is one C call that keeps the GIL (25,000 small objects: 25-40 ms on a busy 2-core VM, during which the
event loop cannot answer even /healthz), so bodies with many values (more than `FAST_PARSE_MARKS`
commas and brackets) are walked container by container here, each scalar decoded by the C scanner, the
GIL free to switch between them (about 10x json.loads' CPU, but the loop keeps running). It stops as soon as an array
outgrows its cap (25,000 messages cost 257) and bounds values (`MAX_JSON_VALUES`) and nesting
(`MAX_JSON_DEPTH`) for every body. `check_caps` then bounds the rest of the work one body may ask for
(content parts, characters, stop strings, inputs) before the body is validated into request models and
before any guard work.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
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


MAX_JSON_VALUES = 100_000  # a chat body at the default caps holds under 50,000; 1 MiB of `{}` ~350,000
MAX_JSON_DEPTH = 64
FAST_PARSE_MARKS = 8192  # bodies with fewer `,` `{` `[` go to json.loads: it holds the GIL a few ms at most

_decoder = json.JSONDecoder()
_ws = re.compile(r"[ \t\n\r]*")


def array_caps(endpoint: str, limits) -> Callable[[tuple], tuple[int, CapExceeded] | None]:
    """For `parse_json`: the cap on the array at a path of the body (`("messages",)`,
    `("messages", "*", "content")`) and the error past it, for `endpoint`'s body."""
    table: dict[tuple, tuple[int, CapExceeded]] = {}
    if endpoint == "chat":
        table[("messages",)] = (
            limits.max_messages,
            CapExceeded(
                f"more than {limits.max_messages} messages (limits.max_messages)",
                "messages",
                "too_many_messages",
            ),
        )
        table[("messages", "*", "content")] = (limits.max_content_parts, CapExceeded(
            f"a message has more than {limits.max_content_parts} content parts (limits.max_content_parts)",
            "messages", "too_many_content_parts"))  # fmt: skip
    if endpoint == "completions":
        table[("prompt",)] = (limits.max_inputs, CapExceeded("send one prompt per request", "prompt",
                                                             "too_many_inputs"))  # fmt: skip
    if endpoint in ("chat", "completions"):
        table[("stop",)] = (
            MAX_STOP,
            CapExceeded(f"stop takes up to {MAX_STOP} strings", "stop", "too_many_stop"),
        )
    if endpoint in ("embeddings", "classify"):
        table[("input",)] = (
            limits.max_inputs,
            CapExceeded(
                f"more than {limits.max_inputs} inputs (limits.max_inputs)", "input", "too_many_inputs"
            ),
        )
        table[("input", "*")] = (0, CapExceeded("input must be text (token ids are not accepted)", "input",
                                                "token_ids"))  # fmt: skip
    return table.get


def parse_json(body: bytes, caps: Callable[[tuple], tuple[int, CapExceeded] | None] = lambda path: None,
               max_values: int = MAX_JSON_VALUES, max_depth: int = MAX_JSON_DEPTH) -> Any:  # fmt: skip
    """`json.loads(body)` (same values, same errors: ValueError for bad JSON or bytes), but in steps that
    let other threads run, refusing with CapExceeded an array longer than `caps(path)` allows, more than
    `max_values` values or nesting deeper than `max_depth`."""
    if body.count(b",") + body.count(b"{") + body.count(b"[") <= FAST_PARSE_MARKS:  # < 2x as many values
        try:
            return json.loads(body)
        except RecursionError:
            raise CapExceeded(
                f"the body nests deeper than {max_depth} levels", "body", "body_too_deep"
            ) from None
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    decode, ws = _decoder.raw_decode, _ws.match
    count = 0

    def fail(message: str, i: int):
        raise json.JSONDecodeError(message, text, i)

    def value(i: int, depth: int, path: tuple) -> tuple[Any, int]:
        nonlocal count
        count += 1
        if count > max_values:
            raise CapExceeded(
                f"the body holds more than {max_values} JSON values", "body", "body_too_complex"
            )
        c = text[i : i + 1]
        if c != "{" and c != "[":
            return decode(text, i)
        if depth >= max_depth:
            raise CapExceeded(f"the body nests deeper than {max_depth} levels", "body", "body_too_deep")
        i = ws(text, i + 1).end()
        if c == "[":
            out: list = []
            if text[i : i + 1] == "]":
                return out, i + 1
            cap = caps(path)
            while True:
                if cap is not None and len(out) >= cap[0]:
                    raise cap[1]
                item, i = value(i, depth + 1, (*path, "*"))
                out.append(item)
                i = ws(text, i).end()
                c = text[i : i + 1]
                if c == "]":
                    return out, i + 1
                if c != ",":
                    fail("Expecting ',' delimiter", i)
                i = ws(text, i + 1).end()
        obj: dict = {}
        if text[i : i + 1] == "}":
            return obj, i + 1
        while True:
            if text[i : i + 1] != '"':
                fail("Expecting property name enclosed in double quotes", i)
            key, i = decode(text, i)
            i = ws(text, i).end()
            if text[i : i + 1] != ":":
                fail("Expecting ':' delimiter", i)
            obj[key], i = value(ws(text, i + 1).end(), depth + 1, (*path, key))
            i = ws(text, i).end()
            c = text[i : i + 1]
            if c == "}":
                return obj, i + 1
            if c != ",":
                fail("Expecting ',' delimiter", i)
            i = ws(text, i + 1).end()

    out, end = value(ws(text, 0).end(), 0, ())
    end = ws(text, end).end()
    if end != len(text):
        fail("Extra data", end)
    return out


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
