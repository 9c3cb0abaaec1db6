"""Continuous (in-flight) batching for generation on the `ort` engine: many requests decoded together, each
joining the running batch at a token boundary and leaving when it is done.

ONNX Runtime GenAI's own continuous-batching `Engine` needs a model built with paged attention, which its
builder offers only for CUDA in fp16/bf16 (onnxruntime-genai PR #2330); on the CPU int8 model every request
fails with ENGINE_EXECUTION_FAILURE. So this module schedules a plain ONNX Runtime session on the converted
`model.onnx` itself (docs/generation.md, "Continuous batching").

How: the decoder's attention is com.microsoft `GroupQueryAttention`, which reads each row's length from the
attention mask (`seqlens_k` = the row's mask sum - 1) and attends only within it; the KV cache is right-padded
and shared between `past_key_values.*` and `present.*` (the same memory bound to both through IOBinding, the way
GenAI decodes), so a step writes only the new token's keys and values. Rows of different lengths therefore
decode in one call, exactly. The cache is one buffer per layer and kind, `[max_batch, kv_heads, slot_tokens,
head_size]`: `max_batch` slots of `slot_tokens` positions each (the KV budget, in tokens, is their product).
The decoding rows are kept in slots `[0, n)` (a finished row's hole is filled by moving the last row into it), so
each step passes a contiguous view. A prompt is prefilled into the next free slot (GroupQueryAttention takes a
multi-token input only at batch 1), at most `prefill_chunk` prompt tokens (over one or more prompts) between two
decode steps, so a long prompt delays the others by one chunk per step, not by its whole length.

Each request keeps its own sampling parameters (a `GenerateConfig`: temperature, top-k, top-p, seed, repetition
penalty, max_new_tokens), constraint (`slmforge.infer.constrain.Guide`), stop strings, cancellation and text
callback; its picks are those of `slmforge.infer.generate.complete` (the same `pick_next`, a seeded generator
per request), so greedy output equals the one-request decode token for token (see `_chunk_size` for the
one prefill shape that would break that).

Public API (what the server calls): `ContinuousBatcher(lm, BatcherConfig(...))`, `.submit(ids, cfg, ...)` ->
`BatchRequest` (`.result()`, `.stream()`, `.cancel()`, `.finish_reason`), `.stats()`, `.close()`; refusals raise
`BatcherFull` (queue full: 429/503 with `retry_after` seconds) or `PromptTooLong` (400), both `SlmError`s.
"""

from __future__ import annotations

import collections
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slmforge.core.errors import SlmError
from slmforge.infer.batch_kv import PrefixCache, check_graph, decoder_session
from slmforge.infer.configs import GenerateConfig
from slmforge.infer.constrain import Constraint, Guide
from slmforge.infer.generate import Completion, TextStream, penalise_repeats, pick_next

FINISH_REASONS = ("stop", "length", "cancelled", "error")


class BatcherFull(SlmError):
    """Every slot is busy and the waiting queue is full: try again after `retry_after` seconds (HTTP 429/503)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class PromptTooLong(SlmError):
    """The prompt does not fit a slot of the KV cache (HTTP 400); `limit` is the most prompt tokens a slot takes."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


@dataclass
class BatcherConfig:
    """How many requests decode together and how much KV cache they may hold."""

    max_batch: int = 16
    """Requests decoded together (KV-cache slots)."""
    slot_tokens: int = 1024
    """KV-cache positions per slot: a request's prompt plus its reply.

    The KV budget is max_batch x slot_tokens tokens (SmolLM2-135M: 46 KB per token, so 16 x 1024 is 755 MB),
    allocated once. A request's max_new_tokens is clamped to what its slot has left after the prompt."""
    max_waiting: int = 64
    """Requests that may wait for a slot; beyond that `submit` refuses with BatcherFull."""
    prefill_chunk: int = 64
    """Prompt tokens prefilled between two decode steps, so a long prompt does not stall the running batch."""
    threads: int | None = None
    """ONNX Runtime intra-op threads [default: the LM's]."""
    prefix_cache_tokens: int = 2048
    """KV positions kept of recent prompts, so a prompt sharing a prefix with one of them (the same system
    prompt or instructions) copies that prefix's keys and values instead of recomputing them (0 = off).

    Counted on top of the slots' budget; least recently used prompts are dropped first."""


