"""The global gradient norm and clipping, counting every parameter once across tensor and pipeline ranks.

DeepSpeed's own norm counts a parameter on every rank of its model-parallel group only when the parameter
is marked model-parallel, and otherwise on the group's first rank alone. Its pipeline engine puts every
stage in that group, so unmarked parameters of later stages (LayerNorms, biases) would be left out, and its
fp32 clipping also counts the last stage's tied copy of the word embedding. :func:`mark_for_deepspeed_norm`
and :func:`clip_gradients_` make both right.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from deepspeed.moe.utils import is_moe_param
from deepspeed.utils import groups
from torch import nn

from megatron.parallel.context import ParallelContext


def _counted(param: nn.Parameter) -> bool:
    # DeepSpeed marks the last stage's copy of a tied weight; its gradient equals the first stage's.
    return param.grad is not None and not getattr(param, "ds_pipe_replicated", False)


def gradient_norm(parameters: Iterable[nn.Parameter], context: ParallelContext) -> torch.Tensor:
    """L2 norm of all gradients of the model: split parameters summed over the tensor-parallel group,
    replicated ones counted once, stages summed over the pipeline group, MoE experts summed over their
    expert-parallel group (each rank holds its own experts). Stays on the device."""
    parameters = [p for p in parameters if _counted(p)]
    device = parameters[0].device
    split, replicated = torch.zeros((), device=device), torch.zeros((), device=device)
    experts: dict[str, torch.Tensor] = {}
    for param in parameters:
        square = param.grad.detach().float().pow(2).sum()
        if is_moe_param(param):
            experts[param.group_name] = experts.get(param.group_name, 0.0) + square
        elif getattr(param, "tensor_model_parallel", False):
            split += square
        else:
            replicated += square
    if context.tensor_size > 1:
        dist.all_reduce(split, group=context.tensor_group)
    total = split + replicated
    for name in sorted(experts):  # the same order on every rank
        group = groups._get_expert_parallel_group(name)
        if dist.get_world_size(group) > 1:
            dist.all_reduce(experts[name], group=group)
        total = total + experts[name]
    if context.pipeline_size > 1:
        dist.all_reduce(total, group=context.pipeline_group)
    return total.sqrt()


def clip_gradients_(
    parameters: Iterable[nn.Parameter], max_norm: float, context: ParallelContext
) -> torch.Tensor:
    """Scale all gradients by min(1, max_norm / norm) in place; returns the norm before clipping."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = gradient_norm(parameters, context)
    coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for param in parameters:
        param.grad.detach().mul_(coefficient)
    return norm


def mark_for_deepspeed_norm(module: nn.Module, context: ParallelContext) -> None:
    """Mark the parameters replicated over the tensor-parallel ranks as model-parallel on tensor rank 0 of
    every pipeline stage, so that DeepSpeed's norm (ZeRO and bf16 optimizers) counts each exactly once."""
    for param in module.parameters():
        if not getattr(param, "tensor_model_parallel", False):
            param.model_parallel = context.tensor_rank == 0
