"""Activation recomputation: Megatron's --recompute-* flags, the legacy --checkpoint-activations, and
--deepspeed-activation-checkpointing, resolved into one :class:`RecomputeConfig`.

Megatron-DeepSpeed recipes combine these in several ways; each accepted combination has one meaning here,
and a combination where a flag would silently do nothing is an error instead.
"""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError
from megatron.config.schema import RecomputeConfig

_DEFAULT = RecomputeConfig()


def recompute_config(args: argparse.Namespace, num_layers: int, pipeline_size: int) -> RecomputeConfig:
    """--checkpoint-activations means full granularity (uniform, 1 layer unless --recompute-method /
    --recompute-num-layers say otherwise). --deepspeed-activation-checkpointing routes the recomputation
    through DeepSpeed; given alone it means full/uniform/1, as it did in this toolkit before the --recompute-*
    flags existed."""
    granularity = args.recompute_granularity
    if granularity == "selective" and args.checkpoint_activations:
        raise ConfigError(
            "--recompute-granularity selective with --checkpoint-activations, which means full "
            "recomputation of whole layers; choose one."
        )
    full = granularity == "full" or args.checkpoint_activations
    given = [
        f"{flag} {value}"
        for flag, value in (
            ("--recompute-method", args.recompute_method),
            ("--recompute-num-layers", args.recompute_num_layers),
        )
        if value is not None
    ]
    if given and not full:
        seen = f"--recompute-granularity {granularity}" if granularity else "no --recompute-granularity"
        raise ConfigError(
            f"{' and '.join(given)} with {seen}: they only apply to full recomputation. Add "
            "--recompute-granularity full (or --checkpoint-activations), or drop them."
        )
    if full or (granularity is None and args.deepspeed_activation_checkpointing):
        granularity = "full"
    method = args.recompute_method or _DEFAULT.method
    layers = args.recompute_num_layers if args.recompute_num_layers is not None else _DEFAULT.num_layers
    if granularity == "full":
        _check_num_layers(layers, method, num_layers, pipeline_size)
    return RecomputeConfig(
        granularity=granularity,
        method=method,
        num_layers=layers,
        deepspeed=args.deepspeed_activation_checkpointing,
    )


def _check_num_layers(layers: int, method: str, num_layers: int, pipeline_size: int) -> None:
    if layers < 1:
        raise ConfigError(f"--recompute-num-layers {layers}: must be >= 1.")
    if method == "block":
        per_stage = -(-num_layers // pipeline_size)
        if layers > per_stage:
            raise ConfigError(
                f"--recompute-num-layers {layers} with --recompute-method block: block recomputes the first "
                f"N layers of each pipeline stage, and a stage holds at most {per_stage} (--num-layers "
                f"{num_layers} / --pipeline-model-parallel-size {pipeline_size}, rounded up). Use at most "
                f"{per_stage}."
            )
    elif layers > num_layers:
        raise ConfigError(
            f"--recompute-num-layers {layers} is more than --num-layers {num_layers}: with "
            f"--recompute-method uniform it is the number of layers recomputed as one chunk. Use at most "
            f"{num_layers}."
        )
