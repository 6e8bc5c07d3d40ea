"""Norms of Adam's moments and of the weights, as Megatron-DeepSpeed's --log-optimizer-states-to-tensorboard
writes them (``optimizer/variance_l2``, ``optimizer/momentum_abs_max``, ...).

They are taken over the tensors the optimizer updates (DeepSpeed's fp32 master partitions under ZeRO), and
reduced over ranks as Megatron-DeepSpeed reduces them: summed (maximum for the largest magnitudes) over the
data-parallel x Ulysses ranks when ZeRO partitions the states, over the tensor-parallel ranks and over the
pipeline stages. Like there, a parameter replicated on the tensor-parallel ranks (a LayerNorm) counts once
per rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron.parallel.context import ParallelContext

# Megatron-DeepSpeed's names: variance is exp_avg_sq, momentum exp_avg, weight the parameter.
_SUMS = ("variance_l2", "variance_sqrt_l2", "momentum_l2", "weight_l2")
_L1 = ("variance_l1", "variance_sqrt_l1", "momentum_l1", "weight_l1")
_MAXIMA = ("variance_abs_max", "variance_sqrt_abs_max", "momentum_abs_max", "weight_abs_max")


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16, fp16 keep it as ``.optimizer``)."""
    while not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_state_norms(
    optimizer, context: ParallelContext, zero_stage: int, device: torch.device
) -> dict[str, float]:
    """The twelve statistics, on every rank (the reductions are collectives)."""
    base = base_optimizer(optimizer)
    sums = torch.zeros(len(_SUMS) + len(_L1), dtype=torch.float64, device=device)
    maxima = torch.zeros(len(_MAXIMA), dtype=torch.float64, device=device)
    for group in base.param_groups:
        for param in group["params"]:
            state = base.state.get(param, {})
            if "exp_avg" not in state:
                continue  # not updated yet
            variance = state["exp_avg_sq"].detach().double()
            tensors = (variance, variance.sqrt(), state["exp_avg"].detach().double(), param.detach().double())
            norms = [t.square().sum() for t in tensors] + [t.abs().sum() for t in tensors]
            sums += torch.stack(norms).to(device)
            maxima = torch.maximum(maxima, torch.stack([t.abs().max() for t in tensors]).to(device))
    groups = [context.tensor_group, context.pipeline_group]
    if zero_stage > 0:
        groups.append(context.sequence_data_group)
    for group in groups:
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(sums, group=group)
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
    values = sums.tolist()
    stats = {name: value**0.5 for name, value in zip(_SUMS, values[: len(_SUMS)])}
    stats.update(zip(_L1, values[len(_SUMS) :]))
    stats.update(zip(_MAXIMA, maxima.tolist()))
    return stats
