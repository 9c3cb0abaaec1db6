"""The FastAPI app: OpenAI-compatible endpoints behind one door that authenticates, limits and audits.

`FrontDoor` (a plain ASGI middleware) runs before any body is parsed: it finds the endpoint family from
the path, checks the API key (401), the key's rate limit (429 + Retry-After, spent by out-of-scope
calls too), its endpoint scope (403), the body size (413) and the admission queue (503), and after the
last byte of the response it writes the audit record and the metrics. `CappedRoute` then parses the
JSON body off the event loop and applies the caps (messages, content parts, characters, stop strings:
400) before the body is validated; handlers check the per-model scope and the token caps, run the input
guard over every text of the request in one executor job, template and tokenise off the event loop and
call the models, all within the request's `timeout_s` (504). Every error is an OpenAI-style JSON body
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
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmforge.core.errors import SlmError
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
from slmforge.serve.limits import (
    MAX_STOP,
    Admission,
    CapExceeded,
    RateLimiter,
    array_caps,
    check_caps,
    parse_json,
    retry_after,
)
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
        # parsing bodies, chat templates and tokenisation: off the event loop, one at a time (a fast
        # tokenizer must not be driven by two threads at once)
        self.prep = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slm-prep")
        self.draining = False

    def authenticate(self, scope, endpoint: str | None) -> ApiKey:
        """The key the request presents (or the loopback opening for `endpoint`); ApiError 400 / 401."""
        values = [v for k, v in scope.get("headers") or [] if k == b"authorization"]
        if len(values) > 1:  # proxies and frameworks disagree on which one counts: refuse to guess
            raise ApiError(400, "send one Authorization header, not several", "invalid_request_error",
                           "duplicate_authorization")  # fmt: skip
        auth = values[0].decode("latin-1").strip() if values else ""
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not secret:
            client = (scope.get("client") or ("", 0))[0]
            if endpoint in self.cfg.auth.open_on_loopback and is_loopback(client):
                return ApiKey("loopback", list(self.cfg.auth.open_on_loopback), 0.0)
            raise ApiError(401, "missing API key: send Authorization: Bearer slm-...", "authentication_error",
                           "missing_api_key")  # fmt: skip
        key = self.keys.lookup(secret)
        if key is None:
            raise ApiError(401, "invalid API key", "authentication_error", "invalid_api_key")
        if key.revoked is not None:
            raise ApiError(401, "this API key has been revoked", "authentication_error", "revoked_api_key")
        if not key.active:
            raise ApiError(401, "this API key has expired", "authentication_error", "expired_api_key")
        return key

    def failed_attempt(self, scope) -> None:
        """Spend the client address's bucket for a refused key; ApiError 429 once it is empty."""
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.limiter.take(f"unauthenticated@{client}")
        if wait > 0:
            raise ApiError(429, "too many requests without a valid key", "rate_limit_error", "rate_limited",
                           headers={"Retry-After": retry_after(wait)})  # fmt: skip

    def close(self) -> None:
        self.draining = True
        for b in self.backends.values():
            if getattr(b, "batcher", None) is not None:
                b.batcher.close()
        self.generation.shutdown(wait=False, cancel_futures=True)
        self.pipeline_executor.shutdown(wait=False, cancel_futures=True)
        self.guard_executor.shutdown(wait=False, cancel_futures=True)
        self.prep.shutdown(wait=False, cancel_futures=True)
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
                key = door.authenticate(scope, endpoint)
            except ApiError:  # failed attempts are rate-limited per client address, like a key's requests
                door.failed_attempt(scope)
                raise
            rec.key_name = key.name
            # before the scope check: a key probing endpoints outside its scopes spends its budget too
            wait = door.limiter.take(key.name, key.rate_per_minute)
            if wait > 0:
                raise ApiError(429, "rate limit reached for this key", "rate_limit_error", "rate_limited",
                               headers={"Retry-After": retry_after(wait)})  # fmt: skip
            if not key.allows(endpoint):
                raise ApiError(403, f"this key may not call {endpoint}", "permission_error", "scope")
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
        # one deadline for everything the request does (parsing, guard, tokenising, the model)
        scope["slm"] = {"key": key, "audit": rec, "door": door,
                        "deadline": time.monotonic() + door.cfg.limits.timeout_s}  # fmt: skip
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


