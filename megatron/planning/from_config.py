"""The layout and precision of a validated run configuration, so that the trainer's start-up memory line
and the planner read one memory model (:func:`megatron.planning.memory.predict_memory`)."""

from __future__ import annotations

from megatron.config.schema import Config
from megatron.planning.layout import Layout, Precision, Recompute
from megatron.planning.memory import BucketSizes, MemoryBreakdown, predict_memory


def recompute_of(config: Config) -> Recompute:
    """The planner's recompute names for --recompute-granularity (full: one layer per chunk is what the
    memory model counts; other chunkings are counted alike)."""
    return config.recompute.granularity or "none"


def layout_of(config: Config) -> Layout:
    parallel, zero = config.parallel, config.deepspeed.ds_config.get("zero_optimization", {}) or {}
    offload_parameters = (zero.get("offload_param") or {}).get("device", "none") not in ("none", None)
    offload_optimizer = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    return Layout(
        tensor_parallel=parallel.tensor_model_parallel_size,
        pipeline_parallel=parallel.pipeline_model_parallel_size,
        data_parallel=parallel.data_parallel_size,
        zero_stage=config.deepspeed.zero_stage,
        micro_batch_size=config.batch.micro_batch_size,
        gradient_accumulation_steps=config.batch.gradient_accumulation_steps,
        recompute=recompute_of(config),
        offload_optimizer=offload_optimizer or config.optimizer.cpu_adam,
        offload_parameters=offload_parameters,
        sequence_parallel=parallel.sequence_parallel,
        ulysses=parallel.ds_sequence_parallel_size,
        expert_parallel=config.moe.expert_parallel_size,
    )


def precision_of(config: Config) -> Precision:
    precision = config.precision
    if precision.bf16_autocast:
        return "autocast"
    return "fp16" if precision.fp16 else "bf16" if precision.bf16 else "fp32"


def buckets_of(config: Config) -> BucketSizes:
    return BucketSizes.from_ds_config(config.deepspeed.ds_config)


def trains_with_dropout(config: Config) -> bool:
    return config.model.hidden_dropout > 0 or config.model.attention_dropout > 0


def memory_of(config: Config) -> MemoryBreakdown:
    """The run's predicted peak memory per GPU: what the trainer logs and bench/plan_compare.py checks."""
    return predict_memory(
        config.model,
        layout_of(config),
        precision_of(config),
        moe=config.moe if config.moe.enabled else None,
        dropout=trains_with_dropout(config),
        buckets=buckets_of(config),
    )
