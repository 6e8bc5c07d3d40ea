"""The rules of the parallel layout: tensor (T), pipeline (P) and DeepSpeed-Ulysses sequence (U) parallelism,
with data parallelism (D) taking what remains of the world, D = world / (T x P x U).

They are checked from the flags, the model shape and the world size alone, so a layout the model cannot be
split into fails on every rank with a message naming the flags, before any process group exists, rather
than as a shape error or a hang inside a collective later.
"""

from __future__ import annotations

import argparse

from megatron.config.architecture import check_attention_split
from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig, ParallelConfig

_T_FLAG = "--tensor-model-parallel-size"
_P_FLAG = "--pipeline-model-parallel-size"
_U_FLAG = "--ds-sequence-parallel-size"


def parallel_config(args: argparse.Namespace, world_size: int) -> ParallelConfig:
    """The layout from the flags, with the rules that need no model shape."""
    tensor, pipeline = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    ulysses = args.ds_sequence_parallel_size
    for flag, size in ((_T_FLAG, tensor), (_P_FLAG, pipeline), (_U_FLAG, ulysses)):
        if size < 1:
            raise ConfigError(f"{flag} {size}: must be >= 1.")
    if world_size < 1:
        raise ConfigError(f"world size {world_size}: must be >= 1.")
    model_ranks = tensor * pipeline * ulysses
    if world_size % model_ranks:
        raise ConfigError(
            f"world size {world_size} is not divisible by {_T_FLAG} {tensor} x {_P_FLAG} {pipeline} x "
            f"{_U_FLAG} {ulysses} = {model_ranks}: each data-parallel replica of the model takes that many "
            "ranks. Change the number of processes or the parallel sizes."
        )
    if pipeline > 1 and args.no_pipeline_parallel:
        raise ConfigError(
            f"{_P_FLAG} {pipeline} with --no-pipeline-parallel: without DeepSpeed's pipeline engine the "
            "model is not split into stages. Drop one of the two."
        )
    if ulysses > 1 and args.sequence_parallel:
        raise ConfigError(
            f"--sequence-parallel with {_U_FLAG} {ulysses}: both split the sequence (Megatron's over the "
            "tensor-parallel ranks, DeepSpeed-Ulysses over ranks of its own); choose one."
        )
    if args.sequence_parallel and tensor == 1:
        raise ConfigError(
            f"--sequence-parallel with {_T_FLAG} 1: it splits along the sequence over the tensor-parallel "
            f"ranks, so it needs {_T_FLAG} > 1. Without tensor parallelism, use {_U_FLAG} "
            "(DeepSpeed-Ulysses) to split the sequence instead."
        )
    if ulysses > 1 and pipeline > 1:
        raise ConfigError(
            f"{_U_FLAG} {ulysses} with {_P_FLAG} {pipeline}: DeepSpeed-Ulysses is supported here without "
            f"pipeline parallelism. Use {_P_FLAG} 1 (with --no-pipeline-parallel), or {_U_FLAG} 1."
        )
    return ParallelConfig(
        world_size=world_size,
        tensor_model_parallel_size=tensor,
        pipeline_model_parallel_size=pipeline,
        use_pipeline_engine=not args.no_pipeline_parallel,
        sequence_parallel=args.sequence_parallel,
        ds_sequence_parallel_size=ulysses,
        pipeline_partition_method=args.pipeline_partition_method,
        distributed_backend=args.distributed_backend,
    )


def check_model_split(model: ModelConfig, parallel: ParallelConfig) -> None:
    """Whether the model's dimensions split evenly over the layout: attention heads and the MLP over the
    tensor-parallel ranks, the sequence over the sequence-parallel ranks, the layers over the stages."""
    tensor, ulysses = parallel.tensor_model_parallel_size, parallel.ds_sequence_parallel_size
    heads, seq_length = model.num_attention_heads, model.seq_length
    if heads % tensor:
        raise ConfigError(
            f"--num-attention-heads {heads} is not divisible by {_T_FLAG} {tensor}: each tensor-parallel "
            "rank computes whole heads. Choose a tensor-parallel size that divides the head count."
        )
    if model.ffn_hidden_size % tensor:
        raise ConfigError(
            f"--ffn-hidden-size {model.ffn_hidden_size} is not divisible by {_T_FLAG} {tensor}: the MLP's "
            "inner dimension is split evenly over the tensor-parallel ranks. Use a multiple of the "
            "tensor-parallel size."
        )
    if parallel.sequence_parallel and seq_length % tensor:
        raise ConfigError(
            f"--seq-length {seq_length} is not divisible by {_T_FLAG} {tensor}: --sequence-parallel gives "
            "each tensor-parallel rank an equal slice of the sequence. Use a multiple of the tensor-parallel "
            "size, or drop --sequence-parallel."
        )
    if ulysses > 1:
        heads_per_rank = heads // tensor
        if heads_per_rank % ulysses:
            on_each = f" on each tensor-parallel rank ({heads} / {tensor} = {heads_per_rank})"
            raise ConfigError(
                f"--num-attention-heads {heads} with {_U_FLAG} {ulysses}: DeepSpeed-Ulysses' all-to-all "
                f"hands each of its ranks whole heads, so the heads{on_each if tensor > 1 else ''} must be "
                f"divisible by {ulysses}. Use a head count that is a multiple of {tensor * ulysses}, or a "
                f"smaller {_U_FLAG}."
            )
        if seq_length % ulysses:
            raise ConfigError(
                f"--seq-length {seq_length} is not divisible by {_U_FLAG} {ulysses}: DeepSpeed-Ulysses gives "
                f"each of its ranks an equal slice of the sequence. Use a multiple of {ulysses}."
            )
    if model.num_key_value_heads is not None:
        check_attention_split(model.num_key_value_heads, tensor, ulysses)
    pipeline = parallel.pipeline_model_parallel_size
    if model.num_layers < pipeline:
        raise ConfigError(
            f"--num-layers {model.num_layers} is fewer than {_P_FLAG} {pipeline}: each pipeline stage needs "
            "at least one transformer layer. Use fewer stages or more layers."
        )


def check_pipeline_zero_stage(parallel: ParallelConfig, stage: int, ds_path: str) -> None:
    pipeline = parallel.pipeline_model_parallel_size
    if pipeline > 1 and stage >= 2:
        raise ConfigError(
            f"{_P_FLAG} {pipeline} with ZeRO stage {stage} (--zero-stage / zero_optimization.stage in "
            f"{ds_path}): DeepSpeed's pipeline engine supports ZeRO stage 0 and 1 only. Use --zero-stage 1."
        )


def describe_data_parallel(parallel: ParallelConfig) -> str:
    """The data-parallel size as a batch-size error shows it: followed, when model parallelism takes ranks,
    by where it comes from, so the user sees why it is smaller than the number of GPUs."""
    text = f"data-parallel size {parallel.data_parallel_size}"
    sizes = (
        (_T_FLAG, parallel.tensor_model_parallel_size),
        (_P_FLAG, parallel.pipeline_model_parallel_size),
        (_U_FLAG, parallel.ds_sequence_parallel_size),
    )
    divisors = [f"{flag} {size}" for flag, size in sizes if size > 1]
    if not divisors:
        return text
    return f"{text} (world size {parallel.world_size} / ({' x '.join(divisors)}))"
