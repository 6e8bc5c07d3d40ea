"""Seeds, model, optimizer and the DeepSpeed engine, in the order that makes runs reproducible."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import deepspeed
import torch
from deepspeed.pipe import PipelineModule
from deepspeed.sequence.layer import DistributedAttention
from torch import nn

from megatron.config.schema import Config, ModelConfig, RecomputeConfig
from megatron.model.float8 import apply_float8
from megatron.model.kernels import apply_kernels
from megatron.model.moe import check_expert_groups, describe_moe
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import configure_recomputation, seed_tensor_parallel_rng
from megatron.training.grad_norm import GradientClipper, mark_for_deepspeed_norm
from megatron.training.lr_schedule import LRScheduler
from megatron.training.optimizer import build_optimizer
from megatron.training.rng import set_seed, stage_seed
from megatron.training.step import Batch, StepResult, pipeline_train_step, train_step
from megatron.training.timers import StepTimers

logger = logging.getLogger("megatron")

ModelProvider = Callable[[Config, ParallelContext], nn.Module]


@dataclass
class TrainingEngine:
    engine: deepspeed.DeepSpeedEngine
    lr_scheduler: LRScheduler
    is_pipeline: bool
    # Set when DeepSpeed does not wrap the optimizer (ZeRO 0 in fp32 or bf16 autocast): then this clips and
    # keeps the gradient norm, which DeepSpeed does not.
    clipper: GradientClipper | None
    # The compiled model replays CUDA graphs (train_step keeps accumulated gradients out of their memory).
    replays_cuda_graphs: bool = False

    def train_step(
        self, micro_batches: Iterator[Batch], num_micro_batches: int, timers: StepTimers | None = None
    ) -> StepResult:
        """One iteration: ``num_micro_batches`` micro batches, then the update, through the plain engine or
        on DeepSpeed's pipeline schedule (which runs as one: ``timers`` time the plain engine's parts)."""
        if self.is_pipeline:
            return pipeline_train_step(self.engine, micro_batches, self.clipper)
        return train_step(
            self.engine, micro_batches, num_micro_batches, self.clipper, self.replays_cuda_graphs, timers
        )


@dataclass(frozen=True)
class DeepSpeedMpu(ParallelContext):
    """The parallel context as DeepSpeed's engine and ZeRO optimizers must see it under DeepSpeed-Ulysses.

    DeepSpeed 0.19.8 all-reduces gradients over the mpu's ``get_sequence_data_parallel_group()`` (data x
    Ulysses ranks) but divides the sum by that group's size over ``get_sequence_parallel_world_size()``,
    i.e. by the data-parallel size alone: it sums over the Ulysses ranks, expecting each rank's loss to be
    its share of the whole sequence's loss. Here each Ulysses rank's loss is the mean over its own part of
    the sequence, so the gradient must be averaged over the whole group; reporting a sequence-parallel size
    of one makes DeepSpeed's divisor exactly that (ZeRO 0 to 3 alike). Every other answer, the Ulysses group
    and rank included, is the context's own. Without Ulysses this view changes nothing.
    """

    @classmethod
    def of(cls, context: ParallelContext) -> DeepSpeedMpu:
        return cls(**{field.name: getattr(context, field.name) for field in fields(ParallelContext)})

    def get_sequence_parallel_world_size(self) -> int:
        return 1


def partition_over_sequence_data(model: nn.Module, config: Config, context: ParallelContext, mpu) -> None:
    """ZeRO 3 under DeepSpeed-Ulysses: partition the parameters over the data-parallel x Ulysses ranks.

    DeepSpeed 0.19.8's engine partitions a model that was not built under ``zero.Init`` over
    ``mpu.get_data_parallel_group()``, and reduce-scatters each gradient over the group its parameter is
    partitioned over. With Ulysses that group leaves out the other Ulysses ranks, so each would keep its own
    gradient and the copies of the model drift apart. The built model is therefore converted here, over the
    sequence-data group, before the engine sees it (Megatron-DeepSpeed builds its model under ``zero.Init``
    with that group instead). The cast to the training dtype comes first because the engine makes it before
    its own conversion and leaves parameters that are already partitioned in the dtype they have.
    """
    precision = config.precision
    model.to(torch.float16 if precision.fp16 else torch.bfloat16 if precision.bf16 else torch.float32)
    deepspeed.zero.Init(
        module=model,
        data_parallel_group=context.sequence_data_group,
        config_dict_or_path=dict(config.deepspeed.ds_config),
        mpu=mpu,
    )


def attention_path(model: nn.Module, context: ParallelContext) -> str:
    if any(isinstance(module, DistributedAttention) for module in model.modules()):
        return f"DeepSpeed-Ulysses all-to-all over {context.ulysses_size} ranks around torch SDPA"
    return "torch SDPA"


def describe_architecture(model: ModelConfig) -> str:
    if model.rotary_position_embeddings:
        channels = "all" if model.rotary_percent == 1.0 else f"{model.rotary_dim} of {model.head_dim}"
        positions = f"rotary positions (theta {model.rotary_base:g}, {channels} channels)"
        positions += " and a learned position table" if model.learned_position_embeddings else ""
    else:
        positions = "learned positions" if model.learned_position_embeddings else "no position embeddings"
    parts = [
        positions,
        "RMSNorm" if model.normalization == "rmsnorm" else "LayerNorm",
        f"{'SwiGLU' if model.swiglu else 'GeLU'} MLP (ffn {model.ffn_hidden_size})",
        "linear biases" if model.add_bias_linear else "no linear biases",
        f"{model.num_attention_heads} heads"
        + (
            f" sharing {model.kv_heads} key/value heads"
            if model.kv_heads != model.num_attention_heads
            else ""
        ),
        "untied output layer"
        if model.untie_embeddings_and_output_weights
        else "output tied to the embedding",
    ]
    return ", ".join(parts)


def describe_recompute(recompute: RecomputeConfig) -> str:
    if recompute.granularity is None:
        return "off"
    if recompute.granularity == "selective":
        what = "selective (the attention core)"
    elif recompute.method == "uniform":
        what = f"full, chunks of {recompute.num_layers} layer(s)"
    else:
        what = f"full, the first {recompute.num_layers} layer(s) of each stage"
    options = "with the ds_config's activation_checkpointing options" if recompute.deepspeed else ""
    return f"{what}, through deepspeed.checkpointing {options}".rstrip()


def build_engine(config: Config, context: ParallelContext, model_provider: ModelProvider) -> TrainingEngine:
    """Seed, build the model (a ``PipelineModule`` when it spans pipeline stages), its optimizer and LR
    schedule, and hand them to ``deepspeed.initialize`` with the reconciled ds_config.

    The parallel context is DeepSpeed's "mpu" (through :class:`DeepSpeedMpu`): ZeRO shards and averages
    gradients over the data-parallel and Ulysses ranks, and gradient clipping counts tensor-parallel shards
    once.
    """
    seed = stage_seed(config.seed, context.pipeline_rank)
    set_seed(seed)
    configure_recomputation(context, config.deepspeed.ds_config if config.recompute.deepspeed else None)
    seed_tensor_parallel_rng(seed, context)
    model = model_provider(config, context)
    is_pipeline = isinstance(model, PipelineModule)
    if is_pipeline:
        mark_for_deepspeed_norm(model, context)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "model: %.1fM parameters on this rank (tensor-parallel %d, pipeline %d, Ulysses %d, data-parallel "
        "%d%s), attention through %s, %s, %s engine",
        parameters / 1e6,
        context.tensor_size,
        context.pipeline_size,
        context.ulysses_size,
        context.data_size,
        ", sequence-parallel" if context.sequence_parallel else "",
        attention_path(model, context),
        config.precision.dtype_name,
        "pipeline" if is_pipeline else "DeepSpeed",
    )
    logger.info("architecture: %s", describe_architecture(config.model))
    logger.info("activation recomputation: %s", describe_recompute(config.recompute))
    if config.fp8 is not None:
        # Before compiling, so that the compiled graphs hold the FP8 casts and matmuls.
        logger.info("matmuls: %s", apply_float8(model, config.fp8))
    kernels = apply_kernels(model, config.kernels, allow_one_graph=config.deepspeed.zero_stage < 3)
    logger.info("kernels: %s", kernels)
    if config.moe.enabled:
        logger.info("mixture of experts: %s", describe_moe(config.moe))
    optimizer = build_optimizer(model, config.optimizer)
    lr_scheduler = LRScheduler(
        optimizer, config.optimizer.lr, config.lr_schedule, config.batch.global_batch_size
    )
    mpu = None if is_pipeline else DeepSpeedMpu.of(context)
    if config.deepspeed.zero_stage == 3 and context.ulysses_size > 1:
        partition_over_sequence_data(model, config, context, mpu)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=dict(config.deepspeed.ds_config),
        mpu=mpu,
    )
    check_expert_groups(engine.module)
    clipper = None
    if isinstance(engine.optimizer, torch.optim.Optimizer):  # DeepSpeed did not wrap it (see GradientClipper)
        clipper = GradientClipper(
            engine.module.parameters(), engine.gradient_clipping(), context, engine.optimizer
        )
        engine.clip_fp32_gradients = clipper
        if not is_pipeline and context.sequence_data_size == 1:
            # One replica: DeepSpeed's fallback all-reduce would still flatten every gradient into one
            # buffer and copy it back after each accumulation window, for nothing.
            engine.enable_backward_allreduce = False
    return TrainingEngine(engine, lr_scheduler, is_pipeline, clipper, config.kernels.uses_cuda_graphs)
