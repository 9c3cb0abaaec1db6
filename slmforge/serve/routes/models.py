"""/v1/models: the models a key may use (a model outside its scopes is not listed and answers 404)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from slmforge.serve.auth import ApiKey
from slmforge.serve.capped import CappedRoute
from slmforge.serve.door import KIND_ENDPOINTS
from slmforge.serve.errors import ERRORS, ApiError
from slmforge.serve.routes.steps import ctx, door_of

router = APIRouter(route_class=CappedRoute)


def model_card(name: str, b) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "slmforge", "kind": b.kind}


def visible(key: ApiKey, name: str, b) -> bool:
    return any(key.allows(ep, name) for ep in KIND_ENDPOINTS[b.kind])


@router.get("/v1/models", tags=["openai"], responses=ERRORS)
async def list_models(request: Request):
    key = ctx(request)[0]
    data = [model_card(n, b) for n, b in door_of(request).backends.items() if visible(key, n, b)]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}", tags=["openai"], responses=ERRORS)
async def get_model(model_id: str, request: Request):
    key = ctx(request)[0]
    b = door_of(request).backends.get(model_id)
    if b is None or not visible(key, model_id, b):
        raise ApiError(404, f"no model {model_id!r}", "not_found_error", "model_not_found", "model")
    return model_card(model_id, b)
