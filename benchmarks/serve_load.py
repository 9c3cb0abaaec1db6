"""Load test of `slm serve` on loopback: N concurrent clients for T seconds on classify and on chat.

    nice -n 19 python benchmarks/serve_load.py --clients 64 --seconds 60 [--classifier runs/b77] \
        [--chat-model smollm2-135m-instruct] [--max-tokens 16] [--json benchmarks/results/serve_load.json]

It starts `slm serve` as a subprocess on 127.0.0.1 (a free port) with a fresh workspace, creates a key,
and runs three phases with the same clients and duration: classify through a micro-batched model
(max 32 texts, 5 ms wait), classify through the same model unbatched (max_size 1), and chat (greedy,
--max-tokens). Each client sends one request at a time, back to back, until the time is up. Reported per
phase: requests, status counts, p50 / p99 latency, throughput (and generated tokens/s for chat); then the
batched / unbatched classify
throughput ratio, the mean batch size (from /metrics), and whether the audit log holds exactly one
record per request (counted after a graceful shutdown). Exit status 1 on any 5xx or a lost record.

Without --classifier it builds one from MiniLM-L6 (22.7M, a random 3-label head: the cost of a forward
pass is what matters here, not accuracy). The server runs with --threads (default 1) torch threads and two
generation workers. Clients (a minimal keep-alive HTTP/1.1 client, cheap in CPU) and server share the
machine's cores. Bounded: at most 256 clients, 600 s per phase, 900 s per request (in-flight requests
finish after a phase's time is up, so a chat phase can run a few minutes past it on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTS = [
    "my credit card was stolen", "how do I top up my account?", "what is the euro exchange rate today",
    "I am still waiting for my new card", "why was my transfer declined", "can I change my PIN at an ATM",
    "someone used my card without permission", "the app says my top-up failed", "how long does a card take to arrive",
    "I need to freeze my card right now please", "is there a fee for paying in dollars", "where can I see my statement",
]  # fmt: skip
REQUEST_LIMIT_S = 900  # a queued chat at 64 clients can wait minutes on 2 cores; never 504 for that alone
PROMPTS = [
    "What is a bank card?",
    "Say hello.",
    "Name a colour.",
    "What is two plus two?",
    "Give me a short tip.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0, help="Per phase.")
    ap.add_argument("--classifier", help="A classifier dir (default: MiniLM-L6 with a random head).")
    ap.add_argument("--chat-model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument(
        "--threads", type=int, default=1, help="Server torch/ONNX threads (1: clients share the cores)."
    )
    ap.add_argument("--phases", default="classify,unbatched,chat")
    ap.add_argument("--json", help="Also write the results here.")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        sys.exit("--clients must be 1-256 and --seconds 0-600 (this benchmark is bounded)")
    phases = [p for p in args.phases.split(",") if p]

    from slmforge.core import hub

    chat_path = str(Path(hub.resolve_model(args.chat_model)).resolve()) if "chat" in phases else None
    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    clf = str(Path(args.classifier).resolve()) if args.classifier else build_classifier(work / "clf")
    home = work / "home"
    os.environ["SLMFORGE_HOME"] = str(home)
    from slmforge.serve.auth import create_key

    secret = create_key("load", ["*"])[0]
    port = free_port()
    models = [
        {"name": "intents", "kind": "classify", "path": clf, "batch": {"max_size": 32, "max_wait_ms": 5}},
        {"name": "intents-unbatched", "kind": "classify", "path": clf, "batch": {"max_size": 1}},
    ]
    if chat_path:
        models.append({"name": "chat", "kind": "chat", "path": chat_path, "max_new_tokens": args.max_tokens})
    config = {
        "host": "127.0.0.1", "port": port, "threads": args.threads, "models": models,
        "limits": {"rate_per_minute": 10**7, "burst": 10**6, "queue_size": args.clients * 2 + 8,
                   "timeout_s": REQUEST_LIMIT_S - 60, "generation_workers": 2, "max_tokens": max(64, args.max_tokens)},
    }  # fmt: skip
    (work / "serve.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = {**os.environ, "SLMFORGE_HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "slmforge.cli", "serve", "--config", str(work / "serve.yaml"), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    results: dict = {"clients": args.clients, "seconds": args.seconds, "machine": machine(), "phases": {}}
    sent = 0
    try:
        wait_ready(url, server, work)
        for phase in phases:
            print(f"{phase}: {args.clients} clients x {args.seconds:g} s ...", flush=True)
            r = asyncio.run(run_phase(port, secret, phase, args.clients, args.seconds, args.max_tokens))
            sent += r.pop("sent")
            results["phases"][phase] = r
            print("  " + summary_line(r), flush=True)
        results["mean_batch_size"] = mean_batch_size(url, secret)
    finally:
        server.send_signal(signal.SIGINT)  # graceful: in-flight requests finish, the audit log is flushed
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
    with sqlite3.connect(home / "workspace.db") as con:
        audited = con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    p = results["phases"]
    if "classify" in p and "unbatched" in p and p["unbatched"]["throughput_rps"] > 0:
        results["batched_over_unbatched"] = round(
            p["classify"]["throughput_rps"] / p["unbatched"]["throughput_rps"], 2
        )
    results["requests"] = sent
    results["audit_records"] = audited
    results["no_5xx"] = all(r["status_5xx"] == 0 for r in p.values())
    results["audit_complete"] = audited == sent
    print(json.dumps({k: v for k, v in results.items() if k != "phases"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if results["no_5xx"] and results["audit_complete"] else 1)


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the cores with the server, and
    httpx costs a few milliseconds of CPU per request, which would be measured as server overhead."""

    def __init__(self, port: int, secret: str):
        self.port, self.secret = port, secret
        self.reader = self.writer = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.secret}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()  # fmt: skip
        for attempt in (0, 1):  # the server may close an idle keep-alive connection: reconnect once
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.write(head + data)
                await self.writer.drain()
                header = await self.reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            (int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), 0
        )
        payload = await self.reader.readexactly(length)
        if any(x.lower() == "connection: close" for x in lines):
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_phase(
    port: int, secret: str, phase: str, clients: int, seconds: float, max_tokens: int
) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = tokens_out = 0
    end = time.perf_counter() + seconds

    async def one_client(i: int) -> None:
        nonlocal errors, tokens_out
        rng = random.Random(i)
        conn = Connection(port, secret)
        while time.perf_counter() < end:
            if phase == "chat":
                path = "/v1/chat/completions"
                body = {"model": "chat", "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}  # fmt: skip
            else:
                path = "/v1/classify"
                body = {
                    "model": "intents" if phase == "classify" else "intents-unbatched",
                    "input": rng.choice(TEXTS),
                }
            t0 = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(conn.post(path, body), REQUEST_LIMIT_S)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                    if phase == "chat":
                        tokens_out += json.loads(payload)["usage"]["completion_tokens"]
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                errors += 1
                conn.close()
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    sent = sum(statuses.values())
    return {
        "sent": sent,
        "requests": sent,
        "ok": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "status_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "transport_errors": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "throughput_rps": round(statuses.get(200, 0) / wall, 2),
        "tokens_per_s": round(tokens_out / wall, 2) if phase == "chat" else None,
        "wall_s": round(wall, 1),
    }


def summary_line(r: dict) -> str:
    return (f"{r['requests']} requests ({r['statuses']}), p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"{r['throughput_rps']} req/s" + (f", {r['tokens_per_s']} tokens/s" if r.get("tokens_per_s") else "")
            + f", transport errors {r['transport_errors']}")  # fmt: skip


def build_classifier(out: Path) -> str:
    """MiniLM-L6 with a random 3-label head, in `slm classify train`'s layout."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from slmforge.core import hub

    src = hub.CATALOG["minilm-l6"].locate()
    labels = ["lost_or_stolen_card", "top_up", "other"]
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        src, num_labels=3, id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)}
    )
    model.eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    (out / "classifier.json").write_text(json.dumps({"labels": labels, "max_len": 64}))
    return str(out)


def wait_ready(url: str, server: subprocess.Popen, work: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited: {(work / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not become ready")


def mean_batch_size(url: str, secret: str) -> float | None:
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {secret}"}).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith('slm_batch_size_sum{model="intents"}'):
            total = float(line.split()[-1])
        elif line.startswith('slm_batch_size_count{model="intents"}'):
            count = float(line.split()[-1])
    return round(total / count, 2) if count else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version()}  # fmt: skip


if __name__ == "__main__":
    main()
