"""The loaded models behind the endpoints, and thin adapters for the input guard and the pipelines.

chat: a causal LM decoded by `slmforge.infer.generate.complete` in a pool of worker threads, each request with
its own KV cache, so one long generation never blocks the others. classify and embeddings: one
`MicroBatcher` each. rag: an `Asker` on its own thread (its SQLite index belongs to the thread that opened
it). The guard and pipelines are whatever `slmforge.guard` / `slmforge.route.pipeline` provide, reached only
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

from slmforge.core.errors import SlmError
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
    constraint: Any = None  # a slmforge.infer.constrain.Constraint the reply must satisfy (local models)
    response_format: dict | None = None  # the request's own, passed on to an upstream server


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
        from slmforge.infer.engines import open_lm

        self.cfg = cfg
        template = None
        if cfg.chat_template:  # before the model loads: a wrong path fails at once
            from pathlib import Path

            path = Path(cfg.chat_template).expanduser()
            if not path.is_file():
                raise SlmError(f"chat_template: no such file {cfg.chat_template}")
            template = path.read_text(encoding="utf-8")
        self.lm = open_lm(cfg.path, cfg.backend, cfg.precision, threads)
        self.tokenizer, self.eos = self.lm.tokenizer, self.lm.eos
        if template is not None:
            self.tokenizer.chat_template = template
        self.continuous = self._continuous(cfg, threads)

    def _continuous(self, cfg: ModelConfig, threads: int | None):
        """A `ContinuousBatcher` when the config asks for one (or auto and the model runs on ort), else None."""
        if cfg.batching == "off" or (cfg.batching == "auto" and self.lm.backend != "ort"):
            return None
        from slmforge.infer.batcher import BatcherConfig, ContinuousBatcher

        slot = min(cfg.slot_tokens, self.lm.max_positions or cfg.slot_tokens)
        try:
            return ContinuousBatcher(
                self.lm, BatcherConfig(max_batch=cfg.slots, slot_tokens=slot, threads=threads)
            )
        except SlmError as e:
            if cfg.batching == "continuous":
                raise SlmError(f"model {cfg.name}: {e}") from None
            return None  # auto: a graph the batcher cannot drive decodes one request per worker

    def tool_format(self):
        """How this model's chat template writes a tool call (`slmforge.infer.tool_use.ToolFormat`);
        SlmError saying what the template lacks when it cannot render tools."""
        from slmforge.infer.tool_use import tool_format

        return tool_format(self.tokenizer)

    def encode(
        self, messages: list[dict] | None, prompt: str | None = None, tools: list[dict] | None = None
    ) -> list[int]:
        from slmforge.infer.generate import prompt_ids

        try:
            if messages is not None:
                return prompt_ids(self.tokenizer, messages, chat=True, tools=tools)
            return prompt_ids(self.tokenizer, [{"role": "user", "content": prompt or ""}], chat=False)
        except Exception as e:  # a chat template that rejects the conversation (roles out of order ...)
            raise SlmError(f"the model's chat template rejected the messages: {_first_line(e)}") from None

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, ids: list[int], p: GenParams, on_text: Callable[[str], None] | None, cancel: threading.Event
    ) -> GenResult:
        """Decode (in a worker thread); `cancel` stops it at the next piece of text."""
        from slmforge.infer.generate import GenerateConfig, complete

        if self.continuous is not None:
            return self._generate_batched(ids, p, on_text, cancel)

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
            done = complete(self.lm.step(), self.tokenizer, ids, gen, self.eos, take, p.constraint)
        except Cancelled:
            if not stopped:
                raise
            text = "".join(pieces)
            return GenResult(text, len(ids), self.count(text), "stop", time.perf_counter() - started)
        reason = "stop" if done.stopped_at_eos else "length"
        return GenResult(done.text, len(ids), len(done.token_ids), reason, done.seconds)

    def check_prompt(self, ids: list[int]) -> None:
        """ApiError 400 for a prompt longer than a continuous-batching slot takes (checked before streaming)."""
        if self.continuous is not None and len(ids) >= self.continuous.config.slot_tokens:
            from slmforge.serve.errors import ApiError

            limit = self.continuous.config.slot_tokens - 1
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this model takes at most {limit}",
                           "invalid_request_error", "context_length_exceeded", param="messages")  # fmt: skip

    def _generate_batched(
        self, ids: list[int], p: GenParams, on_text: Callable[[str], None] | None, cancel: threading.Event
    ) -> GenResult:
        """Join the continuous batch and wait (in a worker thread) for the reply. A full batcher is a 503 with
        Retry-After, a prompt longer than a slot a 400; `cancel` frees the slot at the next step."""
        from slmforge.infer.batcher import BatcherFull
        from slmforge.infer.generate import GenerateConfig
        from slmforge.serve.errors import ApiError

        gen = GenerateConfig(model=self.cfg.name, max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                             top_p=p.top_p, seed=p.seed)  # fmt: skip
        self.check_prompt(ids)  # the batcher's PromptTooLong, said as the API's 400
        try:
            req = self.continuous.submit(ids, gen, constraint=p.constraint, stop=p.stop, on_text=on_text,
                                         cancel=cancel)  # fmt: skip
        except BatcherFull as e:
            raise ApiError(503, "every generation slot is busy; retry shortly", "server_error", "queue_full",
                           headers={"Retry-After": str(max(1, round(e.retry_after)))}) from None  # fmt: skip
        done = req.result()
        if req.finish_reason == "cancelled":
            raise Cancelled
        reason = "length" if req.finish_reason == "length" else "stop"
        return GenResult(done.text, len(ids), len(done.token_ids), reason, done.seconds)


class UpstreamError(Exception):
    """The upstream model server refused (status 400) or failed (502)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UpstreamPrompt:
    """What an upstream chat model gets: the messages (or a plain prompt); len() estimates its tokens
    until the upstream's usage says."""

    def __init__(self, messages: list[dict] | None, prompt: str | None):
        self.messages, self.prompt = messages, prompt

    def __len__(self) -> int:
        text = self.prompt if self.messages is None else " ".join(m["content"] for m in self.messages)
        return max(1, len(text or "") // 4)


class UpstreamChatBackend:
    """A chat model served by another OpenAI-compatible server (vLLM, TGI, llama.cpp, another slm serve),
    kept off the network and reached only through this door: slmforge keeps the keys, limits, guard,
    pipelines and audit, the upstream does the decoding (vLLM: continuous batching on a GPU)."""

    kind = "chat"

    def __init__(self, cfg: ModelConfig):
        import os

        import httpx

        self.cfg = cfg
        self.base = cfg.upstream.rstrip("/")
        self.model = cfg.upstream_model or cfg.name
        headers = {}
        if cfg.upstream_key_env:
            secret = os.environ.get(cfg.upstream_key_env)
            if not secret:
                raise SlmError(f"upstream_key_env names {cfg.upstream_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {secret}"
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(300.0, connect=5.0))

    def encode(self, messages: list[dict] | None, prompt: str | None = None) -> UpstreamPrompt:
        return UpstreamPrompt(messages, prompt)

    def generate(self, prompt: UpstreamPrompt, p: GenParams, on_text, cancel: threading.Event) -> GenResult:
        import json
        import time

        import httpx

        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_new_tokens, "temperature": p.temperature,
                                "top_p": p.top_p, "seed": p.seed, "stream": True,
                                "stream_options": {"include_usage": True}}  # fmt: skip
        if p.stop:
            body["stop"] = p.stop
        if p.response_format:
            body["response_format"] = p.response_format
        if prompt.messages is not None:
            url, body["messages"] = self.base + "/chat/completions", prompt.messages
        else:
            url, body["prompt"] = self.base + "/completions", prompt.prompt
        started = time.perf_counter()
        pieces: list[str] = []
        usage: dict = {}
        finish = None
        try:
            with self.client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise UpstreamError(400 if 400 <= r.status_code < 500 else 502,
                                        f"the upstream model server answered {r.status_code}: {_upstream_message(r)}")  # fmt: skip
                for line in r.iter_lines():
                    if cancel.is_set():
                        raise Cancelled
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise UpstreamError(502, f"the upstream model server failed: {event['error']}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                        finish = choice.get("finish_reason") or finish
                        if piece:
                            pieces.append(piece)
                            if on_text is not None:
                                on_text(piece)
        except httpx.HTTPError as e:
            raise UpstreamError(
                502, f"the upstream model server is unreachable ({type(e).__name__})"
            ) from None
        text = "".join(pieces)
        return GenResult(text, int(usage.get("prompt_tokens") or len(prompt)),
                         int(usage.get("completion_tokens") or 0), finish or "stop", time.perf_counter() - started)  # fmt: skip


def _upstream_message(r) -> str:
    try:
        err = r.json().get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except Exception:
        msg = r.text
    return (str(msg or "").strip().splitlines() or [""])[0][:300]


class ClassifyBackend:
    kind = "classify"

    def __init__(self, cfg: ModelConfig, threads: int | None = None, on_batch=None):
        from slmforge.clf.predict import load_classifier

        self.cfg = cfg
        self.clf = load_classifier(cfg.path, threads)
        self.batcher = MicroBatcher(self.run, cfg.batch.max_size, cfg.batch.max_wait_ms, on_batch, cfg.name)

    def run(self, texts: list[str]) -> list[dict]:
        clf = self.clf
        logits = clf.logits(texts, batch_size=max(len(texts), 1))
        labels = clf.decide(logits)
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return [
            {"label": lab, "score": float(p.max()), "tokens": n}
            for lab, p, n in zip(labels, probs, clf.token_counts(texts))
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
        self.paths = None

    def ask(self, question: str, k: int | None, max_new_tokens: int, mode: str) -> tuple[Any, list[dict]]:
        """The answer and its sources as the API shows them (paths relative to the indexed folder, never
        the server's absolute paths). On the executor's thread: the index's connection belongs to it."""
        from slmforge.rag.ask import AskConfig
        from slmforge.route.pipeline import SourcePaths

        cfg = AskConfig(self.cfg.index, question, self.cfg.generator, self.cfg.store, mode, k,
                        max_new_tokens=max_new_tokens)  # fmt: skip
        ans = self.asker.ask(cfg)
        if self.paths is None:
            self.paths = SourcePaths(self.asker.retriever.store)
        sources = [{"n": i + 1, "doc": self.paths.doc(h.chunk.doc, h.chunk.path), "section": h.chunk.section,
                    "path": self.paths.relative(h.chunk.path), "text": h.chunk.text[:500]}
                   for i, h in enumerate(ans.sources)]  # fmt: skip
        return ans, sources


def load_backends(cfg: ServeConfig, on_batch: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Load every model in the config (chat models first: a rag model may answer with one)."""
    out: dict[str, Any] = {}
    order = sorted(cfg.models, key=lambda m: m.kind == "rag")
    for m in order:
        hook = (lambda n, name=m.name: on_batch(name, n)) if on_batch else None
        try:
            if m.kind == "chat" and m.upstream:
                out[m.name] = UpstreamChatBackend(m)
            elif m.kind == "chat":
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

    def describe(self) -> dict:
        return {"enabled": False, "warnings": []}


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

    def check_all(
        self, texts: list[str], route: str, joined: bool, cancel: threading.Event | None = None
    ) -> tuple[list[Verdict], Verdict | None]:
        """Each text's verdict, then (when `joined` and there is more than one) the verdict on all of them
        (redacted where a verdict redacted) joined with newlines: an injection split across messages is
        scored whole. Stops at the first block, and with Cancelled once `cancel` is set (the request timed
        out). One call, so a request's guard work is one executor job."""
        verdicts: list[Verdict] = []
        for t in texts:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            v = self.check(t, route)
            verdicts.append(v)
            if v.action == "block":
                return verdicts, None
        if not joined or len(texts) < 2:
            return verdicts, None
        if cancel is not None and cancel.is_set():
            raise Cancelled
        seen = [v.text if v.action == "redact" else t for t, v in zip(texts, verdicts)]
        return verdicts, self.check("\n".join(seen), route)

    def describe(self) -> dict:
        """What the guard says about itself (e.g. warnings that its detector is missing), for /readyz."""
        describe = getattr(self.guard, "describe", None)
        try:
            out = describe() if callable(describe) else {}
        except Exception as e:  # readiness must answer even if a guard's self-description fails
            return {"enabled": self.enabled, "warnings": [f"the guard's describe() failed: {_first_line(e)}"]}
        out = dict(out) if isinstance(out, dict) else {"description": str(out)}
        out.setdefault("enabled", self.enabled)
        warnings = out.get("warnings")
        out["warnings"] = [str(w) for w in warnings] if isinstance(warnings, list | tuple) else []
        return out


def load_guard(spec: dict | None) -> Guarded:
    if spec is None:
        return Guarded(None)
    from slmforge.guard import load_guard as build

    return Guarded(build(spec))


def load_pipelines(spec: str | dict | None, threads: int | None = None) -> dict[str, Any]:
    """{name: pipeline} from slmforge.route.pipeline, warmed up (models loaded) when it can be."""
    if spec is None:
        return {}
    import inspect

    from slmforge.route import pipeline as pipeline_module

    takes_threads = "threads" in inspect.signature(pipeline_module.load_pipelines).parameters
    pipelines = pipeline_module.load_pipelines(spec, **({"threads": threads} if takes_threads else {}))
    for name, p in pipelines.items():
        if not callable(getattr(p, "run", None)):
            raise SlmError(f"pipeline {name!r} has no run(text) method")
        if callable(getattr(p, "warm", None)):
            p.warm()
    return pipelines


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


async def run_in(executor: concurrent.futures.Executor, fn: Callable, *args):
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
