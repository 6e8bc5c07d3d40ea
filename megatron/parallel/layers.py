"""Linear and embedding layers whose weights are split across the ranks of a tensor-parallel group.

Each layer draws the *full* weight on every rank, from the generator it is given (the default one when
None), and keeps only its own slice. That costs a transient full-size tensor at construction, but makes a
model built with the same seed equal, parameter for parameter, whatever the tensor-parallel size, so that
runs with T=1 and T=2 compare and checkpoints convert by plain concatenation.

Both linear layers run their local matrix multiply through ``self.gemm``, ``F.linear`` unless
``megatron.model.float8`` has put an FP8 one in its place; the parameters stay the same either way.

Every parameter carries ``tensor_model_parallel`` (split across ranks or replicated), ``partition_dim`` (the
dimension it is split along, -1 when replicated) and ``partition_stride``, which is what gradient clipping,
weight-decay grouping and checkpoint conversion read. The stride is 1 (each rank holds one contiguous chunk)
except for fused projections of several parts, such as SwiGLU's ``[gate; up]``: with stride ``s`` the
full tensor is ``s`` equal parts and each rank holds its chunk of every part, so a rank computes whole
gate/up pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.parallel.context import ParallelContext
from megatron.parallel.mappings import (
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_parallel_region,
)


def set_tensor_parallel_attributes(
    param: nn.Parameter, partition_dim: int | None, stride: int = 1
) -> nn.Parameter:
    """Mark ``param`` as split along ``partition_dim`` (in ``stride`` parts, see above), or as replicated
    on every rank when it is None."""
    param.tensor_model_parallel = partition_dim is not None
    param.partition_dim = -1 if partition_dim is None else partition_dim
    param.partition_stride = stride
    return param


def shard_of(full: torch.Tensor, shard: slice, dim: int, stride: int = 1) -> torch.Tensor:
    """This rank's part of ``full``: ``shard`` (a slice of one of the ``stride`` parts along ``dim``) of
    every part, concatenated. A copy, so that it does not keep ``full``'s storage alive."""
    parts = full.chunk(stride, dim=dim)
    index = [slice(None)] * full.dim()
    index[dim] = shard
    return torch.cat([part[tuple(index)] for part in parts], dim=dim).clone()


