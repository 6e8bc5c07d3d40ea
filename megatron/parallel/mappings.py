"""The communication steps at the edges of tensor- and sequence-parallel regions, as autograd functions.

Each is the transpose of its partner: what one does in the forward pass, the other does in the backward pass.
With a group of one each is the identity and issues no collective. Activations are ``[batch, sequence,
hidden]``: tensor-parallel steps split the last dimension, sequence-parallel steps the sequence (dim 1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def _size(group: Group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _all_reduce(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    if _size(group) == 1:
        return tensor
    # A copy, because the incoming tensor (an activation, or a gradient shared with a residual branch)
    # may still be read by someone else.
    result = tensor.contiguous().clone()
    dist.all_reduce(result, group=group)
    return result


def _split(tensor: torch.Tensor, group: Group, dim: int = -1) -> torch.Tensor:
    size = _size(group)
    if size == 1:
        return tensor
    if tensor.shape[dim] % size != 0:
        raise ValueError(f"dimension {dim} ({tensor.shape[dim]}) is not divisible by the group size {size}")
    return tensor.chunk(size, dim=dim)[dist.get_rank(group)].contiguous()


def _gather(tensor: torch.Tensor, group: Group, dim: int = -1) -> torch.Tensor:
    size = _size(group)
    if size == 1:
        return tensor
    tensor = tensor.contiguous()
    pieces = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(pieces, tensor, group=group)
    return torch.cat(pieces, dim=dim)


def _reduce_scatter(tensor: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    """Sum over the group, keep this rank's chunk of ``dim``. gloo has no reduce-scatter: all-reduce there."""
    size = _size(group)
    if size == 1:
        return tensor
    if dist.get_backend(group) == "gloo":
        return _split(_all_reduce(tensor, group), group, dim)
    chunks = [chunk.contiguous() for chunk in tensor.chunk(size, dim=dim)]
    output = torch.empty_like(chunks[0])
    dist.reduce_scatter(output, chunks, group=group)
    return output


class _CopyToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        return _all_reduce(tensor, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _ScatterToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _split(tensor, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.group), None


class _GatherFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _gather(tensor, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _split(grad, ctx.group), None


SEQUENCE_DIM = 1


class _ScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _split(tensor, group, SEQUENCE_DIM)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.group, SEQUENCE_DIM), None


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _gather(tensor, group, SEQUENCE_DIM)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # The gathered tensor fed a tensor-parallel region whose ranks each hold part of the gradient.
        return _reduce_scatter(grad, ctx.group, SEQUENCE_DIM), None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _reduce_scatter(tensor, group, SEQUENCE_DIM)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.group, SEQUENCE_DIM), None


def copy_to_tensor_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Enter a region where each rank uses the whole input: the ranks' input gradients are summed."""
    return _CopyToTensorParallelRegion.apply(tensor, group)


def reduce_from_tensor_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Leave a region whose ranks hold partial sums: add them up; the gradient passes unchanged."""
    return _ReduceFromTensorParallelRegion.apply(tensor, group)


def scatter_to_tensor_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Keep this rank's slice of the last dimension; the gradient is gathered back to full width."""
    return _ScatterToTensorParallelRegion.apply(tensor, group)


def gather_from_tensor_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate the ranks' slices along the last dimension; the gradient is split back to this rank's."""
    return _GatherFromTensorParallelRegion.apply(tensor, group)


def scatter_to_sequence_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Enter a sequence-parallel region: keep this rank's part of the sequence; the gradient is gathered."""
    return _ScatterToSequenceParallelRegion.apply(tensor, group)


def gather_from_sequence_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Whole sequence from the ranks' parts, to feed a tensor-parallel region; the gradient is summed over
    the ranks and split back (reduce-scatter), replacing the all-reduce of the non-sequence-parallel case."""
    return _GatherFromSequenceParallelRegion.apply(tensor, group)


def reduce_scatter_to_sequence_parallel_region(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Leave a tensor-parallel region into a sequence-parallel one: sum the partial results and keep this
    rank's part of the sequence; the gradient is gathered."""
    return _ReduceScatterToSequenceParallelRegion.apply(tensor, group)
