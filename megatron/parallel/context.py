"""Which ranks share a tensor-parallel or data-parallel group, held in one small object passed to the layers.

Ranks are ordered as in Megatron-LM: the ``T`` ranks of a tensor-parallel group are consecutive (so they share
a node and its fast links), a pipeline stage owns a contiguous block of ``T * D`` ranks, and the data-parallel
replicas of one tensor shard stride by ``T`` inside that block. With ``P = 1`` the data-parallel group of
tensor rank ``t`` is ``[t, t + T, t + 2T, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from megatron.config.schema import ParallelConfig


@dataclass(frozen=True)
class ParallelGroupRanks:
    """Every group's global ranks, the same on all ranks: ``new_group`` must be called for each, in order."""

    tensor: list[list[int]]
    ulysses: list[list[int]]
    data: list[list[int]]
    sequence_data: list[list[int]]
    pipeline: list[list[int]]


def megatron_group_ranks(
    world_size: int, tensor_size: int, pipeline_size: int = 1, ulysses_size: int = 1
) -> ParallelGroupRanks:
    """The rank layout alone, without any process group, so that it can be checked for any world size.

    Inside a pipeline stage of ``T * U * D`` consecutive ranks, tensor-parallel ranks are neighbours, the
    DeepSpeed-Ulysses sequence ranks stride by ``T`` and the data-parallel replicas by ``T * U``.
    """
    if min(tensor_size, pipeline_size, ulysses_size) < 1:
        raise ValueError(
            f"--tensor-model-parallel-size ({tensor_size}), --pipeline-model-parallel-size "
            f"({pipeline_size}) and --ds-sequence-parallel-size ({ulysses_size}) must be at least 1"
        )
    model_ranks = tensor_size * pipeline_size * ulysses_size
    if world_size % model_ranks != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size ({tensor_size}) x "
            f"--pipeline-model-parallel-size ({pipeline_size}) x --ds-sequence-parallel-size "
            f"({ulysses_size}); "
            f"launch a multiple of {model_ranks} processes or change the sizes"
        )
    stage_size = world_size // pipeline_size
    replica_size = tensor_size * ulysses_size
    data_size = stage_size // replica_size
    tensor, ulysses, data, sequence_data = [], [], [], []
    for stage_start in range(0, world_size, stage_size):
        for start in range(stage_start, stage_start + stage_size, tensor_size):
            tensor.append(list(range(start, start + tensor_size)))
        for replica in range(data_size):
            base = stage_start + replica * replica_size
            for offset in range(tensor_size):
                ulysses.append(list(range(base + offset, base + replica_size, tensor_size)))
        for offset in range(replica_size):
            data.append(list(range(stage_start + offset, stage_start + stage_size, replica_size)))
        for offset in range(tensor_size):
            sequence_data.append(list(range(stage_start + offset, stage_start + stage_size, tensor_size)))
    pipeline = [list(range(first, world_size, stage_size)) for first in range(stage_size)]
    return ParallelGroupRanks(tensor, ulysses, data, sequence_data, pipeline)


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the tensor, Ulysses-sequence, data and pipeline groups.

    A group of ``None`` means a group of one in a process without ``torch.distributed``: layers built with
    :meth:`single` never call it, so they run in a plain process and compare directly with ``torch.nn``
    modules. Built with :func:`build_parallel_context`, every group is a real process group (DeepSpeed
    would otherwise take a missing group for the whole world).

    The ``get_*`` methods are the "mpu" interface through which DeepSpeed's engines, its activation
    checkpointing and DeepSpeed-Ulysses learn the layout.
    """

    tensor_rank: int = 0
    tensor_size: int = 1
    tensor_group: dist.ProcessGroup | None = None
    data_rank: int = 0
    data_size: int = 1
    data_group: dist.ProcessGroup | None = None
    pipeline_rank: int = 0
    pipeline_size: int = 1
    pipeline_group: dist.ProcessGroup | None = None
    ulysses_rank: int = 0
    ulysses_size: int = 1
    ulysses_group: dist.ProcessGroup | None = None
    # Data-parallel and Ulysses ranks together: they hold the same weights, so gradients are averaged there.
    sequence_data_rank: int = 0
    sequence_data_size: int = 1
    sequence_data_group: dist.ProcessGroup | None = None
    # Megatron sequence parallelism over the tensor-parallel group.
    sequence_parallel: bool = False

    @classmethod
    def single(cls) -> ParallelContext:
        return cls()

    def tensor_shard(self, total: int, what: str) -> slice:
        """This rank's equal share of ``total`` along a split dimension; ``what`` names it in the error."""
        if total % self.tensor_size != 0:
            raise ValueError(
                f"{what} ({total}) is not divisible by the tensor-parallel size ({self.tensor_size}); "
                "choose sizes that --tensor-model-parallel-size divides"
            )
        size = total // self.tensor_size
        return slice(self.tensor_rank * size, (self.tensor_rank + 1) * size)

    # The mpu interface (Megatron's names, as DeepSpeed calls them).
    def get_model_parallel_rank(self) -> int:
        return self.tensor_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tensor_size

    def get_model_parallel_group(self):
        return self.tensor_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.data_rank

    def get_data_parallel_world_size(self) -> int:
        return self.data_size

    def get_data_parallel_group(self):
        return self.data_group

    def get_pipeline_model_parallel_rank(self) -> int:
        return self.pipeline_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.pipeline_size

    def get_pipeline_model_parallel_group(self):
        return self.pipeline_group

    def get_sequence_parallel_rank(self) -> int:
        return self.ulysses_rank

    def get_sequence_parallel_world_size(self) -> int:
        return self.ulysses_size

    def get_sequence_parallel_group(self):
        return self.ulysses_group

    def get_sequence_data_parallel_rank(self) -> int:
        """DeepSpeed's checkpointing picks its writers by this rank, ZeRO's shard owner among them; without
        it, it takes the data-parallel rank, which the Ulysses ranks of a replica share."""
        return self.sequence_data_rank

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.sequence_data_size

    def get_sequence_data_parallel_group(self):
        return self.sequence_data_group


