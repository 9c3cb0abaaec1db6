"""The size ladder: one dial (`depth`) sets width, heads, KV heads, learning rate, batch and token budget.

Every model is transformers' Llama architecture, so every checkpoint is a plain HF model that
`AutoModelForCausalLM`, vLLM and the GGUF converters load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmforge.core.errors import SlmError

HEAD_DIM = 64
# Named rungs of the ladder (parameter counts with an 8k vocab, tied embeddings).
NAMED_SIZES = {"nano": 4, "micro": 6, "mini": 8, "small": 12, "base": 16}


@dataclass
class LadderSpec:
    """What one depth derives: the architecture plus training defaults."""

    depth: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    lr: float
    batch_size: int
    seq_len: int
    token_budget: int  # default number of training tokens (20 per parameter, Chinchilla-style)
    params: int  # total parameters (embeddings counted once: they are tied)
    non_embedding_params: int


def depth_from(size: str | int) -> int:
    """`6` or `"6"` or a named size like `"micro"` -> depth."""
    if isinstance(size, int):
        depth = size
    elif str(size).isdigit():
        depth = int(size)
    elif size in NAMED_SIZES:
        depth = NAMED_SIZES[size]
    else:
        raise SlmError(f"unknown size {size!r}: give a depth (2-32) or one of {', '.join(NAMED_SIZES)}")
    if not 2 <= depth <= 32:
        raise SlmError(f"depth {depth} is out of range (2-32)")
    return depth


def ladder(depth: int, vocab_size: int, seq_len: int = 256) -> LadderSpec:
    """Derive a whole model and its training defaults from the depth (nanochat-style aspect ratio 64)."""
    hidden = depth * 64
    heads = max(1, hidden // HEAD_DIM)
    kv_heads = heads // 2 if heads >= 4 and heads % 2 == 0 else heads  # 2:1 grouped-query attention
    intermediate = _round_up(int(hidden * 8 / 3), 64)  # SwiGLU at ~4x-equivalent width
    per_layer = (
        2 * hidden * hidden + 2 * hidden * kv_heads * HEAD_DIM + 3 * hidden * intermediate + 2 * hidden
    )
    non_emb = depth * per_layer + hidden
    params = non_emb + vocab_size * hidden
    # Wider models take smaller steps: lr scales as 1/sqrt(width) around 3e-3 at width 256.
    lr = round(3e-3 * math.sqrt(256 / hidden), 6)
    return LadderSpec(
        depth=depth,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        intermediate_size=intermediate,
        lr=lr,
        batch_size=16,
        seq_len=seq_len,
        token_budget=20 * params,
        params=params,
        non_embedding_params=non_emb,
    )


def build_config(spec: LadderSpec, vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max(2048, spec.seq_len),
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attention_dropout=0.0,
    )


def estimate_train_bytes(
    params: int, batch_size: int, seq_len: int, hidden: int, layers: int, vocab: int
) -> int:
    """Rough peak memory of one training step: fp32 weights+grads+AdamW (16 B/param) plus activations."""
    tokens = batch_size * seq_len
    activations = (
        tokens * layers * hidden * 34 * 2 + tokens * vocab * 4 * 3
    )  # per-layer saved tensors + logits
    return 16 * params + activations


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m
