"""OpenAI-style errors: `ApiError` (what a handler or the door raises), the JSON body every error answers
with (`{"error": {"message", "type", "param", "code"}}`, never a traceback), its OpenAPI schema, and the
app's exception handlers that turn FastAPI's own errors into that body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmforge.core.errors import SlmError


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


def add_error_handlers(app: FastAPI) -> None:
    """ApiError, SlmError (400), request validation (400) and Starlette's HTTP errors (404, 405, ...) as
    OpenAI-style JSON bodies."""

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
