"""Chat through the continuous batcher (`batching: auto` on the ort backend, the tests' default): concurrent
requests answer exactly what one-request decoding answers, a prompt longer than a slot is a 400 that names the
limit, a full batcher a 503 with Retry-After, and the settings are checked at startup."""

from __future__ import annotations

import concurrent.futures

import pytest
from fastapi.testclient import TestClient

from slmforge.core.errors import SlmError
from slmforge.serve.config import ModelConfig, from_dict
from tests.serve.conftest import bearer

MODELS = [
    {"name": "tiny", "kind": "chat", "path": "x", "max_new_tokens": 8},
    {"name": "intents", "kind": "classify", "path": "x"},
    {"name": "intents-1", "kind": "classify", "path": "x", "batch": {"max_size": 1}},
    {"name": "minilm", "kind": "embeddings", "path": "x", "runtime": "torch"},
]
PROMPTS = ["the cat sees", "a dog", "the bird sings a song to the", "we", "the sun and the moon", "it is"]


def test_concurrent_chat_equals_one_request_decoding(backends, tiny_model_dir, make_app, new_key):
    from slmforge.serve.backends import ChatBackend

    assert backends["tiny"].continuous is not None  # auto on ort: the batcher serves it
    alone = ChatBackend(ModelConfig("alone", "chat", str(tiny_model_dir), batching="off"), threads=1)
    assert alone.continuous is None
    models = [*MODELS, {"name": "alone", "kind": "chat", "path": "x", "batching": "off"}]
    k = bearer(new_key("*"))

    def ask(c, model, text):
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
        r = c.post("/v1/chat/completions", json=body, headers=k)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"], r.json()["choices"][0]["finish_reason"]

    with TestClient(make_app(extra_backends={"alone": alone}, models=models)) as c:
        expected = [ask(c, "alone", p) for p in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            got = list(pool.map(lambda p: ask(c, "tiny", p), PROMPTS))
    assert got == expected
    assert backends["tiny"].continuous.stats()["free_slots"] == backends["tiny"].continuous.config.max_batch


def test_prompt_longer_than_a_slot_is_a_400_naming_the_limit(tiny_model_dir, make_app, new_key):
    from slmforge.serve.backends import ChatBackend

    small = ChatBackend(ModelConfig("small", "chat", str(tiny_model_dir), slots=2, slot_tokens=24), threads=1)
    models = [*MODELS, {"name": "small", "kind": "chat", "path": "x", "slots": 2, "slot_tokens": 24}]
    body = {"model": "small", "messages": [{"role": "user", "content": "the cat sees the dog " * 8}]}
    with TestClient(make_app(extra_backends={"small": small}, models=models)) as c:
        r = c.post("/v1/chat/completions", json=body, headers=bearer(new_key("*")))
        assert r.status_code == 400, r.text
        assert (
            r.json()["error"]["code"] == "context_length_exceeded"
            and "at most 23" in r.json()["error"]["message"]
        )
        r = c.post("/v1/chat/completions", json={**body, "stream": True}, headers=bearer(new_key("*")))
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        short = {**body, "messages": [{"role": "user", "content": "a"}], "max_tokens": 500}
        r = c.post("/v1/chat/completions", json=short, headers=bearer(new_key("*")))  # clamped to the slot
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 24, r.text


def test_a_full_batcher_is_a_503_with_retry_after(backends, monkeypatch, client, new_key):
    from slmforge.infer.batcher import BatcherFull

    def full(*a, **kw):
        raise BatcherFull("all 16 batch slots are busy and 64 requests wait", 2.4)

    monkeypatch.setattr(backends["tiny"].continuous, "submit", full)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=body, headers=bearer(new_key("*")))
    assert r.status_code == 503 and r.headers["Retry-After"] == "2", r.text
    assert r.json()["error"]["code"] == "queue_full"


@pytest.mark.parametrize(
    "model, message",
    [
        ({"batching": "sometimes"}, "batching must be auto, continuous or off"),
        ({"slots": 0}, "slots must be at least 1"),
    ],
)
def test_bad_batching_settings_are_one_line_errors(model, message):
    with pytest.raises(SlmError, match=message):
        from_dict({"models": [{"name": "m", "kind": "chat", "path": "x", **model}]})


def test_continuous_on_torch_is_refused_at_startup(tiny_model_dir):
    from slmforge.serve.backends import ChatBackend

    with pytest.raises(SlmError, match="model t: continuous batching runs on the ort backend"):
        ChatBackend(
            ModelConfig("t", "chat", str(tiny_model_dir), backend="torch", batching="continuous"), threads=1
        )
    assert (
        ChatBackend(ModelConfig("t", "chat", str(tiny_model_dir), backend="torch"), threads=1).continuous
        is None
    )
