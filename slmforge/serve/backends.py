"""The loaded models behind the endpoints, and thin adapters for the input guard and the pipelines.

chat: a causal LM decoded by `slmforge.generate.complete` in a pool of worker threads, each request with
its own KV cache, so one long generation never blocks the others. classify and embeddings: one
`MicroBatcher` each. rag: an `Asker` on its own thread (its SQLite index belongs to the thread that opened
it). The guard and pipelines are whatever `slmforge.guard` / `slmforge.pipeline` provide, reached only
through `Guarded` / `load_pipelines` here, so tests can stand in fakes with the same duck type.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slmforge.errors import SlmError
from slmforge.serve.batching import MicroBatcher
from slmforge.serve.config import ModelConfig, ServeConfig

GUARD_ACTIONS = ("allow", "flag", "redact", "block")


class Cancelled(Exception):
    """Raised inside a generation's text callback to stop it (timeout, client gone, stop sequence)."""


@dataclass
class GenParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    seconds: float


class ChatBackend:
    kind = "chat"

    def __init__(self, cfg: ModelConfig, threads: int | None = None):
        from slmforge import runtime
        from slmforge.generate import eos_token_ids, load

        runtime.set_threads(threads)
        self.cfg = cfg
        self.model, self.tokenizer = load(cfg.path)
        self.eos = eos_token_ids(self.model, self.tokenizer)

    def encode(self, messages: list[dict] | None, prompt: str | None = None) -> list[int]:
        from slmforge.generate import prompt_ids

        try:
            if messages is not None:
                return prompt_ids(self.tokenizer, messages, chat=True)
            return prompt_ids(self.tokenizer, [{"role": "user", "content": prompt or ""}], chat=False)
        except Exception as e:  # a chat template that rejects the conversation (roles out of order ...)
            raise SlmError(f"the model's chat template rejected the messages: {_first_line(e)}") from None

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, ids: list[int], p: GenParams, on_text: Callable[[str], None] | None, cancel: threading.Event
    ) -> GenResult:
        """Decode (in a worker thread); `cancel` stops it at the next piece of text."""
        from slmforge.generate import GenerateConfig, TorchStep, complete

        pieces: list[str] = []
        stopped = False

        def take(piece: str) -> None:
            nonlocal stopped
            if cancel.is_set():
                raise Cancelled
            pieces.append(piece)
            if p.stop:
                text = "".join(pieces)
                cut = min((i for s in p.stop if (i := text.find(s)) >= 0), default=-1)
                if cut >= 0:
                    stopped = True
                    before = len(text) - len(piece)
                    if on_text is not None and cut > before:
                        on_text(text[before:cut])
                    pieces[:] = [text[:cut]]
                    raise Cancelled
            if on_text is not None:
                on_text(piece)

        gen = GenerateConfig(model=self.cfg.name, max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                             top_p=p.top_p, seed=p.seed)  # fmt: skip
        import time

        started = time.perf_counter()
        try:
            done = complete(TorchStep(self.model), self.tokenizer, ids, gen, self.eos, take)
        except Cancelled:
            if not stopped:
                raise
            text = "".join(pieces)
            return GenResult(text, len(ids), self.count(text), "stop", time.perf_counter() - started)
        reason = "stop" if done.stopped_at_eos else "length"
        return GenResult(done.text, len(ids), len(done.token_ids), reason, done.seconds)


class ClassifyBackend:
    kind = "classify"

    def __init__(self, cfg: ModelConfig, threads: int | None = None, on_batch=None):
        from slmforge.classify import load_classifier

        self.cfg = cfg
        self.clf = load_classifier(cfg.path, threads)
        self.batcher = MicroBatcher(self.run, cfg.batch.max_size, cfg.batch.max_wait_ms, on_batch, cfg.name)

    def run(self, texts: list[str]) -> list[dict]:
        clf = self.clf
        logits = clf.logits(texts, batch_size=max(len(texts), 1))
        labels = clf.decide(logits)
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        lengths = clf.tokenizer(texts, truncation=True, max_length=clf.max_len)["input_ids"]
        return [
            {"label": lab, "score": float(p.max()), "tokens": len(n)}
            for lab, p, n in zip(labels, probs, lengths)
        ]


