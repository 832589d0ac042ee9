"""Process group and device of a training process (torchrun, or one process).

What the batch statistics span under it (norm per ``B / (N * norm_batch_chunks)`` samples, losses per
``B / N``): README, "Training".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from casd.config import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> Dist:
    """Join the process group torchrun (or a test) described in the environment; single process otherwise.

    NCCL for CUDA, gloo for CPU (so that 2 CPU processes can test DDP anywhere).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def training_device(spec: str, info: Dist) -> torch.device:
    """The device of this process (``cuda`` -> this process's GPU), made current for CUDA."""
    device = resolve_device(spec, local_rank=info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def average(values: torch.Tensor, info: Dist) -> torch.Tensor:
    """Mean over the processes (in place); a NaN on any process reaches every process."""
    if info.enabled:
        dist.all_reduce(values)
        values /= info.world_size
    return values


def finish(info: Dist) -> None:
    """Wait for every process, then end the process group if this process started it."""
    if info.enabled:
        dist.barrier()
        if info.owns_group:
            dist.destroy_process_group()
