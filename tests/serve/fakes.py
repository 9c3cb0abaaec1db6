"""Stand-ins with the backends' duck type: a chat model that waits (queue and timeout tests), one that
fails (internal errors), a guard with fixed answers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from slmforge.serve.backends import GenResult
from slmforge.serve.config import ModelConfig


class SlowChat:
    kind = "chat"

    def __init__(self, name: str = "slow"):
        self.cfg = ModelConfig(name, "chat", "x", max_new_tokens=4)
        self.release = threading.Event()
        self.started = threading.Event()

    def encode(self, messages, prompt=None) -> list[int]:
        return [1, 2, 3]

    def generate(self, ids, p, on_text, cancel) -> GenResult:
        self.started.set()
        while not self.release.wait(0.01):
            if cancel.is_set():
                break
        if on_text is not None:
            on_text("done")
        return GenResult("done", len(ids), 1, "stop", 0.01)


class BrokenChat(SlowChat):
    def generate(self, ids, p, on_text, cancel) -> GenResult:
        raise RuntimeError("boom inside the model")


@dataclass
class FakeVerdict:
    action: str
    text: str
    reasons: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)


class FakeGuard:
    """Blocks texts containing 'ignore previous', redacts a card number, flags 'flag me'."""

    def __init__(self):
        self.routes: list[str] = []

    def check(self, text: str, route: str) -> FakeVerdict:
        self.routes.append(route)
        if "ignore previous" in text.lower():
            return FakeVerdict("block", text, ["injection"], {"injection": 0.99})
        if "4111 1111 1111 1111" in text:
            return FakeVerdict("redact", text.replace("4111 1111 1111 1111", "[CARD]"), ["pii:card"])
        if "flag me" in text:
            return FakeVerdict("flag", text, ["rule"])
        return FakeVerdict("allow", text)
