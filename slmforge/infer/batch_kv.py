"""The pieces of continuous batching that are not scheduling (`slmforge.infer.batcher`): the plain ONNX
Runtime session on a converted decoder, the check that its graph is one the batcher can drive, and the
cache of recent prompts' keys and values behind prefix reuse."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.infer.engines import genai_session_options


class PrefixCache:
    """The KV cache of recent prompts, one array per prompt ([layers x 2, kv_heads, length, head_size]), least
    recently used first out when their positions pass `budget`. A new prompt reuses the longest common prefix
    with any of them: keys and values at a position depend only on the tokens up to it."""

    def __init__(self, budget: int, min_reuse: int = 4):
        self.budget, self.min_reuse = budget, min_reuse
        self.entries: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self.hits = self.reused_tokens = 0
        self._ids = itertools.count()

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.entries.values())

    @property
    def nbytes(self) -> int:
        return sum(kv.nbytes for _, kv in self.entries.values())

    def match(self, prompt: np.ndarray) -> tuple[int, np.ndarray | None]:
        """The longest cached prefix of `prompt` and its KV array, leaving at least the prompt's last two tokens
        to compute (see `ContinuousBatcher._prefill_chunk`)."""
        best, best_kv, best_key = 0, None, None
        for key, (ids, kv) in self.entries.items():
            n = min(len(ids), len(prompt) - 2)
            differ = np.flatnonzero(ids[:n] != prompt[:n])
            common = int(differ[0]) if len(differ) else n
            if common > best:
                best, best_kv, best_key = common, kv, key
        if best < self.min_reuse:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, best_kv

    def add(self, prompt: np.ndarray, kv: Callable[[], np.ndarray]) -> None:
        """Keep `prompt`'s KV (`kv()` copies it out of its slot), unless a cached prompt already starts with it;
        cached prompts it starts with are dropped."""
        if len(prompt) > self.budget:
            return
        for key, (ids, _) in list(self.entries.items()):
            if len(ids) >= len(prompt) and np.array_equal(ids[: len(prompt)], prompt):
                self.entries.move_to_end(key)
                return
            if len(ids) < len(prompt) and np.array_equal(prompt[: len(ids)], ids):
                del self.entries[key]
        self.entries[next(self._ids)] = (prompt, kv())
        while self.tokens > self.budget:
            self.entries.popitem(last=False)


def check_graph(model_dir: Path, inputs: dict) -> None:
    """SlmError unless the decoder is what the batcher drives: GroupQueryAttention (per-row lengths from the
    mask, right-padded KV) and no inputs but input_ids, attention_mask and the past keys and values."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    if not any(node.op_type == "GroupQueryAttention" for node in graph.node):
        raise SlmError(f"{model_dir} has no GroupQueryAttention: continuous batching cannot run it")
    other = sorted(
        n for n in inputs if n not in ("input_ids", "attention_mask") and "past_key_values" not in n
    )
    if other:
        raise SlmError(f"{model_dir} takes inputs continuous batching does not feed: {', '.join(other)}")


def decoder_session(model_dir: Path, threads: int):
    """A plain ONNX Runtime session on the converted decoder (its head reads the last position only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in genai_session_options(threads).items():
        if key in ("intra_op_num_threads", "inter_op_num_threads"):
            setattr(options, key, value)
        else:
            options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