def merge_shards(shards: list[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """The full tensor from every rank's :func:`shard_of` (in rank order)."""
    parts = [shard.chunk(stride, dim=dim) for shard in shards]
    return torch.cat([torch.cat([rank[part] for rank in parts], dim=dim) for part in range(stride)], dim=dim)


def sharded_normal(
    shape: tuple[int, ...],
    std: float,
    shard: slice,
    dim: int,
    generator: torch.Generator | None,
    stride: int = 1,
) -> nn.Parameter:
    """A parameter drawn N(0, std) at its full ``shape`` (alike on every rank), of which this rank keeps
    its ``shard`` along ``dim``."""
    full = torch.empty(shape)
    full.normal_(mean=0.0, std=std, generator=generator)
    return set_tensor_parallel_attributes(nn.Parameter(shard_of(full, shard, dim, stride)), dim, stride)


class ColumnParallelLinear(nn.Module):
    """``y = x A^T + b`` with ``A`` split along its output dimension: each rank computes a slice of ``y``.

    Its output is usually left split (``gather_output=False``) to feed a :class:`RowParallelLinear`, so that
    the pair needs one all-reduce forward and one backward. With sequence parallelism the input arrives
    split along the sequence and is all-gathered first (reduce-scattered in backward).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        context: ParallelContext,
        std: float,
        bias: bool = True,
        gather_output: bool = False,
        generator: torch.Generator | None = None,
        stride: int = 1,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group = context.tensor_group
        self.gather_output = gather_output
        self.sequence_parallel = context.sequence_parallel
        self.gemm = F.linear
        what = "ColumnParallelLinear out_features" + (f" / {stride} parts" if stride > 1 else "")
        shard = context.tensor_shard(out_features // stride, what)
        shape = (out_features, in_features)
        self.weight = sharded_normal(shape, std, shard, dim=0, generator=generator, stride=stride)
        if bias:
            local = stride * (shard.stop - shard.start)
            self.bias = set_tensor_parallel_attributes(nn.Parameter(torch.zeros(local)), 0, stride)
        else:
            self.register_parameter("bias", None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            hidden = gather_from_sequence_parallel_region(hidden, self.group)
        else:
            hidden = copy_to_tensor_parallel_region(hidden, self.group)
        output = self.gemm(hidden, self.weight, self.bias)
        return gather_from_tensor_parallel_region(output, self.group) if self.gather_output else output

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, shard={tuple(self.weight.shape)}"


class RowParallelLinear(nn.Module):
    """``y = x A^T + b`` with ``A`` split along its input dimension: each rank adds a partial sum to ``y``.

    The bias is replicated and added once, after the all-reduce, so that it is not counted ``T`` times.
    With sequence parallelism the all-reduce becomes a reduce-scatter along the sequence.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        context: ParallelContext,
        std: float,
        bias: bool = True,
        input_is_parallel: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group = context.tensor_group
        self.input_is_parallel = input_is_parallel
        self.sequence_parallel = context.sequence_parallel
        self.gemm = F.linear
        shard = context.tensor_shard(in_features, "RowParallelLinear in_features")
        self.weight = sharded_normal((out_features, in_features), std, shard, dim=1, generator=generator)
        if bias:
            self.bias = set_tensor_parallel_attributes(nn.Parameter(torch.zeros(out_features)), None)
        else:
            self.register_parameter("bias", None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            hidden = scatter_to_tensor_parallel_region(hidden, self.group)
        partial = self.gemm(hidden, self.weight)
        if not self.sequence_parallel:
            output = reduce_from_tensor_parallel_region(partial, self.group)
            return output if self.bias is None else output + self.bias
        output = reduce_scatter_to_sequence_parallel_region(partial, self.group)
        # Each rank adds the bias to its part of the sequence only: sum the bias gradient over the ranks.
        return output if self.bias is None else output + copy_to_tensor_parallel_region(self.bias, self.group)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, shard={tuple(self.weight.shape)}"


class VocabParallelEmbedding(nn.Module):
    """An embedding table whose rows (the vocabulary) are split across ranks.

    Each rank looks up the tokens that fall in its rows and contributes zeros for the others; the all-reduce
    then leaves every rank with the full embedding. The split matches the output layer's, so tied logits come
    out vocabulary-parallel for :func:`megatron.parallel.cross_entropy.vocab_parallel_cross_entropy`.
    ``lookup_in_fp32`` looks the tokens up in an fp32 copy of a half-precision table and casts the output
    back, so that the backward sums each row's gradient in fp32 before it is rounded to the table's dtype.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        context: ParallelContext,
        std: float,
        generator: torch.Generator | None = None,
        lookup_in_fp32: bool = False,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.lookup_in_fp32 = lookup_in_fp32
        self.group = context.tensor_group
        self.vocab_shard = context.tensor_shard(num_embeddings, "VocabParallelEmbedding num_embeddings")
        shape = (num_embeddings, embedding_dim)
        self.weight = sharded_normal(shape, std, self.vocab_shard, dim=0, generator=generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        start, stop = self.vocab_shard.start, self.vocab_shard.stop
        outside = (tokens < start) | (tokens >= stop)
        local = (tokens - start).masked_fill(outside, 0)
        if self.lookup_in_fp32:
            output = F.embedding(local, self.weight.float()).to(self.weight.dtype)
        else:
            output = F.embedding(local, self.weight)
        output = output.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel_region(output, self.group)

    def extra_repr(self) -> str:
        rows = f"{self.vocab_shard.start}:{self.vocab_shard.stop}"
        return f"{self.num_embeddings}, {self.embedding_dim}, rows={rows}"


class LayerNorm(nn.LayerNorm):
    """A LayerNorm replicated on every tensor-parallel rank.

    Under sequence parallelism each rank normalises only its part of the sequence, so its weight and bias
    gradients are partial: entering them through ``copy_to_tensor_parallel_region`` sums the gradients over
    the ranks in backward and keeps the replicas equal.
    """

    def __init__(self, hidden_size: int, eps: float, context: ParallelContext):
        super().__init__(hidden_size, eps=eps)
        self.group = context.tensor_group
        self.sequence_parallel = context.sequence_parallel
        for param in (self.weight, self.bias):
            set_tensor_parallel_attributes(param, None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.sequence_parallel:
            return super().forward(hidden)
        weight = copy_to_tensor_parallel_region(self.weight, self.group)
        bias = copy_to_tensor_parallel_region(self.bias, self.group)
        return F.layer_norm(hidden, self.normalized_shape, weight, bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm (LLaMA's norm: no mean subtraction, no bias), replicated like :class:`LayerNorm`, whose
    sequence-parallel gradient rule it shares. Computed in float32 whatever the input's dtype, as HF's
    ``LlamaRMSNorm`` computes it, the weight applied after the cast back."""

    def __init__(self, hidden_size: int, eps: float, context: ParallelContext):
        super().__init__()
        self.eps = eps
        self.weight = set_tensor_parallel_attributes(nn.Parameter(torch.ones(hidden_size)), None)
        self.group = context.tensor_group
        self.sequence_parallel = context.sequence_parallel

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.sequence_parallel:
            weight = copy_to_tensor_parallel_region(weight, self.group)
        normed = F.rms_norm(hidden.float(), hidden.shape[-1:], eps=self.eps).to(hidden.dtype)
        return weight * normed

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
