"""Generation's config: torch-free, so the CLI builds its options from it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerateConfig:
    """What `slm generate` and `slm chat` need.

    model: a catalog name (`slm pull`), a local model directory, or a hub id.
    temperature: 0 picks the most likely token (greedy); above 0 samples, with top_k (0 = off) and
    top_p (1 = off) limiting the candidates, reproducibly for a given seed.
    chat: wrap the prompt in the tokenizer's chat template when it has one.
    repetition_penalty: above 1, the logits of tokens already generated are divided (if positive) or
    multiplied (if negative) by it before picking (Keskar et al., 2019), which stops small models looping;
    the prompt's tokens are not penalised, so answers may still quote their sources.
    threads: compute threads (default: the free cores, never more).
    backend: `auto` (ONNX Runtime GenAI on CPU when the model converts, else torch), `ort`, `torch` or
    `llama.cpp`; precision: the ort backend's weights, `int8` (default), `int4` or `fp32`.
    See `slmforge.infer.engines`.
    """

    model: str
    prompt: str = ""
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    chat: bool = True
    system: str | None = None
    threads: int | None = None
    device: str = "auto"
    repetition_penalty: float = 1.0
    backend: str = "auto"
    precision: str = "int8"
