"""The steps every handler shares: the door, key and audit record of a request, the model it names (scope
before existence), the input guard over its texts, the prompt kept for the audit, and waiting for a worker
within the request's deadline."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from fastapi import Request

from slmforge.serve import audit as audit_mod
from slmforge.serve.auth import ApiKey
from slmforge.serve.capped import offload, remaining, timed_out
from slmforge.serve.door import KIND_ENDPOINTS, Door
from slmforge.serve.errors import ApiError

SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


def door_of(request: Request) -> Door:
    return request.app.state.door


def ctx(request: Request) -> tuple[ApiKey, audit_mod.AuditRecord]:
    s = request.scope["slm"]
    return s["key"], s["audit"]


def backend(door: Door, key: ApiKey, rec, endpoint: str, model: str):
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
    door = door_of(request)
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
    door.metrics.guard_actions.labels(route, worst.action).inc()
    for v in every:
        if rec.guard is None or SEVERITY[v.action] > SEVERITY[rec.guard.split(":")[0]]:
            rec.guard = v.summary()
    if worst.action == "block":
        door.metrics.guard_blocks.labels(route).inc()
        where = ""
        if whole is worst:
            where = " in the conversation as a whole"
        elif len(texts) > 1:
            where = f" in {'message' if joined else 'input'} {verdicts.index(worst)}"
        reasons = f" ({', '.join(worst.reasons)})" if worst.reasons else ""
        raise ApiError(400, f"the input guard blocked this request{where}{reasons}", "invalid_request_error",
                       "guard_blocked")  # fmt: skip
    return [v.text if v.action == "redact" else t for t, v in zip(texts, verdicts)]


def remember_prompt(door: Door, rec, text: str) -> None:
    if door.cfg.audit.store_prompts:
        rec.prompt = audit_mod.redact_prompt(text)


async def wait(scope, fut: concurrent.futures.Future):
    """The result of `fut` within what is left of the request's timeout (504 after, and `fut` cancelled)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(fut), remaining(scope))
    except asyncio.TimeoutError:
        fut.cancel()
        raise timed_out(scope["slm"]["door"].cfg) from None
