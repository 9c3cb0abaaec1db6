"""Chat and text completions, answered whole or streamed as server-sent events: the request's caps on
tokens and stop strings, `response_format` and tools (slmforge.serve.structured), the guard over every
message, templating and tokenising off the event loop, and generation on the door's worker pool within the
request's deadline (cancelled at it). Tool calls come back in OpenAI's shape (`message.tool_calls`,
`finish_reason` "tool_calls"; streamed as `delta.tool_calls`); a call the tool's schema rejects is never
passed on: the reply stays text and `message.tool_call_error` (streamed: `delta.tool_call_error`) says why."""

from __future__ import annotations

import asyncio
import functools
import json
import threading

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from slmforge.core.errors import SlmError
from slmforge.serve.backends import Cancelled, GenParams, GenResult, UpstreamError
from slmforge.serve.capped import CappedRoute, offload, remaining, timed_out
from slmforge.serve.door import Door
from slmforge.serve.errors import ERRORS, ApiError, error_body
from slmforge.serve.limits import MAX_STOP
from slmforge.serve.routes.steps import backend, ctx, door_of, guard_texts, remember_prompt
from slmforge.serve.schemas import ChatRequest, CompletionRequest, GenBody
from slmforge.serve.structured import Plan, chat_messages, plan_chat, response_constraint

router = APIRouter(route_class=CappedRoute)


@router.post("/v1/chat/completions", tags=["openai"], responses=ERRORS)
async def chat_completions(body: ChatRequest, request: Request):
    door = door_of(request)
    key, rec = ctx(request)
    b = backend(door, key, rec, "chat", body.model)
    params = gen_params(door, body, body.max_completion_tokens or body.max_tokens, b)
    plan = await offload(request.scope, door.prep, plan_chat, b, body, body.model)
    params.constraint, params.response_format = plan.constraint, plan.response_format
    # every role: a system, developer or forged assistant message reaches the model as surely as a user's
    texts = await guard_texts(request, [content_text(m.content) for m in body.messages], joined=True)
    messages = chat_messages(body, texts)
    remember_prompt(door, rec, "\n".join(m["content"] for m in messages if m["role"] == "user"))
    if plan.tools is None:
        ids = await offload(request.scope, door.prep, b.encode, messages)
    else:
        ids = await offload(request.scope, door.prep, functools.partial(b.encode, messages, tools=plan.tools))
    rec.tokens_in = len(ids)
    if not rec.tokens_in:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if callable(
        check := getattr(b, "check_prompt", None)
    ):  # a prompt over the model's slot: 400, before a stream
        check(ids)
    cid = "chatcmpl-" + rec.request_id
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return sse(generate_stream(door, b, ids, params, request.scope, cid, "chat.completion.chunk", body.model,
                                   usage, plan))  # fmt: skip
    r = await generate(door, b, ids, params, request.scope)
    message: dict = {"role": "assistant", "content": r.text}
    finish = r.finish_reason
    read = plan.read(r.text)
    if read is not None and read.calls:
        message, finish = (
            {"role": "assistant", "content": read.content, "tool_calls": read.calls},
            "tool_calls",
        )
    elif read is not None and read.error:
        message["tool_call_error"] = read.error  # reported; never passed on as a valid call
    return {"id": cid, "object": "chat.completion", "created": int(rec.time), "model": body.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage_of(r)}  # fmt: skip


