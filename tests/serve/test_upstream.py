"""A chat model decoded by an upstream OpenAI-compatible server (vLLM in production; here a second
slmforge server stands in): the door keeps keys, guard and audit; the upstream's usage is recorded."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from slmforge.serve import audit
from slmforge.serve.backends import UpstreamChatBackend
from slmforge.serve.config import ModelConfig
from tests.serve.conftest import LiveServer, bearer

CHAT = {"model": "big", "messages": [{"role": "user", "content": "the cat sees"}], "max_tokens": 6}


def test_chat_through_an_upstream_server(make_app, new_key, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", new_key("chat", "completions", name="door"))
    with LiveServer(make_app(limits={"max_tokens": 8})) as upstream:
        big = UpstreamChatBackend(ModelConfig("big", "chat", upstream=upstream.url + "/v1", upstream_model="tiny",
                                              upstream_key_env="UPSTREAM_KEY"))  # fmt: skip
        app = make_app(extra_backends={"big": big})
        k = bearer(new_key("chat:big", "completions:big", name="user"))
        with TestClient(app) as c:
            direct = c.post(
                "/v1/chat/completions", json={**CHAT, "model": "tiny"}, headers=bearer(new_key("*"))
            ).json()
            r = c.post("/v1/chat/completions", json=CHAT, headers=k)
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["model"] == "big" and got["choices"][0]["message"] == direct["choices"][0]["message"]
            assert got["usage"] == direct["usage"]
            with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=k) as s:
                events = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
            streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
            assert streamed == direct["choices"][0]["message"]["content"]
            comp = c.post(
                "/v1/completions", json={"model": "big", "prompt": "the cat", "max_tokens": 4}, headers=k
            )
            assert comp.status_code == 200 and comp.json()["usage"]["completion_tokens"] <= 4
            too_many = c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 20}, headers=k)
            assert too_many.status_code == 400 and "upstream" in too_many.json()["error"]["message"]
            app.state.door.audit.flush()
        rows = [r for r in audit.query(limit=None) if r.model == "big"]
        assert rows and all(r.key_name == "user" for r in rows)
        ok = [r for r in rows if r.status == 200]
        assert ok[-1].tokens_in == direct["usage"]["prompt_tokens"]
    gone = make_app(extra_backends={"big": big})  # the upstream has stopped
    with TestClient(gone) as c:
        r = c.post("/v1/chat/completions", json=CHAT, headers=k)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
