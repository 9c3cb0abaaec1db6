"""The FastAPI app: OpenAI-compatible endpoints behind one door that authenticates, limits and audits.

`FrontDoor` (a plain ASGI middleware) runs before any body is parsed: it finds the endpoint family from
the path, checks the API key and its endpoint scope (401 / 403), the key's rate limit (429 +
Retry-After), the body size (413) and the admission queue (503), and after the last byte of the
response it writes the audit record and the metrics. Handlers check the per-model scope, the token
caps, run the input guard and call the models. Every error is an OpenAI-style JSON body
(`{"error": {"message", "type", "param", "code"}}`), never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import random
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmforge.errors import SlmError
from slmforge.serve import audit as audit_mod
from slmforge.serve.auth import ApiKey, KeyStore
from slmforge.serve.backends import (
    Cancelled,
    GenParams,
    GenResult,
    Guarded,
    UpstreamError,
    load_backends,
    load_guard,
    load_pipelines,
)
from slmforge.serve.config import ServeConfig, is_loopback
from slmforge.serve.limits import Admission, RateLimiter, retry_after
from slmforge.serve.metrics import Metrics

log = logging.getLogger("slmforge.serve")

ROUTES = {
    "/v1/models": "models",
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/classify": "classify",
    "/v1/rag/ask": "rag",
    "/metrics": "metrics",
}
SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
WORK = {"chat", "completions", "embeddings", "classify", "rag", "pipelines"}  # hold a queue slot
KIND_ENDPOINTS = {"chat": ("chat", "completions"), "classify": ("classify",), "embeddings": ("embeddings",),
                  "rag": ("rag",)}  # fmt: skip


_ids = random.Random()  # request ids need to be unique, not secret; os.urandom costs ~0.3 ms on some VMs


def request_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


def endpoint_of(path: str) -> str | None:
    if path in ROUTES:
        return ROUTES[path]
    if path.startswith("/v1/models/"):
        return "models"
    if path.startswith("/v1/pipelines/"):
        return "pipelines"
    return None


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.code, e.param), e.status, headers=e.headers)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in (
        (400, "Invalid request"),
        (401, "Missing or bad API key"),
        (403, "Out of the key's scopes"),
        (404, "No such model or pipeline"),
        (413, "Body too large"),
        (429, "Rate limited"),
        (500, "Internal error"),
        (503, "Queue full"),
        (504, "Timed out"),
    )  # fmt: skip
}


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class _GenBody(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)


class ChatRequest(_GenBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_GenBody):
    prompt: str | list[str]


class EmbeddingsRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(None, ge=1)


class ClassifyRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str]


class RagRequest(_Body):
    model: str = Field(min_length=1)
    question: str = Field(min_length=1)
    k: int = Field(4, ge=1, le=50)
    max_tokens: int | None = Field(None, ge=1)
    mode: Literal["hybrid", "vector", "bm25"] = "hybrid"


class PipelineRequest(_Body):
    input: str = Field(min_length=1)


# ---------------------------------------------------------------- the door


class Door:
    """What the middleware and the handlers share."""

    def __init__(self, cfg: ServeConfig, backends: dict, guard: Guarded, pipelines: dict, keys: KeyStore,
                 metrics: Metrics, pipeline_executor: concurrent.futures.ThreadPoolExecutor):  # fmt: skip
        self.cfg = cfg
        self.backends = backends
        self.guard = guard
        self.pipelines = pipelines
        self.keys = keys
        self.metrics = metrics
        self.limiter = RateLimiter(cfg.limits.rate_per_minute, cfg.limits.burst)
        self.admission = Admission(cfg.limits.queue_size)
        self.audit = audit_mod.AuditLog(
            log_json=cfg.audit.log_json, retention_days=cfg.audit.retention_days,
            unauthenticated_per_minute=cfg.audit.unauthenticated_per_minute, metrics=metrics,
        )  # fmt: skip
        self.generation = concurrent.futures.ThreadPoolExecutor(
            cfg.limits.generation_workers, thread_name_prefix="slm-generate"
        )
        self.pipeline_executor = pipeline_executor
        self.guard_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slm-guard")
        self.draining = False

    def close(self) -> None:
        self.draining = True
        for b in self.backends.values():
            if getattr(b, "batcher", None) is not None:
                b.batcher.close()
        self.generation.shutdown(wait=False, cancel_futures=True)
        self.pipeline_executor.shutdown(wait=False, cancel_futures=True)
        self.guard_executor.shutdown(wait=False, cancel_futures=True)
        self.audit.close()


class FrontDoor:
    def __init__(self, app, door: Door):
        self.app = app
        self.door = door

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = endpoint_of(scope["path"])
        if endpoint is None:  # health, readiness, OpenAPI docs, unknown paths (404)
            return await self._guarded_call(scope, receive, send)
        door, started = self.door, time.perf_counter()
        rec = audit_mod.AuditRecord(
            time.time(), request_id(), endpoint, client=(scope.get("client") or ("",))[0] or None
        )
        state = {"status": 0, "done": False, "admitted": False}

        async def finish(status: int) -> None:
            if state["done"]:
                return
            state["done"] = True
            rec.status = status = rec.status or status  # a stream that failed midway set its own status
            rec.latency_ms = round((time.perf_counter() - started) * 1000, 3)
            if endpoint != "metrics":  # a scraper every few seconds is not an audit event
                door.audit.write(rec)
            m = door.metrics
            m.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                m.errors.labels(endpoint, str(status)).inc()
            m.latency.labels(endpoint).observe(rec.latency_ms / 1000)
            if rec.tokens_in:
                m.tokens.labels(endpoint, "in").inc(rec.tokens_in)
            if rec.tokens_out:
                m.tokens.labels(endpoint, "out").inc(rec.tokens_out)

        async def refuse(e: ApiError) -> None:
            await error_response(e)(scope, receive, send)
            await finish(e.status)

        try:
            try:
                key = self._authenticate(scope, endpoint)
            except ApiError:  # failed attempts are rate-limited per client address, like a key's requests
                client = (scope.get("client") or ("?", 0))[0]
                wait = door.limiter.take(f"unauthenticated@{client}")
                if wait > 0:
                    raise ApiError(429, "too many requests without a valid key", "rate_limit_error",
                                   "rate_limited", headers={"Retry-After": retry_after(wait)}) from None  # fmt: skip
                raise
            rec.key_name = key.name
            if not key.allows(endpoint):
                raise ApiError(403, f"this key may not call {endpoint}", "permission_error", "scope")
            wait = door.limiter.take(key.name, key.rate_per_minute)
            if wait > 0:
                raise ApiError(429, "rate limit reached for this key", "rate_limit_error", "rate_limited",
                               headers={"Retry-After": retry_after(wait)})  # fmt: skip
            body = await self._read_body(scope, receive)
            if endpoint in WORK:
                if door.draining or not door.admission.enter():
                    raise ApiError(503, "the server is at capacity; retry shortly", "server_error",
                                   "queue_full", headers={"Retry-After": "1"})  # fmt: skip
                state["admitted"] = True
                door.metrics.queue_depth.set(door.admission.depth)
        except ApiError as e:
            return await refuse(e)

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await finish(state["status"])

        scope.setdefault("state", {})
        scope["slm"] = {"key": key, "audit": rec}
        try:
            await self._guarded_call(scope, replay, send_and_watch)
        finally:
            if state["admitted"]:
                door.admission.leave()
                door.metrics.queue_depth.set(door.admission.depth)
            await finish(499)  # only if the answer never completed: the client went away

    async def _guarded_call(self, scope, receive, send) -> None:
        started = False

        async def watch(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("internal error on %s", scope.get("path"))
            if not started:
                rid = scope.get("slm", {}).get("audit")
                ref = f" (request {rid.request_id})" if rid else ""
                e = ApiError(500, f"internal error{ref}", "server_error", "internal_error")
                await error_response(e)(scope, receive, send)

    def _authenticate(self, scope, endpoint: str) -> ApiKey:
        door = self.door
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1").strip()
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not secret:
            client = (scope.get("client") or ("", 0))[0]
            if endpoint in door.cfg.auth.open_on_loopback and is_loopback(client):
                return ApiKey("loopback", list(door.cfg.auth.open_on_loopback), 0.0)
            raise ApiError(401, "missing API key: send Authorization: Bearer slm-...", "authentication_error",
                           "missing_api_key")  # fmt: skip
        key = door.keys.lookup(secret)
        if key is None:
            raise ApiError(401, "invalid API key", "authentication_error", "invalid_api_key")
        if key.revoked is not None:
            raise ApiError(401, "this API key has been revoked", "authentication_error", "revoked_api_key")
        if not key.active:
            raise ApiError(401, "this API key has expired", "authentication_error", "expired_api_key")
        return key

    async def _read_body(self, scope, receive) -> bytes:
        cap = self.door.cfg.limits.max_body_bytes
        headers = dict(scope.get("headers") or [])
        too_big = ApiError(413, f"the request body is larger than {cap} bytes", "invalid_request_error",
                           "body_too_large")  # fmt: skip
        try:
            if int(headers.get(b"content-length", b"0")) > cap:
                raise too_big
        except ValueError:
            raise ApiError(400, "bad Content-Length header") from None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


# ---------------------------------------------------------------- the app


def create_app(
    cfg: ServeConfig,
    *,
    backends: dict | None = None,
    guard: Any | None = None,
    pipelines: dict | None = None,
) -> FastAPI:
    """The app for `cfg`. Models, guard and pipelines are loaded from the config unless given (tests)."""
    metrics = Metrics()
    if backends is None:
        backends = load_backends(cfg, on_batch=lambda name, n: metrics.batch_size.labels(name).observe(n))
    guarded = Guarded(guard) if guard is not None else load_guard(cfg.guard)
    pipeline_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slm-pipeline")
    if pipelines is None:  # loaded on the thread that runs them (their SQLite indexes belong to it)
        pipelines = pipeline_executor.submit(load_pipelines, cfg.pipelines, cfg.threads).result()
    door = Door(cfg, backends, guarded, pipelines, KeyStore(), metrics, pipeline_executor)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        door.close()

    app = FastAPI(title="slmforge", version="1", lifespan=lifespan,
                  description="OpenAI-compatible serving of slmforge models, with keys, limits, audit and a guard.")  # fmt: skip
    app.state.door = door
    app.add_middleware(FrontDoor, door=door)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(SlmError)
    async def _slm_error(request: Request, e: SlmError):
        return error_response(ApiError(400, str(e)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        if first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        else:
            msg = f"{where}: {first.get('msg', 'invalid')}"
        return error_response(ApiError(400, msg, param=where))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(str(e.detail), kind), e.status_code, headers=getattr(e, "headers", None)
        )

    # ------------------------------------------------------------ health and monitoring

    @app.get("/healthz", tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: ERRORS[503]})
    async def readyz():
        if door.draining:
            return error_response(ApiError(503, "shutting down", "server_error", "draining"))
        if door.admission.depth >= door.admission.size:
            return error_response(ApiError(503, "queue full", "server_error", "queue_full"))
        return {"status": "ready", "models": sorted(door.backends), "pipelines": sorted(door.pipelines),
                "queue_depth": door.admission.depth}  # fmt: skip

    @app.get("/metrics", tags=["health"], responses=ERRORS, response_class=Response)
    async def metrics_endpoint():
        metrics.queue_depth.set(door.admission.depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------ models

    def model_card(name: str, b) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "slmforge", "kind": b.kind}

    def visible(key: ApiKey, name: str, b) -> bool:
        return any(key.allows(ep, name) for ep in KIND_ENDPOINTS[b.kind])

    @app.get("/v1/models", tags=["openai"], responses=ERRORS)
    async def list_models(request: Request):
        key = ctx(request)[0]
        data = [model_card(n, b) for n, b in door.backends.items() if visible(key, n, b)]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id}", tags=["openai"], responses=ERRORS)
    async def get_model(model_id: str, request: Request):
        key = ctx(request)[0]
        b = door.backends.get(model_id)
        if b is None or not visible(key, model_id, b):
            raise ApiError(404, f"no model {model_id!r}", "not_found_error", "model_not_found", "model")
        return model_card(model_id, b)

    # ------------------------------------------------------------ generation

    @app.post("/v1/chat/completions", tags=["openai"], responses=ERRORS)
    async def chat_completions(body: ChatRequest, request: Request):
        key, rec = ctx(request)
        b = backend(key, rec, "chat", body.model)
        messages = []
        for m in body.messages:
            text = content_text(m.content)
            if m.role == "user":
                text = await check_guard(request, text)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        remember_prompt(rec, "\n".join(m["content"] for m in messages if m["role"] == "user"))
        params = gen_params(body, body.max_completion_tokens or body.max_tokens, b)
        ids = b.encode(messages)
        rec.tokens_in = len(ids)
        if not rec.tokens_in:
            raise ApiError(400, "the prompt is empty", param="prompt")
        cid = "chatcmpl-" + rec.request_id
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return sse(generate_stream(b, ids, params, rec, cid, "chat.completion.chunk", body.model, usage))
        r = await generate(b, ids, params, rec)
        return {"id": cid, "object": "chat.completion", "created": int(rec.time), "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                             "logprobs": None, "finish_reason": r.finish_reason}],
                "usage": usage_of(r)}  # fmt: skip

    @app.post("/v1/completions", tags=["openai"], responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request):
        key, rec = ctx(request)
        b = backend(key, rec, "completions", body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request", param="prompt")
        prompt = await check_guard(request, prompts[0])
        remember_prompt(rec, prompt)
        params = gen_params(body, body.max_tokens, b)
        ids = b.encode(None, prompt)
        rec.tokens_in = len(ids)
        if not rec.tokens_in:
            raise ApiError(400, "the prompt is empty", param="prompt")
        cid = "cmpl-" + rec.request_id
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return sse(generate_stream(b, ids, params, rec, cid, "text_completion", body.model, usage))
        r = await generate(b, ids, params, rec)
        return {"id": cid, "object": "text_completion", "created": int(rec.time), "model": body.model,
                "choices": [{"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}],
                "usage": usage_of(r)}  # fmt: skip

    def gen_params(body: _GenBody, asked: int | None, b) -> GenParams:
        cap = cfg.limits.max_tokens
        if asked is not None and asked > cap:
            raise ApiError(400, f"max_tokens {asked} is above this server's cap of {cap}", param="max_tokens",
                           code="max_tokens_too_large")  # fmt: skip
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop takes up to 4 non-empty strings", param="stop")
        return GenParams(min(asked or b.cfg.max_new_tokens, cap), body.temperature or 0.0,
                         1.0 if body.top_p is None else body.top_p, body.seed or 0, stop)  # fmt: skip

    async def generate(b, ids: list[int], params: GenParams, rec) -> GenResult:
        cancel = threading.Event()
        fut = door.generation.submit(b.generate, ids, params, None, cancel)
        try:
            r = await asyncio.wait_for(asyncio.wrap_future(fut), cfg.limits.timeout_s)
        except UpstreamError as e:
            raise ApiError(e.status, str(e), "invalid_request_error" if e.status == 400 else "server_error",
                           "upstream_error") from None  # fmt: skip
        except asyncio.TimeoutError:
            cancel.set()
            raise ApiError(504, f"the request took longer than {cfg.limits.timeout_s:g} s", "timeout",
                           "timeout") from None  # fmt: skip
        finally:
            cancel.set()
        note_generation(rec, r)
        return r

    def note_generation(rec, r: GenResult) -> None:
        rec.tokens_in = r.prompt_tokens  # an upstream server counts its own prompt tokens
        rec.tokens_out = r.completion_tokens
        if r.seconds > 0 and r.completion_tokens:
            metrics.tokens_per_s.labels(rec.model).observe(r.completion_tokens / r.seconds)

    async def generate_stream(b, ids, params, rec, cid: str, obj: str, model: str, with_usage: bool):
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        end = object()

        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        fut = door.generation.submit(b.generate, ids, params, on_text, cancel)
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(pieces.put_nowait, end))
        chat = obj == "chat.completion.chunk"

        def chunk(text: str | None, finish: str | None = None, first: bool = False) -> dict:
            if chat:
                delta = ({"role": "assistant", "content": ""} if first else {}) | (
                    {"content": text} if text else {}
                )
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {"id": cid, "object": obj, "created": int(rec.time), "model": model, "choices": [choice]}

        deadline = loop.time() + cfg.limits.timeout_s
        try:
            if chat:
                yield chunk(None, first=True)
            while True:
                try:
                    item = await asyncio.wait_for(pieces.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    cancel.set()
                    rec.status = 504
                    yield error_body(
                        f"the request took longer than {cfg.limits.timeout_s:g} s", "timeout", "timeout"
                    )
                    return
                if item is end:
                    break
                yield chunk(item)
            try:
                r = fut.result()
            except (SlmError, UpstreamError) as e:
                yield error_body(
                    str(e), "invalid_request_error" if isinstance(e, SlmError) else "server_error"
                )
                return
            except Cancelled:
                return
            note_generation(rec, r)
            yield chunk(None, r.finish_reason)
            if with_usage:
                yield {"id": cid, "object": obj, "created": int(rec.time), "model": model, "choices": [],
                       "usage": usage_of(r)}  # fmt: skip
        finally:
            cancel.set()

    def sse(events) -> StreamingResponse:
        async def body():
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    # ------------------------------------------------------------ embeddings and classification

    @app.post("/v1/embeddings", tags=["openai"], responses=ERRORS)
    async def embeddings(body: EmbeddingsRequest, request: Request):
        key, rec = ctx(request)
        b = backend(key, rec, "embeddings", body.model)
        texts = text_inputs(body.input)
        if body.dimensions is not None and body.dimensions != b.embedder.dim:
            raise ApiError(400, f"{body.model} makes {b.embedder.dim}-d vectors; dimensions cannot change that",
                           param="dimensions")  # fmt: skip
        texts = [await check_guard(request, t) for t in texts]
        remember_prompt(rec, "\n".join(texts))
        out = await batched(b, texts)
        rec.tokens_in = sum(n for _, n in out)

        def encode(v):
            if body.encoding_format == "base64":
                return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
            return [float(x) for x in v]

        data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, (v, _) in enumerate(out)]
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": rec.tokens_in, "total_tokens": rec.tokens_in}}  # fmt: skip

    @app.post("/v1/classify", tags=["slmforge"], responses=ERRORS)
    async def classify(body: ClassifyRequest, request: Request):
        key, rec = ctx(request)
        b = backend(key, rec, "classify", body.model)
        texts = text_inputs(body.input)
        texts = [await check_guard(request, t) for t in texts]
        remember_prompt(rec, "\n".join(texts))
        out = await batched(b, texts)
        rec.tokens_in = sum(r["tokens"] for r in out)
        data = [{"index": i, "label": r["label"], "score": r["score"]} for i, r in enumerate(out)]
        return {"object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": rec.tokens_in, "total_tokens": rec.tokens_in}}  # fmt: skip

    def text_inputs(raw) -> list[str]:
        texts = [raw] if isinstance(raw, str) else list(raw)
        if not texts:
            raise ApiError(400, "input is empty", param="input")
        if not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be text (token ids are not accepted)", param="input")
        if len(texts) > cfg.limits.max_inputs:
            raise ApiError(400, f"{len(texts)} inputs; this server takes at most {cfg.limits.max_inputs}",
                           param="input")  # fmt: skip
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(400, f"input {i} is empty", param="input")
        return texts

    async def batched(b, texts: list[str]) -> list:
        try:
            return await asyncio.wait_for(b.batcher.submit(texts), cfg.limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {cfg.limits.timeout_s:g} s", "timeout",
                           "timeout") from None  # fmt: skip

    # ------------------------------------------------------------ rag and pipelines

    @app.post("/v1/rag/ask", tags=["slmforge"], responses=ERRORS)
    async def rag_ask(body: RagRequest, request: Request):
        key, rec = ctx(request)
        b = backend(key, rec, "rag", body.model)
        question = await check_guard(request, body.question)
        remember_prompt(rec, question)
        asked = body.max_tokens
        if asked is not None and asked > cfg.limits.max_tokens:
            raise ApiError(400, f"max_tokens {asked} is above this server's cap of {cfg.limits.max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")  # fmt: skip
        fut = b.executor.submit(b.ask, question, body.k, asked or b.cfg.max_new_tokens, body.mode)
        ans = await wait(fut)
        rec.tokens_in = ans.prompt_tokens
        sources = [{"n": i + 1, "doc": h.chunk.doc, "section": h.chunk.section, "path": h.chunk.path,
                    "text": h.chunk.text[:500]} for i, h in enumerate(ans.sources)]  # fmt: skip
        return {"object": "rag.answer", "model": body.model, "answer": ans.text, "abstained": ans.abstained,
                "citations": [sources[n - 1] for n in ans.citations if 0 < n <= len(sources)],
                "sources": sources, "best_cosine": ans.best_cosine,
                "usage": {"prompt_tokens": ans.prompt_tokens}}  # fmt: skip

    @app.post("/v1/pipelines/{name}", tags=["slmforge"], responses=ERRORS)
    async def run_pipeline(name: str, body: PipelineRequest, request: Request):
        key, rec = ctx(request)
        rec.model = name
        if not key.allows("pipelines", name):
            raise ApiError(403, f"this key may not run pipeline {name!r}", "permission_error", "scope")
        p = door.pipelines.get(name)
        if p is None:
            raise ApiError(404, f"no pipeline {name!r}", "not_found_error", "pipeline_not_found")
        text = await check_guard(request, body.input)
        remember_prompt(rec, text)
        result = await wait(door.pipeline_executor.submit(p.run, text))
        return {"object": "pipeline.result", "pipeline": name, **result}

    async def wait(fut: concurrent.futures.Future):
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), cfg.limits.timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise ApiError(504, f"the request took longer than {cfg.limits.timeout_s:g} s", "timeout",
                           "timeout") from None  # fmt: skip

    # ------------------------------------------------------------ shared steps

    def ctx(request: Request) -> tuple[ApiKey, audit_mod.AuditRecord]:
        s = request.scope["slm"]
        return s["key"], s["audit"]

    def backend(key: ApiKey, rec, endpoint: str, model: str):
        rec.model = model[:200]
        if not key.allows(endpoint, model):  # before existence: a key learns nothing about other models
            raise ApiError(
                403, f"this key may not use model {model!r} on {endpoint}", "permission_error", "scope"
            )
        b = door.backends.get(model)
        if b is None:
            raise ApiError(404, f"no model {model!r}", "not_found_error", "model_not_found", "model")
        if endpoint not in KIND_ENDPOINTS[b.kind]:
            raise ApiError(400, f"{model!r} is a {b.kind} model, not one for {endpoint}", param="model")
        return b

    async def check_guard(request: Request, text: str) -> str:
        if not door.guard.enabled:
            return text
        rec = ctx(request)[1]
        route = request.url.path
        loop = asyncio.get_running_loop()
        v = await loop.run_in_executor(door.guard_executor, door.guard.check, text, route)
        metrics.guard_actions.labels(route, v.action).inc()
        if rec.guard is None or SEVERITY[v.action] > SEVERITY[rec.guard.split(":")[0]]:
            rec.guard = v.summary()
        if v.action == "block":
            metrics.guard_blocks.labels(route).inc()
            raise ApiError(400, "the input guard blocked this request" + (f" ({', '.join(v.reasons)})" if v.reasons else ""),
                           "invalid_request_error", "guard_blocked")  # fmt: skip
        return v.text if v.action == "redact" else text

    def remember_prompt(rec, text: str) -> None:
        if cfg.audit.store_prompts:
            rec.prompt = audit_mod.redact_prompt(text)

    return app


def content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, "only text content parts are supported", param="messages")
        parts.append(part["text"])
    return "\n".join(parts)


def usage_of(r: GenResult) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}  # fmt: skip
