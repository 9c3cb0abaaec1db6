"""Serving fixtures: tiny real models (the conftest's tiny Llama, a 2-layer BERT classifier with MiniLM's
vocabulary, MiniLM embeddings on torch), loaded once and shared by per-test apps; keys; a live server."""

from __future__ import annotations

import json
import threading
import time

import pytest

from slmforge.serve.config import ModelConfig, from_dict

LABELS = ["lost_or_stolen_card", "card_arrival", "exchange_rate"]


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT classifier (hidden 32) in `slm classify train`'s layout."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from slmforge.core import hub

    tok = AutoTokenizer.from_pretrained(hub.CATALOG["minilm-l6"].locate())
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)})  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_classifier") / "model"
    BertForSequenceClassification(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    (out / "classifier.json").write_text(json.dumps({"labels": LABELS, "max_len": 32}))
    return out


@pytest.fixture(scope="session")
def backends(tiny_model_dir, tiny_classifier_dir, tmp_path_factory):
    """Loaded once: chat `tiny`, classify `intents` (batched) and `intents-1` (unbatched), embeddings `minilm`."""
    from slmforge.core import hub
    from slmforge.serve.backends import ChatBackend, ClassifyBackend, EmbeddingsBackend
    from slmforge.serve.config import BatchConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_serve")))
        return {
            "tiny": ChatBackend(
                ModelConfig("tiny", "chat", str(tiny_model_dir), max_new_tokens=8), threads=1
            ),
            "intents": ClassifyBackend(
                ModelConfig("intents", "classify", str(tiny_classifier_dir)), threads=1
            ),
            "intents-1": ClassifyBackend(
                ModelConfig("intents-1", "classify", str(tiny_classifier_dir), batch=BatchConfig(1, 0)),
                threads=1,
            ),
            "minilm": EmbeddingsBackend(
                ModelConfig("minilm", "embeddings", str(hub.CATALOG["minilm-l6"].locate()), runtime="torch"),
                threads=1,
            ),
        }


def serve_config(**settings):
    """A ServeConfig naming the shared backends; `settings` override top-level sections."""
    raw = {
        "models": [
            {"name": "tiny", "kind": "chat", "path": "x", "max_new_tokens": 8},
            {"name": "intents", "kind": "classify", "path": "x"},
            {"name": "intents-1", "kind": "classify", "path": "x", "batch": {"max_size": 1}},
            {"name": "minilm", "kind": "embeddings", "path": "x", "runtime": "torch"},
        ],
        "limits": {"rate_per_minute": 100_000, "burst": 10_000},
    }
    for k, v in settings.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) and k in ("limits", "auth", "audit") else v
    return from_dict(raw)


class FakePipeline:
    def __init__(self):
        self.seen: list[str] = []

    def run(self, text: str) -> dict:
        self.seen.append(text)
        return {"label": "lost_or_stolen_card", "confidence": 0.97, "route": "rag", "answer": "Freeze it [1]",
                "citations": [{"n": 1, "doc": "cards.md"}], "steps": ["classify", "rag"]}  # fmt: skip


@pytest.fixture
def make_app(backends):
    """make_app(guard=None, pipelines=None, **settings) -> a FastAPI app over the shared backends."""
    from slmforge.serve.app import create_app

    def make(guard=None, pipelines=None, extra_backends=None, **settings):
        pipes = {"bank": FakePipeline()} if pipelines is None else pipelines
        return create_app(serve_config(**settings), backends={**backends, **(extra_backends or {})}, guard=guard,
                          pipelines=pipes)  # fmt: skip

    return make


@pytest.fixture
def client(make_app):
    from fastapi.testclient import TestClient

    with TestClient(make_app()) as c:
        yield c


@pytest.fixture
def new_key():
    """new_key(*scopes, **kw) -> the secret of a fresh key (name key-N)."""
    from slmforge.serve.auth import create_key

    count = iter(range(1_000_000))

    def make(*scopes: str, name: str | None = None, **kw) -> str:
        return create_key(name or f"key-{next(count)}", list(scopes) or ["*"], **kw)[0]

    return make


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


class LiveServer:
    """uvicorn on a free loopback port, in a thread; `options` go to uvicorn.Config (e.g. proxy_headers)."""

    def __init__(self, app, **options):
        import uvicorn

        options = {"host": "127.0.0.1", "port": 0, "log_level": "warning", **options}
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live(make_app):
    """live(**settings) -> a LiveServer context for a new app."""

    def start(**kw) -> LiveServer:
        return LiveServer(make_app(**kw))

    return start
