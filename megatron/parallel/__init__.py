"""Tensor parallelism: the parallel context (ranks and groups), the mappings at region edges, the split
layers and the vocabulary-parallel cross entropy. The plain model in ``megatron.model`` knows none of this.
"""

from megatron.parallel.context import (
    ParallelContext,
    ParallelGroupRanks,
    build_parallel_context,
    megatron_group_ranks,
)
from megatron.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    set_tensor_parallel_attributes,
)
from megatron.parallel.mappings import (
    copy_to_tensor_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
    scatter_to_tensor_parallel_region,
)

__all__ = [
    "ColumnParallelLinear",
    "ParallelContext",
    "ParallelGroupRanks",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "build_parallel_context",
    "copy_to_tensor_parallel_region",
    "gather_from_tensor_parallel_region",
    "megatron_group_ranks",
    "reduce_from_tensor_parallel_region",
    "scatter_to_tensor_parallel_region",
    "set_tensor_parallel_attributes",
    "vocab_parallel_cross_entropy",
]
