"""Rate limits (429 + Retry-After), the bounded queue (503), per-request timeouts (504), micro-batching."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from fastapi.testclient import TestClient

from slmforge.serve import audit
from slmforge.serve.batching import MicroBatcher
from slmforge.serve.limits import Admission, RateLimiter
from tests.serve.conftest import LiveServer, bearer
from tests.serve.fakes import SlowChat

SLOW = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}


def test_rate_limit_answers_429_with_retry_after(make_app, new_key):
    # one token per 10 s: the 4 requests below fit well inside one refill even on a loaded machine
    app = make_app(limits={"rate_per_minute": 6, "burst": 3})
    own = new_key("classify", rate_per_minute=2)  # its own limit: 2 per minute, burst 2
    shared = new_key("classify")
    body = {"model": "intents", "input": "x"}
    with TestClient(app) as c:
        codes = [c.post("/v1/classify", json=body, headers=bearer(own)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/v1/classify", json=body, headers=bearer(own))
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        codes = [c.post("/v1/classify", json=body, headers=bearer(shared)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # the server's burst; other keys are not affected by `own`


def test_token_bucket_refills():
    rl = RateLimiter(rate_per_minute=60, burst=2)
    assert rl.take("a", now=0) == 0 and rl.take("a", now=0) == 0
    assert rl.take("a", now=0) == 1.0  # one per second
    assert rl.take("a", now=1.0) == 0
    assert rl.take("b", now=1.0) == 0


def test_full_queue_answers_503_and_never_grows(make_app, new_key):
    slow = SlowChat()
    app = make_app(extra_backends={"slow": slow}, limits={"queue_size": 2, "generation_workers": 1})
    k = bearer(new_key("*"))
    results: list[int] = []
    with LiveServer(app) as srv:
        threads = [threading.Thread(target=lambda: results.append(
            httpx.post(srv.url + "/v1/chat/completions", json=SLOW, headers=k, timeout=30).status_code))
            for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while app.state.door.admission.depth < 2 and time.time() < deadline:
            time.sleep(0.01)
        r = httpx.post(srv.url + "/v1/chat/completions", json=SLOW, headers=k)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert httpx.get(srv.url + "/readyz").status_code == 503  # a balancer sends traffic elsewhere
        assert httpx.get(srv.url + "/healthz").status_code == 200
        slow.release.set()
        for t in threads:
            t.join()
        assert results == [200, 200]
        assert httpx.get(srv.url + "/readyz").status_code == 200
        metrics = httpx.get(srv.url + "/metrics", headers=k).text
    assert "slm_queue_depth 0.0" in metrics
    assert 'slm_requests_total{endpoint="chat",status="503"} 1.0' in metrics


def test_admission_counts():
    a = Admission(1)
    assert a.enter() and not a.enter()
    a.leave()
    assert a.enter()


def test_slow_request_times_out_504_and_others_still_run(make_app, new_key):
    slow = SlowChat()
    app = make_app(extra_backends={"slow": slow}, limits={"timeout_s": 0.5, "generation_workers": 2})
    k = bearer(new_key("*"))
    with TestClient(app) as c:
        started = time.perf_counter()
        r = c.post("/v1/chat/completions", json=SLOW, headers=k)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert time.perf_counter() - started < 5
        # the timed-out generation was cancelled: the next one is not stuck behind it
        ok = c.post("/v1/chat/completions", json={**SLOW, "model": "tiny"}, headers=k)
        assert ok.status_code == 200
        app.state.door.audit.flush()
    assert [r.status for r in audit.query(endpoint="chat")] == [200, 504]


def test_one_slow_generation_does_not_block_another(make_app, new_key):
    slow = SlowChat()
    app = make_app(extra_backends={"slow": slow}, limits={"generation_workers": 2})
    k = bearer(new_key("*"))
    with LiveServer(app) as srv:
        t = threading.Thread(
            target=lambda: httpx.post(srv.url + "/v1/chat/completions", json=SLOW, headers=k, timeout=30)
        )
        t.start()
        assert slow.started.wait(10)
        started = time.perf_counter()
        r = httpx.post(srv.url + "/v1/chat/completions", json={**SLOW, "model": "tiny", "max_tokens": 4}, headers=k,
                       timeout=30)  # fmt: skip
        assert r.status_code == 200 and time.perf_counter() - started < 10
        slow.release.set()
        t.join()


def test_micro_batcher_collects_concurrent_requests():
    calls: list[list[str]] = []

    def fn(items):
        time.sleep(0.05)
        calls.append(list(items))
        return [x.upper() for x in items]

    async def main():
        b = MicroBatcher(fn, max_size=8, max_wait_ms=20)
        outs = await asyncio.gather(*(b.submit([f"t{i}"]) for i in range(10)), b.submit(["a", "b"]))
        b.close()
        return outs

    outs = asyncio.run(main())
    assert outs[:10] == [[f"T{i}"] for i in range(10)] and outs[10] == ["A", "B"]
    assert sorted(len(c) for c in calls) == [4, 8]  # 12 texts: a full batch of 8, then the rest
    assert sum(calls, []) == [f"t{i}" for i in range(8)] + ["t8", "t9", "a", "b"]  # in arrival order


def test_micro_batcher_passes_errors_to_every_request():
    def fn(items):
        raise ValueError("bad batch")

    async def main():
        b = MicroBatcher(fn, max_size=4, max_wait_ms=5)
        return await asyncio.gather(b.submit(["a"]), b.submit(["b"]), return_exceptions=True)

    outs = asyncio.run(main())
    assert all(isinstance(o, ValueError) for o in outs)


def test_a_stream_that_times_out_is_audited_as_504(make_app, new_key):
    slow = SlowChat()
    app = make_app(extra_backends={"slow": slow}, limits={"timeout_s": 0.5})
    with TestClient(app) as c:
        with c.stream(
            "POST", "/v1/chat/completions", json={**SLOW, "stream": True}, headers=bearer(new_key("*"))
        ) as r:
            lines = [line for line in r.iter_lines() if line]
        assert r.status_code == 200  # the headers went out before the timeout
        assert '"timeout"' in lines[-2] and lines[-1] == "data: [DONE]"
        app.state.door.audit.flush()
    assert audit.query(endpoint="chat")[0].status == 504


def test_concurrent_generations_share_the_weights_safely(make_app, new_key):
    from concurrent.futures import ThreadPoolExecutor

    k = bearer(new_key("chat"))
    prompts = ["the cat sees", "a small dog likes", "my friend builds", "the teacher reads"]
    with LiveServer(make_app(limits={"generation_workers": 4})) as srv:

        def ask(p: str) -> str:
            body = {"model": "tiny", "messages": [{"role": "user", "content": p}], "max_tokens": 8}
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, headers=k, timeout=60)
            return r.json()["choices"][0]["message"]["content"]

        alone = [ask(p) for p in prompts]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, prompts * 2))
    assert together == alone * 2  # greedy: the same text whatever runs beside it


def test_chunked_oversized_body_is_413(make_app, new_key):
    k = bearer(new_key("*"))
    with TestClient(make_app(limits={"max_body_bytes": 1000})) as c:
        chunks = (b'{"model": "intents", "input": "' + b"x" * 600, b"x" * 600 + b'"}')
        r = c.post("/v1/classify", content=iter(chunks), headers={**k, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        r = c.post("/v1/classify", content=b"{}", headers={**k, "Content-Length": "abc"})
        assert r.status_code == 400


def test_failed_key_attempts_are_rate_limited_per_client(make_app, new_key):
    with TestClient(make_app(limits={"rate_per_minute": 60, "burst": 3})) as c:
        bad = {"Authorization": "Bearer slm-guess"}
        codes = [c.get("/v1/models", headers=bad).status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        assert (
            c.get("/v1/models", headers=bearer(new_key("models"))).status_code == 200
        )  # keys have their own


def test_rate_limiter_memory_is_bounded():
    rl = RateLimiter(rate_per_minute=60, burst=2)
    rl.max_buckets = 100
    for i in range(1000):
        rl.take(f"ip{i}", now=i * 0.001)
    assert len(rl._buckets) <= 100
    rl.take("late", now=10_000)  # everything idle long enough is forgotten
    assert len(rl._buckets) <= 100