class EmbeddingsBackend:
    kind = "embeddings"

    def __init__(self, cfg: ModelConfig, threads: int | None = None, on_batch=None):
        from slmforge.rag.embed import Embedder

        self.cfg = cfg
        self.embedder = Embedder(cfg.path, cfg.runtime, threads)
        self.batcher = MicroBatcher(self.run, cfg.batch.max_size, cfg.batch.max_wait_ms, on_batch, cfg.name)

    def run(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        e = self.embedder
        vecs = e.encode(texts, batch_size=max(len(texts), 1))
        lengths = e.tokenizer(texts, truncation=True, max_length=e.max_tokens)["input_ids"]
        return [(v, len(n)) for v, n in zip(vecs, lengths)]


class RagBackend:
    kind = "rag"

    def __init__(self, cfg: ModelConfig, generator_path: str, threads: int | None = None):
        from slmforge.rag.ask import Asker

        self.cfg = cfg
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"slm-rag-{cfg.name}")
        self.asker = self.executor.submit(Asker, cfg.index, generator_path, cfg.store, threads).result()

    def ask(self, question: str, k: int, max_new_tokens: int, mode: str):
        from slmforge.rag.ask import AskConfig

        cfg = AskConfig(self.cfg.index, question, self.cfg.generator, self.cfg.store, mode, k,
                        max_new_tokens=max_new_tokens)  # fmt: skip
        return self.asker.ask(cfg)


def load_backends(cfg: ServeConfig, on_batch: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Load every model in the config (chat models first: a rag model may answer with one)."""
    out: dict[str, Any] = {}
    order = sorted(cfg.models, key=lambda m: m.kind == "rag")
    for m in order:
        hook = (lambda n, name=m.name: on_batch(name, n)) if on_batch else None
        try:
            if m.kind == "chat":
                out[m.name] = ChatBackend(m, cfg.threads)
            elif m.kind == "classify":
                out[m.name] = ClassifyBackend(m, cfg.threads, hook)
            elif m.kind == "embeddings":
                out[m.name] = EmbeddingsBackend(m, cfg.threads, hook)
            else:
                gen = cfg.model(m.generator)
                out[m.name] = RagBackend(m, gen.path if gen else m.generator, cfg.threads)
        except SlmError as e:
            raise SlmError(f"model {m.name!r}: {e}") from None
    return out


# ---------------------------------------------------------------- guard and pipelines


@dataclass
class Verdict:
    action: str = "allow"
    text: str = ""
    reasons: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)

    def summary(self) -> str:
        return self.action + (f": {', '.join(self.reasons)}" if self.reasons else "")


class NoGuard:
    def check(self, text: str, route: str) -> Verdict:
        return Verdict("allow", text)


class Guarded:
    """Any object with `check(text, route)` returning something with action/text/reasons/scores."""

    def __init__(self, guard: Any | None):
        self.guard = guard or NoGuard()
        self.enabled = guard is not None

    def check(self, text: str, route: str) -> Verdict:
        v = self.guard.check(text, route)
        action = getattr(v, "action", None)
        if action not in GUARD_ACTIONS:
            raise RuntimeError(f"the guard returned an unknown action {action!r}")
        out = getattr(v, "text", None)
        return Verdict(action, text if out is None else out, list(getattr(v, "reasons", []) or []),
                       dict(getattr(v, "scores", {}) or {}))  # fmt: skip


def load_guard(spec: dict | None) -> Guarded:
    if spec is None:
        return Guarded(None)
    try:
        from slmforge import guard as guard_module
    except ImportError:
        raise SlmError("the config has a guard section but this slmforge has no slmforge.guard") from None
    return Guarded(guard_module.load_guard(spec))


def load_pipelines(spec: str | dict | None) -> dict[str, Any]:
    if spec is None:
        return {}
    try:
        from slmforge import pipeline as pipeline_module
    except ImportError:
        raise SlmError("the config names pipelines but this slmforge has no slmforge.pipeline") from None
    pipelines = pipeline_module.load_pipelines(spec)
    for name, p in pipelines.items():
        if not callable(getattr(p, "run", None)):
            raise SlmError(f"pipeline {name!r} has no run(text) method")
    return pipelines


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


async def run_in(executor: concurrent.futures.Executor, fn: Callable, *args):
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