def parallel_context_for(parallel: ParallelConfig) -> ParallelContext:
    """The groups of a validated layout (see :func:`build_parallel_context`)."""
    return build_parallel_context(
        parallel.tensor_model_parallel_size,
        parallel.pipeline_model_parallel_size,
        parallel.ds_sequence_parallel_size,
        parallel.sequence_parallel,
    )


def build_parallel_context(
    tensor_size: int, pipeline_size: int = 1, ulysses_size: int = 1, sequence_parallel: bool = False
) -> ParallelContext:
    """Create every group from the default process group; every rank must call this, in the same order."""
    if not dist.is_initialized():
        raise RuntimeError(
            "build_parallel_context needs torch.distributed to be initialised first; "
            "use ParallelContext.single() for a single process"
        )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    layout = megatron_group_ranks(world_size, tensor_size, pipeline_size, ulysses_size)

    def own_group(all_ranks: list[list[int]]) -> tuple[int, int, dist.ProcessGroup]:
        mine = None
        for ranks in all_ranks:
            # Every rank takes part in creating every group, as torch.distributed requires.
            group = dist.new_group(ranks)
            if rank in ranks:
                mine = (ranks.index(rank), len(ranks), group)
        assert mine is not None, f"rank {rank} is in no group of {all_ranks}"
        return mine

    tensor_rank, tensor_size_, tensor_group = own_group(layout.tensor)
    ulysses_rank, ulysses_size_, ulysses_group = own_group(layout.ulysses)
    data_rank, data_size, data_group = own_group(layout.data)
    sequence_data_rank, sequence_data_size, sequence_data_group = own_group(layout.sequence_data)
    pipeline_rank, pipeline_size_, pipeline_group = own_group(layout.pipeline)
    return ParallelContext(
        tensor_rank=tensor_rank,
        tensor_size=tensor_size_,
        tensor_group=tensor_group,
        data_rank=data_rank,
        data_size=data_size,
        data_group=data_group,
        pipeline_rank=pipeline_rank,
        pipeline_size=pipeline_size_,
        pipeline_group=pipeline_group,
        ulysses_rank=ulysses_rank,
        ulysses_size=ulysses_size_,
        ulysses_group=ulysses_group,
        sequence_data_rank=sequence_data_rank,
        sequence_data_size=sequence_data_size,
        sequence_data_group=sequence_data_group,
        sequence_parallel=sequence_parallel,
    )
