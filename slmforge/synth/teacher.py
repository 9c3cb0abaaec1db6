"""The teacher: the model that writes synthetic rows. A local model (through slmforge.infer.engines.open_lm)
or an OpenAI-compatible server (`--teacher-url`: vLLM, Ollama, llama.cpp's server), both greedy.

Local decoding on ONNX Runtime GenAI keeps one generator whose KV cache holds the tokens every prompt starts
with (the system message and few-shot turns, about 450 tokens of a qa prompt): each prompt rewinds to the
longest prefix it shares with the previous one and prefills only the rest. Prefill dominates on a CPU (a
600-token prompt and 40 new tokens), so this is about 2.6x faster than decoding each prompt whole (15.3 s
against 5.8 s per chunk for Qwen2.5-Coder-0.5B int8 on one shared thread), with the same tokens out as
`slmforge.infer.generate.complete`. Batching does not help there: GenAI batches only equal-length prompts,
and even 8 such prompts decoded together took 124 s against 137 s one by one (prefill is compute-bound).
Other backends go through `complete_batch`.

The server teacher sends `--batch-size` requests at a time (a server batches concurrent requests itself)
with the standard library's urllib. A server that cannot be reached, answers an HTTP error or malformed
JSON stops the run with a one-line SlmError; the rows made so far stay in OUT.partial.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from slmforge.core.errors import SlmError


@dataclass
class Reply:
    text: str
    finished: bool  # ended by the model (end of turn), not cut at max_new_tokens


class HttpTeacher:
    """An OpenAI-compatible chat completions endpoint."""

    def __init__(self, url: str, model: str, seed: int, timeout_s: float, workers: int):
        base = url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.shown = url
        self.model, self.seed, self.timeout, self.workers = model, seed, timeout_s, workers
        self.name = model

    def complete(self, chats: list[list[dict]], max_new_tokens: int) -> list[Reply]:
        if len(chats) <= 1 or self.workers <= 1:
            return [self._one(c, max_new_tokens) for c in chats]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(chats))) as pool:
            return list(pool.map(lambda c: self._one(c, max_new_tokens), chats))

    def _one(self, messages: list[dict], max_new_tokens: int) -> Reply:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_new_tokens,
                "seed": self.seed, "stream": False}  # fmt: skip
        request = urllib.request.Request(
            self.url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = _first_line(e.read().decode("utf-8", "replace")) if e.fp is not None else ""
            raise SlmError(
                f"the teacher at {self.shown} answered HTTP {e.code}{': ' + detail if detail else ''}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SlmError(
                f"the teacher at {self.shown} is unreachable: {_first_line(str(reason))}"
            ) from None
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise SlmError(
                f"the teacher at {self.shown} answered malformed JSON (no choices[0].message.content: "
                f"{_first_line(str(e)) or type(e).__name__})"
            ) from None
        return Reply(text, choice.get("finish_reason") != "length")


class LocalTeacher:
    """A local model through open_lm; greedy, prefix-cached on ONNX Runtime GenAI (see the module docstring)."""

    def __init__(self, model: str, backend: str, precision: str, threads: int | None, batch_size: int):
        from slmforge.core.progress import quiet_hf
        from slmforge.infer.engines import open_lm

        with quiet_hf():
            self.lm = open_lm(model, backend=backend, precision=precision, threads=threads)
        self.name, self.batch_size = model, batch_size
        self._cached: PrefixDecoder | None = None
        if self.lm.backend == "ort" and "og_model" in self.lm.info:
            self._cached = PrefixDecoder(self.lm)

    def complete(self, chats: list[list[dict]], max_new_tokens: int) -> list[Reply]:
        from slmforge.infer.configs import GenerateConfig
        from slmforge.infer.generate import complete_batch, prompt_ids

        prompts = [prompt_ids(self.lm.tokenizer, c, chat=True) for c in chats]
        if self._cached is not None:
            return [self._cached.run(p, max_new_tokens) for p in prompts]
        gen = GenerateConfig(model=self.name, max_new_tokens=max_new_tokens)
        done = complete_batch(self.lm, prompts, gen, max_batch=self.batch_size)
        return [Reply(d.text, d.stopped_at_eos) for d in done]


class PrefixDecoder:
    """Greedy decoding on one ONNX Runtime GenAI generator that keeps the previous prompt's KV cache and
    rewinds to the prefix the next prompt shares with it."""

    def __init__(self, lm, max_length: int = 4096):
        self.lm = lm
        self.max_length = min(max_length, lm.max_positions or max_length)
        self.generator = None
        self.tokens: list[int] = []  # the prompt the generator's KV cache starts with (replies follow it)
        self.eos = set(lm.eos)

    def run(self, ids: list[int], max_new_tokens: int) -> Reply:
        import numpy as np
        import onnxruntime_genai as og

        room = self.max_length - len(ids)
        if room < 1:
            return Reply("", False)
        max_new = min(max_new_tokens, room)
        shared = 0
        if self.generator is not None:
            limit = min(len(ids), len(self.tokens)) - 1  # at least one token is prefilled: its logits
            while shared < limit and ids[shared] == self.tokens[shared]:
                shared += 1
        if shared == 0:
            params = og.GeneratorParams(self.lm.info["og_model"])
            params.set_search_options(max_length=self.max_length, do_sample=False)
            self.generator = og.Generator(self.lm.info["og_model"], params)
        else:
            self.generator.rewind_to(shared)
        self.tokens = list(ids)
        self.generator.append_tokens(np.asarray([ids[shared:]], dtype=np.int32))
        out: list[int] = []
        finished = False
        for _ in range(max_new):
            self.generator.generate_next_token()
            token = int(self.generator.get_next_tokens()[0])
            if token in self.eos:
                finished = True
                break
            out.append(token)
        text = self.lm.tokenizer.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return Reply(text, finished)


def open_teacher(cfg):
    """The teacher `cfg` asks for (a SynthConfig)."""
    if cfg.teacher_url:
        return HttpTeacher(cfg.teacher_url, cfg.teacher, cfg.seed, cfg.timeout_s, cfg.batch_size)
    return LocalTeacher(cfg.teacher, cfg.backend, cfg.precision, cfg.threads, cfg.batch_size)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""
