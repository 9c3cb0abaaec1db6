"""Numbers every workflow reports: language-model loss / perplexity / bits-per-byte, and MFU's two halves:
a model's training FLOPs per token and the machine's measured peak FLOP/s."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from slmforge.core import workspace


@torch.no_grad()
def lm_loss(
    model, windows, max_windows: int = 64, batch_size: int = 8, autocast_dtype=None, device="cpu"
) -> dict:
    """Mean next-token loss over the first `max_windows` windows of a split, with perplexity and bits per byte.

    Bits per byte divides total nats by ln(2) and by the UTF-8 bytes those tokens stand for, so models with
    different tokenizers compare fairly.
    """
    model.eval()
    n = min(len(windows), max_windows)
    total_nats, total_tokens = 0.0, 0
    ctx = (
        torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype)
        if autocast_dtype
        else nullcontext()
    )
    for start in range(0, n, batch_size):
        batch = torch.from_numpy(windows.batch(range(start, min(n, start + batch_size)))).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with ctx:
            logits = model(input_ids=x, use_cache=False).logits
        total_nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        total_tokens += y.numel()
    model.train()
    loss = total_nats / max(total_tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50)),
        "bpb": loss / math.log(2) / windows.bytes_per_token,
        "tokens": total_tokens,
    }


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (forward+backward) of a transformers decoder config: 6N for the matmuls
    (N the non-embedding parameters) plus attention scores, plus the LM head."""
    h, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    non_embedding = layers * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size)
    return 6 * non_embedding + head_flops_per_token(h, config.vocab_size) + 12 * layers * h * seq_len


def head_flops_per_token(hidden: int, vocab: int) -> int:
    """The LM head's share of `flops_per_token`: training FLOPs per position it runs on."""
    return 6 * vocab * hidden


def peak_flops(device: torch.device, dtype: torch.dtype, threads: int) -> float:
    """Measured matmul FLOP/s on this machine (cached per device, dtype and thread count), the MFU denominator."""
    key = f"{device.type}:{torch.cuda.get_device_name() if device.type == 'cuda' else _cpu_name()}:{dtype}:{threads}"
    cache = workspace.home() / "peak_flops.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key in known:
        return known[key]
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    iters, elapsed = 0, 0.0
    t0 = time.perf_counter()
    while elapsed < 0.5:
        a @ b
        iters += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    flops = 2 * n**3 * iters / elapsed
    known[key] = flops
    workspace.home().mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=2))
    return flops


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