@router.post("/v1/completions", tags=["openai"], responses=ERRORS)
async def completions(body: CompletionRequest, request: Request):
    door = door_of(request)
    key, rec = ctx(request)
    b = backend(door, key, rec, "completions", body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(400, "send one prompt per request", param="prompt")
    params = gen_params(door, body, body.max_tokens, b)
    if callable(getattr(b, "tool_format", None)):  # a local model: the constraint is ours to enforce
        params.constraint = await offload(request.scope, door.prep, response_constraint, body.response_format)
    elif body.response_format is not None:
        params.response_format = body.response_format.model_dump(exclude_none=True)
    prompt = (await guard_texts(request, prompts[:1]))[0]
    remember_prompt(door, rec, prompt)
    ids = await offload(request.scope, door.prep, b.encode, None, prompt)
    rec.tokens_in = len(ids)
    if not rec.tokens_in:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if callable(
        check := getattr(b, "check_prompt", None)
    ):  # a prompt over the model's slot: 400, before a stream
        check(ids)
    cid = "cmpl-" + rec.request_id
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return sse(
            generate_stream(door, b, ids, params, request.scope, cid, "text_completion", body.model, usage)
        )
    r = await generate(door, b, ids, params, request.scope)
    return {"id": cid, "object": "text_completion", "created": int(rec.time), "model": body.model,
            "choices": [{"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}],
            "usage": usage_of(r)}  # fmt: skip


def gen_params(door: Door, body: GenBody, asked: int | None, b) -> GenParams:
    cap = door.cfg.limits.max_tokens
    if asked is not None and asked > cap:
        raise ApiError(400, f"max_tokens {asked} is above this server's cap of {cap}", param="max_tokens",
                       code="max_tokens_too_large")  # fmt: skip
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):  # lengths: check_caps, before validation
        raise ApiError(400, f"stop takes up to {MAX_STOP} non-empty strings", param="stop")
    return GenParams(min(asked or b.cfg.max_new_tokens, cap), body.temperature or 0.0,
                     1.0 if body.top_p is None else body.top_p, body.seed or 0, stop)  # fmt: skip


async def generate(door: Door, b, ids: list[int], params: GenParams, scope) -> GenResult:
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
        raise timed_out(door.cfg) from None
    finally:
        cancel.set()
    note_generation(door, rec, r)
    return r


def note_generation(door: Door, rec, r: GenResult) -> None:
    rec.tokens_in = r.prompt_tokens  # an upstream server counts its own prompt tokens
    rec.tokens_out = r.completion_tokens
    if r.seconds > 0 and r.completion_tokens:
        door.metrics.tokens_per_s.labels(rec.model).observe(r.completion_tokens / r.seconds)


async def generate_stream(
    door: Door,
    b,
    ids,
    params,
    scope,
    cid: str,
    obj: str,
    model: str,
    with_usage: bool,
    plan: Plan | None = None,
):
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
    from slmforge.infer.tool_use import CallHoldback

    held = CallHoldback(plan.fmt) if plan is not None and plan.fmt is not None else None

    def chunk(text: str | None, finish: str | None = None, first: bool = False, **more) -> dict:
        if chat:
            delta = (
                ({"role": "assistant", "content": ""} if first else {})
                | ({"content": text} if text else {})
                | more
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
                    f"the request took longer than {door.cfg.limits.timeout_s:g} s", "timeout", "timeout"
                )
                return
            if item is end:
                break
            piece = held.push(item) if held is not None else item
            if piece:
                yield chunk(piece)
        try:
            r = fut.result()
        except (SlmError, UpstreamError) as e:
            yield error_body(str(e), "invalid_request_error" if isinstance(e, SlmError) else "server_error")
            return
        except ApiError as e:  # refused after the stream began (every batch slot busy): the error as an event
            yield error_body(e.message, e.type, e.code, e.param)
            return
        except Cancelled:
            return
        note_generation(door, rec, r)
        finish = r.finish_reason
        if held is not None:
            read = plan.read(held.text)
            if read.calls:  # OpenAI's shape: per call, its id and name, then its arguments
                for i, call in enumerate(read.calls):
                    head = {"index": i, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                    yield chunk(None, tool_calls=[head])
                    yield chunk(
                        None,
                        tool_calls=[{"index": i, "function": {"arguments": call["function"]["arguments"]}}],
                    )
                finish = "tool_calls"
            else:
                rest = held.rest()
                if rest or read.error:
                    yield chunk(rest, **({"tool_call_error": read.error} if read.error else {}))
        yield chunk(None, finish)
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
