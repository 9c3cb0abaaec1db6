"""The front door: `FrontDoor`, a plain ASGI middleware that runs before any body is parsed, and `Door`,
what it and the handlers share (config, models, guard, pipelines, keys, metrics, limits, audit, executors;
one per app, at `app.state.door`).

The door finds the endpoint family from the path, checks the API key (401), the key's rate limit (429 +
Retry-After, spent by out-of-scope calls too), its endpoint scope (403), the body size (413) and the
admission queue (503), and after the last byte of the response it writes the audit record and the metrics.
An exception that escapes a handler answers 500 with the request id, never a traceback.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import time
from typing import Any

from slmforge.serve import audit as audit_mod
from slmforge.serve.auth import ApiKey, KeyStore
from slmforge.serve.config import ServeConfig, is_loopback
from slmforge.serve.errors import ApiError, error_response
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


class Door:
    """What the middleware and the handlers share. `backends` are the loaded models by name, `guard` a
    backends.Guarded (not imported here: the door needs none of the models' code)."""

    def __init__(self, cfg: ServeConfig, backends: dict, guard: Any, pipelines: dict, keys: KeyStore,
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
        # a continuously batched chat model decodes on its own scheduler thread; a worker only waits for its
        # request there, so every admitted request gets one
        batched = any(getattr(b, "continuous", None) is not None for b in backends.values())
        workers = (
            max(cfg.limits.generation_workers, cfg.limits.queue_size)
            if batched
            else cfg.limits.generation_workers
        )
        self.generation = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="slm-generate")
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
