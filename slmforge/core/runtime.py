"""Device, dtype and thread choices shared by every workflow.

Torch with more intra-op threads than free cores can run 45x slower (see BENCHMARKS.md), so every
entry point calls `set_threads` with the free cores by default, and never more. Torch is imported by the
functions that use it, not by this module (`free_cores` is asked by workflows that never load torch).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def free_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Give torch `threads` intra-op threads (default: the free cores), capped at the free cores."""
    cores = free_cores()
    if threads is None or threads <= 0:
        threads = cores
    if threads > cores:
        warnings.warn(
            f"{threads} threads asked for but only {cores} cores are free; using {cores}", stacklevel=2
        )
        threads = cores
    import torch

    torch.set_num_threads(threads)
    return threads


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 autocast where it pays (CUDA with bf16, CPUs with AVX-512 BF16/AMX), else None (fp32)."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_fast_bf16() else None


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
