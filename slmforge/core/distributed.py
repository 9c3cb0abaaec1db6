"""Data-parallel plumbing for the training loop: torchrun's environment, gloo on CPU, nccl on GPU.
Torch is imported where it is used, not by this module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Dist:
    """Rank, world size and device from torchrun's environment; collective helpers that are no-ops alone."""

    def __init__(self, device_flag: str):
        from slmforge.core.runtime import pick_device

        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        device = pick_device(device_flag)
        if self.world > 1:
            import torch
            import torch.distributed as tdist

            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(device)
            tdist.init_process_group(backend)
        self.device = device

    def mean(self, t: torch.Tensor) -> float:
        if self.world > 1:
            import torch.distributed as tdist

            t = t.clone()
            tdist.all_reduce(t)
            t /= self.world
        return float(t)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def broadcast_path(self, path):
        if self.world == 1:
            return path
        import torch.distributed as tdist

        box = [str(path) if path is not None else None]
        tdist.broadcast_object_list(box, src=0)
        return Path(box[0])

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.destroy_process_group()
