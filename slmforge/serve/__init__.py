"""`slm serve`: one secure, OpenAI-compatible front door for slmforge's models, indexes and pipelines.

config.py reads serve.yaml into typed dataclasses; auth.py holds API keys (hashed, scoped, expiring) in the
workspace database; limits.py the per-key rate limits and the bounded admission queue; audit.py one record
per request; metrics.py the Prometheus series; batching.py dynamic micro-batching for classify and
embeddings; backends.py the loaded models; door.py the middleware every request passes (key, limits,
scopes, body size, queue, audit) and the state it shares with the handlers; capped.py JSON parsing and caps
off the event loop; errors.py the OpenAI-style error bodies; schemas.py the request bodies; routes/ the
endpoints, one APIRouter per family; app.py `create_app`, which wires them into one FastAPI app.
"""