# ---------------------------------------------------------------- parsing and caps, off the event loop


def remaining(scope) -> float:
    """Seconds left of the request's timeout (never quite 0: asyncio.wait_for(.., 0) cannot succeed)."""
    return max(0.001, scope["slm"]["deadline"] - time.monotonic())


def timed_out(cfg: ServeConfig) -> ApiError:
    return ApiError(504, f"the request took longer than {cfg.limits.timeout_s:g} s", "timeout", "timeout")


async def offload(scope, executor: concurrent.futures.Executor, fn, *args):
    """fn(*args) on `executor`, within what is left of the request's timeout (504 after)."""
    fut = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.wait_for(fut, remaining(scope))
    except asyncio.TimeoutError:
        raise timed_out(scope["slm"]["door"].cfg) from None


def parse_capped(body: bytes, endpoint: str, limits) -> Any:
    """The parsed JSON body, or the decoding error for FastAPI to answer as it always does; CapExceeded
    when the body asks for more than the caps allow. Runs on an executor thread."""
    try:
        parsed = parse_json(body, array_caps(endpoint, limits))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return e
    check_caps(endpoint, parsed, limits)
    return parsed


class ParsedRequest(Request):
    """A request whose body was already read and parsed (off the event loop) when FastAPI asks for it."""

    def __init__(self, request: Request, body: bytes, parsed: Any):
        super().__init__(request.scope, request.receive)
        self.slm_body, self.slm_parsed = body, parsed

    async def body(self) -> bytes:
        return self.slm_body

    async def json(self) -> Any:
        if isinstance(self.slm_parsed, ValueError):
            raise self.slm_parsed
        return self.slm_parsed


