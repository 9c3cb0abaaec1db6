"""Parsing and caps, off the event loop, within the request's deadline.

`CappedRoute` parses a JSON body on the door's prep thread and applies the caps (messages, content parts,
characters, stop strings: 400) before FastAPI validates it into the request model; `offload` runs any
blocking step (templating, tokenising, the guard) on an executor within what is left of the request's
`timeout_s` (504 after).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from slmforge.serve.config import ServeConfig
from slmforge.serve.door import endpoint_of
from slmforge.serve.errors import ApiError
from slmforge.serve.limits import CapExceeded, array_caps, check_caps, parse_json


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
