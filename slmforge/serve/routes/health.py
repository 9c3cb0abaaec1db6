"""Health and monitoring: /healthz (alive), /readyz (ready or not, for a balancer; more with a key) and
/metrics (Prometheus)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from slmforge.serve.capped import CappedRoute
from slmforge.serve.door import Door
from slmforge.serve.errors import ERRORS, ApiError, error_body, error_response
from slmforge.serve.routes.steps import door_of

log = logging.getLogger("slmforge.serve")

router = APIRouter(route_class=CappedRoute)


@router.get("/healthz", tags=["health"])
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={429: ERRORS[429], 503: ERRORS[503]})
async def readyz(request: Request):
    """Ready or not, for a balancer: only `status` without a key; with a valid key (any scope) also the
    models, pipelines, queue, the guard's own account (warnings) and the audit writer's health."""
    door = door_of(request)
    key = None
    if any(k == b"authorization" for k, _ in request.scope.get("headers") or []):
        try:
            key = door.authenticate(request.scope, None)
        except ApiError:
            try:  # a guess here spends the same bucket as anywhere else
                door.failed_attempt(request.scope)
            except ApiError as e:
                return error_response(e)
    audit_health = audit_status(door)
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


def audit_status(door: Door) -> dict:
    health = getattr(door.audit, "health", None)  # AuditLog.health() where this slmforge has it
    if not callable(health):
        return {"ok": True}
    try:
        out = health()
    except Exception as e:
        log.exception("the audit writer's health check failed")
        return {"ok": False, "error": type(e).__name__}
    return out if isinstance(out, dict) else {"ok": bool(out)}


@router.get("/metrics", tags=["health"], responses=ERRORS, response_class=Response)
async def metrics_endpoint(request: Request):
    door = door_of(request)
    door.metrics.queue_depth.set(door.admission.depth)
    return Response(door.metrics.render(), media_type="text/plain; version=0.0.4")


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types (a guard's or audit writer's self-description may hold anything)."""
    return json.loads(json.dumps(value, default=str))