class BatchRequest:
    """One request in a `ContinuousBatcher`: its reply so far, how it ended, and ways to wait, stream or cancel.

    `completion` is a `slmforge.infer.generate.Completion` (its `first_token_seconds` and `seconds` count from
    `submit`, queueing included; `token_ids` include those of a matched stop string, `text` stops before it)."""

    def __init__(self, rid, tokenizer, prompt, cfg, max_new, guide, stop, on_text, on_done, cancel):
        self.id = rid
        self.prompt_ids = prompt
        self.cfg = cfg
        self.max_new = max_new  # cfg.max_new_tokens clamped to the slot
        self.guide = guide
        self.stop = [s for s in stop if s]
        self.on_text = on_text
        self.on_done = on_done
        self.cancel_event = cancel or threading.Event()
        self.completion = Completion(text="", prompt_tokens=len(prompt))
        self.finish_reason: str | None = None  # one of FINISH_REASONS once done
        self.error: Exception | None = None
        self.submitted = time.perf_counter()
        self.cached_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self._done = threading.Event()
        self._pieces: list[str] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # the pieces for stream(), then None
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self._text = TextStream(tokenizer)
        self._held = ""  # text held back because it may be the start of a stop string

    # ------------------------------------------------------------ caller side

    def cancel(self) -> None:
        """Stop this request; its slot is freed at the next step (a waiting request never starts)."""
        self.cancel_event.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the reply; raise the request's error (a constraint's dead end, an engine failure) if any."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.completion

    def stream(self) -> Iterator[str]:
        """The reply's text pieces as they are decoded, from the first; ends when the request does (one
        consumer per request)."""
        while (piece := self._queue.get()) is not None:
            yield piece
        if self.error is not None:
            raise self.error

    # ------------------------------------------------------------ scheduler side

    def _emit(self, piece: str) -> None:
        if not piece:
            return
        self._pieces.append(piece)
        self._queue.put(piece)
        if self.on_text is not None:
            try:
                self.on_text(piece)
            except Exception:  # the caller is gone (a closed connection): stop the request, not the batch
                self.on_text = None
                self.cancel_event.set()

    def _accept(self, token: int, eos: set[int]) -> bool:
        """Take the picked `token`; False when the request is finished by it."""
        done = self.completion
        if not done.token_ids:
            done.first_token_seconds = time.perf_counter() - self.submitted
        if token in eos:
            done.stopped_at_eos = True
            return self._finish("stop")
        done.token_ids.append(token)
        if self._push_text(self._text.push(token)):
            return self._finish("stop", flush=False)
        if self.guide is not None:
            self.guide.advance(token)
            if self.guide.done:  # only EOS could follow
                done.stopped_at_eos = True
                return self._finish("stop")
        if len(done.token_ids) >= self.max_new:
            return self._finish("length")
        return True

    def _push_text(self, piece: str) -> bool:
        """Emit `piece`, except a tail that may begin a stop string; True when a stop string is complete."""
        if not self.stop:
            self._emit(piece)
            return False
        text = self._held + piece
        cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self._emit(text[:cut])
            return True
        keep = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        self._emit(text[: len(text) - keep])
        return False

    def _finish(self, reason: str, flush: bool = True, error: Exception | None = None) -> bool:
        if self.finish_reason is not None:
            return False
        if flush and reason != "error":
            if self._push_text(self._text.flush()) and reason == "length":
                reason = "stop"  # the held-back bytes completed a stop string
            self._emit(self._held)
            self._held = ""
        done = self.completion
        done.text = "".join(self._pieces)
        done.seconds = time.perf_counter() - self.submitted
        if self.guide is not None:
            done.constraint_satisfied = self.guide.satisfied
        self.finish_reason, self.error = reason, error
        self._done.set()
        self._queue.put(None)
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # a caller's callback must not stop the scheduler
                pass
        return False

    def _pick(self, logits: np.ndarray) -> int:
        cfg = self.cfg
        if self.guide is None and cfg.temperature <= 0 and cfg.repetition_penalty == 1.0:
            return int(np.argmax(logits))
        row = torch.from_numpy(logits)
        if cfg.repetition_penalty != 1.0 and self.completion.token_ids:
            row = penalise_repeats(row, self.completion.token_ids, cfg.repetition_penalty)
        return pick_next(row, cfg, self._generator, self.guide)


