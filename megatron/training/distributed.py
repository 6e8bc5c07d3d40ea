"""Process-group start-up through DeepSpeed, on --distributed-backend or else the accelerator's backend
(NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch.utils import cpp_extension

from megatron.config.errors import ConfigError
from megatron.parallel.launch_env import discover, export_launch_env

logger = logging.getLogger("megatron")


# How the start-up line names what started the processes (``LaunchEnv.launcher``).
LAUNCHER_NAMES = {
    "torch": "a launcher (RANK/WORLD_SIZE)",
    "openmpi": "mpirun (OMPI_COMM_WORLD_*)",
    "azureml": "AzureML MPI (OMPI_COMM_WORLD_*, AZ_BATCH*_MASTER_NODE)",
    "slurm": "srun (SLURM_PROCID/SLURM_NTASKS)",
    "none": "no launcher",
}


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def initialize_distributed(backend: str | None = None) -> DistributedContext:
    """Start (or join) the default process group; a single process without a launcher gets a group of one,
    on ``MASTER_PORT`` or else on a free port. ``backend`` is torch.distributed's (None: the accelerator's);
    ``megatron.config.compat.check_distributed_backend`` has checked that this machine can run it.

    Processes that ``srun`` or ``mpirun`` started get ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` from their scheduler's variables first (``launch_env``), so
    torch's ``env://`` rendezvous works under every launcher and DeepSpeed's own MPI discovery (which
    needs mpi4py) is never reached. A port that another process holds is reported as a
    :class:`ConfigError` naming ``MASTER_PORT``.
    """
    launch = discover(os.environ)
    export_launch_env(launch, os.environ)
    local_rank = launch.local_rank
    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
    if launch.world_size == 1:
        # One process, launched or not: what a launcher did not set has one right value, or any free port.
        single = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        for name, value in single.items():
            os.environ.setdefault(name, value)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(free_port())
    if not dist.is_initialized():
        announce_op_build(accelerator)
        try:
            deepspeed.init_distributed(
                dist_backend=backend or accelerator.communication_backend_name(), verbose=False
            )
        except dist.DistNetworkError as error:
            if "EADDRINUSE" not in str(error):
                raise
            raise ConfigError(
                f"MASTER_PORT {os.environ['MASTER_PORT']} on {os.environ['MASTER_ADDR']} is already in use "
                "(another run, or another service): set MASTER_PORT to a free port (the deepspeed launcher "
                "and torchrun take --master_port), or stop the process that holds it."
            ) from None
    device = torch.device(
        accelerator.device_name(local_rank) if accelerator.device_name() != "cpu" else "cpu"
    )
    logger.info(
        "process group: %s backend, %d rank(s), started by %s",
        dist.get_backend(),
        dist.get_world_size(),
        LAUNCHER_NAMES[launch.launcher],
    )
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def free_port() -> int:
    """A TCP port that nothing listens on now, for a process group of one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def announce_op_build(accelerator) -> None:
    """DeepSpeed compiles its shared-memory communication op for CPUs the first time a process group starts
    on a machine, silently, for about a minute: say so before it does."""
    if accelerator.device_name() != "cpu":
        return
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    build_directory = cpp_extension._get_build_directory(builder.name, verbose=False)
    if not os.path.exists(os.path.join(build_directory, f"{builder.name}.so")):
        logger.info(
            "DeepSpeed is compiling its CPU communication op (%s, into %s): once per machine, about a minute",
            builder.name,
            build_directory,
        )


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
