"""Does one huge request stall the server? 25,000 short chat messages and a 1 MB completion prompt sent
to a live uvicorn on loopback while a poller calls /healthz back to back (issue 24's acceptance: refused
in <= 100 ms, no /healthz answer slower than 50 ms).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/serve_stall.py [--reps 3] [--json out.json]

The app is whatever slmforge is on PYTHONPATH (run it with /work/main and with a branch side by side:
same machine, same run order), with the real rules-only guard (`load_guard({"detector": None})`), a
chat stand-in that answers at once (the point is the request path, not decoding) and torch and
transformers imported, so the garbage collector has a realistic heap to walk. Where the code has
`freeze_heap` (what `slm serve` calls once its models are loaded) it is called. Prints, per attack, the
status and client-side milliseconds of each repetition, and the /healthz poll count, median and max.
Client and server share this process and the machine's cores: timings on a loaded machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each attack (1-20)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    if not 1 <= args.reps <= 20:
        ap.error("--reps takes 1-20")
    os.environ["SLMFORGE_HOME"] = tempfile.mkdtemp(prefix="slm-stall-")
    import httpx
    import torch  # noqa: F401  (a realistic heap)
    import transformers  # noqa: F401
    import uvicorn

    from slmforge.guard import load_guard
    from slmforge.serve import app as app_mod
    from slmforge.serve.auth import create_key
    from slmforge.serve.backends import GenResult
    from slmforge.serve.config import ModelConfig, from_dict

    class Instant:
        kind = "chat"
        cfg = ModelConfig("spy", "chat", "x", max_new_tokens=1)

        def encode(self, messages, prompt=None) -> list[int]:
            return [1, 2, 3]

        def generate(self, ids, p, on_text, cancel) -> GenResult:
            return GenResult("ok", len(ids), 1, "stop", 0.0)

    cfg = from_dict({"models": [], "limits": {"rate_per_minute": 100_000, "burst": 10_000}})
    app = app_mod.create_app(
        cfg, backends={"spy": Instant()}, guard=load_guard({"detector": None}), pipelines={}
    )
    if hasattr(app_mod, "freeze_heap"):
        app_mod.freeze_heap()
    headers = {"Authorization": f"Bearer {create_key('stall', ['*'])[0]}", "Content-Type": "application/json"}
    attacks = {  # serialised before the clock starts
        "25k messages": ("/v1/chat/completions", json.dumps({"model": "spy", "max_tokens": 1, "messages":
                         [{"role": "user", "content": "hi"}] * 25_000}).encode()),
        "1 MB prompt": ("/v1/completions", json.dumps({"model": "spy", "max_tokens": 1,
                        "prompt": "x " * 500_000}).encode()),
    }  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    polls: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                started = time.perf_counter()
                c.get(url + "/healthz")
                polls.append(time.perf_counter() - started)
                time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(0.5)
    polls.clear()
    results: dict[str, list] = {}
    with httpx.Client(base_url=url, timeout=300) as c:
        for name, (path, body) in attacks.items():
            for _ in range(args.reps):
                started = time.perf_counter()
                r = c.post(path, content=body, headers=headers)
                results.setdefault(name, []).append(
                    {"status": r.status_code, "ms": round((time.perf_counter() - started) * 1000, 1)}
                )
    stop.set()
    poller.join()
    server.should_exit = True
    polls.sort()
    out = {"code": app_mod.__file__, "attacks": results, "healthz_polls": len(polls),
           "healthz_p50_ms": round(polls[len(polls) // 2] * 1000, 1), "healthz_max_ms": round(polls[-1] * 1000, 1)}  # fmt: skip
    print(json.dumps(out))
    if args.json:
        from slmforge.core.fsutil import write_json

        write_json(args.json, out)


if __name__ == "__main__":
    main()