class _Row:
    """A request holding a slot: how many positions of its slot's KV cache are filled, and what comes next."""

    def __init__(self, request: BatchRequest, slot: int):
        self.request = request
        self.slot = slot
        self.length = 0  # KV positions filled
        self.pending: int | None = None  # the last picked token, not yet in the KV cache


class ContinuousBatcher:
    """Continuous batching over one ONNX Runtime session of an `ort` LM (see the module's docstring)."""

    def __init__(self, lm, config: BatcherConfig | None = None):
        if lm.backend != "ort":
            raise SlmError(f"continuous batching runs on the ort backend (this model is on {lm.backend})")
        self.config = config = config or BatcherConfig()
        if (
            config.max_batch < 1
            or config.slot_tokens < 2
            or config.prefill_chunk < 1
            or config.max_waiting < 0
        ):
            raise SlmError(
                "batcher: max_batch and prefill_chunk must be at least 1, slot_tokens at least 2, "
                "max_waiting at least 0"
            )
        if lm.max_positions and config.slot_tokens > lm.max_positions:
            raise SlmError(
                f"batcher: slot_tokens {config.slot_tokens} exceeds the model's context ({lm.max_positions})"
            )
        self.lm, self.tokenizer, self.eos = lm, lm.tokenizer, set(lm.eos)
        model_dir = Path(lm.info["model_dir"])
        threads = config.threads or lm.info.get("threads") or 1
        self.session = decoder_session(model_dir, threads)
        decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
        layers, heads, size = (
            decoder["num_hidden_layers"],
            decoder["num_key_value_heads"],
            decoder["head_size"],
        )
        kinds = {i.name: i.type for i in self.session.get_inputs()}
        check_graph(model_dir, kinds)
        dtype = np.float16 if kinds.get("past_key_values.0.key") == "tensor(float16)" else np.float32
        shape = (config.max_batch, heads, config.slot_tokens, size)
        # one buffer per past input, bound to its present output too; np.zeros commits pages as they are written
        self._kv = {}
        for layer in range(layers):
            for kind in ("key", "value"):
                self._kv[(f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}")] = np.zeros(
                    shape, dtype
                )
        self.kv_bytes = sum(a.nbytes for a in self._kv.values())
        self._prefix = PrefixCache(config.prefix_cache_tokens) if config.prefix_cache_tokens > 0 else None
        self._rows: list[_Row] = []  # decoding rows in slots [0, n), then at most one row being prefilled
        self._prefill: _Row | None = None
        self._waiting: collections.deque[BatchRequest] = collections.deque()
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._closed = False
        self._steps = 0
        self._step_seconds = 0.05  # running mean of one scheduler iteration, for retry_after
        self._thread = threading.Thread(target=self._loop, name="slm-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public

    def submit(
        self,
        prompt_ids: list[int],
        cfg: GenerateConfig,
        constraint: Constraint | None = None,
        stop: list[str] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_done: Callable[[BatchRequest], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> BatchRequest:
        """Queue a request: `prompt_ids` (e.g. `generate.prompt_ids`), sampling by `cfg`, an optional
        constraint (else the one `cfg` names), stop strings, a callback per text piece and one at the end (both
        run on the scheduler's thread: keep them short; one that raises cancels the request), and an optional
        event that cancels it when set. Raises PromptTooLong, BatcherFull, or SlmError (a bad constraint, a
        closed batcher) at once; later failures end the request with finish_reason "error"."""
        slot = self.config.slot_tokens
        if not prompt_ids:
            raise SlmError("the prompt is empty")
        if len(prompt_ids) >= slot:
            raise PromptTooLong(
                f"the prompt is {len(prompt_ids)} tokens; a batch slot holds at most {slot - 1} prompt tokens",
                slot - 1,
            )
        if cfg.max_new_tokens < 1:
            raise SlmError(f"max_new_tokens must be at least 1 (got {cfg.max_new_tokens})")
        if cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1 or cfg.repetition_penalty <= 0:
            raise SlmError(
                "sampling: temperature and top_k must be at least 0, top_p in (0, 1], repetition_penalty above 0"
            )
        constraint = constraint or Constraint.from_config(cfg)
        guide = Guide(constraint, self.tokenizer, sorted(self.eos)) if constraint is not None else None
        max_new = min(cfg.max_new_tokens, slot - len(prompt_ids))
        with self._lock:
            if self._closed:
                raise SlmError("the batcher is closed")
            busy = len(self._rows) + (self._prefill is not None)
            if busy + len(self._waiting) >= self.config.max_batch + self.config.max_waiting:
                raise BatcherFull(
                    f"all {self.config.max_batch} batch slots are busy and {len(self._waiting)} requests wait",
                    self._retry_after(),
                )
            request = BatchRequest(next(self._ids), self.tokenizer, list(prompt_ids), cfg, max_new, guide,
                                   stop or [], on_text, on_done, cancel)  # fmt: skip
            self._waiting.append(request)
            self._lock.notify()
        return request

    def generate(self, prompt_ids: list[int], cfg: GenerateConfig, **kwargs) -> Completion:
        """`submit` and wait for the reply."""
        return self.submit(prompt_ids, cfg, **kwargs).result()

    def stats(self) -> dict:
        """Occupancy now: decoding and waiting requests, free slots, KV positions in use of the budget."""
        with self._lock:
            rows = self._rows + ([self._prefill] if self._prefill else [])
            return {
                "decoding": len(self._rows),
                "prefilling": int(self._prefill is not None),
                "waiting": len(self._waiting),
                "free_slots": self.config.max_batch - len(rows),
                "kv_tokens_used": sum(r.length for r in rows),
                "kv_tokens_budget": self.config.max_batch * self.config.slot_tokens,
                "kv_bytes": self.kv_bytes,
                "steps": self._steps,
                "prefix_cache_tokens": self._prefix.tokens if self._prefix else 0,
                "prefix_cache_bytes": self._prefix.nbytes if self._prefix else 0,
                "prefix_hits": self._prefix.hits if self._prefix else 0,
                "prefix_reused_tokens": self._prefix.reused_tokens if self._prefix else 0,
            }

    def close(self) -> None:
        """Stop the scheduler; requests still running or waiting end with finish_reason "cancelled"."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ scheduler

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not (self._rows or self._prefill or self._waiting):
                    self._lock.wait()
                if self._closed:
                    break
            started = time.perf_counter()
            try:
                self._drop_cancelled()
                budget = self.config.prefill_chunk  # prompt tokens this iteration, over one or more prompts
                while budget > 0 and (self._prefill is not None or self._admit()):
                    budget -= self._prefill_chunk(budget)
                if self._rows:
                    self._decode()
            except Exception as e:  # an engine failure ends the running requests, not the batcher
                for row in [*self._rows, *([self._prefill] if self._prefill else [])]:
                    row.request._finish("error", error=SlmError(f"generation failed: {e}"))
                with self._lock:
                    self._rows, self._prefill = [], None
            self._steps += 1
            self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.perf_counter() - started)
        with self._lock:
            rows = [*self._rows, *([self._prefill] if self._prefill else [])]
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._rows, self._prefill = [], None
        for row in rows:
            row.request._finish("cancelled")
        for request in waiting:
            request._finish("cancelled")

    def _drop_cancelled(self) -> None:
        with self._lock:
            for request in [r for r in self._waiting if r.cancel_event.is_set()]:
                self._waiting.remove(request)
                request._finish("cancelled")
        if self._prefill is not None and self._prefill.request.cancel_event.is_set():
            self._prefill.request._finish("cancelled")
            self._release(self._prefill)
        for row in [r for r in self._rows if r.request.cancel_event.is_set()]:
            row.request._finish("cancelled")
            self._release(row)

    def _admit(self) -> bool:
        """Start prefilling the next waiting request, in the slot after the decoding rows, from the longest
        prefix of its prompt the prefix cache holds; False when none can start."""
        with self._lock:
            if self._prefill is not None or not self._waiting or len(self._rows) >= self.config.max_batch:
                return False
            row = self._prefill = _Row(self._waiting.popleft(), len(self._rows))
        if self._prefix is not None:
            reused, kv = self._prefix.match(np.asarray(row.request.prompt_ids))
            for i, buf in enumerate(self._kv.values() if reused else ()):
                buf[row.slot, :, :reused] = kv[i, :, :reused]
            row.length = row.request.cached_tokens = reused
        return True

    def _prefill_chunk(self, budget: int) -> int:
        """Prefill up to `budget` more tokens of the prompt being prefilled; returns how many it took."""
        row = self._prefill
        prompt = row.request.prompt_ids
        chunk = prompt[row.length : row.length + _chunk_size(len(prompt) - row.length, budget)]
        first = row.length == 0  # GroupQueryAttention's first-prompt path, as GenAI's prefill takes it
        ids = np.asarray([chunk], np.int64)
        logits = self._run(row.slot, row.slot + 1, ids, [row.length], width=len(chunk) if first else None)
        row.length += len(chunk)
        if row.length < len(prompt):
            return len(chunk)
        if self._prefix is not None:
            self._prefix.add(np.asarray(prompt), lambda: self._slot_kv(row.slot, len(prompt)))
        with self._lock:
            self._prefill = None
            self._rows.append(row)  # already in slot len(rows): it joins the next decode step
        self._take(row, logits[0, -1])
        return len(chunk)

    def _decode(self) -> None:
        rows = self._rows
        ids = np.asarray([[row.pending] for row in rows], np.int64)
        logits = self._run(0, len(rows), ids, [row.length for row in rows])
        for row in rows:
            row.length += 1
        for row, row_logits in zip(list(rows), logits[:, -1]):
            self._take(row, row_logits)

    def _take(self, row: _Row, logits: np.ndarray) -> None:
        """Pick the row's next token and hand it to its request; release the slot when the request ends."""
        request = row.request
        try:
            token = request._pick(logits)
            going = request._accept(token, self.eos)
        except SlmError as e:  # a constraint's dead end
            request._finish("error", error=e)
            going = False
        if going and request.cancel_event.is_set():
            request._finish("cancelled")
            going = False
        if going:
            row.pending = token
        else:
            self._release(row)

    def _release(self, row: _Row) -> None:
        """Free `row`'s slot: the last decoding row moves into it, and a row being prefilled moves up too."""
        with self._lock:
            if row is self._prefill:
                self._prefill = None
                return
            hole = self._rows.index(row)
            last = self._rows.pop()
            if last is not row:
                self._move(last, hole)
                self._rows[hole] = last
            if self._prefill is not None:
                self._move(self._prefill, len(self._rows))

    def _slot_kv(self, slot: int, length: int) -> np.ndarray:
        """A copy of the first `length` KV positions of `slot`, every layer: [layers x 2, kv_heads, length, size]."""
        return np.stack([buf[slot, :, :length] for buf in self._kv.values()])

    def _move(self, row: _Row, slot: int) -> None:
        if row.slot != slot:
            for buf in self._kv.values():
                buf[slot, :, : row.length] = buf[row.slot, :, : row.length]
            row.slot = slot

    def _run(
        self, lo: int, hi: int, ids: np.ndarray, lengths: list[int], width: int | None = None
    ) -> np.ndarray:
        """One forward over slots [lo, hi): `ids` [rows, seq] after `lengths` cached positions per row; returns
        the last position's logits [rows, 1, vocab]. Keys and values are written into the slots in place. The
        attention mask is `width` wide (default the slot: GroupQueryAttention's total length; a chunk's own
        length on an empty slot makes it the op's first-prompt case)."""
        rows, seq = ids.shape
        total = np.asarray(lengths, np.int64)[:, None] + seq
        mask = (np.arange(width or self.config.slot_tokens)[None, :] < total).astype(np.int64)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output("logits")
        for (past, present), buf in self._kv.items():
            view = buf[lo:hi]
            binding.bind_input(past, "cpu", 0, buf.dtype, view.shape, view.ctypes.data)
            binding.bind_output(present, "cpu", 0, buf.dtype, view.shape, view.ctypes.data)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy().astype(np.float32, copy=False)

    def _retry_after(self) -> float:
        """Seconds until a slot is likely free: the mean request's remaining steps times a step's duration."""
        rows = self._rows or []
        if not rows:
            return 1.0
        left = [r.request.max_new - len(r.request.completion.token_ids) for r in rows]
        return round(max(0.1, min(left) * self._step_seconds), 2)


def _chunk_size(remaining: int, budget: int) -> int:
    """How many of a prompt's `remaining` tokens to prefill now, within `budget` where possible, never leaving
    a single token for a later chunk nor taking one alone after the first: ONNX Runtime's GroupQueryAttention
    computes a one-token step on its decode path, whose keys, values and logits differ (up to 0.65 in a logit on
    SmolLM2-135M int8) from the same position computed in a multi-token prefill, and the one-request decode
    (`complete`, GenAI) prefills the whole prompt at once. Chunks of two or more tokens give its results bit for
    bit."""
    take = min(remaining, max(budget, 2))
    if remaining - take == 1:
        take = take - 1 if take > 2 else remaining
    return take
