"""The pieces of a training loop that every trainer shares: AdamW with decay groups, the lr schedule, the time
budget, one optimizer step, the stop flag, the trainable weights of a partly frozen model, and the metrics
file rewound on resume. They know nothing of any one recipe (see slmforge.lm.pretrain, slmforge.lm.finetune).
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_file


def adamw(model, lr: float, weight_decay: float):
    """AdamW (betas 0.9/0.95) over the trainable parameters, weight decay on matrices only (not on norms or
    biases); the fused kernel where the device has one."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step, total, warmup, peak, min_ratio, elapsed_s, max_minutes) -> float:
    """Linear warmup, then cosine down to min_ratio × peak; progress follows steps or time, whichever is further."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if max_minutes:
        progress = max(progress, elapsed_s / (max_minutes * 60))
    progress = min(1.0, progress)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Clock:
    """Training time across resumptions: the seconds the checkpoint recorded plus this process's."""

    def __init__(self, elapsed_before: float = 0.0):
        self.before, self.start = elapsed_before, time.perf_counter()

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self.start)

    def out_of_time(self, max_minutes: float | None) -> bool:
        return max_minutes is not None and self.elapsed() >= max_minutes * 60


def optimizer_step(optimizer, params, grad_clip: float) -> float:
    """Clip the gradients' global norm to `grad_clip`, step, zero the gradients; the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def check_finite(loss: float, step: int) -> None:
    """SlmError if the loss of (0-based) `step` is inf or nan."""
    if not math.isfinite(loss):
        raise SlmError(f"loss became {loss} at step {step + 1}; lower --lr or use --precision fp32")


class StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop after the current step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        self.requested = True


def trainable_state(model) -> dict:
    """The parameters that train (a PEFT model's adapter, or all of a full model), copied to the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, state: dict) -> None:
    """Copy a `trainable_state` back; SlmError if it names other parameters than the model trains."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        raise SlmError(
            "the checkpoint's trainable weights do not match this model; start again without --resume"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint: they will be logged again."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    with atomic_file(path) as f:
        f.write("".join(ln + "\n" for ln in keep))
