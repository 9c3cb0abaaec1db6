"""Embeddings and classification: every input through the guard, then the model's micro-batcher, within
the request's deadline."""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, Request

from slmforge.serve.capped import CappedRoute, remaining, timed_out
from slmforge.serve.door import Door
from slmforge.serve.errors import ERRORS, ApiError
from slmforge.serve.routes.steps import backend, ctx, door_of, guard_texts, remember_prompt
from slmforge.serve.schemas import ClassifyRequest, EmbeddingsRequest

router = APIRouter(route_class=CappedRoute)


@router.post("/v1/embeddings", tags=["openai"], responses=ERRORS)
async def embeddings(body: EmbeddingsRequest, request: Request):
    door = door_of(request)
    key, rec = ctx(request)
    b = backend(door, key, rec, "embeddings", body.model)
    texts = text_inputs(door, body.input)
    if body.dimensions is not None and body.dimensions != b.embedder.dim:
        raise ApiError(400, f"{body.model} makes {b.embedder.dim}-d vectors; dimensions cannot change that",
                       param="dimensions")  # fmt: skip
    texts = await guard_texts(request, texts)
    remember_prompt(door, rec, "\n".join(texts))
    out = await batched(door, request.scope, b, texts)
    rec.tokens_in = sum(n for _, n in out)

    def encode(v):
        if body.encoding_format == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        return [float(x) for x in v]

    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, (v, _) in enumerate(out)]
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": rec.tokens_in, "total_tokens": rec.tokens_in}}  # fmt: skip


@router.post("/v1/classify", tags=["slmforge"], responses=ERRORS)
async def classify(body: ClassifyRequest, request: Request):
    door = door_of(request)
    key, rec = ctx(request)
    b = backend(door, key, rec, "classify", body.model)
    texts = text_inputs(door, body.input)
    texts = await guard_texts(request, texts)
    remember_prompt(door, rec, "\n".join(texts))
    out = await batched(door, request.scope, b, texts)
    rec.tokens_in = sum(r["tokens"] for r in out)
    data = [{"index": i, "label": r["label"], "score": r["score"]} for i, r in enumerate(out)]
    return {"object": "list", "model": body.model, "data": data,
            "usage": {"prompt_tokens": rec.tokens_in, "total_tokens": rec.tokens_in}}  # fmt: skip


def text_inputs(door: Door, raw) -> list[str]:
    cap = door.cfg.limits.max_inputs
    texts = [raw] if isinstance(raw, str) else list(raw)
    if not texts:
        raise ApiError(400, "input is empty", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input must be text (token ids are not accepted)", param="input")
    if len(texts) > cap:
        raise ApiError(400, f"{len(texts)} inputs; this server takes at most {cap}", param="input")
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(400, f"input {i} is empty", param="input")
    return texts


async def batched(door: Door, scope, b, texts: list[str]) -> list:
    try:
        return await asyncio.wait_for(b.batcher.submit(texts), remaining(scope))
    except asyncio.TimeoutError:
        raise timed_out(door.cfg) from None
