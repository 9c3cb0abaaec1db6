"""The FastAPI app: OpenAI-compatible endpoints behind one door that authenticates, limits and audits.

`FrontDoor` (door.py, a plain ASGI middleware) runs before any body is parsed: it finds the endpoint family
from the path, checks the API key (401), the key's rate limit (429 + Retry-After, spent by out-of-scope
calls too), its endpoint scope (403), the body size (413) and the admission queue (503), and after the
last byte of the response it writes the audit record and the metrics. `CappedRoute` (capped.py) then
parses the JSON body off the event loop and applies the caps (messages, content parts, characters, stop
strings: 400) before the body is validated; handlers (routes/) check the per-model scope and the token
caps, run the input guard over every text of the request in one executor job, template and tokenise off
the event loop and call the models, all within the request's `timeout_s` (504). Every error is an
OpenAI-style JSON body (errors.py: `{"error": {"message", "type", "param", "code"}}`), never a traceback.

`create_app` only wires these together: the `Door` (shared state, at `app.state.door`), the middleware,
the error handlers and the routers.
"""

from __future__ import annotations

import concurrent.futures
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from slmforge.serve.auth import KeyStore
from slmforge.serve.backends import Guarded, load_backends, load_guard, load_pipelines
from slmforge.serve.capped import CappedRoute
from slmforge.serve.config import ServeConfig
from slmforge.serve.door import Door, FrontDoor
from slmforge.serve.errors import add_error_handlers
from slmforge.serve.metrics import Metrics
from slmforge.serve.routes import encoders, generation, health, models, rag

ROUTERS = (health.router, models.router, generation.router, encoders.router, rag.router)  # OpenAPI order


def freeze_heap() -> None:
    """Move everything alive now (the loaded models, torch, transformers: millions of objects) out of the
    garbage collector's reach. Otherwise a request that allocates many objects (a 25,000-message body)
    sets off a full collection that walks all of them and holds the event loop for 0.1-1 s. `slm serve`
    calls this once the models are loaded."""
    import gc

    gc.collect()
    gc.freeze()


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
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
