"""`slm serve`: one secure, OpenAI-compatible front door for slmforge's models, indexes and pipelines.

config.py reads serve.yaml into typed dataclasses; auth.py holds API keys (hashed, scoped, expiring) in the
workspace database; limits.py the per-key rate limits and the bounded admission queue; audit.py one record
per request; metrics.py the Prometheus series; batching.py dynamic micro-batching for classify and
embeddings; backends.py the loaded models; app.py the FastAPI app that puts them behind one door.
"""