class CappedRoute(APIRoute):
    """An APIRoute that parses a JSON body on the door's prep thread and applies the request caps before
    FastAPI validates it into the request model: validating 25,000 messages holds the event loop for
    ~0.1 s even when a cap would refuse them, and JSON parsing in C does not let the loop run either."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def capped(request: Request):
            slm = request.scope.get("slm")
            endpoint = endpoint_of(request.scope["path"])
            content_type = (
                request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            )
            if slm is None or endpoint is None or not content_type.endswith(("/json", "+json")):
                return await handler(request)
            body = await request.body()
            if not body:
                return await handler(request)
            door = slm["door"]
            try:
                parsed = await offload(
                    request.scope, door.prep, parse_capped, body, endpoint, door.cfg.limits
                )
            except CapExceeded as e:
                raise ApiError(400, e.message, param=e.param, code=e.code) from None
            return await handler(ParsedRequest(request, body, parsed))

        return capped


def freeze_heap() -> None:
    """Move everything alive now (the loaded models, torch, transformers: millions of objects) out of the
    garbage collector's reach. Otherwise a request that allocates many objects (a 25,000-message body)
    sets off a full collection that walks all of them and holds the event loop for 0.1-1 s. `slm serve`
    calls this once the models are loaded."""
    import gc

    gc.collect()
    gc.freeze()


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
    app.router.route_class = CappedRoute
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

    @app.get("/readyz", tags=["health"], responses={429: ERRORS[429], 503: ERRORS[503]})
    async def readyz(request: Request):
        """Ready or not, for a balancer: only `status` without a key; with a valid key (any scope) also the
        models, pipelines, queue, the guard's own account (warnings) and the audit writer's health."""
        key = None
        if any(k == b"authorization" for k, _ in request.scope.get("headers") or []):
            try:
                key = door.authenticate(request.scope, None)
            except ApiError:
                try:  # a guess here spends the same bucket as anywhere else
                    door.failed_attempt(request.scope)
                except ApiError as e:
                    return error_response(e)
        audit_health = audit_status()
        if door.draining:
            status, problem = "draining", ApiError(503, "shutting down", "server_error", "draining")
        elif door.admission.depth >= door.admission.size:
            status, problem = "queue_full", ApiError(503, "queue full", "server_error", "queue_full")
        elif not audit_health.get("ok", True):
            status = "audit_unhealthy"
            problem = ApiError(503, "the audit log cannot be written", "server_error", "audit_unhealthy")
        else:
            status, problem = "ready", None
        out: dict[str, Any] = {"status": status}
        if problem is not None:
            out = error_body(problem.message, problem.type, problem.code) | out
        if key is not None:
            out |= {"models": sorted(door.backends), "pipelines": sorted(door.pipelines),
                    "queue_depth": door.admission.depth, "queue_size": door.admission.size,
                    "guard": json_safe(door.guard.describe()), "audit": json_safe(audit_health)}  # fmt: skip
        return JSONResponse(out, 503 if problem is not None else 200)

    def audit_status() -> dict:
        health = getattr(door.audit, "health", None)  # AuditLog.health() where this slmforge has it
        if not callable(health):
            return {"ok": True}
        try:
            out = health()
        except Exception as e:
            log.exception("the audit writer's health check failed")
            return {"ok": False, "error": type(e).__name__}
        return out if isinstance(out, dict) else {"ok": bool(out)}

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
        params = gen_params(body, body.max_completion_tokens or body.max_tokens, b)
        # every role: a system, developer or forged assistant message reaches the model as surely as a user's
        texts = await guard_texts(request, [content_text(m.content) for m in body.messages], joined=True)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": t}
                    for m, t in zip(body.messages, texts)]  # fmt: skip
        remember_prompt(rec, "\n".join(m["content"] for m in messages if m["role"] == "user"))
        ids = await offload(request.scope, door.prep, b.encode, messages)
        rec.tokens_in = len(ids)
        if not rec.tokens_in:
            raise ApiError(400, "the prompt is empty", param="prompt")
        cid = "chatcmpl-" + rec.request_id
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return sse(generate_stream(b, ids, params, request.scope, cid, "chat.completion.chunk", body.model,
                                       usage))  # fmt: skip
        r = await generate(b, ids, params, request.scope)
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
        params = gen_params(body, body.max_tokens, b)
        prompt = (await guard_texts(request, prompts[:1]))[0]
        remember_prompt(rec, prompt)
        ids = await offload(request.scope, door.prep, b.encode, None, prompt)
        rec.tokens_in = len(ids)
        if not rec.tokens_in:
            raise ApiError(400, "the prompt is empty", param="prompt")
        cid = "cmpl-" + rec.request_id
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return sse(
                generate_stream(b, ids, params, request.scope, cid, "text_completion", body.model, usage)
            )
        r = await generate(b, ids, params, request.scope)
        return {"id": cid, "object": "text_completion", "created": int(rec.time), "model": body.model,
                "choices": [{"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}],
                "usage": usage_of(r)}  # fmt: skip

    def gen_params(body: _GenBody, asked: int | None, b) -> GenParams:
        cap = cfg.limits.max_tokens
        if asked is not None and asked > cap:
            raise ApiError(400, f"max_tokens {asked} is above this server's cap of {cap}", param="max_tokens",
                           code="max_tokens_too_large")  # fmt: skip
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP or any(not s for s in stop):  # lengths: check_caps, before validation
            raise ApiError(400, f"stop takes up to {MAX_STOP} non-empty strings", param="stop")
        return GenParams(min(asked or b.cfg.max_new_tokens, cap), body.temperature or 0.0,
                         1.0 if body.top_p is None else body.top_p, body.seed or 0, stop)  # fmt: skip

    async def generate(b, ids: list[int], params: GenParams, scope) -> GenResult:
        rec = scope["slm"]["audit"]
        cancel = threading.Event()
        fut = door.generation.submit(b.generate, ids, params, None, cancel)
        try:
            r = await asyncio.wait_for(asyncio.wrap_future(fut), remaining(scope))
        except UpstreamError as e:
            raise ApiError(e.status, str(e), "invalid_request_error" if e.status == 400 else "server_error",
                           "upstream_error") from None  # fmt: skip
        except asyncio.TimeoutError:
            cancel.set()
            raise timed_out(cfg) from None
        finally:
            cancel.set()
        note_generation(rec, r)
        return r

    def note_generation(rec, r: GenResult) -> None:
        rec.tokens_in = r.prompt_tokens  # an upstream server counts its own prompt tokens
        rec.tokens_out = r.completion_tokens
        if r.seconds > 0 and r.completion_tokens:
            metrics.tokens_per_s.labels(rec.model).observe(r.completion_tokens / r.seconds)

    async def generate_stream(b, ids, params, scope, cid: str, obj: str, model: str, with_usage: bool):
        rec = scope["slm"]["audit"]
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

        deadline = loop.time() + remaining(scope)
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
        texts = await guard_texts(request, texts)
        remember_prompt(rec, "\n".join(texts))
        out = await batched(request.scope, b, texts)
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
        texts = await guard_texts(request, texts)
        remember_prompt(rec, "\n".join(texts))
        out = await batched(request.scope, b, texts)
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

    async def batched(scope, b, texts: list[str]) -> list:
        try:
            return await asyncio.wait_for(b.batcher.submit(texts), remaining(scope))
        except asyncio.TimeoutError:
            raise timed_out(cfg) from None

    # ------------------------------------------------------------ rag and pipelines

    @app.post("/v1/rag/ask", tags=["slmforge"], responses=ERRORS)
    async def rag_ask(body: RagRequest, request: Request):
        key, rec = ctx(request)
        b = backend(key, rec, "rag", body.model)
        question = (await guard_texts(request, [body.question]))[0]
        remember_prompt(rec, question)
        asked = body.max_tokens
        if asked is not None and asked > cfg.limits.max_tokens:
            raise ApiError(400, f"max_tokens {asked} is above this server's cap of {cfg.limits.max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")  # fmt: skip
        fut = b.executor.submit(b.ask, question, body.k, asked or b.cfg.max_new_tokens, body.mode)
        ans, sources = await wait(request.scope, fut)
        rec.tokens_in = ans.prompt_tokens
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
        text = (await guard_texts(request, [body.input]))[0]
        remember_prompt(rec, text)
        result = await wait(request.scope, door.pipeline_executor.submit(p.run, text))
        return {"object": "pipeline.result", "pipeline": name, **result}

    async def wait(scope, fut: concurrent.futures.Future):
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), remaining(scope))
        except asyncio.TimeoutError:
            fut.cancel()
            raise timed_out(cfg) from None

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

    async def guard_texts(request: Request, texts: list[str], joined: bool = False) -> list[str]:
        """Every text through the guard (and, with `joined`, all of them joined with newlines), in one
        executor job within the request's timeout; 400 on a block, else the texts as the model may see
        them (each redacted where its verdict says so)."""
        if not door.guard.enabled:
            return texts
        rec = ctx(request)[1]
        route = request.url.path
        cancel = threading.Event()  # a job abandoned at the timeout stops at its next text
        try:
            verdicts, whole = await offload(request.scope, door.guard_executor, door.guard.check_all, texts,
                                            route, joined, cancel)  # fmt: skip
        finally:
            cancel.set()
        every = verdicts + ([whole] if whole is not None else [])
        worst = max(every, key=lambda v: SEVERITY[v.action])
        metrics.guard_actions.labels(route, worst.action).inc()
        for v in every:
            if rec.guard is None or SEVERITY[v.action] > SEVERITY[rec.guard.split(":")[0]]:
                rec.guard = v.summary()
        if worst.action == "block":
            metrics.guard_blocks.labels(route).inc()
            where = ""
            if whole is worst:
                where = " in the conversation as a whole"
            elif len(texts) > 1:
                where = f" in {'message' if joined else 'input'} {verdicts.index(worst)}"
            reasons = f" ({', '.join(worst.reasons)})" if worst.reasons else ""
            raise ApiError(400, f"the input guard blocked this request{where}{reasons}", "invalid_request_error",
                           "guard_blocked")  # fmt: skip
        return [v.text if v.action == "redact" else t for t, v in zip(texts, verdicts)]

    def remember_prompt(rec, text: str) -> None:
        if cfg.audit.store_prompts:
            rec.prompt = audit_mod.redact_prompt(text)

    return app


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types (a guard's or audit writer's self-description may hold anything)."""
    return json.loads(json.dumps(value, default=str))


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
