"""Where this process stands in a torchrun job: its rank, the job's size and its device,
for every stage that runs distributed (features, train). Without torchrun: rank 0 of 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .runtime import pick_device


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(device: str = "auto", key: str = "device") -> Dist:
    """Join the torchrun job, if any (NCCL on GPUs, gloo on CPUs); each local rank gets its
    own GPU when `device` names none. `key`: the params key `device` came from (errors)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, key)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return Dist(rank, world, dev)


def barrier() -> None:
    """Wait for every rank of the job, if there is one (a no-op without torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
