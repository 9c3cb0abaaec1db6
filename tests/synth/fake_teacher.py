"""A fake OpenAI-compatible teacher: an http.server in a thread answering /v1/chat/completions with canned
replies, chosen by which marker word the last user message holds."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeTeacher:
    """`replies`: marker -> reply text, or (reply text, finish_reason). `fail_after`: answer HTTP 500 once
    this many calls were answered; `mode`: "ok", "malformed" (not JSON) or "no_choices"."""

    def __init__(self, replies: dict, fail_after: int | None = None, mode: str = "ok"):
        self.replies, self.fail_after, self.mode = replies, fail_after, mode
        self.calls: list[dict] = []  # the request bodies, in order
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher.lock:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, b'{"error": "not found"}')
                    if teacher.fail_after is not None and len(teacher.calls) >= teacher.fail_after:
                        return self._send(500, b'{"error": "the fake teacher is down"}')
                    teacher.calls.append(body)
                if teacher.mode == "malformed":
                    return self._send(200, b"<html>not json</html>")
                if teacher.mode == "no_choices":
                    return self._send(200, b'{"choices": []}')
                text, finish = teacher.answer(body["messages"][-1]["content"])
                out = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": finish}]}  # fmt: skip
                self._send(200, json.dumps(out).encode())

            def _send(self, code: int, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, prompt: str) -> tuple[str, str]:
        for marker, reply in self.replies.items():
            if marker in prompt:
                return reply if isinstance(reply, tuple) else (reply, "stop")
        return "no canned reply for this prompt", "stop"

    def __enter__(self) -> FakeTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
