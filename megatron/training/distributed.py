"""Process-group start-up through DeepSpeed, which picks NCCL on GPUs and gloo on CPU by itself."""

from __future__ import annotations

import os
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def initialize_distributed() -> DistributedContext:
    """Start (or join) the default process group; a single process without a launcher gets a group of one."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
    if "MASTER_ADDR" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), verbose=False)
    device = torch.device(
        accelerator.device_name(local_rank) if accelerator.device_name() != "cpu" else "cpu"
    )
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all ranks (a copy; the input is left as it is)."""
    result = tensor.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(result)
        result /= dist.get_world_size()
    return result


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one, so all ranks take the same branch."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def shutdown_distributed() -> None:
    """After a finished run: wait for every rank, then tear the process groups down. Left to interpreter
    exit, gloo's threads can outlive their group and abort a run that succeeded."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
