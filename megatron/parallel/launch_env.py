"""Who am I in the job: rank, world size, local rank and rendezvous address, read from whatever started
this process, in one place.

torch.distributed and DeepSpeed read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``, which torchrun and the deepspeed launcher set. A process that ``srun`` or ``mpirun``
started has only the scheduler's own variables, so :func:`discover` translates them and
:func:`export_launch_env` writes the result back for torch. Config validation (world size against
T x P x D) calls :func:`discover` before any process group starts, so a wrong layout is refused the
same way whatever launched it. Everything here is a pure function of an environment mapping, so each
launcher's variables can be tested without it.

Order of precedence, first match wins:

1. ``RANK`` and ``WORLD_SIZE`` (torchrun, the deepspeed launcher, or set by hand): taken as they are,
   also under ``srun torchrun`` and inside an MPI job that set them.
2. OpenMPI's ``OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK`` (``mpirun``; AzureML's MPI jobs too). The
   address is ``MASTER_ADDR``, else AzureML's ``AZ_BATCH_MASTER_NODE`` (``host:port``) or
   ``AZ_BATCHAI_MPI_MASTER_NODE``, else 127.0.0.1 when every rank is on this node.
3. SLURM's ``SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID`` inside a job step (``srun``; ``SLURM_STEP_ID``
   is set). The batch script itself also has ``SLURM_PROCID=0`` and the job's task count but is one
   process, so without a step it counts as a plain process. The address is the first host of
   ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST``.
4. Nothing: one process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from megatron.config.errors import ConfigError

# torch.distributed's default port, for an MPI job that names none (every rank must agree on it).
DEFAULT_MASTER_PORT = 29500
# Ports derived from a SLURM job id fall in [base, base + span), so two jobs sharing a node rarely clash.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job. ``master_addr``/``master_port`` are None for one process
    without a launcher (``initialize_distributed`` then takes a free port)."""

    launcher: str  # "torch" (torchrun / deepspeed / by hand), "openmpi", "azureml", "slurm" or "none"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None = None
    master_port: int | None = None


def discover(env: Mapping[str, str]) -> LaunchEnv:
    """Read this process's place in the job from ``env`` (see the module docstring for the order)."""
    if "RANK" in env or "WORLD_SIZE" in env:
        return _from_torch(env)
    if "OMPI_COMM_WORLD_RANK" in env:
        return _from_openmpi(env)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return _from_slurm(env)
    return LaunchEnv("none", 0, 1, 0, env.get("MASTER_ADDR"), _optional_port(env))


def export_launch_env(launch: LaunchEnv, env: MutableMapping[str, str]) -> None:
    """Set the variables torch.distributed's ``env://`` and DeepSpeed read, from ``launch``; values a
    launcher already set are kept. Nothing is set for one process without a launcher."""
    if launch.launcher == "none":
        return
    values = {
        "RANK": launch.rank,
        "WORLD_SIZE": launch.world_size,
        "LOCAL_RANK": launch.local_rank,
        "MASTER_ADDR": launch.master_addr,
        "MASTER_PORT": launch.master_port,
    }
    for name, value in values.items():
        if value is not None:
            env.setdefault(name, str(value))


def _from_torch(env: Mapping[str, str]) -> LaunchEnv:
    world_size = _count(env, "WORLD_SIZE", default="1")
    rank = _index(env, "RANK", world_size, default="0")
    local_rank = _index(env, "LOCAL_RANK", world_size, default="0")
    return LaunchEnv("torch", rank, world_size, local_rank, env.get("MASTER_ADDR"), _optional_port(env))


def _from_openmpi(env: Mapping[str, str]) -> LaunchEnv:
    world_size = _count(env, "OMPI_COMM_WORLD_SIZE")
    rank = _index(env, "OMPI_COMM_WORLD_RANK", world_size)
    local_rank = _index(env, "OMPI_COMM_WORLD_LOCAL_RANK", world_size, default="0")
    local_size = _count(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=str(world_size))
    azureml = "AZ_BATCH_MASTER_NODE" in env or "AZ_BATCHAI_MPI_MASTER_NODE" in env
    launcher = "azureml" if azureml else "openmpi"
    address, port = env.get("MASTER_ADDR"), None
    if address is None and "AZ_BATCH_MASTER_NODE" in env and local_size < world_size:
        address, _, port_text = env["AZ_BATCH_MASTER_NODE"].partition(":")
        port = _port(port_text, "AZ_BATCH_MASTER_NODE") if port_text else None
    if address is None and "AZ_BATCHAI_MPI_MASTER_NODE" in env:
        address = env["AZ_BATCHAI_MPI_MASTER_NODE"]
    if address is None and local_size == world_size:
        address = "127.0.0.1"
    if address is None:
        raise ConfigError(
            f"mpirun started {world_size} ranks on several nodes (OMPI_COMM_WORLD_LOCAL_SIZE={local_size}) "
            "but MASTER_ADDR is not set: pass the first node's address to every rank, e.g. "
            "`mpirun -x MASTER_ADDR=<host of rank 0> -x MASTER_PORT=<port> ...`."
        )
    port = _optional_port(env) or port or DEFAULT_MASTER_PORT
    return LaunchEnv(launcher, rank, world_size, local_rank, address, port)


def _from_slurm(env: Mapping[str, str]) -> LaunchEnv:
    world_size = _count(env, "SLURM_NTASKS")
    rank = _index(env, "SLURM_PROCID", world_size)
    local_rank = _index(env, "SLURM_LOCALID", world_size, default="0")
    address = env.get("MASTER_ADDR")
    if address is None:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ConfigError(
                "srun started this task but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set: "
                "set MASTER_ADDR to the host of task 0."
            )
        address = first_host(nodelist)
    port = _optional_port(env)
    if port is None:
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        port = SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN
    return LaunchEnv("slurm", rank, world_size, local_rank, address, port)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list (``node[07-09,12],gpu3`` -> ``node07``; ``rack[1-2]-n[4,6]``
    -> ``rack1-n4``), as ``scontrol show hostnames`` would print first, without calling it: each bracket
    group is replaced by the start of its first range, keeping its zero padding."""
    depth, end = 0, len(nodelist)
    for position, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = position
            break
    first = nodelist[:end].strip()
    host = re.sub(r"\[([^\]]*)\]", lambda group: re.split(r"[-,]", group.group(1))[0], first)
    if not host or "[" in host or "]" in host:
        raise ConfigError(f"SLURM node list {nodelist!r}: cannot read its first host; set MASTER_ADDR.")
    return host


def _count(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    value = _integer(env, name, default)
    if value < 1:
        raise ConfigError(f"{name}={env.get(name)!r} in the environment: expected a positive integer.")
    return value


def _index(env: Mapping[str, str], name: str, world_size: int, default: str | None = None) -> int:
    value = _integer(env, name, default)
    if not 0 <= value < world_size:
        raise ConfigError(
            f"{name}={value} in the environment: expected 0 <= {name} < the world size {world_size}."
        )
    return value


def _integer(env: Mapping[str, str], name: str, default: str | None) -> int:
    raw = env.get(name, default)
    if raw is None:
        raise ConfigError(f"{name} is not set in the environment: the launcher should set it.")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} in the environment: expected an integer; unset it or fix it."
        ) from None


def _optional_port(env: Mapping[str, str]) -> int | None:
    raw = env.get("MASTER_PORT")
    return None if raw is None else _port(raw, "MASTER_PORT")


def _port(raw: str, name: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigError(f"{name}: port {raw!r} in the environment: expected 1-65535.")
    return port
