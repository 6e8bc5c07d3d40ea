"""The global gradient norm and clipping, counting every parameter once across tensor and pipeline ranks.

DeepSpeed's own norm counts a parameter on every rank of its model-parallel group only when the parameter
is marked model-parallel, and otherwise on the group's first rank alone. Its pipeline engine puts every
stage in that group, so unmarked parameters of later stages (LayerNorms, biases) would be left out, and its
fp32 clipping also counts the last stage's tied copy of the word embedding. :func:`mark_for_deepspeed_norm`
and :class:`GradientClipper` make both right.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from deepspeed.moe.utils import is_moe_param
from deepspeed.utils import groups
from torch import nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from megatron.parallel.context import ParallelContext


def _counted(param: nn.Parameter) -> bool:
    # DeepSpeed marks the last stage's copy of a tied weight; its gradient equals the first stage's.
    return param.grad is not None and not getattr(param, "ds_pipe_replicated", False)


def _sum_of_squares(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Sum of squared entries of ``grads`` with torch's multi-tensor norm: a few kernels for the whole
    model rather than two per parameter, which is what bounds a small model's step on a GPU."""
    if not grads:
        return torch.zeros((), device=device)
    return get_total_norm(grads, norm_type=2.0).float().pow(2)


def gradient_norm(parameters: Iterable[nn.Parameter], context: ParallelContext) -> torch.Tensor:
    """L2 norm of all gradients of the model: split parameters summed over the tensor-parallel group,
    replicated ones counted once, stages summed over the pipeline group, MoE experts summed over their
    expert-parallel group (each rank holds its own experts). Stays on the device."""
    parameters = [p for p in parameters if _counted(p)]
    device = parameters[0].device
    split, replicated = [], []
    experts: dict[str, list[torch.Tensor]] = {}
    for param in parameters:
        if is_moe_param(param):
            experts.setdefault(param.group_name, []).append(param.grad)
        elif getattr(param, "tensor_model_parallel", False):
            split.append(param.grad)
        else:
            replicated.append(param.grad)
    split_square = _sum_of_squares(split, device)
    if context.tensor_size > 1:
        dist.all_reduce(split_square, group=context.tensor_group)
    total = split_square + _sum_of_squares(replicated, device)
    for name in sorted(experts):  # the same order on every rank
        square = _sum_of_squares(experts[name], device)
        group = groups._get_expert_parallel_group(name)
        if dist.get_world_size(group) > 1:
            dist.all_reduce(square, group=group)
        total = total + square
    if context.pipeline_size > 1:
        dist.all_reduce(total, group=context.pipeline_group)
    return total.sqrt()


def scales_gradients_in_its_kernel(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` divides every gradient by its ``grad_scale`` attribute inside its own kernel:
    torch's fused Adam and AdamW do (the protocol ``torch.amp.GradScaler`` uses to unscale for free)."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        group.get("fused") for group in optimizer.param_groups
    )


class GradientClipper:
    """Measures the global gradient norm and clips to ``max_norm`` (0: measure only), keeping the norm.

    It replaces the DeepSpeed engine's ``clip_fp32_gradients`` wherever DeepSpeed does not wrap the
    optimizer (fp32 or bf16 autocast without ZeRO): DeepSpeed's version miscounts pipeline stages and
    expert-parallel ranks, walks the parameters one by one, and its norm is not kept for the log. The
    engine calls it on each update when clipping is on; the training step calls :meth:`measure` when not.

    When ``optimizer`` (the one that steps these parameters) :func:`scales_gradients_in_its_kernel`, the
    clip is folded into its step: its ``grad_scale`` becomes ``1 / clip coefficient``, which saves a read
    and a write of every gradient per update. Otherwise the gradients are scaled in place, as torch clips.
    """

    def __init__(
        self,
        parameters: Iterable[nn.Parameter],
        max_norm: float,
        context: ParallelContext,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.parameters = list(parameters)
        self.max_norm = max_norm
        self.context = context
        self.fused_optimizer = (
            optimizer if optimizer is not None and scales_gradients_in_its_kernel(optimizer) else None
        )
        self.last_norm: torch.Tensor | None = None

    def measure(self) -> torch.Tensor:
        self.last_norm = gradient_norm(self.parameters, self.context)
        return self.last_norm

    def __call__(self) -> torch.Tensor:
        norm = self.measure()
        if self.max_norm <= 0:
            return norm
        if self.fused_optimizer is None:
            clip_grads_with_norm_(self.parameters, self.max_norm, norm)
        else:
            # clip_grads_with_norm_'s coefficient, min(1, max_norm / (norm + 1e-6)), as a divisor.
            self.fused_optimizer.grad_scale = ((norm + 1e-6) / self.max_norm).clamp(min=1.0)
        return norm


def mark_for_deepspeed_norm(module: nn.Module, context: ParallelContext) -> None:
    """Mark the parameters replicated over the tensor-parallel ranks as model-parallel on tensor rank 0 of
    every pipeline stage, so that DeepSpeed's norm (ZeRO and bf16 optimizers) counts each exactly once."""
    for param in module.parameters():
        if not getattr(param, "tensor_model_parallel", False):
            param.model_parallel = context.tensor_rank == 0
