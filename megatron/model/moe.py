"""The mixture-of-experts MLP: DeepSpeed's ``deepspeed.moe.layer.MoE`` in place of a transformer layer's MLP.

It is DeepSpeed's layer itself (top-1/top-2 gating with capacity and token dropping, the all-to-all between
expert-parallel ranks, Residual MoE), so its parameter names are Megatron-DeepSpeed's
(``mlp.deepspeed_moe.gate.wg.weight``, ``mlp.deepspeed_moe.experts.deepspeed_experts.E.dense_h_to_4h.weight``,
and with Residual MoE ``mlp.mlp.*`` and ``mlp.coefficient.*``) and DeepSpeed's engine finds it: it creates
the expert groups, reduces expert gradients over the expert-data-parallel ranks only, and checkpoints each
expert to its own ``layer_L_expert_E_mp_rank_XX_model_states.pt``.

What this module adds: each expert is initialised from its own generator, keyed by layer and *global* expert
index (DeepSpeed deep-copies one expert, so all would start equal), which makes the weights the same whatever
the expert-parallel size; the gate and the residual coefficient are initialised from the layer's generator
like every other weight; and the load-balancing loss of the last forward is exposed as ``moe_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from deepspeed.moe.layer import MoE
from deepspeed.utils import groups
from torch import nn

from megatron.config.schema import ModelConfig, MoEConfig
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import init_generator

ExpertFactory = Callable[[torch.Generator], nn.Module]


def expert_parallel_rank(context: ParallelContext, expert_parallel_size: int) -> int:
    """This rank's place in its expert-parallel group. DeepSpeed 0.19 groups ``expert_parallel_size``
    consecutive data-parallel ranks (MoE runs without tensor, pipeline and Ulysses parallelism, so the
    data-parallel rank is the global rank); :func:`check_expert_groups` confirms it once DeepSpeed has built
    the groups."""
    return context.data_rank % expert_parallel_size


class MoEMLP(MoE):
    """DeepSpeed's MoE layer for transformer layer ``layer_number``, its experts built by ``expert`` (an MLP
    factory taking a generator). ``expert_rank`` places this rank's experts among the layer's global expert
    indices. ``forward`` returns the output alone; the load-balancing loss is in ``moe_loss``."""

    def __init__(
        self,
        config: ModelConfig,
        moe: MoEConfig,
        layer_number: int,
        seed: int,
        generator: torch.Generator,
        expert: ExpertFactory,
        expert_rank: int = 0,
    ):
        super().__init__(
            config.hidden_size,
            expert(generator),
            num_experts=moe.experts_at(layer_number),
            ep_size=moe.expert_parallel_size,
            k=moe.topk,
            capacity_factor=moe.train_capacity_factor,
            eval_capacity_factor=moe.eval_capacity_factor,
            min_capacity=moe.min_capacity,
            use_residual=moe.mlp_type == "residual",
            drop_tokens=moe.token_dropping,
        )
        self.expert_rank = expert_rank
        std = config.init_method_std
        with torch.no_grad():
            self.deepspeed_moe.gate.wg.weight.normal_(0.0, std, generator=generator)
            if self.use_residual:
                self.coefficient.weight.normal_(0.0, std, generator=generator)
                self.coefficient.bias.zero_()
            first = expert_rank * self.num_local_experts
            for index, local in enumerate(self.deepspeed_moe.experts.deepspeed_experts):
                own = expert(init_generator(seed, layer_number, first + index))
                local.load_state_dict(own.state_dict())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output, _, _ = super().forward(hidden)
        return output

    @property
    def moe_loss(self) -> torch.Tensor:
        """The gate's load-balancing loss from the last forward (DeepSpeed's ``l_aux``), in float32."""
        return self.deepspeed_moe.l_aux


def moe_losses(layers: Iterable[nn.Module]) -> list[torch.Tensor]:
    """The load-balancing losses of the MoE layers among ``layers`` (transformer layers), from their last
    forward."""
    return [layer.mlp.moe_loss for layer in layers if isinstance(layer.mlp, MoEMLP)]


def check_expert_groups(model: nn.Module) -> None:
    """After ``deepspeed.initialize``: each MoE layer's experts were initialised for the expert-parallel rank
    that DeepSpeed's groups give this process (a ds_config option such as
    ``use_data_before_expert_parallel_`` would order the ranks otherwise)."""
    for name, module in model.named_modules():
        if isinstance(module, MoEMLP) and module.ep_size > 1:
            rank = groups._get_expert_parallel_rank(module.expert_group_name)
            if rank != module.expert_rank:
                raise RuntimeError(
                    f"{name}: DeepSpeed placed this process at expert-parallel rank {rank}, the model was "
                    f"built for rank {module.expert_rank}; remove use_data_before_expert_parallel_ from the "
                    "ds_config."
                )


def describe_moe(moe: MoEConfig) -> str:
    layers = [f"{number}: {experts}" for number, experts in enumerate(moe.experts_per_layer) if experts > 1]
    dropping = (
        f"capacity factor {moe.train_capacity_factor} (eval {moe.eval_capacity_factor}), min capacity "
        f"{moe.min_capacity}, tokens over capacity dropped"
        if moe.token_dropping
        else "no token dropping"
    )
    residual = ", Residual MoE" if moe.mlp_type == "residual" else ""
    return (
        f"experts per MoE layer {{{', '.join(layers)}}}, expert-parallel size {moe.expert_parallel_size}, "
        f"top-{moe.topk} gating, {dropping}{residual}, load-balancing loss x {moe.loss_coeff}"
    )
