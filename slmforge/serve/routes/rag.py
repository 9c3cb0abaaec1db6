"""Retrieval-augmented answers (/v1/rag/ask, on the index's own executor) and routed pipelines
(/v1/pipelines/{name}, on the door's pipeline thread, where their SQLite indexes were opened)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from slmforge.serve.capped import CappedRoute
from slmforge.serve.errors import ERRORS, ApiError
from slmforge.serve.routes.steps import backend, ctx, door_of, guard_texts, remember_prompt, wait
from slmforge.serve.schemas import PipelineRequest, RagRequest

router = APIRouter(route_class=CappedRoute)


@router.post("/v1/rag/ask", tags=["slmforge"], responses=ERRORS)
async def rag_ask(body: RagRequest, request: Request):
    door = door_of(request)
    key, rec = ctx(request)
    b = backend(door, key, rec, "rag", body.model)
    question = (await guard_texts(request, [body.question]))[0]
    remember_prompt(door, rec, question)
    asked, cap = body.max_tokens, door.cfg.limits.max_tokens
    if asked is not None and asked > cap:
        raise ApiError(400, f"max_tokens {asked} is above this server's cap of {cap}", param="max_tokens",
                       code="max_tokens_too_large")  # fmt: skip
    fut = b.executor.submit(b.ask, question, body.k, asked or b.cfg.max_new_tokens, body.mode)
    ans, sources = await wait(request.scope, fut)
    rec.tokens_in = ans.prompt_tokens
    return {"object": "rag.answer", "model": body.model, "answer": ans.text, "abstained": ans.abstained,
            "citations": [sources[n - 1] for n in ans.citations if 0 < n <= len(sources)],
            "sources": sources, "best_cosine": ans.best_cosine,
            "usage": {"prompt_tokens": ans.prompt_tokens}}  # fmt: skip


@router.post("/v1/pipelines/{name}", tags=["slmforge"], responses=ERRORS)
async def run_pipeline(name: str, body: PipelineRequest, request: Request):
    door = door_of(request)
    key, rec = ctx(request)
    rec.model = name
    if not key.allows("pipelines", name):
        raise ApiError(403, f"this key may not run pipeline {name!r}", "permission_error", "scope")
    p = door.pipelines.get(name)
    if p is None:
        raise ApiError(404, f"no pipeline {name!r}", "not_found_error", "pipeline_not_found")
    text = (await guard_texts(request, [body.input]))[0]
    remember_prompt(door, rec, text)
    result = await wait(request.scope, door.pipeline_executor.submit(p.run, text))
    return {"object": "pipeline.result", "pipeline": name, **result}
