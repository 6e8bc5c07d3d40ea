"""Cross entropy over logits whose vocabulary dimension is split across the tensor-parallel ranks.

Three all-reduces of per-token scalars (the maximum logit, the label's logit, the sum of exponentials) replace
gathering ``[tokens, vocab]`` logits on every rank; the backward pass is local to each rank's shard.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron.parallel.context import ParallelContext


def _all_reduce(tensor: torch.Tensor, group: dist.ProcessGroup | None, op=dist.ReduceOp.SUM) -> None:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, context: ParallelContext) -> torch.Tensor:
        group = context.tensor_group
        shard = context.tensor_shard(logits.shape[-1] * context.tensor_size, "vocabulary size")
        # float32 throughout: exp and log of half-precision logits lose the small probabilities.
        logits_fp32 = logits.float()
        logits_max = logits_fp32.max(dim=-1).values
        _all_reduce(logits_max, group, dist.ReduceOp.MAX)
        shifted = logits_fp32 - logits_max.unsqueeze(-1)

        outside = (labels < shard.start) | (labels >= shard.stop)
        local_labels = (labels - shard.start).masked_fill(outside, 0)
        label_logits = shifted.gather(-1, local_labels.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        _all_reduce(label_logits, group)

        exp_logits = shifted.exp()
        sum_exp = exp_logits.sum(dim=-1)
        _all_reduce(sum_exp, group)

        softmax = exp_logits.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, outside, local_labels)
        ctx.input_dtype = logits.dtype
        return sum_exp.log() - label_logits

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        softmax, outside, local_labels = ctx.saved_tensors
        # d loss / d logit = softmax - one_hot(label); the one-hot lives on the rank that owns the label.
        grad = softmax.clone()
        grad.scatter_add_(-1, local_labels.unsqueeze(-1), (outside.float() - 1.0).unsqueeze(-1))
        grad.mul_(grad_losses.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(
    logits_shard: torch.Tensor, labels: torch.Tensor, context: ParallelContext
) -> torch.Tensor:
    """Per-token losses (float32, shaped like ``labels``) from this rank's ``[..., vocab / T]`` logits.

    Equals ``F.cross_entropy(full_logits, labels, reduction="none")``; there is no ignore index, so mask
    the returned losses instead.
    """
    if logits_shard.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits of shape {tuple(logits_shard.shape)} do not match labels of shape "
            f"{tuple(labels.shape)}: expected logits [..., vocab / T] for labels [...]"
        )
    return _VocabParallelCrossEntropy.apply(logits_shard, labels, context)
