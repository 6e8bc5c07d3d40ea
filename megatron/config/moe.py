"""Mixture-of-experts flags (Megatron-DeepSpeed's ``--num-experts`` family) into a validated MoEConfig.

The layers run DeepSpeed's own ``deepspeed.moe.layer.MoE``, so the rules here are the ones under which that
layer computes the same model on any number of ranks: experts spread evenly over the expert-parallel ranks,
those ranks taken from the data-parallel ones, and no tensor, pipeline or Ulysses split: DeepSpeed 0.19
builds its expert groups from consecutive ranks (they would be tensor-parallel neighbours), and the pipeline
stages here do not carry the load-balancing loss.
"""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError, require_positive
from megatron.config.schema import ModelConfig, MoEConfig, ParallelConfig

_EXPERTS = "--num-experts"
_EP = "--moe-expert-parallel-size"


def experts_per_layer(num_experts: list[int], num_layers: int, interval: int) -> tuple[int, ...]:
    """Megatron-DeepSpeed's placement: layer ``n`` (counted from 1) has experts when ``n`` is a multiple of
    the interval, and the MoE layers take the ``--num-experts`` values in order (one value: all of them)."""
    moe_layers = num_layers // interval
    if len(num_experts) == 1:
        num_experts = num_experts * moe_layers
    return tuple(
        num_experts[number // interval - 1] if number % interval == 0 else 1
        for number in range(1, num_layers + 1)
    )


def moe_config(args: argparse.Namespace, model: ModelConfig, parallel: ParallelConfig) -> MoEConfig:
    values = args.num_experts
    if any(value < 1 for value in values):
        raise ConfigError(f"{_EXPERTS} {' '.join(map(str, values))}: each value must be >= 1 (1: dense MLP).")
    interval = args.expert_interval
    require_positive("--expert-interval", interval)
    ep_size = args.moe_expert_parallel_size
    require_positive(_EP, ep_size)
    if max(values) == 1:
        _check_unused_flags(args, ep_size)
        return MoEConfig()
    moe_layers = model.num_layers // interval
    if moe_layers == 0:
        raise ConfigError(
            f"--expert-interval {interval} is larger than --num-layers {model.num_layers}: every "
            f"{interval}th layer is an MoE layer, so none would be. Use an interval <= the layer count."
        )
    if len(values) not in (1, moe_layers):
        raise ConfigError(
            f"{_EXPERTS} has {len(values)} values: give one (every MoE layer) or one per MoE layer for "
            f"pyramid MoE, i.e. {moe_layers} (--num-layers {model.num_layers} / --expert-interval "
            f"{interval})."
        )
    layers = experts_per_layer(values, model.num_layers, interval)
    _check_gating(args)
    _check_layout(parallel, ep_size, layers)
    if args.universal_checkpoint:
        raise ConfigError(
            f"--universal-checkpoint with {_EXPERTS}: universal checkpoints of MoE models are not supported "
            "here. Load the checkpoint as it was saved (same --moe-expert-parallel-size)."
        )
    return MoEConfig(
        experts_per_layer=layers,
        expert_parallel_size=ep_size,
        topk=args.topk,
        train_capacity_factor=args.moe_train_capacity_factor,
        eval_capacity_factor=args.moe_eval_capacity_factor,
        min_capacity=args.moe_min_capacity,
        token_dropping=args.moe_token_dropping,
        loss_coeff=args.moe_loss_coeff,
        mlp_type=args.mlp_type,
    )


def _check_unused_flags(args: argparse.Namespace, ep_size: int) -> None:
    """Flags that would silently do nothing on a dense model."""
    if ep_size > 1:
        raise ConfigError(
            f"{_EP} {ep_size} without experts ({_EXPERTS} {' '.join(map(str, args.num_experts))}): there is "
            f"nothing to spread. Give {_EXPERTS} > 1, or drop {_EP}."
        )
    if args.mlp_type == "residual":
        raise ConfigError(
            f"--mlp-type residual without experts: Residual MoE adds experts beside the dense MLP. Give "
            f"{_EXPERTS} > 1, or drop --mlp-type."
        )


def _check_gating(args: argparse.Namespace) -> None:
    if args.topk not in (1, 2):
        raise ConfigError(
            f"--topk {args.topk}: DeepSpeed's MoE layer routes each token to its top-1 or top-2 experts; use "
            "--topk 1 or --topk 2."
        )
    require_positive("--moe-train-capacity-factor", args.moe_train_capacity_factor)
    require_positive("--moe-eval-capacity-factor", args.moe_eval_capacity_factor)
    if args.moe_min_capacity < 0:
        raise ConfigError(f"--moe-min-capacity {args.moe_min_capacity}: must be >= 0.")
    if args.moe_loss_coeff < 0:
        raise ConfigError(f"--moe-loss-coeff {args.moe_loss_coeff}: must be >= 0 (0: no load balancing).")


def _check_layout(parallel: ParallelConfig, ep_size: int, layers: tuple[int, ...]) -> None:
    model_parallel = (
        ("--tensor-model-parallel-size", parallel.tensor_model_parallel_size, "DeepSpeed 0.19 forms the "
         "expert-parallel groups from consecutive ranks, which are the tensor-parallel neighbours here"),
        ("--pipeline-model-parallel-size", parallel.pipeline_model_parallel_size, "the pipeline stages do "
         "not carry the load-balancing loss"),
        ("--ds-sequence-parallel-size", parallel.ds_sequence_parallel_size, "DeepSpeed's expert groups and "
         "expert-gradient averaging leave out the Ulysses ranks"),
    )  # fmt: skip
    for flag, size, why in model_parallel:
        if size > 1:
            raise ConfigError(
                f"{_EXPERTS} with {flag} {size}: not supported with DeepSpeed's MoE here ({why}). Use "
                f"{flag} 1 and spread the experts with {_EP} instead (it takes data-parallel ranks)."
            )
    world = parallel.world_size
    if world % ep_size:
        raise ConfigError(
            f"world size {world} is not divisible by {_EP} {ep_size}: each group of {ep_size} data-parallel "
            f"ranks shares one copy of every MoE layer's experts. Use a {_EP} that divides {world}."
        )
    for number, experts in enumerate(layers):
        if experts > 1 and experts % ep_size:
            raise ConfigError(
                f"{_EXPERTS}: layer {number} has {experts} experts, not divisible by {_EP} {ep_size}: each "
                f"expert-parallel rank holds the same number of experts. Use expert counts that are "
                f"multiples of {ep_size}."
            )


def check_moe_zero_stage(moe: MoEConfig, stage: int, ds_path: str) -> None:
    if moe.enabled and stage == 3:
        raise ConfigError(
            f"{_EXPERTS} with ZeRO stage 3 (--zero-stage / zero_optimization.stage in {ds_path}): "
            "deepspeed.initialize refuses DeepSpeed's MoE layers under stage 3. Use --zero-stage 2 (or 0, 1)."
        )


def check_moe_tokens(moe: MoEConfig, micro_batch_size: int, shortest_sequence: int) -> None:
    """DeepSpeed's gate asserts that a micro batch holds at least ``min_capacity`` tokens."""
    tokens = micro_batch_size * shortest_sequence
    if moe.enabled and tokens < moe.min_capacity:
        raise ConfigError(
            f"--moe-min-capacity {moe.min_capacity} is more than the {tokens} tokens of a micro batch "
            f"(--micro-batch-size {micro_batch_size} x {shortest_sequence} tokens): DeepSpeed's gate needs "
            "at least that many. Lower --moe-min-capacity or use larger micro batches."
        )
